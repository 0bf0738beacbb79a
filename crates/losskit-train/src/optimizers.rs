//! Optimizers with Keras 3's update rules and defaults: SGD (momentum, Nesterov), Adam,
//! AdamW, RMSprop, Adagrad, Adamax, Lion, Lamb, Ftrl, Adadelta, Nadam, Adafactor; each with
//! `clipnorm`, `clipvalue` or `global_clipnorm`, `weight_decay` and `use_ema`.

use crate::layers::Param;
use crate::schedules::LearningRateSchedule;
use losskit::{Error, Result, Tensor};
use losskit_tensor::Element;
use ndarray::{ArrayD, ArrayViewD};

/// Which update rule, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Rule {
    /// `m ← μ·m - lr·g; w ← w + m` (Nesterov: `w ← w + μ·m - lr·g`); plain `w ← w - lr·g` when `μ = 0`.
    Sgd {
        /// `μ` (Keras default 0).
        momentum: f64,
        /// Nesterov momentum (default false).
        nesterov: bool,
    },
    /// Adam: `m ← m + (g - m)(1-β₁)`, `v ← v + (g² - v)(1-β₂)`,
    /// `w ← w - lr·√(1-β₂ᵗ)/(1-β₁ᵗ) · m/(√v + ε)`.
    Adam {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// AdamW: `w ← w - w·wd·lr` (decoupled weight decay), then Adam.
    AdamW {
        /// Weight decay (0.004).
        weight_decay: f64,
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// RMSprop: `v ← ρv + (1-ρ)g²`, `w ← w - lr·g/√(v + ε)` (centered: `v - ḡ² + ε`), optional momentum.
    RmsProp {
        /// `ρ` (0.9).
        rho: f64,
        /// Momentum (0).
        momentum: f64,
        /// `ε` (1e-7).
        epsilon: f64,
        /// Centered variant (false).
        centered: bool,
    },
    /// Adagrad: `a ← a + g²` (from `initial_accumulator_value`), `w ← w - lr·g/√(a + ε)`.
    Adagrad {
        /// The accumulators' start (0.1).
        initial_accumulator_value: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// Adamax: `m ← m + (g - m)(1-β₁)`, `u ← max(β₂u, |g|)`, `w ← w - lr·m/((1-β₁ᵗ)(u + ε))`.
    Adamax {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// Lamb (Adam's direction `u` scaled per weight by the trust ratio): `w ← w - (‖w‖/‖u‖)·lr·u`
    /// with `u = m̂/(√v̂ + ε)` (the ratio 1 when a norm is 0).
    Lamb {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// FTRL-proximal (Keras' `Ftrl`): an accumulator `a` and a linear term `z` per weight,
    /// `w ← (clip(z, ±l1) - z)/(a^(-lr_power)/lr + 2·l2)` (see `losskit_kernels::optim_rules`).
    Ftrl {
        /// `learning_rate_power` (-0.5).
        learning_rate_power: f64,
        /// The accumulators' start (0.1).
        initial_accumulator_value: f64,
        /// `l1_regularization_strength` (0).
        l1_regularization_strength: f64,
        /// `l2_regularization_strength` (0).
        l2_regularization_strength: f64,
        /// `l2_shrinkage_regularization_strength` (0).
        l2_shrinkage_regularization_strength: f64,
        /// `beta` (0).
        beta: f64,
    },
    /// Lion: `w ← w - lr·sign(β₁m + (1-β₁)g)`, `m ← β₂m + (1-β₂)g`.
    Lion {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.99).
        beta_2: f64,
    },
    /// Nadam (Adam with Nesterov momentum, Keras' form): `m`, `v` as Adam; with
    /// `u_t = β₁(1 - ½·0.96ᵗ)` and `Π_t = u_1⋯u_t`, `m̂ = u_{t+1}m/(1 - Π_t u_{t+1}) +
    /// (1 - u_t)g/(1 - Π_t)`, `w ← w - lr·m̂/(√(v/(1-β₂ᵗ)) + ε)`.
    Nadam {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// Adafactor (Keras' form): factored second moments `r` (rows), `c` (columns) of a weight's
    /// last two axes (`v = (r/mean r)·c`; a weight of rank < 2 keeps a full `v`),
    /// `w ← w - max(ε₂, rms(w))·min(lr, 1/√t) · u/max(1, rms(u)/d)` with `u = g/√v` (see
    /// `losskit_kernels::optim_rules::adafactor_update`).
    Adafactor {
        /// `beta_2_decay` (-0.8): `β₂ₜ = 1 - t^beta_2_decay`.
        beta_2_decay: f64,
        /// `epsilon_1` (1e-30), added to `g²`.
        epsilon_1: f64,
        /// `epsilon_2` (1e-3), the least weight RMS.
        epsilon_2: f64,
        /// `clip_threshold` `d` (1).
        clip_threshold: f64,
        /// `relative_step` (true): Keras caps the learning rate at `1/√t`, which its update
        /// does in any case; kept for the config.
        relative_step: bool,
    },
    /// Adadelta: `a ← ρa + (1-ρ)g²`, `Δ = -√(d + ε)·g/√(a + ε)`, `d ← ρd + (1-ρ)Δ²`, `w ← w + lr·Δ`.
    Adadelta {
        /// `ρ` (0.95).
        rho: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
}

impl Rule {
    /// Keras' `Adafactor` defaults.
    pub const ADAFACTOR_DEFAULTS: Rule = Rule::Adafactor {
        beta_2_decay: -0.8,
        epsilon_1: 1e-30,
        epsilon_2: 1e-3,
        clip_threshold: 1.0,
        relative_step: true,
    };

    /// Keras' `Ftrl` defaults.
    pub const FTRL_DEFAULTS: Rule = Rule::Ftrl {
        learning_rate_power: -0.5,
        initial_accumulator_value: 0.1,
        l1_regularization_strength: 0.0,
        l2_regularization_strength: 0.0,
        l2_shrinkage_regularization_strength: 0.0,
        beta: 0.0,
    };
}

/// How gradients are clipped before the update (at most one, as Keras enforces).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clip {
    /// No clipping.
    None,
    /// Each gradient tensor rescaled to L2 norm `≤ c`.
    Norm(f64),
    /// All gradients rescaled together so their global L2 norm is `≤ c`.
    GlobalNorm(f64),
    /// Each element clipped to `[-c, c]`.
    Value(f64),
}

/// Keras' `use_ema`: an exponential moving average of every weight, kept by the optimizer
/// after each update (`a ← m·a + (1-m)·w`, `m` = 0 at the first update so that `a` starts at
/// the weight), copied into the weights every `overwrite_frequency` updates when set, and at
/// the end of `fit` ([`Optimizer::finalize_variable_values`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ema {
    /// `ema_momentum` `m` (Keras' default 0.99), in `[0, 1]`.
    pub momentum: f64,
    /// `ema_overwrite_frequency`: the weights take the average after every this many updates
    /// (Keras' default `None`: only at the end of training).
    pub overwrite_frequency: Option<u64>,
}

#[derive(Debug, Clone, Default)]
enum Slots {
    #[default]
    Empty,
    F32(Vec<Vec<ArrayD<f32>>>),
    F64(Vec<Vec<ArrayD<f64>>>),
}

/// An optimizer: an update rule, a learning rate, clipping, and its per-weight state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    rule: Rule,
    learning_rate: f64,
    /// A schedule the learning rate follows instead of `learning_rate`.
    schedule: Option<LearningRateSchedule>,
    /// Keras' decoupled `weight_decay` of the rules other than AdamW (which keeps its own).
    weight_decay: Option<f64>,
    /// Adam's and AdamW's `amsgrad`: a third slot, the running maximum of `v`.
    amsgrad: bool,
    /// Keras' `use_ema`: the average is each weight's last slot.
    ema: Option<Ema>,
    /// Nadam's running product `Π u` and the step it was taken at (a cache: it follows from
    /// the step alone).
    nadam_product: Option<(u64, f64)>,
    clip: Clip,
    iterations: u64,
    slots: Slots,
}

/// What [`Optimizer::apply_checked`] measured and did.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientCheck {
    /// `Σ g²` of each gradient (before clipping), in weight order: NaN or ±inf when the
    /// gradient holds a non-finite value (or its squares overflow).
    pub sum_squares: Vec<f64>,
    /// Whether every gradient value is finite.
    pub finite: bool,
    /// Whether the update was applied (always, unless finiteness was required and missing).
    pub applied: bool,
}

fn invalid(param: &str, value: f64, expected: &str) -> Error {
    Error::InvalidParameter {
        loss: "Optimizer".into(),
        param: param.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

impl Optimizer {
    fn with_rule(rule: Rule, learning_rate: f64) -> Result<Optimizer> {
        if !(learning_rate.is_finite() && learning_rate >= 0.0) {
            return Err(invalid("learning_rate", learning_rate, "a finite number >= 0"));
        }
        Ok(Optimizer {
            rule,
            learning_rate,
            schedule: None,
            weight_decay: None,
            amsgrad: false,
            ema: None,
            nadam_product: None,
            clip: Clip::None,
            iterations: 0,
            slots: Slots::Empty,
        })
    }

    /// SGD with Keras' defaults (momentum 0).
    pub fn sgd(learning_rate: f64) -> Result<Optimizer> {
        Self::with_rule(Rule::Sgd { momentum: 0.0, nesterov: false }, learning_rate)
    }
    /// SGD with momentum `μ ∈ [0, 1]` and optionally Nesterov.
    pub fn sgd_momentum(learning_rate: f64, momentum: f64, nesterov: bool) -> Result<Optimizer> {
        if !(0.0..=1.0).contains(&momentum) {
            return Err(invalid("momentum", momentum, "a number in [0, 1]"));
        }
        Self::with_rule(Rule::Sgd { momentum, nesterov }, learning_rate)
    }
    /// Adam with Keras' defaults (β₁ 0.9, β₂ 0.999, ε 1e-7).
    pub fn adam(learning_rate: f64) -> Result<Optimizer> {
        Self::with_rule(Rule::Adam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, learning_rate)
    }
    /// AdamW with Keras' defaults (weight decay 0.004).
    pub fn adamw(learning_rate: f64, weight_decay: f64) -> Result<Optimizer> {
        Self::with_rule(Rule::AdamW { weight_decay, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, learning_rate)
    }
    /// RMSprop with Keras' defaults (ρ 0.9, no momentum, ε 1e-7, not centered).
    pub fn rmsprop(learning_rate: f64) -> Result<Optimizer> {
        Self::with_rule(Rule::RmsProp { rho: 0.9, momentum: 0.0, epsilon: 1e-7, centered: false }, learning_rate)
    }
    /// Any rule.
    pub fn new(rule: Rule, learning_rate: f64) -> Result<Optimizer> {
        Self::with_rule(rule, learning_rate)
    }

    /// An optimizer from Keras' serialized form (`keras.optimizers.serialize`, as in a model
    /// file's `compile_config`): `{"class_name": "Adafactor", "config": {...}}` with its
    /// hyper-parameters, clipping, `weight_decay`, `amsgrad`, `use_ema` and a learning-rate
    /// schedule, or a name as [`Optimizer::parse`]. Keras' defaults fill what is missing.
    pub fn from_keras(config: &serde_json::Value) -> Result<Optimizer> {
        crate::keras_model::parse_optimizer(config).map_err(Error::Config)
    }

    /// An optimizer by Keras name with Keras' defaults: `"sgd"` (lr 0.01), `"adam"` (0.001),
    /// `"adamw"` (0.001), `"rmsprop"` (0.001). Case-insensitive.
    pub fn parse(name: &str) -> Result<Optimizer> {
        match name.to_lowercase().as_str() {
            "sgd" => Self::sgd(0.01),
            "adam" => Self::adam(0.001),
            "adamw" => Self::adamw(0.001, 0.004),
            "rmsprop" => Self::rmsprop(0.001),
            "adagrad" => Self::new(Rule::Adagrad { initial_accumulator_value: 0.1, epsilon: 1e-7 }, 0.001),
            "adamax" => Self::new(Rule::Adamax { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, 0.001),
            "lion" => Self::new(Rule::Lion { beta_1: 0.9, beta_2: 0.99 }, 0.001),
            "lamb" => Self::new(Rule::Lamb { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, 0.001),
            "adafactor" => Self::new(Rule::ADAFACTOR_DEFAULTS, 0.001),
            "ftrl" => Self::new(Rule::FTRL_DEFAULTS, 0.001),
            "adadelta" => Self::new(Rule::Adadelta { rho: 0.95, epsilon: 1e-7 }, 0.001),
            "nadam" => Self::new(Rule::Nadam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, 0.001),
            _ => Err(Error::UnknownName {
                kind: "optimizer".into(),
                name: name.into(),
                suggestions: "sgd, adam, adamw, rmsprop, adagrad, adamax, lion, lamb, ftrl, adadelta, nadam, adafactor"
                    .into(),
            }),
        }
    }

    /// Sets the gradient clipping.
    pub fn with_clip(mut self, clip: Clip) -> Result<Optimizer> {
        match clip {
            Clip::Norm(c) | Clip::GlobalNorm(c) | Clip::Value(c) if !(c.is_finite() && c > 0.0) => {
                return Err(invalid("clip", c, "a finite number > 0"))
            }
            _ => {}
        }
        self.clip = clip;
        Ok(self)
    }
    /// `clipnorm`: each gradient rescaled to norm `≤ c`.
    pub fn clipnorm(self, c: f64) -> Result<Optimizer> {
        self.with_clip(Clip::Norm(c))
    }
    /// `clipvalue`: each element clipped to `[-c, c]`.
    pub fn clipvalue(self, c: f64) -> Result<Optimizer> {
        self.with_clip(Clip::Value(c))
    }
    /// `global_clipnorm`: all gradients rescaled so their global norm is `≤ c`.
    pub fn global_clipnorm(self, c: f64) -> Result<Optimizer> {
        self.with_clip(Clip::GlobalNorm(c))
    }

    /// The current learning rate: the schedule's at the current step when there is one
    /// (Keras' `optimizer.learning_rate`).
    pub fn learning_rate(&self) -> f64 {
        match &self.schedule {
            Some(s) => s.at(self.iterations),
            None => self.learning_rate,
        }
    }
    /// Changes the learning rate (schedulers use this). An error when the rate follows a
    /// schedule (as in Keras).
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        if let Some(s) = &self.schedule {
            return Err(Error::Config(format!(
                "the learning rate follows a {} schedule: it cannot be set (ReduceLROnPlateau, --lr)",
                s.class_name()
            )));
        }
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(invalid("learning_rate", lr, "a finite number >= 0"));
        }
        self.learning_rate = lr;
        Ok(())
    }
    /// The learning rate follows `schedule` (Keras' `learning_rate=keras.optimizers.schedules.…`):
    /// the update at step `t` (from 0) uses `schedule.at(t)`.
    pub fn with_schedule(mut self, schedule: LearningRateSchedule) -> Optimizer {
        self.schedule = Some(schedule);
        self
    }
    /// Keras' `weight_decay` (decoupled, for every rule): before each update, every weight
    /// becomes `w - (w·wd)·lr`. AdamW's is its rule's; for the others this sets it. An error
    /// when `wd` is negative or not finite.
    pub fn with_weight_decay(mut self, wd: f64) -> Result<Optimizer> {
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(invalid("weight_decay", wd, "a finite number >= 0"));
        }
        match &mut self.rule {
            Rule::AdamW { weight_decay, .. } => *weight_decay = wd,
            _ => self.weight_decay = (wd != 0.0).then_some(wd),
        }
        Ok(self)
    }
    /// Keras' `amsgrad` for Adam and AdamW: the update divides by `√v̂ + ε` with `v̂` the running
    /// maximum of `v` (a third slot per weight). An error for the other rules.
    pub fn with_amsgrad(mut self, on: bool) -> Result<Optimizer> {
        if on && !matches!(self.rule, Rule::Adam { .. } | Rule::AdamW { .. }) {
            return Err(Error::Config(format!("amsgrad is an option of Adam and AdamW, not of {:?}", self.rule)));
        }
        self.amsgrad = on;
        Ok(self)
    }
    /// Keras' `use_ema=True` with `ema_momentum` and `ema_overwrite_frequency` (see [`Ema`]);
    /// `None` turns it off. An error when the momentum is outside `[0, 1]` or the frequency 0.
    pub fn with_ema(mut self, ema: Option<Ema>) -> Result<Optimizer> {
        if let Some(e) = ema {
            if !(0.0..=1.0).contains(&e.momentum) {
                return Err(invalid("ema_momentum", e.momentum, "a number in [0, 1]"));
            }
            if e.overwrite_frequency == Some(0) {
                return Err(invalid("ema_overwrite_frequency", 0.0, "an integer >= 1 or None"));
            }
        }
        self.ema = ema;
        Ok(self)
    }

    /// Keras' `use_ema` settings, when on.
    pub fn ema(&self) -> Option<Ema> {
        self.ema
    }

    /// Keras' `finalize_variable_values` at the end of `fit`: with `use_ema`, each weight takes
    /// its moving average (nothing before the first update, or without `use_ema`).
    pub fn finalize_variable_values(&self, params: &mut [&mut Param]) -> Result<()> {
        if self.ema.is_none() {
            return Ok(());
        }
        // Only the averages are copied out of the slots.
        let last = self.rule_slots();
        for (i, p) in params.iter_mut().enumerate() {
            let average = match &self.slots {
                Slots::Empty => None,
                Slots::F32(v) => v.get(i).and_then(|s| s.get(last)).map(|a| Tensor::from_array(a.clone())),
                Slots::F64(v) => v.get(i).and_then(|s| s.get(last)).map(|a| Tensor::from_array(a.clone())),
            };
            if let Some(average) = average {
                p.value = average.requires_grad();
            }
        }
        Ok(())
    }

    /// Whether Adam's `amsgrad` is on.
    pub fn amsgrad(&self) -> bool {
        self.amsgrad
    }
    /// The decoupled weight decay of a rule other than AdamW, if any.
    pub fn weight_decay(&self) -> Option<f64> {
        self.weight_decay
    }
    /// The schedule the learning rate follows, if any.
    pub fn schedule(&self) -> Option<&LearningRateSchedule> {
        self.schedule.as_ref()
    }
    /// The update rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }
    /// The clipping.
    pub fn clip(&self) -> Clip {
        self.clip
    }
    /// Updates applied so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The state that training changes: the update count, the learning rate (callbacks may
    /// have changed it) and the slots (per weight, in [`Model::params`](crate::Model::params)
    /// order: SGD's momentum `m`; Adam's `m`, `v`; RMSprop's `v`, then its momentum and mean
    /// gradient when used). Empty slots before the first update.
    pub fn state(&self) -> OptimizerState {
        let slots = match &self.slots {
            Slots::Empty => Vec::new(),
            Slots::F32(v) => v.iter().map(|s| s.iter().map(|a| Tensor::from_array(a.clone())).collect()).collect(),
            Slots::F64(v) => v.iter().map(|s| s.iter().map(|a| Tensor::from_array(a.clone())).collect()).collect(),
        };
        OptimizerState { iterations: self.iterations, learning_rate: self.learning_rate, slots }
    }

    /// Puts back a [`Optimizer::state`] (as [`BackupAndRestore`](crate::BackupAndRestore)
    /// does). Each weight must have as many slots as this rule keeps, all of one dtype.
    pub fn set_state(&mut self, state: OptimizerState) -> Result<()> {
        let needed = self.slots_needed();
        if let Some(bad) = state.slots.iter().find(|s| s.len() != needed) {
            return Err(Error::Config(format!(
                "optimizer state: {} slots per weight, but {:?} keeps {needed}",
                bad.len(),
                self.rule
            )));
        }
        let dtypes: Vec<losskit::DType> = state.slots.iter().flatten().map(Tensor::dtype).collect();
        self.slots = match dtypes.first() {
            None => Slots::Empty,
            Some(d) if dtypes.iter().any(|x| x != d) => {
                return Err(Error::Config("optimizer state: slots of mixed dtypes".into()))
            }
            Some(losskit::DType::F32) => Slots::F32(arrays(&state.slots)?),
            Some(losskit::DType::F64) => Slots::F64(arrays(&state.slots)?),
        };
        if self.schedule.is_none() {
            self.set_learning_rate(state.learning_rate)?;
        }
        self.iterations = state.iterations;
        Ok(())
    }

    /// Nadam's constants at `step`, the running product carried from the last step when it
    /// was the one before (else computed from the start, as after `set_state`).
    fn nadam_constants<T: Element>(
        &mut self,
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
        step: u64,
    ) -> losskit_kernels::optim_rules::NadamStep<T> {
        let previous = match self.nadam_product {
            Some((t, p)) if t + 1 == step => Some(T::c(p)),
            _ => None,
        };
        let s = nadam_step::<T>(beta_1, beta_2, epsilon, step, previous);
        self.nadam_product = s.u_product_t.to_f64().map(|p| (step, p));
        s
    }

    /// Slots per weight: the rule's, then the moving average with `use_ema`.
    pub(crate) fn slots_needed(&self) -> usize {
        self.rule_slots() + usize::from(self.ema.is_some())
    }

    /// Slots per weight for this rule (without `use_ema`'s average).
    pub(crate) fn rule_slots(&self) -> usize {
        match self.rule {
            Rule::Sgd { momentum, .. } => usize::from(momentum != 0.0),
            Rule::Adam { .. } | Rule::AdamW { .. } => 2 + usize::from(self.amsgrad),
            Rule::RmsProp { momentum, centered, .. } => 1 + usize::from(momentum > 0.0) + usize::from(centered),
            Rule::Adagrad { .. } | Rule::Lion { .. } => 1,
            Rule::Adamax { .. }
            | Rule::Adadelta { .. }
            | Rule::Nadam { .. }
            | Rule::Lamb { .. }
            | Rule::Ftrl { .. } => 2,
            Rule::Adafactor { .. } => 3,
        }
    }

    /// The shape of slot `k` of a weight of shape `weight`: the weight's own, except
    /// Adafactor's factored moments `r` (`weight[..-1]`) and `c` (`weight[..-2] ++ [last]`),
    /// which are scalars for a weight of rank < 2 (as Keras keeps them).
    pub(crate) fn slot_shape(&self, k: usize, weight: &[usize]) -> Vec<usize> {
        slot_shape(self.rule, k, weight)
    }

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
        if weights.count() != grads.len() {
            return Err(Error::Shape {
                op: "Optimizer::apply".into(),
                msg: format!("{} weights but {} gradients", weights.count(), grads.len()),
            });
        }
        if weights.count() == 0 {
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
        let needs_norms = matches!(self.clip, Clip::Norm(_) | Clip::GlobalNorm(_));
        if check.is_some() || needs_norms {
            sum_squares.extend(grads.iter().map(Tensor::sum_of_squares));
        }
        let (finite, applied) = match check {
            Some(require_finite) => {
                let finite = all_finite(grads, sum_squares);
                (finite, finite || !require_finite)
            }
            None => (true, true),
        };
        if !applied {
            return Ok((finite, applied));
        }
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
        let (ema, rule_slots) = (self.ema, self.rule_slots());
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
            let gr = Grad { clip: losskit_kernels::optim_rules::Clipping { factor, bound }, nadam };
            for slot in s.iter_mut().filter(|a| !a.is_standard_layout()) {
                *slot = slot.as_standard_layout().into_owned();
            }
            let p = weights.weight_mut(i);
            let (s, average) = s.split_at_mut(rule_slots);
            // In place when the weight's buffer is this handle's alone (the graph is gone).
            if let Some(w) = p.value.values_mut::<T>() {
                decay(w, self.weight_decay, lr);
                update(rule, lr, step, w, g.view(), gr, s);
                if let Some(a) = average.first_mut() {
                    ema_update(ema, step, w, a);
                }
                continue;
            }
            let value = std::mem::replace(&mut p.value, PLACEHOLDER.with(Tensor::clone));
            let mut w = T::take(value.into_storage()).expect("dtype checked above");
            // The update runs on contiguous buffers (a strided weight, e.g. one set from a
            // transposed tensor, is made standard once here).
            if !w.is_standard_layout() {
                w = w.as_standard_layout().into_owned().into_shared();
            }
            let w_slice = w.as_slice_mut().expect(STANDARD);
            decay(w_slice, self.weight_decay, lr);
            update(rule, lr, step, w_slice, g.view(), gr, s);
            if let Some(a) = average.first_mut() {
                ema_update(ema, step, w_slice, a);
            }
            p.value = Tensor::from_storage(T::wrap_shared(w)).requires_grad();
        }
        self.iterations = step;
        Ok((finite, applied))
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
fn check_gradients<T: Element, W: Weights + ?Sized>(weights: &W, grads: &[Tensor]) -> Result<()> {
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

/// An optimizer's training state ([`Optimizer::state`]): what a backup keeps so that a resumed
/// run continues with the same moments and bias corrections.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    /// Updates applied so far (Keras' `optimizer.iterations`).
    pub iterations: u64,
    /// The current learning rate.
    pub learning_rate: f64,
    /// Per weight, its slot tensors (same shape as the weight).
    pub slots: Vec<Vec<Tensor>>,
}

/// The slot tensors as arrays of one element type.
fn arrays<T: Element>(slots: &[Vec<Tensor>]) -> Result<Vec<Vec<ArrayD<T>>>> {
    slots
        .iter()
        .map(|s| {
            s.iter()
                .map(|t| {
                    ArrayD::from_shape_vec(t.shape().to_vec(), t.to_vec::<T>())
                        .map_err(|e| Error::Config(format!("optimizer state: {e}")))
                })
                .collect()
        })
        .collect()
}

/// What an update needs beside the weight and its gradient: how a raw gradient element becomes
/// the one applied (scaled by the norm-clipping factor, then bounded by value clipping, inside
/// the kernels), and Nadam's step constants.
#[derive(Clone, Copy)]
struct Grad<T> {
    /// The clipping factor and bound.
    clip: losskit_kernels::optim_rules::Clipping<T>,
    /// Nadam's constants of this step (computed once per step, not per weight).
    nadam: Option<losskit_kernels::optim_rules::NadamStep<T>>,
}

/// Access to the typed optimizer state.
trait SlotType: Sized {
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

/// Nadam's constants at step `t` (from 1), in `T` as Keras computes them; `Π_t` is the product
/// Keras keeps in a variable, from `previous` (`Π_{t-1}`) when given, else computed again from
/// the start (the same operations in the same order: `Π ← Π·β₁·(1 - ½·0.96ᵏ)`, `k = 1..t`).
pub(crate) fn nadam_step<T: Element>(
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    t: u64,
    previous: Option<T>,
) -> losskit_kernels::optim_rules::NadamStep<T> {
    let one = T::one();
    let (b1, b2, decay, half) = (T::c(beta_1), T::c(beta_2), T::c(0.96), T::c(0.5));
    let factor = |k: u64| one - half * decay.powf(T::c(k as f64));
    let u = |k: u64| b1 * factor(k);
    // `Π_{t-1}` carried over, or built from 1 (Keras' initial value) step by step.
    let product = match previous {
        Some(p) if t >= 1 => p * b1 * factor(t),
        _ => (1..=t).fold(one, |p, k| p * b1 * factor(k)),
    };
    let u_t_1 = u(t + 1);
    losskit_kernels::optim_rules::NadamStep {
        u_t: u(t),
        u_t_1,
        u_product_t: product,
        u_product_t_1: product * u_t_1,
        one_minus_beta_1: one - b1,
        one_minus_beta_2: one - b2,
        beta_2_power: b2.powf(T::c(t as f64)),
        epsilon: T::c(epsilon),
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
fn ema_update<T: Element>(ema: Option<Ema>, step: u64, w: &mut [T], average: &mut ArrayD<T>) {
    let Some(ema) = ema else { return };
    let m = if step == 1 { T::zero() } else { T::c(ema.momentum) };
    let keep = T::one() - m;
    let a = average.as_slice_mut().expect(STANDARD);
    for (a, &w) in a.iter_mut().zip(w.iter()) {
        *a = m * *a + keep * w;
    }
    if ema.overwrite_frequency.is_some_and(|f| step.is_multiple_of(f)) {
        w.copy_from_slice(a);
    }
}

/// [`Optimizer::slot_shape`] of `rule`.
fn slot_shape(rule: Rule, k: usize, weight: &[usize]) -> Vec<usize> {
    let (head, tail) = slot_dims(rule, k, weight);
    [head, tail].concat()
}

/// Whether `shape` is [`slot_shape`]`(rule, k, weight)` (checked every step: no allocation).
fn slot_fits(rule: Rule, k: usize, weight: &[usize], shape: &[usize]) -> bool {
    let (head, tail) = slot_dims(rule, k, weight);
    shape.len() == head.len() + tail.len() && shape[..head.len()] == *head && shape[head.len()..] == *tail
}

/// Slot `k`'s shape for a weight of shape `weight`, as two pieces of it to join: the weight's
/// own, except Adafactor's `r` (`weight[..-1]`) and `c` (`weight[..-2] ++ [last]`), scalars for
/// a weight of rank < 2.
fn slot_dims(rule: Rule, k: usize, weight: &[usize]) -> (&[usize], &[usize]) {
    let rank = weight.len();
    match (rule, k) {
        (Rule::Adafactor { .. }, 0 | 1) if rank < 2 => (&[], &[]),
        (Rule::Adafactor { .. }, 0) => (&weight[..rank - 1], &[]),
        (Rule::Adafactor { .. }, 1) => (&weight[..rank - 2], &weight[rank - 1..]),
        _ => (weight, &[]),
    }
}

/// What `update` expects of the weight and slot buffers (`apply_typed` makes them so).
const STANDARD: &str = "standard-layout buffers";

/// One rule's update of one weight, in place, through the vectorised kernels of
/// `losskit_kernels::optim` (SGD, Adam(W), RMSprop) or the serial ones of
/// `losskit_kernels::optim_rules` (Adagrad, Adamax, Lion, Lamb, Adadelta, Nadam).
fn update<T: Element>(
    rule: Rule,
    lr: T,
    step: u64,
    w: &mut [T],
    g: ArrayViewD<'_, T>,
    gr: Grad<T>,
    s: &mut [ArrayD<T>],
) {
    let one = T::one();
    // Borrowed when already contiguous (the usual case); the kernels take slices.
    let g = g.as_standard_layout();
    let gs = g.as_slice().expect("standard layout");
    match rule {
        Rule::Sgd { momentum, nesterov } => {
            let step = losskit_kernels::optim::SgdStep {
                lr,
                momentum: (!s.is_empty()).then(|| (T::c(momentum), nesterov)),
                grad_factor: gr.clip.factor,
                grad_bound: gr.clip.bound,
            };
            let velocity = s.first_mut().map(|m| m.as_slice_mut().expect(STANDARD));
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
            let slots = (
                m.as_slice_mut().expect(STANDARD),
                v.as_slice_mut().expect(STANDARD),
                v_hat.as_slice_mut().expect(STANDARD),
            );
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
            };
            let (m, v) = s.split_at_mut(1);
            let (m, v) = (m[0].as_slice_mut().expect(STANDARD), v[0].as_slice_mut().expect(STANDARD));
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
            };
            let (velocity, rest) = s.split_first_mut().expect("RMSprop keeps a mean square");
            let (mom, avg) = rest.split_at_mut(usize::from(momentum > 0.0));
            let mom = mom.first_mut().map(|a| a.as_slice_mut().expect(STANDARD));
            let avg = avg.first_mut().map(|a| a.as_slice_mut().expect(STANDARD));
            losskit_kernels::optim::rmsprop_update(w, gs, velocity.as_slice_mut().expect(STANDARD), mom, avg, step)
                .expect("shapes checked in apply");
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
            let slots = (
                r.as_slice_mut().expect(STANDARD),
                c.as_slice_mut().expect(STANDARD),
                v.as_slice_mut().expect(STANDARD),
            );
            losskit_kernels::optim_rules::adafactor_update(w, gs, g.shape(), slots, a, gr.clip);
        }
        rule => {
            use losskit_kernels::optim_rules as rules;
            let c = gr.clip;
            let (first, rest) = s.split_first_mut().expect("one slot at least");
            let first = first.as_slice_mut().expect(STANDARD);
            let second = rest.first_mut().map(|a| a.as_slice_mut().expect(STANDARD));
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
