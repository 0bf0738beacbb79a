//! The update: each weight stepped by its rule, with clipping, weight decay, `use_ema` and the
//! NaN guard's measure of the gradients.

use super::{slot_fits, slot_shape, Clip, Ema, GradientCheck, Optimizer, Rule, Slots};
use crate::layers::Param;
use crate::regularizers::Regularizer;
use losskit::{Error, Result, Tensor};
use losskit_kernels::optim::Penalty;
use losskit_tensor::Element;
use ndarray::ArrayD;

impl Optimizer {
    /// Applies one update: `grads[i]` is the gradient of `params[i]` (same shape and dtype).
    pub fn apply(&mut self, params: &mut [&mut Param], grads: &[Tensor]) -> Result<()> {
        self.apply_to(params, grads, None, &mut Vec::new()).map(|_| ())
    }

    /// [`Optimizer::apply`] that first measures each gradient (`Σ g²`, for the NaN guard's norm
    /// history; one read of the gradients, which the backward pass has just written) and, with
    /// `require_finite`, applies nothing (the weights, slots and iteration count stay as they
    /// were) when a gradient value is NaN or ±inf. Then the update, in place.
    pub fn apply_checked(
        &mut self,
        params: &mut [&mut Param],
        grads: &[Tensor],
        require_finite: bool,
    ) -> Result<GradientCheck> {
        let mut sum_squares = Vec::new();
        let (finite, applied) = self.apply_to(params, grads, Some(require_finite), &mut sum_squares)?;
        Ok(GradientCheck { sum_squares, finite, applied })
    }

    /// The update of `weights` with `grads` (in weight order), allocating nothing once the slots
    /// exist: each weight is updated in its own buffer when nothing else holds it. With
    /// `check = Some(require_finite)` (or norm clipping) each gradient's `Σ g²` is measured
    /// into `sum_squares` first (cleared; its capacity is reused) and, when required, nothing
    /// is applied at a non-finite value. Returns `(finite, applied)`.
    pub(crate) fn apply_to<W: Weights + ?Sized>(
        &mut self,
        weights: &mut W,
        grads: &[Tensor],
        check: Option<bool>,
        sum_squares: &mut Vec<f64>,
    ) -> Result<(bool, bool)> {
        sum_squares.clear();
        if !same_count(weights, grads)? {
            return Ok((true, true));
        }
        match weights.weight(0).value.dtype() {
            losskit::DType::F32 => self.apply_typed::<f32, W>(weights, grads, check, sum_squares),
            losskit::DType::F64 => self.apply_typed::<f64, W>(weights, grads, check, sum_squares),
        }
    }

    /// The update; with `check = Some(require_finite)`, the gradients are measured first (and,
    /// when required, the update skipped at a non-finite value).
    fn apply_typed<T: Element + SlotType, W: Weights + ?Sized>(
        &mut self,
        weights: &mut W,
        grads: &[Tensor],
        check: Option<bool>,
        sum_squares: &mut Vec<f64>,
    ) -> Result<(bool, bool)> {
        check_gradients::<T, W>(weights, grads)?;
        // One pass over the gradients serves both the guard's check and norm clipping.
        if check.is_some() || self.needs_norms() {
            sum_squares.extend(grads.iter().map(Tensor::sum_of_squares));
        }
        let (finite, applied) = match check {
            Some(require_finite) => {
                let finite = all_finite(grads, sum_squares);
                (finite, finite || !require_finite)
            }
            None => (true, true),
        };
        if applied {
            self.update_all::<T, W>(weights, grads, &[], sum_squares)?;
        }
        Ok((finite, applied))
    }

    /// Whether the update needs each gradient's `Σ g²` (norm clipping).
    pub(super) fn needs_norms(&self) -> bool {
        matches!(self.clip, Clip::Norm(_) | Clip::GlobalNorm(_))
    }

    /// Every weight's update with its gradient (`sum_squares`: each gradient's `Σ g²` when
    /// measured, for norm clipping), each `penalties[i]` (when given) folded into its weight's.
    pub(super) fn update_all<T: Element + SlotType, W: Weights + ?Sized>(
        &mut self,
        weights: &mut W,
        grads: &[Tensor],
        penalties: &[Option<Regularizer>],
        sum_squares: &[f64],
    ) -> Result<()> {
        self.ensure_slots::<T, W>(weights)?;
        let lr = T::c(self.learning_rate());
        let step = self.iterations + 1;
        let global = self.global_clip_factor::<T>(sum_squares);
        let bound = self.clip_bound();
        let rule = self.rule;
        let nadam = match rule {
            Rule::Nadam { beta_1, beta_2, epsilon } => Some(self.nadam_constants::<T>(beta_1, beta_2, epsilon, step)),
            _ => None,
        };
        let (ema, rule_slots, weight_decay) = (self.ema, self.rule_slots(), self.weight_decay);
        let slots = T::slots(&mut self.slots);
        for (i, (g, s)) in grads.iter().zip(slots.iter_mut()).enumerate() {
            let factor = match self.clip {
                Clip::Norm(c) => {
                    let c = T::c(c);
                    c / T::c(sum_squares[i]).sqrt().max(c)
                }
                _ => global,
            };
            let g = T::view(g.storage()).expect("checked above");
            // Borrowed when already contiguous (the usual case); the kernels take slices.
            let g = g.as_standard_layout();
            for slot in s.iter_mut().filter(|a| !a.is_standard_layout()) {
                *slot = slot.as_standard_layout().into_owned();
            }
            let count = s.len();
            let mut slot_slices: [&mut [T]; MAX_SLOTS] = Default::default();
            for (to, a) in slot_slices.iter_mut().zip(s.iter_mut()) {
                *to = a.as_slice_mut().expect(STANDARD);
            }
            let (s, average) = slot_slices[..count].split_at_mut(rule_slots);
            let weight = WeightStep {
                rule,
                lr,
                step,
                weight_decay,
                ema,
                gr: Grad { clip: losskit_kernels::optim_rules::Clipping { factor, bound }, nadam, penalty: None },
                penalty: penalties.get(i).copied().flatten(),
            };
            let g = (g.as_slice().expect(STANDARD), g.shape());
            let average = average.first_mut().map(|a| &mut **a);
            let p = weights.weight_mut(i);
            // In place when the weight's buffer is this handle's alone (the graph is gone).
            if let Some(w) = p.value.values_mut::<T>() {
                weight.run(w, g, s, average);
                continue;
            }
            let value = std::mem::replace(&mut p.value, PLACEHOLDER.with(Tensor::clone));
            let mut w = T::take(value.into_storage()).expect("dtype checked above");
            // The update runs on contiguous buffers (a strided weight, e.g. one set from a
            // transposed tensor, is made standard once here).
            if !w.is_standard_layout() {
                w = w.as_standard_layout().into_owned().into_shared();
            }
            weight.run(w.as_slice_mut().expect(STANDARD), g, s, average);
            p.value = Tensor::from_storage(T::wrap_shared(w)).requires_grad();
        }
        self.iterations = step;
        Ok(())
    }

    /// Keras 3's `_clip_gradients` by global norm as the factor every gradient is scaled by
    /// (1 without it; per-gradient `clipnorm` is worked out in the update's loop): folded into
    /// the update, so the gradients are not copied. `sum_squares` holds each gradient's `Σ g²`
    /// (from [`Tensor::sum_of_squares`]: lanes of the weight's type, block sums in f64),
    /// rounded here to the weight's type, so a sum that overflows it is ∞ as in Keras.
    /// `clipnorm`: `c / max(‖g‖, c)`; `global_clipnorm`: `c · min(1/‖G‖, 1/c)` with
    /// `‖G‖² = Σ ‖g‖²` over all gradients.
    fn global_clip_factor<T: Element>(&self, sum_squares: &[f64]) -> T {
        match self.clip {
            Clip::GlobalNorm(c) => {
                let c = T::c(c);
                let total = sum_squares.iter().fold(T::zero(), |a, &s| a + T::c(s)).sqrt();
                c * (T::one() / total).min(T::one() / c)
            }
            _ => T::one(),
        }
    }

    /// The bound of `clipvalue`, if set.
    fn clip_bound<T: Element>(&self) -> Option<T> {
        match self.clip {
            Clip::Value(c) => Some(T::c(c)),
            _ => None,
        }
    }

    /// Creates zero slots on the first update; an error if a restored state does not fit.
    fn ensure_slots<T: Element + SlotType, W: Weights + ?Sized>(&mut self, weights: &W) -> Result<()> {
        let slots_needed = self.slots_needed();
        // Adagrad's and Ftrl's accumulators (their first slot) start at their initial value,
        // every other slot at 0.
        let first = match self.rule {
            Rule::Adagrad { initial_accumulator_value, .. } | Rule::Ftrl { initial_accumulator_value, .. } => {
                T::c(initial_accumulator_value)
            }
            _ => T::zero(),
        };
        let start = |k: usize| if k == 0 { first } else { T::zero() };
        let rule = self.rule;
        let slots = T::slots(&mut self.slots);
        let count = weights.count();
        if slots.len() != count {
            *slots = (0..count)
                .map(|i| {
                    let shape = weights.weight(i).value.shape();
                    (0..slots_needed).map(|k| ArrayD::from_elem(slot_shape(rule, k, shape), start(k))).collect()
                })
                .collect();
        }
        let misfit = |i: usize, s: &Vec<ArrayD<T>>| {
            let p = weights.weight(i);
            s.len() != slots_needed
                || s.iter().enumerate().any(|(k, a)| !slot_fits(rule, k, p.value.shape(), a.shape()))
        };
        if let Some(i) = slots.iter().enumerate().position(|(i, s)| misfit(i, s)) {
            let p = weights.weight(i);
            return Err(Error::Shape {
                op: "Optimizer::apply".into(),
                msg: format!(
                    "the optimizer's state for {} does not have its shape {:?} (set_state?)",
                    p.name,
                    p.value.shape()
                ),
            });
        }
        Ok(())
    }
}

/// Whether there are weights to update: an error when `grads` does not have one per weight.
pub(super) fn same_count<W: Weights + ?Sized>(weights: &W, grads: &[Tensor]) -> Result<bool> {
    if weights.count() != grads.len() {
        return Err(Error::Shape {
            op: "Optimizer::apply".into(),
            msg: format!("{} weights but {} gradients", weights.count(), grads.len()),
        });
    }
    Ok(weights.count() > 0)
}

/// One weight's update: what it needs beside its buffers.
struct WeightStep<T> {
    rule: Rule,
    lr: T,
    step: u64,
    /// Keras' decoupled weight decay of the rules other than AdamW.
    weight_decay: Option<f64>,
    /// `use_ema`, when the weight has its average slot.
    ema: Option<Ema>,
    gr: Grad<T>,
    /// The weight's regularizer, its gradient folded into the update ([`super::fold`]).
    penalty: Option<Regularizer>,
}

impl<T: Element> WeightStep<T> {
    /// Decay, the rule's update, then `use_ema`'s, on the weight `w` with its gradient `g`
    /// (values and shape), rule slots `s` and average; the penalty's gradient folded in: by
    /// the vectorised kernels themselves (SGD, Adam(W), RMSprop, when no decay pass comes
    /// first), else piece by piece ([`super::fold`]).
    fn run(&self, w: &mut [T], g: (&[T], &[usize]), s: &mut [&mut [T]], average: Option<&mut [T]>) {
        match self.penalty {
            None => self.run_with(w, g, s, average, None),
            Some(r) if self.kernel_folds(s.len()) => self.run_with(w, g, s, average, Some(r.terms(1.0))),
            Some(r) => super::fold::fold_update(w, g.0, s, average, r.total_gradient(1.0), |w, g, s, a| {
                self.run_with(w, (g, &[]), s, a, None)
            }),
        }
    }

    /// Whether this rule's kernel adds the penalty's gradient itself: SGD, Adam and AdamW
    /// (without amsgrad: `slots` = 2) and RMSprop, with no decay pass before the update (the
    /// gradient is taken at the weight before it).
    fn kernel_folds(&self, slots: usize) -> bool {
        self.weight_decay.is_none()
            && match self.rule {
                Rule::Sgd { .. } | Rule::RmsProp { .. } => true,
                Rule::Adam { .. } | Rule::AdamW { .. } => slots == 2,
                _ => false,
            }
    }

    /// [`WeightStep::run`] with the kernel's `penalty` (when it folds one).
    fn run_with(
        &self,
        w: &mut [T],
        g: (&[T], &[usize]),
        s: &mut [&mut [T]],
        average: Option<&mut [T]>,
        penalty: Option<Penalty<T>>,
    ) {
        decay(w, self.weight_decay, self.lr);
        update(self.rule, self.lr, self.step, w, g, Grad { penalty, ..self.gr }, s);
        if let (Some(a), Some(ema)) = (average, self.ema) {
            ema_update(Some(ema), self.step, w, a);
        }
    }
}

/// The most slots a weight keeps (Adam with amsgrad, or RMSprop centered with momentum, and
/// `use_ema`'s average).
const MAX_SLOTS: usize = 4;

/// The weights an update walks, by index in weight order: a slice of `&mut Param`, or a
/// model's layers walked in place (no list of them is built per step).
pub(crate) trait Weights {
    /// How many weights.
    fn count(&self) -> usize;
    /// Weight `i`.
    fn weight(&self, i: usize) -> &Param;
    /// Weight `i`, to update.
    fn weight_mut(&mut self, i: usize) -> &mut Param;
}

impl Weights for [&mut Param] {
    fn count(&self) -> usize {
        self.len()
    }
    fn weight(&self, i: usize) -> &Param {
        self[i]
    }
    fn weight_mut(&mut self, i: usize) -> &mut Param {
        self[i]
    }
}

/// Each gradient against its weight's shape and dtype.
pub(super) fn check_gradients<T: Element, W: Weights + ?Sized>(weights: &W, grads: &[Tensor]) -> Result<()> {
    for (i, gr) in grads.iter().enumerate() {
        let p = weights.weight(i);
        if T::view(gr.storage()).is_none_or(|g| g.shape() != p.value.shape()) {
            return Err(Error::Shape {
                op: "Optimizer::apply".into(),
                msg: format!(
                    "gradient of shape {:?} ({}) for {} of shape {:?} ({})",
                    gr.shape(),
                    gr.dtype(),
                    p.name,
                    p.value.shape(),
                    p.value.dtype()
                ),
            });
        }
    }
    Ok(())
}

/// Whether every gradient value is finite, judged from each gradient's `Σ g²` (with a pass of
/// its own only when a sum is ±inf: finite values whose squares overflow).
fn all_finite(grads: &[Tensor], sum_squares: &[f64]) -> bool {
    sum_squares.iter().all(|s| s.is_finite())
        || (!sum_squares.iter().any(|s| s.is_nan()) && grads.iter().all(Tensor::all_finite))
}

thread_local! {
    /// What a weight holds while the optimizer has its buffer out (a shared handle: no allocation
    /// per update).
    static PLACEHOLDER: Tensor = Tensor::scalar(0.0f32);
}

/// What an update needs beside the weight and its gradient: how a raw gradient element becomes
/// the one applied (a penalty's gradient added, scaled by the norm-clipping factor, then bounded
/// by value clipping, inside the kernels), and Nadam's step constants.
#[derive(Clone, Copy)]
struct Grad<T> {
    /// The clipping factor and bound.
    clip: losskit_kernels::optim_rules::Clipping<T>,
    /// Nadam's constants of this step (computed once per step, not per weight).
    nadam: Option<losskit_kernels::optim_rules::NadamStep<T>>,
    /// A penalty whose gradient the kernel adds to each gradient element (SGD, Adam(W),
    /// RMSprop; see `WeightStep::run`).
    penalty: Option<Penalty<T>>,
}

/// Access to the typed optimizer state.
pub(super) trait SlotType: Sized {
    fn slots(s: &mut Slots) -> &mut Vec<Vec<ArrayD<Self>>>;
}

impl SlotType for f32 {
    fn slots(s: &mut Slots) -> &mut Vec<Vec<ArrayD<f32>>> {
        if !matches!(s, Slots::F32(_)) {
            *s = Slots::F32(Vec::new());
        }
        match s {
            Slots::F32(v) => v,
            _ => unreachable!("set just above"),
        }
    }
}

impl SlotType for f64 {
    fn slots(s: &mut Slots) -> &mut Vec<Vec<ArrayD<f64>>> {
        if !matches!(s, Slots::F64(_)) {
            *s = Slots::F64(Vec::new());
        }
        match s {
            Slots::F64(v) => v,
            _ => unreachable!("set just above"),
        }
    }
}

/// Keras' decoupled weight decay before an update (`wd` set: a rule other than AdamW):
/// `w ← w - (w·wd)·lr`.
fn decay<T: Element>(w: &mut [T], wd: Option<f64>, lr: T) {
    if let Some(wd) = wd {
        let wd = T::c(wd);
        w.iter_mut().for_each(|v| *v = *v - *v * wd * lr);
    }
}

/// `use_ema`'s update after the rule's (`a ← m·a + (1-m)·w` with `m` in `T`, 0 at the
/// first update), and the overwrite `w ← a` when this update's count is a multiple of
/// the frequency. `average` is the weight's last slot.
fn ema_update<T: Element>(ema: Option<Ema>, step: u64, w: &mut [T], a: &mut [T]) {
    let Some(ema) = ema else { return };
    let m = if step == 1 { T::zero() } else { T::c(ema.momentum) };
    let keep = T::one() - m;
    for (a, &w) in a.iter_mut().zip(w.iter()) {
        *a = m * *a + keep * w;
    }
    if ema.overwrite_frequency.is_some_and(|f| step.is_multiple_of(f)) {
        w.copy_from_slice(a);
    }
}

/// What `update` expects of the weight and slot buffers (`apply_typed` makes them so).
pub(super) const STANDARD: &str = "standard-layout buffers";

/// One rule's update of one weight, in place, through the vectorised kernels of
/// `losskit_kernels::optim` (SGD, Adam(W), RMSprop) or the serial ones of
/// `losskit_kernels::optim_rules` (Adagrad, Adamax, Lion, Lamb, Adadelta, Nadam).
fn update<T: Element>(
    rule: Rule,
    lr: T,
    step: u64,
    w: &mut [T],
    (gs, shape): (&[T], &[usize]),
    gr: Grad<T>,
    s: &mut [&mut [T]],
) {
    let one = T::one();
    let penalty = gr.penalty;
    match rule {
        Rule::Sgd { momentum, nesterov } => {
            let step = losskit_kernels::optim::SgdStep {
                lr,
                momentum: (!s.is_empty()).then(|| (T::c(momentum), nesterov)),
                grad_factor: gr.clip.factor,
                grad_bound: gr.clip.bound,
                penalty,
            };
            let velocity = s.first_mut().map(|m| &mut **m);
            losskit_kernels::optim::sgd_update(w, gs, velocity, step).expect("shapes checked in apply");
        }
        Rule::Adam { beta_1, beta_2, epsilon } | Rule::AdamW { beta_1, beta_2, epsilon, .. } if s.len() == 3 => {
            // amsgrad: the third slot is v̂. AdamW's decay first, as the other rules' decay.
            if let Rule::AdamW { weight_decay, .. } = rule {
                decay(w, Some(weight_decay), lr);
            }
            let (b1, b2) = (T::c(beta_1), T::c(beta_2));
            let t = T::c(step as f64);
            let alpha = lr * (one - b2.powf(t)).sqrt() / (one - b1.powf(t));
            let [m, v, v_hat] = s else { unreachable!("three slots") };
            let slots = (&mut **m, &mut **v, &mut **v_hat);
            let betas = (T::c(1.0 - beta_1), T::c(1.0 - beta_2));
            losskit_kernels::optim_rules::adam_amsgrad_update(w, gs, slots, alpha, betas, T::c(epsilon), gr.clip);
        }
        Rule::Adam { beta_1, beta_2, epsilon } | Rule::AdamW { beta_1, beta_2, epsilon, .. } => {
            // AdamW's decoupled decay `w ← w - w·wd·lr` comes first, in the same pass.
            let decay = match rule {
                Rule::AdamW { weight_decay, .. } => Some(T::c(weight_decay)),
                _ => None,
            };
            let (b1, b2) = (T::c(beta_1), T::c(beta_2));
            let t = T::c(step as f64);
            let step = losskit_kernels::optim::AdamStep {
                lr,
                alpha: lr * (one - b2.powf(t)).sqrt() / (one - b1.powf(t)),
                beta_1: b1,
                beta_2: b2,
                epsilon: T::c(epsilon),
                decay,
                grad_factor: gr.clip.factor,
                grad_bound: gr.clip.bound,
                penalty,
            };
            let (m, v) = s.split_at_mut(1);
            let (m, v) = (&mut *m[0], &mut *v[0]);
            losskit_kernels::optim::adam_update(w, gs, m, v, step).expect("shapes checked in apply");
        }
        Rule::RmsProp { rho, momentum, epsilon, centered } => {
            // Slots: the mean square, then the momentum (when μ > 0), then the average gradient
            // (when centered).
            let step = losskit_kernels::optim::RmsPropStep {
                lr,
                rho: T::c(rho),
                epsilon: T::c(epsilon),
                momentum: (momentum > 0.0).then(|| T::c(momentum)),
                centered,
                grad_factor: gr.clip.factor,
                grad_bound: gr.clip.bound,
                penalty,
            };
            let (velocity, rest) = s.split_first_mut().expect("RMSprop keeps a mean square");
            let (mom, avg) = rest.split_at_mut(usize::from(momentum > 0.0));
            let mom = mom.first_mut().map(|a| &mut **a);
            let avg = avg.first_mut().map(|a| &mut **a);
            losskit_kernels::optim::rmsprop_update(w, gs, velocity, mom, avg, step).expect("shapes checked in apply");
        }
        Rule::Adafactor { beta_2_decay, epsilon_1, epsilon_2, clip_threshold, .. } => {
            let t = T::c(step as f64);
            let a = losskit_kernels::optim_rules::Adafactor {
                rho: lr.min(one / t.sqrt()),
                beta_2_t: one - t.powf(T::c(beta_2_decay)),
                epsilon_1: T::c(epsilon_1),
                epsilon_2: T::c(epsilon_2),
                clip_threshold: T::c(clip_threshold),
            };
            let [r, c, v] = s else { unreachable!("three slots") };
            let slots = (&mut **r, &mut **c, &mut **v);
            losskit_kernels::optim_rules::adafactor_update(w, gs, shape, slots, a, gr.clip);
        }
        rule => {
            use losskit_kernels::optim_rules as rules;
            let c = gr.clip;
            let (first, rest) = s.split_first_mut().expect("one slot at least");
            let second = rest.first_mut().map(|a| &mut **a);
            match (rule, second) {
                (Rule::Adagrad { epsilon, .. }, _) => rules::adagrad_update(w, gs, first, lr, T::c(epsilon), c),
                (Rule::Lion { beta_1, beta_2 }, _) => {
                    rules::lion_update(w, gs, first, lr, T::c(beta_1), T::c(beta_2), c)
                }
                (Rule::Adamax { beta_1, beta_2, epsilon }, Some(u)) => {
                    let betas = (T::c(1.0 - beta_1), T::c(beta_1).powf(T::c(step as f64)), T::c(beta_2));
                    rules::adamax_update(w, gs, first, u, lr, betas, T::c(epsilon), c)
                }
                (Rule::Lamb { beta_1, beta_2, epsilon }, Some(v)) => {
                    let t = T::c(step as f64);
                    let one_minus = (T::c(1.0 - beta_1), T::c(1.0 - beta_2));
                    let powers = (T::c(beta_1).powf(t), T::c(beta_2).powf(t));
                    rules::lamb_update(w, gs, first, v, lr, one_minus, powers, T::c(epsilon), c)
                }
                (
                    Rule::Ftrl {
                        learning_rate_power,
                        l1_regularization_strength,
                        l2_regularization_strength,
                        l2_shrinkage_regularization_strength,
                        beta,
                        ..
                    },
                    Some(z),
                ) => {
                    // As Keras: `l2 + β/(2·lr)` with the learning rate in `T`.
                    let l2 = T::c(l2_regularization_strength) + T::c(beta) / (T::c(2.0) * lr);
                    let f = rules::Ftrl {
                        neg_lr_power: T::c(-learning_rate_power),
                        l1: T::c(l1_regularization_strength),
                        two_l2: T::c(2.0) * l2,
                        two_shrinkage: T::c(2.0 * l2_shrinkage_regularization_strength),
                    };
                    rules::ftrl_update(w, gs, first, z, lr, f, c)
                }
                (Rule::Nadam { .. }, Some(v)) => {
                    rules::nadam_update(w, gs, first, v, lr, gr.nadam.expect("computed for Nadam"), c)
                }
                (Rule::Adadelta { rho, epsilon }, Some(d)) => {
                    rules::adadelta_update(w, gs, first, d, lr, (T::c(rho), T::c(1.0 - rho)), T::c(epsilon), c)
                }
                _ => unreachable!("slots checked in apply"),
            }
        }
    }
}
