//! Keras' element-wise activations as one op each ([`Elementwise`]): the value `f(x)` and the
//! derivative `f'(x)` written once, per element, and used by the tape's op
//! ([`Tensor::elementwise`]) and by the slice functions a planned training step calls
//! ([`elementwise_forward`], [`elementwise_backward_in_place`]), so both compute the same bits.
//! The piecewise ones take the piece JAX takes at a kink (its `where` on the same comparison),
//! and NaN goes through every one.

use super::{op, with_pair};
use crate::slices::by_row_pieces;
use crate::storage::{with_storage, Element};
use crate::Tensor;
use losskit_kernels::{sigmoid, softplus, Float};
use ndarray::Zip;

/// Keras' SELU scale `λ`.
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;
/// Keras' SELU `α`.
const SELU_ALPHA: f64 = 1.673_263_242_354_377_2;
/// `√(2/π)`, the tanh approximation of GELU's factor.
const GELU_TANH_K: f64 = 0.797_884_560_802_865_4;
/// The tanh approximation's cubic coefficient.
const GELU_TANH_C: f64 = 0.044_715;

/// A Keras activation computed element by element, with its derivative from the input.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Elementwise {
    /// `x·(1 + erf(x/√2))/2`; `f' = (1 + erf(x/√2))/2 + x·e^(-x²/2)/√(2π)`.
    Gelu,
    /// `x·(1 + tanh(k(x + 0.044715x³)))/2`, `k = √(2/π)`; `f' = (1 + t)/2 + x(1 - t²)k(1 + 3·0.044715x²)/2`.
    GeluApproximate,
    /// `x` if `x > 0` else `eˣ - 1` (also CELU with `α = 1`); `f' = 1` or `eˣ`.
    Elu,
    /// `λ·(x if x > 0 else α(eˣ - 1))`; `f' = λ` or `λαeˣ`.
    Selu,
    /// `ln(1 + eˣ)`; `f' = σ(x)`.
    Softplus,
    /// `x` if `x ≥ 0` else `0.2x`; `f' = 1` or `0.2`.
    LeakyRelu,
    /// `x` strictly between 0 and 6, `6` from 6, else 0; `f' = 1` strictly between, else 0.
    Relu6,
    /// `x·σ(x)`; `f' = σ(x)(1 + x(1 - σ(x)))`.
    Silu,
    /// `(x + 3)/6` strictly between -3 and 3, `1` from 3, else 0; `f' = 1/6` strictly between.
    HardSigmoid,
    /// `x·hard_sigmoid(x)`; `f' = hard_sigmoid(x) + x·hard_sigmoid'(x)`.
    HardSilu,
    /// `x` on `[-1, 1]`, else `±1`; `f' = 1` on `[-1, 1]`.
    HardTanh,
    /// `x` where `|x| > 0.5`, else 0; `f'` likewise 1 or 0.
    HardShrink,
    /// `x ∓ 0.5` beyond `±0.5`, else 0; `f' = 1` beyond.
    SoftShrink,
    /// `x - tanh x`; `f' = tanh² x`.
    TanhShrink,
    /// `x/(1 + |x|)`; `f' = 1/(1 + |x|)²`.
    Softsign,
    /// `x·tanh(softplus x)`; `f' = tanh(sp) + x(1 - tanh²(sp))σ(x)`.
    Mish,
    /// `eˣ`; `f' = eˣ`.
    Exponential,
    /// `-softplus(-x) = ln σ(x)`; `f' = σ(-x)`.
    LogSigmoid,
    /// `0` to -1, `(x + 1)²/4` between, `x` from 1; `f' = 0`, `(x + 1)/2`, `1`.
    SparsePlus,
    /// `0` to -1, `(x + 1)/2` between, `1` from 1; `f' = 1/2` strictly between.
    SparseSigmoid,
    /// `(x + √(x² + 4))/2`; `f' = (1 + x/√(x² + 4))/2`.
    Squareplus,
    /// `x` where `x > threshold`, else `default_value`; `f' = 1` or 0.
    Threshold {
        /// The value `x` must exceed to be kept.
        threshold: f64,
        /// What replaces `x` at or below the threshold.
        default_value: f64,
    },
}

/// 1 where `keep`, else 0.
#[inline(always)]
fn step<T: Float>(keep: bool) -> T {
    if keep {
        T::one()
    } else {
        T::zero()
    }
}

impl Elementwise {
    /// `f(x)`.
    #[inline(always)]
    pub fn value<T: Float>(self, x: T) -> T {
        let (zero, one, half) = (T::zero(), T::one(), T::c(0.5));
        if x.is_nan() {
            return x;
        }
        match self {
            Elementwise::Gelu => x * (one + erf(x * T::c(std::f64::consts::FRAC_1_SQRT_2))) * half,
            Elementwise::GeluApproximate => {
                let t = (T::c(GELU_TANH_K) * (x + T::c(GELU_TANH_C) * x * x * x)).tanh_fast();
                x * (one + t) * half
            }
            Elementwise::Elu => elu(x),
            Elementwise::Selu => T::c(SELU_SCALE) * if x > zero { x } else { T::c(SELU_ALPHA) * x.exp_m1() },
            Elementwise::Softplus => softplus(x),
            Elementwise::LeakyRelu => {
                if x >= zero {
                    x
                } else {
                    x * T::c(0.2)
                }
            }
            Elementwise::Relu6 => x.max(zero).min(T::c(6.0)),
            Elementwise::Silu => x * sigmoid(x),
            Elementwise::HardSigmoid => hard_sigmoid(x),
            Elementwise::HardSilu => x * hard_sigmoid(x),
            Elementwise::HardTanh => x.max(-one).min(one),
            Elementwise::HardShrink => x * step::<T>(x.abs() > half),
            Elementwise::SoftShrink => {
                if x > half {
                    x - half
                } else if x < -half {
                    x + half
                } else {
                    zero
                }
            }
            Elementwise::TanhShrink => x - x.tanh_fast(),
            Elementwise::Softsign => x / (one + x.abs()),
            Elementwise::Mish => x * softplus(x).tanh_fast(),
            Elementwise::Exponential => x.exp_fast(),
            Elementwise::LogSigmoid => -softplus(-x),
            Elementwise::SparsePlus => {
                if x <= -one {
                    zero
                } else if x >= one {
                    x
                } else {
                    (x + one) * (x + one) * T::c(0.25)
                }
            }
            Elementwise::SparseSigmoid => {
                if x <= -one {
                    zero
                } else if x >= one {
                    one
                } else {
                    (x + one) * half
                }
            }
            Elementwise::Squareplus => (x + (x * x + T::c(4.0)).sqrt()) * half,
            Elementwise::Threshold { threshold, default_value } => {
                if x > T::c(threshold) {
                    x
                } else {
                    T::c(default_value)
                }
            }
        }
    }

    /// `f'(x)` (NaN at NaN).
    #[inline(always)]
    pub fn derivative<T: Float>(self, x: T) -> T {
        let (zero, one, half) = (T::zero(), T::one(), T::c(0.5));
        if x.is_nan() {
            return x;
        }
        match self {
            Elementwise::Gelu => {
                let cdf = (one + erf(x * T::c(std::f64::consts::FRAC_1_SQRT_2))) * half;
                // 1/√(2π)
                cdf + x * (-(x * x) * half).exp_fast() * T::c(0.398_942_280_401_432_7)
            }
            Elementwise::GeluApproximate => {
                let (k, c) = (T::c(GELU_TANH_K), T::c(GELU_TANH_C));
                let t = (k * (x + c * x * x * x)).tanh_fast();
                (one + t) * half + x * (one - t * t) * k * (one + T::c(3.0) * c * x * x) * half
            }
            Elementwise::Elu => {
                if x > zero {
                    one
                } else {
                    x.exp_fast()
                }
            }
            Elementwise::Selu => T::c(SELU_SCALE) * if x > zero { one } else { T::c(SELU_ALPHA) * x.exp_fast() },
            Elementwise::Softplus => sigmoid(x),
            Elementwise::LeakyRelu => {
                if x >= zero {
                    one
                } else {
                    T::c(0.2)
                }
            }
            Elementwise::Relu6 => step(x > zero && x < T::c(6.0)),
            Elementwise::Silu => {
                let s = sigmoid(x);
                s * (one + x * (one - s))
            }
            Elementwise::HardSigmoid => hard_sigmoid_derivative(x),
            Elementwise::HardSilu => hard_sigmoid(x) + x * hard_sigmoid_derivative(x),
            Elementwise::HardTanh => step(x.abs() <= one),
            Elementwise::HardShrink | Elementwise::SoftShrink => step(x.abs() > half),
            Elementwise::TanhShrink => {
                let t = x.tanh_fast();
                t * t
            }
            Elementwise::Softsign => {
                let d = one + x.abs();
                one / (d * d)
            }
            Elementwise::Mish => {
                let t = softplus(x).tanh_fast();
                t + x * (one - t * t) * sigmoid(x)
            }
            Elementwise::Exponential => x.exp_fast(),
            Elementwise::LogSigmoid => sigmoid(-x),
            Elementwise::SparsePlus => {
                if x <= -one {
                    zero
                } else if x >= one {
                    one
                } else {
                    (x + one) * half
                }
            }
            Elementwise::SparseSigmoid => step::<T>(x > -one && x < one) * half,
            Elementwise::Squareplus => (one + x / (x * x + T::c(4.0)).sqrt()) * half,
            Elementwise::Threshold { threshold, .. } => step(x > T::c(threshold)),
        }
    }
}

/// `erf x`: libm's single-precision `erff` for f32 (≤ 1 ulp, and much cheaper than the
/// double-precision one, which f64 uses).
#[inline(always)]
fn erf<T: Float>(x: T) -> T {
    match (&x as &dyn std::any::Any).downcast_ref::<f32>() {
        Some(&v) => T::c(f64::from(libm::erff(v))),
        None => T::c(libm::erf(x.to_f64().unwrap_or(f64::NAN))),
    }
}

/// `x` if `x > 0` else `eˣ - 1`.
#[inline(always)]
fn elu<T: Float>(x: T) -> T {
    if x > T::zero() {
        x
    } else {
        x.exp_m1()
    }
}

/// `(x + 3)/6` strictly between -3 and 3, 1 from 3, else 0.
#[inline(always)]
fn hard_sigmoid<T: Float>(x: T) -> T {
    let three = T::c(3.0);
    if x >= three {
        T::one()
    } else if x > -three {
        (x + three) / T::c(6.0)
    } else {
        T::zero()
    }
}

/// `1/6` strictly between -3 and 3, else 0.
#[inline(always)]
fn hard_sigmoid_derivative<T: Float>(x: T) -> T {
    let three = T::c(3.0);
    step::<T>(x > -three && x < three) / T::c(6.0)
}

/// `out = f(x)` element by element, as [`Tensor::elementwise`] computes it (in parallel pieces
/// when large; each element on its own, so the values do not depend on the thread count).
///
/// Panics if the lengths differ.
pub fn elementwise_forward<T: Element>(x: &[T], kind: Elementwise, out: &mut [T]) {
    by_row_pieces(x, out, 1, |x, o| o.iter_mut().zip(x).for_each(|(o, &x)| *o = kind.value(x)));
}

/// `g ← g·f'(x)` element by element, in place: the gradient of the input from the output's,
/// as [`Tensor::elementwise`]'s backward computes it.
///
/// Panics if the lengths differ.
pub fn elementwise_backward_in_place<T: Element>(x: &[T], g: &mut [T], kind: Elementwise) {
    by_row_pieces(x, g, 1, |x, g| g.iter_mut().zip(x).for_each(|(g, &x)| *g = *g * kind.derivative(x)));
}

impl Tensor {
    /// The activation `kind` element by element (`(...)` → `(...)`), one node of the tape whose
    /// backward is `g·f'(x)` ([`Elementwise`] has each formula).
    pub fn elementwise(&self, kind: Elementwise) -> Tensor {
        let storage = with_storage!(self.storage(), a => {
            T::wrap(collect!(a.raw_dim(), Zip::from(a), |&x| kind.value(x)))
        });
        Tensor::from_op(
            storage,
            vec![self.clone()],
            op("elementwise", move |inputs, _out, g| {
                let s = with_pair!("elementwise", inputs[0], g, (x, g) => {
                    T::wrap(collect!(x.raw_dim(), Zip::from(x).and(g), |&x, &g| g * kind.derivative(x)))
                });
                Ok(vec![Some(Tensor::from_storage(s))])
            }),
        )
    }
}

/// Sparsemax's threshold `τ` of one row: the `τ` with `Σ max(x - τ, 0) = 1`, found without
/// sorting (Michelot's iteration: `τ = (Σ_{x > τ'} x - 1)/#{x > τ'}` from `τ' = -∞` until the
/// support stops shrinking; each step keeps the top entries, so it ends within `cols` steps).
/// NaN when the row holds a NaN.
fn sparsemax_threshold<T: Element>(row: &[T]) -> T {
    if row.iter().any(|v| v.is_nan()) {
        return T::nan();
    }
    let mut tau = T::neg_infinity();
    let mut count = usize::MAX;
    loop {
        let (sum, n) = row.iter().filter(|&&v| v > tau).fold((0.0f64, 0usize), |(s, n), &v| (s + v.widen(), n + 1));
        if n == count || n == 0 {
            return tau;
        }
        count = n;
        tau = T::c((sum - 1.0) / n as f64);
    }
}

/// `out = sparsemax(x)` over rows of `cols` values: `max(x - τ, 0)` with each row's
/// threshold `τ` (the projection onto the simplex: each row sums to 1; found by Michelot's iteration, no sort).
///
/// Panics if the lengths differ or are not whole rows.
pub fn sparsemax_forward<T: Element>(x: &[T], cols: usize, out: &mut [T]) {
    assert!(x.len() == out.len() && x.len().is_multiple_of(cols.max(1)));
    for (o, row) in out.chunks_exact_mut(cols.max(1)).zip(x.chunks_exact(cols.max(1))) {
        let tau = sparsemax_threshold(row);
        for (o, &v) in o.iter_mut().zip(row) {
            *o = if tau.is_nan() { tau } else { (v - tau).max(T::zero()) };
        }
    }
}

/// The backward pass of [`sparsemax_forward`] in place, from its output `y`: on each row's
/// support (`y > 0`) `g ← g - mean(g over the support)`, 0 off it (sparsemax's Jacobian).
pub fn sparsemax_backward<T: Element>(y: &[T], g: &mut [T], cols: usize) {
    assert_eq!(y.len(), g.len());
    for (g, y) in g.chunks_exact_mut(cols.max(1)).zip(y.chunks_exact(cols.max(1))) {
        let (sum, n) = g
            .iter()
            .zip(y)
            .filter(|(_, &y)| y > T::zero())
            .fold((0.0f64, 0usize), |(s, n), (&g, _)| (s + g.widen(), n + 1));
        let mean = T::c(sum / n.max(1) as f64);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = if y > T::zero() {
                *g - mean
            } else if y.is_nan() {
                y
            } else {
                T::zero()
            };
        }
    }
}

/// `out = a·σ(b)` with `a`, `b` the two halves of each row of `cols` values (Keras' `glu`):
/// rows of `cols / 2` values out.
///
/// Panics if `cols` is odd or the lengths do not fit.
pub fn glu_forward<T: Element>(x: &[T], cols: usize, out: &mut [T]) {
    let half = cols / 2;
    assert!(cols.is_multiple_of(2) && x.len() == 2 * out.len());
    for (o, row) in out.chunks_exact_mut(half.max(1)).zip(x.chunks_exact(cols.max(1))) {
        for ((o, &a), &b) in o.iter_mut().zip(&row[..half]).zip(&row[half..]) {
            *o = a * sigmoid(b);
        }
    }
}

/// The backward pass of [`glu_forward`]: from its input `x` and the gradient `g` of its output,
/// `∂a = g·σ(b)` and `∂b = g·a·σ(b)(1 - σ(b))` into `gx` (the input's shape).
pub fn glu_backward<T: Element>(x: &[T], g: &[T], cols: usize, gx: &mut [T]) {
    let half = cols / 2;
    assert!(cols.is_multiple_of(2) && x.len() == gx.len() && x.len() == 2 * g.len());
    let rows = x.chunks_exact(cols.max(1)).zip(g.chunks_exact(half.max(1))).zip(gx.chunks_exact_mut(cols.max(1)));
    for ((row, g), gx) in rows {
        let (ga, gb) = gx.split_at_mut(half);
        for (j, &g) in g.iter().enumerate() {
            let (a, s) = (row[j], sigmoid(row[half + j]));
            ga[j] = g * s;
            gb[j] = g * a * s * (T::one() - s);
        }
    }
}

/// The values of `x` in standard layout (borrowed when they are), with their shape.
fn rows_of<T: Element>(a: &ndarray::ArcArray<T, ndarray::IxDyn>) -> std::borrow::Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    }
}

impl Tensor {
    /// Sparsemax over the last axis ([`sparsemax_forward`]), one node of the tape whose
    /// backward is [`sparsemax_backward`]. An error on a scalar.
    pub fn sparsemax(&self) -> crate::Result<Tensor> {
        let cols =
            *self.shape().last().ok_or_else(|| crate::Error::value("sparsemax", "needs an axis, got a scalar"))?;
        let shape = ndarray::IxDyn(self.shape());
        let storage = with_storage!(self.storage(), a => {
            let mut out = crate::pool::take::<T>(a.len());
            sparsemax_forward(&rows_of(a), cols, &mut out);
            T::wrap(ndarray::ArrayD::from_shape_vec(shape.clone(), out).expect("the input's shape"))
        });
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op("sparsemax", move |_inputs, out, g| {
                let s = with_pair!("sparsemax", out, g, (y, g) => {
                    let mut grad = rows_of(g).into_owned();
                    sparsemax_backward(&rows_of(y), &mut grad, cols);
                    T::wrap(ndarray::ArrayD::from_shape_vec(y.raw_dim(), grad).expect("the output's shape"))
                });
                Ok(vec![Some(Tensor::from_storage(s))])
            }),
        ))
    }

    /// Keras' `glu` over the last axis ([`glu_forward`]): `(..., 2n)` → `(..., n)`, one node of
    /// the tape whose backward is [`glu_backward`]. An error when the last axis is odd.
    pub fn glu(&self) -> crate::Result<Tensor> {
        let cols = match self.shape().last() {
            Some(&c) if c.is_multiple_of(2) => c,
            _ => {
                return Err(crate::Error::shape(
                    "glu",
                    format!("splits the last axis in two halves: it must be even, got shape {:?}", self.shape()),
                ))
            }
        };
        let mut out_shape = self.shape().to_vec();
        *out_shape.last_mut().expect("checked") = cols / 2;
        let storage = with_storage!(self.storage(), a => {
            let mut out = crate::pool::take::<T>(a.len() / 2);
            glu_forward(&rows_of(a), cols, &mut out);
            T::wrap(ndarray::ArrayD::from_shape_vec(out_shape.clone(), out).expect("half the input"))
        });
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op("glu", move |inputs, _out, g| {
                let s = with_pair!("glu", inputs[0], g, (x, g) => {
                    let mut gx = crate::pool::take::<T>(x.len());
                    glu_backward(&rows_of(x), &rows_of(g), cols, &mut gx);
                    T::wrap(ndarray::ArrayD::from_shape_vec(x.raw_dim(), gx).expect("the input's shape"))
                });
                Ok(vec![Some(Tensor::from_storage(s))])
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each derivative agrees with a central difference of the value away from kinks.
    #[test]
    fn derivatives_match_differences() {
        let kinds = [
            Elementwise::Gelu,
            Elementwise::GeluApproximate,
            Elementwise::Elu,
            Elementwise::Selu,
            Elementwise::Softplus,
            Elementwise::LeakyRelu,
            Elementwise::Relu6,
            Elementwise::Silu,
            Elementwise::HardSigmoid,
            Elementwise::HardSilu,
            Elementwise::HardTanh,
            Elementwise::HardShrink,
            Elementwise::SoftShrink,
            Elementwise::TanhShrink,
            Elementwise::Softsign,
            Elementwise::Mish,
            Elementwise::Exponential,
            Elementwise::LogSigmoid,
            Elementwise::SparsePlus,
            Elementwise::SparseSigmoid,
            Elementwise::Squareplus,
            Elementwise::Threshold { threshold: 0.3, default_value: -1.0 },
        ];
        for kind in kinds {
            for x in [-7.3f64, -2.7, -1.3, -0.8, -0.3, 0.2, 0.7, 1.4, 2.2, 4.1, 6.6] {
                let h = 1e-6;
                let numeric = (kind.value(x + h) - kind.value(x - h)) / (2.0 * h);
                let exact = kind.derivative(x);
                assert!((numeric - exact).abs() < 1e-6 * (1.0 + exact.abs()), "{kind:?} at {x}: {exact} vs {numeric}");
            }
            assert!(kind.value(f64::NAN).is_nan() && kind.derivative(f32::NAN).is_nan(), "{kind:?}");
        }
    }

    /// Michelot's threshold gives the sort-based projection's values (`losskit_kernels`'
    /// sparsemax), ties and a one-entry support included.
    #[test]
    fn sparsemax_is_the_simplex_projection() {
        let rows: [&[f64]; 5] = [
            &[0.3, -1.2, 2.5, 2.5, 0.0, -0.7],
            &[1.0, 0.9, 0.8, 0.7, 0.55, 0.45],
            &[-3.0, 4.0, -0.25, 0.1, 7.5, -6.0],
            &[0.0, 0.5, 1.0],
            &[0.2, 0.2, 0.2, 0.2],
        ];
        for row in rows {
            let (mut ours, mut sorted) = (vec![0.0; row.len()], vec![0.0; row.len()]);
            sparsemax_forward(row, row.len(), &mut ours);
            losskit_kernels::sparsemax(row, &mut sorted);
            for (a, b) in ours.iter().zip(&sorted) {
                assert!((a - b).abs() < 1e-12, "{row:?}: {ours:?} vs {sorted:?}");
            }
            assert!((ours.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{ours:?}");
        }
        let mut nan = [0.0; 3];
        sparsemax_forward(&[1.0, f64::NAN, 0.0], 3, &mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    /// glu's backward pass is its forward pass' derivative (central differences).
    #[test]
    fn glu_backward_matches_differences() {
        let x = [0.3, -1.1, 0.7, 2.0, -0.4, 0.9, -2.2, 0.05];
        let g = [0.5, -1.5, 2.0, 0.25];
        let mut gx = [0.0; 8];
        glu_backward(&x, &g, 4, &mut gx);
        let objective = |x: &[f64]| {
            let mut out = [0.0; 4];
            glu_forward(x, 4, &mut out);
            out.iter().zip(&g).map(|(o, g)| o * g).sum::<f64>()
        };
        for i in 0..8 {
            let (mut up, mut down) = (x, x);
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let numeric = (objective(&up) - objective(&down)) / 2e-6;
            assert!((numeric - gx[i]).abs() < 1e-6, "{i}: {} vs {numeric}", gx[i]);
        }
    }
}
