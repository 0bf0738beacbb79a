//! Hinge kernels. Targets are already in `{-1, 1}` (or left as given) when they get here.

use crate::regression::{mean_row, Term};
use crate::{maximum, Float, RowKernel};

/// Hinge, `mean_last(max(1 - y·p, 0))`, or squared hinge, `mean_last(max(1 - y·p, 0)²)`.
/// The gradient passes where `1 - y·p ≥ 0` (TensorFlow's tie rule for `maximum`); a NaN
/// prediction gives a NaN value (as `jnp.maximum` does).
#[derive(Debug, Clone, Copy, Default)]
pub struct Hinge {
    /// Square each term (Keras' `SquaredHinge`).
    pub squared: bool,
}

impl<T: Float> Term<T> for Hinge {
    #[inline(always)]
    fn term(&self, y: T, p: T) -> (T, T) {
        let m = T::one() - y * p;
        // A NaN margin is active, so the NaN reaches the value.
        let active = (m >= T::zero()) | m.is_nan();
        let (v, d) = if self.squared { (m * m, -(m + m) * y) } else { (m, -y) };
        // A NaN prediction gets a NaN gradient (JAX's maximum would give 0 there).
        let d = if p.is_nan() { p } else { d };
        (if active { v } else { T::zero() }, if active { d } else { T::zero() })
    }
}

impl<T: Float> RowKernel<T> for Hinge {
    const NAME: &'static str = "hinge";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// Categorical hinge: `pos = Σ y·p`, `neg = max((1-y)·p)`, `loss = max(neg - pos + 1, 0)`.
/// Tied maxima share the gradient of `neg` equally. A NaN in the row makes `neg`, the value and
/// the whole row's gradient NaN (as JAX's `max` reduction and its gradient do).
#[derive(Debug, Clone, Copy, Default)]
pub struct CategoricalHinge;

impl<T: Float> RowKernel<T> for CategoricalHinge {
    const NAME: &'static str = "categorical_hinge";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let one = T::one();
        let mut pos = T::zero();
        let mut neg = T::neg_infinity();
        for (&y, &p) in y_true.iter().zip(y_pred) {
            pos = pos + y * p;
            neg = maximum(neg, (one - y) * p);
        }
        let raw = neg - pos + one;
        if let Some(g) = grad {
            let ties = y_true.iter().zip(y_pred).filter(|(&y, &p)| (one - y) * p == neg).count();
            // No element equals a NaN maximum: 0 ties give a NaN share, as JAX's 0/0.
            let share = if neg.is_nan() { T::nan() } else { one / T::c(ties.max(1) as f64) };
            for ((gj, &y), &p) in g.iter_mut().zip(y_true).zip(y_pred) {
                let at_max = if (one - y) * p == neg || neg.is_nan() { share * (one - y) } else { T::zero() };
                *gj = if raw < T::zero() { T::zero() } else { scale * (at_max - y) };
            }
        }
        maximum(raw, T::zero())
    }
}
