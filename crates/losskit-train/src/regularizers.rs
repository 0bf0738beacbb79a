//! Weight regularizers (Keras' `kernel_regularizer`): penalties added to the loss.

use losskit::{Error, Result, Tensor};
use losskit_kernels::optim::Penalty;
use losskit_tensor::{slices, Element};
use serde_json::{json, Value};

/// A penalty on a weight tensor `w`, added to the training loss each batch as Keras adds it
/// (and included in the logged `loss` and `val_loss`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Regularizer {
    /// `l1 · Σ|w|`.
    L1(f64),
    /// `l2 · Σw²` (no ½, as Keras).
    L2(f64),
    /// `l1 · Σ|w| + l2 · Σw²`.
    L1L2 {
        /// The L1 factor.
        l1: f64,
        /// The L2 factor.
        l2: f64,
    },
}

impl Regularizer {
    /// `"l1"`, `"l2"` (Keras' default factor 0.01) or `"l1_l2"` (both 0.01).
    pub fn parse(name: &str) -> Result<Regularizer> {
        match name {
            "l1" => Ok(Regularizer::L1(0.01)),
            "l2" => Ok(Regularizer::L2(0.01)),
            "l1_l2" => Ok(Regularizer::L1L2 { l1: 0.01, l2: 0.01 }),
            other => Err(Error::UnknownName {
                kind: "regularizer".into(),
                name: other.into(),
                suggestions: "l1, l2, l1_l2".into(),
            }),
        }
    }

    /// The penalty of `w`, a scalar on the tape.
    pub fn penalty(&self, w: &Tensor) -> Result<Tensor> {
        match *self {
            Regularizer::L1(l1) => w.abs().sum_all().mul_scalar(l1),
            Regularizer::L2(l2) => w.square().sum_all().mul_scalar(l2),
            Regularizer::L1L2 { l1, l2 } => {
                w.abs().sum_all().mul_scalar(l1)?.add(&w.square().sum_all().mul_scalar(l2)?)
            }
        }
    }

    /// [`Regularizer::penalty`] on a weight's values, in `T` and in the same order of
    /// operations as the tape (`c·Σ f(w)`, the sums as the tape's sums over all axes), so the
    /// same bits; allocates nothing. For the planned training step.
    pub(crate) fn penalty_of<T: Element>(&self, w: &[T]) -> T {
        let l1 = |l1: f64| slices::row_sum_of(w, |v| v.abs()) * T::c(l1);
        let l2 = |l2: f64| slices::row_sum_of(w, |v| v * v) * T::c(l2);
        match *self {
            Regularizer::L1(a) => l1(a),
            Regularizer::L2(b) => l2(b),
            Regularizer::L1L2 { l1: a, l2: b } => l1(a) + l2(b),
        }
    }

    /// Adds the penalty's gradient times `share` to `g`, the gradient of the weight `w`, as the
    /// tape's backward pass gives it for `share · penalty`: `(share·l1)·sign(w)` (0 at 0),
    /// `(share·l2)·(w + w)`, and for L1L2 their sum (L2's term first) added at once (`share`
    /// is 1, or 1/workers in a data-parallel step). For the planned training step.
    pub(crate) fn add_gradient<T: Element>(&self, w: &[T], g: &mut [T], share: f64) {
        let total = self.total_gradient(share);
        g.iter_mut().zip(w).for_each(|(g, &w)| *g = total(w, *g));
    }

    /// [`Regularizer::penalty_of`] of `w` and the `Σ t²` of the total gradient
    /// `t = g + ∂penalty/∂w` (as [`Regularizer::add_gradient`] with share 1 would leave `g`,
    /// measured as `Tensor::sum_of_squares` measures it) in one read of `w` and `g`, which
    /// stays as it is: the penalty's gradient is then folded into the optimizer's update
    /// ([`Regularizer::total_gradient`]). The same bits as the separate passes.
    pub(crate) fn penalty_and_norm<T: Element>(&self, w: &[T], g: &[T]) -> (T, f64) {
        let total = self.total_gradient(1.0);
        let (abs, square) = (|v: T| v.abs(), |v: T| v * v);
        let none = None::<fn(T) -> T>;
        match *self {
            Regularizer::L1(a) => {
                let ([s, _], n) = slices::penalty_sums_and_norm(w, g, abs, none, total);
                (s * T::c(a), n)
            }
            Regularizer::L2(b) => {
                let ([s, _], n) = slices::penalty_sums_and_norm(w, g, square, none, total);
                (s * T::c(b), n)
            }
            Regularizer::L1L2 { l1: a, l2: b } => {
                let ([s1, s2], n) = slices::penalty_sums_and_norm(w, g, abs, Some(square), total);
                (s1 * T::c(a) + s2 * T::c(b), n)
            }
        }
    }

    /// The penalty's gradient terms times `share` for the optimizer kernels, with the
    /// coefficients in `T` as the tape's upstream `share` times each term's factor
    /// ([`Penalty::total`]: `g + a·sign(w)` for L1, `g + b·(w + w)` for L2,
    /// `g + (b·(w + w) + a·sign(w))` for L1L2).
    pub(crate) fn terms<T: Element>(&self, share: f64) -> Penalty<T> {
        let c = |k: f64| T::c(share) * T::c(k);
        match *self {
            Regularizer::L1(a) => Penalty::L1(c(a)),
            Regularizer::L2(b) => Penalty::L2(c(b)),
            Regularizer::L1L2 { l1, l2 } => Penalty::L1L2 { l1: c(l1), l2: c(l2) },
        }
    }

    /// `(w, g) ↦ g + share · ∂penalty/∂w` for one element ([`Regularizer::terms`]).
    pub(crate) fn total_gradient<T: Element>(&self, share: f64) -> impl Fn(T, T) -> T + Sync + Copy {
        let terms = self.terms::<T>(share);
        move |w: T, g: T| terms.total(w, g)
    }

    /// A short description (`"L2(0.01)"`).
    pub fn describe(&self) -> String {
        match self {
            Regularizer::L1(a) => format!("L1({a})"),
            Regularizer::L2(a) => format!("L2({a})"),
            Regularizer::L1L2 { l1, l2 } => format!("L1L2(l1={l1}, l2={l2})"),
        }
    }
}

/// Keras' serialized form of a regularizer.
pub(crate) fn regularizer_json(r: Regularizer) -> Value {
    let (class, config) = match r {
        Regularizer::L1(l1) => ("L1", json!({"l1": l1})),
        Regularizer::L2(l2) => ("L2", json!({"l2": l2})),
        Regularizer::L1L2 { l1, l2 } => ("L1L2", json!({"l1": l1, "l2": l2})),
    };
    json!({"module": "keras.regularizers", "class_name": class, "config": config, "registered_name": null})
}
