//! Regularizers folded into the optimizer's update ([`Optimizer::apply_folded`]): each
//! regularized weight and its gradient are read once for both the penalty and the norm of the
//! total gradient `t = g + ∂penalty/∂w`; the update then adds the penalty's gradient as it
//! reads each gradient element, so the gradient buffer is never written. The vectorised SGD,
//! Adam(W) and RMSprop kernels add it themselves (`losskit_kernels::optim::Penalty`); for the
//! other element-wise rules [`fold_update`] makes each piece's `t` on the stack from the
//! weight's values before the update changes them and runs the rule on the piece. The values
//! are those of adding the penalty's gradient into the buffer first (element by element, the
//! pieces starting at multiples of every kernel's lane count).

use super::apply::{check_gradients, same_count, SlotType, Weights, STANDARD};
use super::{Optimizer, Rule};
use crate::regularizers::Regularizer;
use losskit::{Result, Tensor};
use losskit_tensor::Element;

impl Optimizer {
    /// [`Optimizer::apply_to`] for a model whose weights carry regularizers (`penalties`, in
    /// weight order), their gradients not yet in `grads`: each regularized weight and its
    /// gradient are read once for both its penalty and the `Σ t²` of its total gradient
    /// `t = g + ∂penalty/∂w` (always measured here), `loss` turns the penalties (weight order,
    /// 0 where none) into the step's loss, and the update adds each penalty's gradient to the
    /// gradient as it streams the weight ([`fold`](super::fold)): the gradient buffers are
    /// neither written nor read again. The same bits as adding the penalties' gradients first.
    /// When the step is refused (`check` given and the loss or a gradient not finite) or the
    /// rule needs whole gradients (Lamb, Adafactor), the penalties' gradients are added into
    /// `grads` first, as the diagnosis reads them. Returns `(loss, applied)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_folded<W: Weights + ?Sized>(
        &mut self,
        weights: &mut W,
        grads: &mut [Tensor],
        penalties: &[Option<Regularizer>],
        check: Option<bool>,
        sum_squares: &mut Vec<f64>,
        values: &mut Vec<f64>,
        loss: impl FnOnce(&[f64]) -> f64,
    ) -> Result<(f64, bool)> {
        sum_squares.clear();
        values.clear();
        if !same_count(weights, grads)? {
            return Ok((loss(values), true));
        }
        match weights.weight(0).value.dtype() {
            losskit::DType::F32 => {
                self.apply_folded_typed::<f32, W>(weights, grads, penalties, check, (sum_squares, values), loss)
            }
            losskit::DType::F64 => {
                self.apply_folded_typed::<f64, W>(weights, grads, penalties, check, (sum_squares, values), loss)
            }
        }
    }

    /// [`Optimizer::apply_folded`] in `T`: measure, judge, update.
    fn apply_folded_typed<T: Element + SlotType, W: Weights + ?Sized>(
        &mut self,
        weights: &mut W,
        grads: &mut [Tensor],
        penalties: &[Option<Regularizer>],
        check: Option<bool>,
        (sum_squares, values): (&mut Vec<f64>, &mut Vec<f64>),
        loss: impl FnOnce(&[f64]) -> f64,
    ) -> Result<(f64, bool)> {
        check_gradients::<T, W>(weights, grads)?;
        let need_norms = check.is_some() || self.needs_norms();
        measure_folded::<T, W>(weights, grads, penalties, need_norms, (sum_squares, values));
        let loss = loss(values);
        // Whether the penalties' gradients are in `grads` (else folded into the update).
        let mut added = false;
        let applied = match check {
            // The loss alone condemns the step.
            Some(_) if !loss.is_finite() => false,
            Some(require_finite) => {
                let finite = sum_squares.iter().all(|s| s.is_finite())
                    || (!sum_squares.iter().any(|s| s.is_nan()) && {
                        // Finite values whose squares overflow: look at the total gradients.
                        add_penalty_gradients::<T, W>(weights, grads, penalties);
                        added = true;
                        grads.iter().all(Tensor::all_finite)
                    });
                finite || !require_finite
            }
            None => true,
        };
        if !added && (!applied || !self.folds_penalties()) {
            add_penalty_gradients::<T, W>(weights, grads, penalties);
            added = true;
        }
        if !applied {
            return Ok((loss, false));
        }
        self.update_all::<T, W>(weights, grads, if added { &[] } else { penalties }, sum_squares)?;
        Ok((loss, true))
    }

    /// Whether this rule's update is element by element, so a penalty's gradient can be added
    /// to each gradient element as the update reads it (all but Lamb's trust ratio and
    /// Adafactor's factored moments, which need the whole gradient first).
    pub(crate) fn folds_penalties(&self) -> bool {
        !matches!(self.rule, Rule::Lamb { .. } | Rule::Adafactor { .. })
    }
}

/// Each weight's penalty (into `values`, weight order, 0 where none) and, when `need_norms`
/// (the NaN guard or norm clipping), each total gradient's `Σ t²` (into `sum_squares`): a
/// regularized weight and its gradient in one read ([`Regularizer::penalty_and_norm`]), any
/// other gradient as [`Tensor::sum_of_squares`].
fn measure_folded<T: Element, W: Weights + ?Sized>(
    weights: &W,
    grads: &[Tensor],
    penalties: &[Option<Regularizer>],
    need_norms: bool,
    (sum_squares, values): (&mut Vec<f64>, &mut Vec<f64>),
) {
    for (i, g) in grads.iter().enumerate() {
        let Some(r) = penalties.get(i).copied().flatten() else {
            values.push(0.0);
            if need_norms {
                sum_squares.push(g.sum_of_squares());
            }
            continue;
        };
        let w = T::view(weights.weight(i).value.storage()).expect("checked");
        let (w, g) = (w.as_standard_layout(), T::view(g.storage()).expect("checked").as_standard_layout());
        let (p, n) = r.penalty_and_norm(w.as_slice().expect(STANDARD), g.as_slice().expect(STANDARD));
        values.push(p.to_f64().unwrap_or(f64::NAN));
        if need_norms {
            sum_squares.push(n);
        }
    }
}

/// Adds each regularized weight's penalty gradient to its gradient ([`Regularizer::add_gradient`]).
fn add_penalty_gradients<T: Element, W: Weights + ?Sized>(
    weights: &W,
    grads: &mut [Tensor],
    penalties: &[Option<Regularizer>],
) {
    for (i, g) in grads.iter_mut().enumerate() {
        let Some(r) = penalties.get(i).copied().flatten() else { continue };
        let w = T::view(weights.weight(i).value.storage()).expect("checked");
        let w = w.as_standard_layout();
        let w = w.as_slice().expect(STANDARD);
        match g.values_mut::<T>() {
            Some(g) => r.add_gradient(w, g, 1.0),
            None => {
                // A gradient held elsewhere too, or strided: a buffer of its own first.
                let mut own = g.to_vec::<T>();
                r.add_gradient(w, &mut own, 1.0);
                *g = Tensor::from_vec(own, g.shape()).expect("the gradient's own shape");
            }
        }
    }
}

/// Values per piece: its total gradient lives on the stack (16 KiB in f32).
const PIECE: usize = 4096;
/// From this many values on, a weight's pieces are shared among the pool's threads (the rule
/// kernels' own threshold); fewer run on the calling thread.
const PARALLEL_MIN: usize = 1 << 17;
/// The most rule slots a weight keeps (Adam with amsgrad, RMSprop centered with momentum).
const MAX_RULE_SLOTS: usize = 3;

/// The update `step(w, t, slots, average)` of the weight `w` with the total gradients
/// `t = total(w, g)`, run piece by piece (in parallel for a large weight); `slots` (at most
/// three, each as long as `w`) and `average` are split with it.
pub(super) fn fold_update<T: Element>(
    w: &mut [T],
    g: &[T],
    slots: &mut [&mut [T]],
    average: Option<&mut [T]>,
    total: impl Fn(T, T) -> T + Sync,
    step: impl Fn(&mut [T], &[T], &mut [&mut [T]], Option<&mut [T]>) + Sync,
) {
    assert!(slots.len() <= MAX_RULE_SLOTS, "at most {MAX_RULE_SLOTS} rule slots");
    let mut s: [&mut [T]; MAX_RULE_SLOTS] = Default::default();
    for (to, from) in s.iter_mut().zip(slots.iter_mut()) {
        *to = std::mem::take(from);
    }
    let piece = Piece { w, g, s, k: slots.len(), average };
    run(piece, &total, &step);
}

/// A run of a weight's values and the same run of its gradient and slots.
struct Piece<'a, T> {
    w: &'a mut [T],
    g: &'a [T],
    s: [&'a mut [T]; MAX_RULE_SLOTS],
    /// How many of `s` are the weight's.
    k: usize,
    average: Option<&'a mut [T]>,
}

impl<'a, T> Piece<'a, T> {
    /// The first `mid` values, and the rest.
    fn split(self, mid: usize) -> (Piece<'a, T>, Piece<'a, T>) {
        let (w1, w2) = self.w.split_at_mut(mid);
        let (g1, g2) = self.g.split_at(mid);
        let (mut s1, mut s2): ([&mut [T]; MAX_RULE_SLOTS], [&mut [T]; MAX_RULE_SLOTS]) = Default::default();
        for (j, slot) in self.s.into_iter().enumerate().take(self.k) {
            (s1[j], s2[j]) = slot.split_at_mut(mid);
        }
        let (a1, a2) = match self.average {
            Some(a) => {
                let (x, y) = a.split_at_mut(mid);
                (Some(x), Some(y))
            }
            None => (None, None),
        };
        (Piece { w: w1, g: g1, s: s1, k: self.k, average: a1 }, Piece { w: w2, g: g2, s: s2, k: self.k, average: a2 })
    }
}

/// Halves `p` at a multiple of [`PIECE`] down to single pieces (the halves in parallel while
/// large), each updated with its total gradient made on the stack.
fn run<T: Element>(
    mut p: Piece<'_, T>,
    total: &(impl Fn(T, T) -> T + Sync),
    step: &(impl Fn(&mut [T], &[T], &mut [&mut [T]], Option<&mut [T]>) + Sync),
) {
    let n = p.w.len();
    if n > PIECE {
        let (a, b) = p.split(n.div_ceil(PIECE) / 2 * PIECE);
        if n >= PARALLEL_MIN {
            rayon::join(|| run(a, total, step), || run(b, total, step));
        } else {
            run(a, total, step);
            run(b, total, step);
        }
        return;
    }
    let mut t = [T::zero(); PIECE];
    let t = &mut t[..n];
    total_gradients(t, p.w, p.g, total);
    step(p.w, t, &mut p.s[..p.k], p.average);
}

// The total gradients compiled for AVX-512 or AVX2 where the CPU has them (element by
// element: the same values in any build).
losskit_kernels::isa_dispatch!(total_gradients, total_gradients_body, <T: Element, D: Fn(T, T) -> T>, (t: &mut [T], w: &[T], g: &[T], total: &D));

/// `t = total(w, g)` element by element.
#[inline(always)]
fn total_gradients_body<T: Element, D: Fn(T, T) -> T>(t: &mut [T], w: &[T], g: &[T], total: &D) {
    t.iter_mut().zip(w.iter().zip(g)).for_each(|(t, (&w, &g))| *t = total(w, g));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Param;

    /// A weight of 300 × 500 values (its update in parallel pieces) and a gradient scaled by
    /// `scale`, as parameters.
    fn weight_and_gradient(scale: f32) -> (Param, Tensor) {
        let n = 300 * 500;
        let w: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.02 * scale).collect();
        let value = Tensor::from_vec(w, &[300, 500]).unwrap();
        (Param { name: "dense/kernel".into(), value }, Tensor::from_vec(g, &[300, 500]).unwrap())
    }

    /// The folded update (and, at gradients whose squares overflow f32, the one of the total
    /// gradients added first) leaves the weights, norms and applied flag that adding the
    /// penalty's gradient and then applying give; the penalty is the tape's.
    #[test]
    fn a_folded_update_is_the_update_of_the_total_gradient() {
        let r = Regularizer::L1L2 { l1: 1e-3, l2: 1e-2 };
        for scale in [1.0, 1e20] {
            for opt in [Optimizer::adam(1e-3).unwrap().clipnorm(1.0).unwrap(), Optimizer::sgd(0.1).unwrap()] {
                let (mut p, g) = weight_and_gradient(scale);
                let mut total = Tensor::from_vec(g.to_vec::<f32>(), g.shape()).unwrap();
                let w = p.value.to_vec::<f32>();
                r.add_gradient(&w, total.values_mut::<f32>().unwrap(), 1.0);
                let mut want = opt.clone();
                let check = want.apply_checked(&mut [&mut p], &[total], true).unwrap();

                let (mut q, g) = weight_and_gradient(scale);
                let mut got = opt.clone();
                let (mut sums, mut values) = (Vec::new(), Vec::new());
                let mut grads = [g];
                let weights: &mut [&mut Param] = &mut [&mut q];
                let (loss, applied) = got
                    .apply_folded(weights, &mut grads, &[Some(r)], Some(true), &mut sums, &mut values, |v| v[0])
                    .unwrap();
                assert_eq!((applied, check.applied), (true, true), "scale {scale}");
                assert_eq!(
                    sums.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    check.sum_squares.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
                );
                assert_eq!(scale > 1.0, sums[0].is_infinite(), "scale {scale}: the squares overflow");
                let penalty = r.penalty(&Tensor::from_vec(w, &[300, 500]).unwrap()).unwrap().to_scalar().unwrap();
                assert_eq!(loss.to_bits(), penalty.to_bits(), "scale {scale}: the penalty as the tape's");
                let bits = |p: &Param| p.value.to_vec::<f32>().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert!(bits(&q) == bits(&p), "scale {scale}: the weights");
            }
        }
    }
}
