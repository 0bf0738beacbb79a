//! Cross-entropy kernels: binary and categorical, dense and sparse, plain and focal.
//!
//! Label smoothing and hinge-style label conversion are applied to `y_true` by the caller
//! (it is a constant); the kernels see final targets.

use crate::regression::{lane_sum, lane_sum2, mean_row, Term};
use crate::{sigmoid, Float, RowKernel};

/// `1 - eps` computed in f64 and rounded once, as Keras' Python float `1.0 - epsilon()` is.
#[inline]
fn one_minus_eps<T: Float>() -> T {
    T::c(1.0 - 1e-7)
}

/// Per-class weight `w[c]` (1 when no weights are given).
#[inline]
fn class_weight<T: Float>(weights: Option<&[f64]>, c: usize) -> T {
    weights.map_or(T::one(), |w| T::c(w[c]))
}

/// Binary cross-entropy averaged over the row.
///
/// * logits: `y·softplus(-x) + (1-y)·softplus(x)`, gradient `σ(x) - y`;
/// * probabilities: `q = clip(p, eps, 1-eps)`, `-(y ln q + (1-y) ln(1-q))`, gradient
///   `(1-y)/(1-q) - y/q` strictly inside the clip range, 0 outside.
///
/// With `class_weights` (length `cols`), element `j` is multiplied by `w[j]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BinaryCrossentropy<'a> {
    /// Whether `y_pred` holds logits.
    pub from_logits: bool,
    /// Label smoothing `ls`, fused: targets become `y·(1 - ls) + ls/2`.
    pub label_smoothing: f64,
    /// Optional weight per position of the row (PyTorch's `weight=`).
    pub class_weights: Option<&'a [f64]>,
}

impl<T: Float> RowKernel<T> for BinaryCrossentropy<'_> {
    const NAME: &'static str = "binary_crossentropy";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let ls = T::c(self.label_smoothing);
        let smooth = Smooth { keep: T::one() - ls, add: ls * T::c(0.5) };
        match (self.class_weights, self.from_logits) {
            (None, true) => mean_row(y_true, y_pred, scale, grad, &BceLogits(smooth)),
            (None, false) => mean_row(y_true, y_pred, scale, grad, &BceProbs(smooth)),
            (Some(w), from_logits) => {
                // Weighted: the weights ride along as a third input, element by element.
                let n = T::c(y_pred.len() as f64);
                let term =
                    |y: T, p: T| if from_logits { BceLogits(smooth).term(y, p) } else { BceProbs(smooth).term(y, p) };
                let mut sum = T::zero();
                let k = scale / n;
                match grad {
                    Some(g) => {
                        for (((gj, &y), &p), &wj) in g.iter_mut().zip(y_true).zip(y_pred).zip(w) {
                            let (v, d) = term(y, p);
                            sum = sum + T::c(wj) * v;
                            *gj = T::c(wj) * d * k;
                        }
                    }
                    None => {
                        for ((&y, &p), &wj) in y_true.iter().zip(y_pred).zip(w) {
                            sum = sum + T::c(wj) * term(y, p).0;
                        }
                    }
                }
                sum / n
            }
        }
    }
}

/// Label smoothing fused into a kernel: `y ← y·keep + add` (identity for `keep = 1, add = 0`).
#[derive(Clone, Copy)]
struct Smooth<T> {
    keep: T,
    add: T,
}

impl<T: Float> Smooth<T> {
    #[inline(always)]
    fn apply(self, y: T) -> T {
        y * self.keep + self.add
    }
}

/// The binary cross-entropy term of a logit: `(y·softplus(-x) + (1-y)·softplus(x), σ(x) - y)`.
struct BceLogits<T>(Smooth<T>);

impl<T: Float> Term<T> for BceLogits<T> {
    #[inline(always)]
    fn term(&self, y: T, p: T) -> (T, T) {
        let y = self.0.apply(y);
        let one = T::one();
        // One exponential: e = e^{-|p|} gives softplus(-p), softplus(p) = softplus(-p) + p and σ(p).
        let e = (-p.abs()).exp_fast();
        let sp_neg = (-p).max(T::zero()) + e.ln_1p_fast();
        let sig = (if p >= T::zero() { one } else { e }) / (one + e);
        (y * sp_neg + (one - y) * (sp_neg + p), sig - y)
    }
}

/// The binary cross-entropy term of a probability, clipped to `[eps, 1 - eps]`.
struct BceProbs<T>(Smooth<T>);

impl<T: Float> Term<T> for BceProbs<T> {
    #[inline(always)]
    fn term(&self, y: T, p: T) -> (T, T) {
        let y = self.0.apply(y);
        let (eps, hi, one) = (T::EPSILON_KERAS, one_minus_eps::<T>(), T::one());
        let q = p.max(eps).min(hi);
        let v = -(y * q.ln_fast() + (one - y) * (one - q).ln_fast());
        let inside = (p > eps) & (p < hi);
        let d = (one - y) / (one - q) - y / q;
        (v, if inside { d } else { T::zero() })
    }
}

/// Binary focal cross-entropy (Keras 3), averaged over the row:
/// `s = σ(x)` if from logits else `p`; `q = clip(s, eps, 1-eps)`;
/// `bce = -(y ln q + (1-y) ln(1-q))`; `p_t = y·s + (1-y)(1-s)`;
/// `term = (1 - p_t)^γ · bce`, times `y·α + (1-y)(1-α)` when `apply_class_balancing`.
#[derive(Debug, Clone, Copy)]
pub struct BinaryFocalCrossentropy {
    /// Whether `y_pred` holds logits (they go through the clipped probability path, as in Keras).
    pub from_logits: bool,
    /// Focusing parameter `γ ≥ 0`.
    pub gamma: f64,
    /// Class-balancing weight of positives.
    pub alpha: f64,
    /// Whether to apply `α`.
    pub apply_class_balancing: bool,
}

impl<T: Float> Term<T> for BinaryFocalCrossentropy {
    #[inline(always)]
    fn term(&self, y: T, x: T) -> (T, T) {
        let (eps, hi, one) = (T::EPSILON_KERAS, one_minus_eps::<T>(), T::one());
        let (gamma, alpha) = (T::c(self.gamma), T::c(self.alpha));
        let s = if self.from_logits { sigmoid(x) } else { x };
        let q = s.max(eps).min(hi);
        let bce = -(y * q.ln_fast() + (one - y) * (one - q).ln_fast());
        let pt = y * s + (one - y) * (one - s);
        let base = one - pt;
        let focal = base.powf(gamma);
        let w = if self.apply_class_balancing { y * alpha + (one - y) * (one - alpha) } else { one };
        let dbce = if (s > eps) & (s < hi) { (one - y) / (one - q) - y / q } else { T::zero() };
        let dfocal = if gamma == T::zero() { T::zero() } else { gamma * base.powf(gamma - one) * (one - y - y) };
        let mut d = w * (dfocal * bce + focal * dbce);
        if self.from_logits {
            d = d * s * (one - s);
        }
        (w * (focal * bce), d)
    }
}

impl<T: Float> RowKernel<T> for BinaryFocalCrossentropy {
    const NAME: &'static str = "binary_focal_crossentropy";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// The largest element of a row (0 when it is not finite, so `x - m` stays finite), in lanes.
#[inline(always)]
fn row_max<T: Float>(x: &[T]) -> T {
    let mut lanes = [T::neg_infinity(); 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let m = chunks.remainder().iter().chain(lanes.iter()).copied().fold(T::neg_infinity(), T::max);
    if m.is_finite() {
        m
    } else {
        T::zero()
    }
}

/// Writes `e^{x_j - m}` into `out` and returns their sum (lanes).
#[inline(always)]
fn exp_into<T: Float>(x: &[T], m: T, out: &mut [T]) -> T {
    let mut lanes = [T::zero(); 8];
    let mut xc = x.chunks_exact(8);
    let mut oc = out.chunks_exact_mut(8);
    for (xs, os) in (&mut xc).zip(&mut oc) {
        for l in 0..8 {
            let e = (xs[l] - m).exp_fast();
            os[l] = e;
            lanes[l] = lanes[l] + e;
        }
    }
    let mut tail = T::zero();
    for (o, &v) in oc.into_remainder().iter_mut().zip(xc.remainder()) {
        *o = (v - m).exp_fast();
        tail = tail + *o;
    }
    lanes.iter().fold(T::zero(), |a, &b| a + b) + tail
}

/// `(max, ln Σ exp(x - max))` of a row: the pieces of a stable log-softmax.
#[inline]
fn log_sum_exp_parts<T: Float>(x: &[T]) -> (T, T) {
    let m = row_max(x);
    let s = lane_sum(x, |v| (v - m).exp_fast());
    (m, s.ln_fast())
}

/// Categorical cross-entropy over the row: `-Σ y·log_softmax(x)` from logits (gradient
/// `softmax(x)·Σy - y`), or `-Σ y·ln(clip(p/Σp, eps, 1-eps))` from probabilities (gradient
/// `-y_j/p_j·[inside_j] + Σ_c y_c [inside_c] / Σp`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CategoricalCrossentropy {
    /// Whether `y_pred` holds logits.
    pub from_logits: bool,
    /// Label smoothing, fused: targets become `y·(1 - ls) + ls·share` (Keras: `share = 1/K`).
    pub label_smoothing: f64,
    /// The smoothing share of each class (`1/K`).
    pub smoothing_share: f64,
}

impl<T: Float> RowKernel<T> for CategoricalCrossentropy {
    const NAME: &'static str = "categorical_crossentropy";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let (eps, hi) = (T::EPSILON_KERAS, one_minus_eps::<T>());
        let ls = T::c(self.label_smoothing);
        let smooth = Smooth { keep: T::one() - ls, add: ls * T::c(self.smoothing_share) };
        if self.from_logits {
            let n = y_pred.len().min(y_true.len());
            let Some(g) = grad else {
                let (m, ln_s) = log_sum_exp_parts(y_pred);
                return -lane_sum2(&y_true[..n], &y_pred[..n], |y, x| smooth.apply(y) * ((x - m) - ln_s));
            };
            // One exponential per element: e^{x - m} is kept in the gradient buffer, then scaled.
            let m = row_max(y_pred);
            let s = exp_into(y_pred, m, g);
            let ln_s = s.ln_fast();
            let value = -lane_sum2(&y_true[..n], &y_pred[..n], |y, x| smooth.apply(y) * ((x - m) - ln_s));
            let y_sum = lane_sum(&y_true[..n], |y| smooth.apply(y));
            let k = scale * y_sum / s;
            for (gj, &y) in g.iter_mut().zip(y_true) {
                *gj = *gj * k - scale * smooth.apply(y);
            }
            value
        } else {
            let total = y_pred.iter().fold(T::zero(), |a, &p| a + p);
            let mut value = T::zero();
            let mut inside_mass = T::zero();
            for (&y, &p) in y_true.iter().zip(y_pred) {
                let y = smooth.apply(y);
                let o = p / total;
                value = value - y * o.max(eps).min(hi).ln_fast();
                if o > eps && o < hi {
                    inside_mass = inside_mass + y;
                }
            }
            if let Some(g) = grad {
                let shared = inside_mass / total;
                for ((gj, &y), &p) in g.iter_mut().zip(y_true).zip(y_pred) {
                    let y = smooth.apply(y);
                    let o = p / total;
                    let own = if o > eps && o < hi { y / (o * total) } else { T::zero() };
                    *gj = scale * (shared - own);
                }
            }
            value
        }
    }
}

/// Sparse categorical cross-entropy: `y_true` holds one class index per row (as a float).
/// From logits `logsumexp(x) - x[k]` (gradient `softmax(x) - onehot(k)`); from probabilities
/// `-ln(clip(p[k]/Σp, eps, 1-eps))`. A negative label marks an ignored row (value 0,
/// gradient 0); an index `≥ cols` gives NaN (callers validate labels first).
/// With `class_weights`, the row is multiplied by `w[k]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseCategoricalCrossentropy<'a> {
    /// Whether `y_pred` holds logits.
    pub from_logits: bool,
    /// Optional weight per class (PyTorch's `weight=`), length `cols`.
    pub class_weights: Option<&'a [f64]>,
}

impl<T: Float> RowKernel<T> for SparseCategoricalCrossentropy<'_> {
    const NAME: &'static str = "sparse_categorical_crossentropy";
    fn true_cols(&self, _cols: usize) -> usize {
        1
    }
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let label = y_true[0];
        let ignored = label < T::zero();
        let k = label.to_usize().filter(|&k| k < y_pred.len());
        let (k, w) = match k {
            Some(k) if !ignored => (k, class_weight::<T>(self.class_weights, k)),
            _ => {
                if let Some(g) = grad {
                    g.iter_mut().for_each(|v| *v = T::zero());
                }
                return if ignored { T::zero() } else { T::nan() };
            }
        };
        let (eps, hi) = (T::EPSILON_KERAS, one_minus_eps::<T>());
        if self.from_logits {
            let Some(g) = grad else {
                let (m, ln_s) = log_sum_exp_parts(y_pred);
                return -w * ((y_pred[k] - m) - ln_s);
            };
            // One exponential per element, kept in the gradient buffer, then scaled.
            let m = row_max(y_pred);
            let s = exp_into(y_pred, m, g);
            let ws = w * scale;
            let factor = ws / s;
            for gj in g.iter_mut() {
                *gj = *gj * factor;
            }
            g[k] = g[k] - ws;
            -w * ((y_pred[k] - m) - s.ln_fast())
        } else {
            let total = y_pred.iter().fold(T::zero(), |a, &p| a + p);
            let o = y_pred[k] / total;
            if let Some(g) = grad {
                let inside = o > eps && o < hi;
                let ws = w * scale;
                for (j, gj) in g.iter_mut().enumerate() {
                    *gj = if !inside {
                        T::zero()
                    } else if j == k {
                        ws * (T::one() / total - T::one() / y_pred[k])
                    } else {
                        ws / total
                    };
                }
            }
            -w * o.max(eps).min(hi).ln_fast()
        }
    }
}

/// Categorical focal cross-entropy (Keras 3) over the row: `s = softmax(x)` from logits, else
/// `p`; `o = clip(s/Σs, eps, 1-eps)`; `loss = Σ_c α_c (1 - o_c)^γ · (-y_c ln o_c)`.
/// `alpha` has one entry (shared) or one per class.
#[derive(Debug, Clone, Copy)]
pub struct CategoricalFocalCrossentropy<'a> {
    /// Whether `y_pred` holds logits.
    pub from_logits: bool,
    /// `α`: one value, or one per class.
    pub alpha: &'a [f64],
    /// Focusing parameter `γ`.
    pub gamma: f64,
}

impl<T: Float> RowKernel<T> for CategoricalFocalCrossentropy<'_> {
    const NAME: &'static str = "categorical_focal_crossentropy";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let (eps, hi, one) = (T::EPSILON_KERAS, one_minus_eps::<T>(), T::one());
        let gamma = T::c(self.gamma);
        let alpha = |c: usize| T::c(if self.alpha.len() == 1 { self.alpha[0] } else { self.alpha[c] });
        let (m, ln_s) = if self.from_logits { log_sum_exp_parts(y_pred) } else { (T::zero(), T::zero()) };
        let prob = |x: T| if self.from_logits { ((x - m) - ln_s).exp_fast() } else { x };
        let total = y_pred.iter().fold(T::zero(), |a, &x| a + prob(x));
        let mut value = T::zero();
        let mut a_dot_s = T::zero();
        let mut g = grad;
        for (c, (&y, &x)) in y_true.iter().zip(y_pred).enumerate() {
            let s = prob(x);
            let o = (s / total).max(eps).min(hi);
            let modulating = (one - o).powf(gamma);
            let cce = -y * o.ln_fast();
            value = value + modulating * alpha(c) * cce;
            if let Some(g) = g.as_deref_mut() {
                // ∂term/∂o, zero where o was clipped.
                let inside = s / total > eps && s / total < hi;
                let dmod =
                    if gamma == T::zero() { T::zero() } else { gamma * (one - o).powf(gamma - one) * y * o.ln_fast() };
                let a = if inside { alpha(c) * (dmod - modulating * y / o) } else { T::zero() };
                g[c] = a;
                a_dot_s = a_dot_s + a * s;
            }
        }
        if let Some(g) = g {
            // Through the renormalisation o = s/Σs, then (from logits) through the softmax.
            let mut gp_dot_s = T::zero();
            for (gc, &x) in g.iter_mut().zip(y_pred) {
                *gc = *gc / total - a_dot_s / (total * total);
                gp_dot_s = gp_dot_s + *gc * prob(x);
            }
            for (gc, &x) in g.iter_mut().zip(y_pred) {
                *gc = scale * if self.from_logits { prob(x) * (*gc - gp_dot_s) } else { *gc };
            }
        }
        value
    }
}
