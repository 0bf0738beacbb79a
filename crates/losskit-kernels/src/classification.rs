//! Cross-entropy kernels: binary and categorical, dense and sparse, plain and focal.
//!
//! Label smoothing and hinge-style label conversion are applied to `y_true` by the caller
//! (it is a constant); the kernels see final targets.

use crate::regression::{mean_row, Term};
use crate::sum::{fold_lanes, lane_sum2_wide, lane_sum_wide, WideSum, BLOCK};
use crate::{clip, clip_passes, sigmoid, Float, RowKernel};

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
///   `(1-y)/(1-q) - y/q` on the closed clip range (and at NaN), 0 outside.
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
                let mut sum = WideSum::default();
                let k = scale / n;
                match grad {
                    Some(g) => {
                        for (((gj, &y), &p), &wj) in g.iter_mut().zip(y_true).zip(y_pred).zip(w) {
                            let (v, d) = term(y, p);
                            sum.add(T::c(wj) * v);
                            *gj = T::c(wj) * d * k;
                        }
                    }
                    None => {
                        for ((&y, &p), &wj) in y_true.iter().zip(y_pred).zip(w) {
                            sum.add(T::c(wj) * term(y, p).0);
                        }
                    }
                }
                T::narrow(sum.total() / n.widen())
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
        // One exponential: e = e^{-|p|} gives softplus(-p), softplus(p) and σ(p). softplus(p) is
        // not softplus(-p) + p, which is inf - inf = NaN at p = -inf (the value there is +inf).
        let e = (-p.abs()).exp_fast();
        let l1p = e.ln_1p_fast();
        let sp_neg = (-p).max(T::zero()) + l1p;
        let sp_pos = p.max(T::zero()) + l1p;
        let sig = (if p >= T::zero() { one } else { e }) / (one + e);
        (y * sp_neg + (one - y) * sp_pos, sig - y)
    }
}

/// The binary cross-entropy term of a probability, clipped to `[eps, 1 - eps]`.
struct BceProbs<T>(Smooth<T>);

impl<T: Float> Term<T> for BceProbs<T> {
    #[inline(always)]
    fn term(&self, y: T, p: T) -> (T, T) {
        let y = self.0.apply(y);
        let (eps, hi, one) = (T::EPSILON_KERAS, one_minus_eps::<T>(), T::one());
        let q = clip(p, eps, hi);
        let v = -(y * q.ln_fast() + (one - y) * (one - q).ln_fast());
        let inside = clip_passes(p, eps, hi);
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
        let q = clip(s, eps, hi);
        let bce = -(y * q.ln_fast() + (one - y) * (one - q).ln_fast());
        let pt = y * s + (one - y) * (one - s);
        let base = one - pt;
        let focal = base.powf(gamma);
        let w = if self.apply_class_balancing { y * alpha + (one - y) * (one - alpha) } else { one };
        let dbce = if clip_passes(s, eps, hi) { (one - y) / (one - q) - y / q } else { T::zero() };
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

/// The largest element of a row, in lanes. A NaN is skipped here, but it still reaches the
/// loss through `e^{x - max}`; an infinite maximum is kept, so `x - max` is NaN or `-inf`
/// exactly where Keras' `log_softmax` has them.
#[inline(always)]
fn row_max<T: Float>(x: &[T]) -> T {
    let mut lanes = [T::neg_infinity(); 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    chunks.remainder().iter().chain(lanes.iter()).copied().fold(T::neg_infinity(), T::max)
}

/// Writes `e^{x_j - m}` into `out` and returns their sum: blocks in 8 lanes of `T`, block sums
/// in `f64` ([`crate::sum`]), rounded once.
#[inline(always)]
fn exp_into<T: Float>(x: &[T], m: T, out: &mut [T]) -> T {
    let mut total = 0.0;
    for (x, o) in x.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        total += exp_block(x, m, o).widen();
    }
    T::narrow(total)
}

/// One block of [`exp_into`], in 8 lanes of `T`.
#[inline(always)]
fn exp_block<T: Float>(x: &[T], m: T, out: &mut [T]) -> T {
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
    fold_lanes(lanes) + tail
}

/// What one pass over a row of logits and its targets yields for the categorical
/// cross-entropy: `Σ e^{x - m}` (the exponentials are written out), `Σ y` and `Σ y·(x - m)`.
struct ExpTargetSums<T> {
    exp_sum: T,
    y_sum: f64,
    y_dot_shifted: f64,
}

/// Writes `e^{x_j - m}` into `out` and sums it, the smoothed targets and their products with
/// `x - m`, all in one pass: blocks in 8 lanes of `T`, block sums in `f64`.
#[inline(always)]
fn exp_with_targets<T: Float>(x: &[T], y: &[T], m: T, smooth: Smooth<T>, out: &mut [T]) -> ExpTargetSums<T> {
    let (mut e_total, mut y_total, mut xy_total) = (0.0, 0.0, 0.0);
    for ((x, y), o) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).zip(out.chunks_mut(BLOCK)) {
        let (e, ys, xy) = exp_targets_block(x, y, m, smooth, o);
        e_total += e.widen();
        y_total += ys.widen();
        xy_total += xy.widen();
    }
    ExpTargetSums { exp_sum: T::narrow(e_total), y_sum: y_total, y_dot_shifted: xy_total }
}

/// One block of [`exp_with_targets`], in 8 lanes of `T` per sum.
#[inline(always)]
fn exp_targets_block<T: Float>(x: &[T], y: &[T], m: T, smooth: Smooth<T>, out: &mut [T]) -> (T, T, T) {
    let (mut le, mut ly, mut lxy) = ([T::zero(); 8], [T::zero(); 8], [T::zero(); 8]);
    let mut xc = x.chunks_exact(8);
    let mut yc = y.chunks_exact(8);
    let mut oc = out.chunks_exact_mut(8);
    for ((xs, ys), os) in (&mut xc).zip(&mut yc).zip(&mut oc) {
        for l in 0..8 {
            let shifted = xs[l] - m;
            let e = shifted.exp_fast();
            let t = smooth.apply(ys[l]);
            os[l] = e;
            le[l] = le[l] + e;
            ly[l] = ly[l] + t;
            lxy[l] = lxy[l] + t * shifted;
        }
    }
    let (mut te, mut ty, mut txy) = (T::zero(), T::zero(), T::zero());
    for ((o, &v), &yv) in oc.into_remainder().iter_mut().zip(xc.remainder()).zip(yc.remainder()) {
        let shifted = v - m;
        let t = smooth.apply(yv);
        *o = shifted.exp_fast();
        te = te + *o;
        ty = ty + t;
        txy = txy + t * shifted;
    }
    (fold_lanes(le) + te, fold_lanes(ly) + ty, fold_lanes(lxy) + txy)
}

/// `(max, ln Σ exp(x - max))` of a row: the pieces of a stable log-softmax. The sum is taken in
/// `f64` and its logarithm in `f64` too, so `ln Σ` is exact to the last bit of `T`.
#[inline]
fn log_sum_exp_parts<T: Float>(x: &[T]) -> (T, T) {
    let m = row_max(x);
    (m, ln_sum_exp(x, m))
}

/// `ln Σ exp(x - m)`, the sum and its logarithm in `f64`.
#[inline(always)]
fn ln_sum_exp<T: Float>(x: &[T], m: T) -> T {
    T::narrow(lane_sum_wide(x, |v| (v - m).exp_fast()).ln())
}

/// `ln Σ_j exp(x_j)` of a row, shifted by the row maximum `m` where it is finite (by 0 where
/// it is not, so a `+inf` gives `+inf` and a row of `-inf` gives `-inf`); a NaN gives NaN. The
/// sum and its logarithm are taken in `f64` (blocks of 256 values, as [`accumulate_sum`](crate::accumulate_sum)), then
/// `m + ln Σ` rounds once in `T`. The tensor ops' `logsumexp`, `softmax` and `log_softmax` over
/// the last axis use it.
#[inline(always)]
pub fn log_sum_exp<T: Float>(x: &[T]) -> T {
    let m = row_max(x);
    let m = if m.is_finite() { m } else { T::zero() };
    m + ln_sum_exp(x, m)
}

/// The sum of a row of probabilities, accumulated in `f64`, rounded once.
#[inline(always)]
fn row_total<T: Float>(p: &[T]) -> T {
    T::narrow(lane_sum_wide(p, |v| v))
}

/// Keras divides probabilities by their row sum: a sum that is not finite (a NaN or an infinite
/// probability) or zero makes some `p_j / Σp` NaN, and with it the whole row (`0·NaN` in
/// Keras' `-Σ y·ln o`): value and gradient are NaN.
#[inline(always)]
fn renormalisation_fails<T: Float>(total: T) -> bool {
    !total.is_finite() || total == T::zero()
}

/// Fills a row's gradient (if any) with NaN and returns NaN: the row has no defined loss.
#[inline]
fn nan_row<T: Float>(grad: Option<&mut [T]>) -> T {
    if let Some(g) = grad {
        g.iter_mut().for_each(|v| *v = T::nan());
    }
    T::nan()
}

/// Categorical cross-entropy over the row: `-Σ y·log_softmax(x)` from logits (gradient
/// `softmax(x)·Σy - y`), or `-Σ y·ln(clip(p/Σp, eps, 1-eps))` from probabilities (gradient
/// `-y_j/p_j·[inside_j] + Σ_c y_c [inside_c] / Σp`, the clip's range closed).
///
/// Non-finite inputs follow Keras' formula: a NaN or `+inf` logit makes the row NaN; a `-inf`
/// logit has probability 0, and where its target is 0 the value is `0·(-inf)` = NaN as in Keras
/// (the gradient stays finite). From probabilities, see the renormalisation rule above.
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
        let ls = T::c(self.label_smoothing);
        let smooth = Smooth { keep: T::one() - ls, add: ls * T::c(self.smoothing_share) };
        if self.from_logits {
            cce_logits(y_true, y_pred, smooth, scale, grad)
        } else {
            cce_probs(y_true, y_pred, smooth, scale, grad)
        }
    }
}

/// [`CategoricalCrossentropy`] from logits: one exponential per element, kept in the gradient
/// buffer and then scaled.
#[inline(always)]
fn cce_logits<T: Float>(y_true: &[T], y_pred: &[T], smooth: Smooth<T>, scale: T, grad: Option<&mut [T]>) -> T {
    let n = y_pred.len().min(y_true.len());
    let Some(g) = grad else {
        let (m, ln_s) = log_sum_exp_parts(y_pred);
        return -T::narrow(lane_sum2_wide(&y_true[..n], &y_pred[..n], |y, x| smooth.apply(y) * ((x - m) - ln_s)));
    };
    let m = row_max(y_pred);
    let sums = exp_with_targets(&y_pred[..n], &y_true[..n], m, smooth, &mut g[..n]);
    let ln_s = sums.exp_sum.widen().ln();
    // -Σ y·((x - m) - ln s) = ln s·Σy - Σ y·(x - m): both terms ≥ 0, no cancellation.
    let value = T::narrow(ln_s * sums.y_sum - sums.y_dot_shifted);
    let k = scale * T::narrow(sums.y_sum) / sums.exp_sum;
    for (gj, &y) in g.iter_mut().zip(y_true) {
        *gj = *gj * k - scale * smooth.apply(y);
    }
    value
}

/// [`CategoricalCrossentropy`] from probabilities: renormalise, clip, `-Σ y ln o`.
#[inline(always)]
fn cce_probs<T: Float>(y_true: &[T], y_pred: &[T], smooth: Smooth<T>, scale: T, grad: Option<&mut [T]>) -> T {
    let (eps, hi) = (T::EPSILON_KERAS, one_minus_eps::<T>());
    let total = row_total(y_pred);
    if renormalisation_fails(total) {
        return nan_row(grad);
    }
    let mut value = WideSum::default();
    let mut inside_mass = WideSum::default();
    for (&y, &p) in y_true.iter().zip(y_pred) {
        let y = smooth.apply(y);
        let o = p / total;
        value.add(y * clip(o, eps, hi).ln_fast());
        if clip_passes(o, eps, hi) {
            inside_mass.add(y);
        }
    }
    if let Some(g) = grad {
        let shared = T::narrow(inside_mass.total()) / total;
        for ((gj, &y), &p) in g.iter_mut().zip(y_true).zip(y_pred) {
            let y = smooth.apply(y);
            let o = p / total;
            let own = if clip_passes(o, eps, hi) { y / (o * total) } else { T::zero() };
            *gj = scale * (shared - own);
        }
    }
    T::narrow(-value.total())
}

/// Sparse categorical cross-entropy: `y_true` holds one class index per row (as a float).
/// From logits `logsumexp(x) - x[k]` (gradient `softmax(x) - onehot(k)`); from probabilities
/// `-ln(clip(p[k]/Σp, eps, 1-eps))`. A negative label marks an ignored row (value 0,
/// gradient 0); an index `≥ cols` gives NaN (callers validate labels first).
/// With `class_weights`, the row is multiplied by `w[k]`.
///
/// `label_smoothing` `ε` (from logits only, PyTorch's `CrossEntropyLoss` semantics; Keras' sparse
/// loss has none): `(1 - ε)·w[k]·(-log_softmax(x)[k]) + ε/C·Σ_c w[c]·(-log_softmax(x)[c])`,
/// gradient `(1 - ε)·w[k]·(softmax - onehot(k)) + ε/C·(W·softmax - w)` with `W = Σw`.
///
/// A row with non-finite predictions gets the value Keras' one-hot formula gives it, the same
/// as [`CategoricalCrossentropy`] with a one-hot target: NaN for a NaN or `+inf` logit and for a
/// `-inf` logit outside the label (`0·(-inf)`); from probabilities, the renormalisation rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseCategoricalCrossentropy<'a> {
    /// Whether `y_pred` holds logits.
    pub from_logits: bool,
    /// Optional weight per class (PyTorch's `weight=`), length `cols`.
    pub class_weights: Option<&'a [f64]>,
    /// PyTorch's label smoothing `ε` (from logits only; 0 for Keras).
    pub label_smoothing: f64,
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
        if self.from_logits && self.label_smoothing != 0.0 {
            sparse_logits_smoothed(y_pred, k, self.class_weights, T::c(self.label_smoothing), scale, grad)
        } else if self.from_logits {
            sparse_logits(y_pred, k, w, scale, grad)
        } else {
            sparse_probs(y_pred, k, w, scale, grad)
        }
    }
}

/// [`SparseCategoricalCrossentropy`] from logits, for label `k` with class weight `w`.
#[inline(always)]
fn sparse_logits<T: Float>(y_pred: &[T], k: usize, w: T, scale: T, grad: Option<&mut [T]>) -> T {
    let m = row_max(y_pred);
    let ln_s = match grad {
        None => ln_sum_exp(y_pred, m),
        Some(g) => {
            // One exponential per element, kept in the gradient buffer, then scaled.
            let s = exp_into(y_pred, m, g);
            let ws = w * scale;
            let factor = ws / s;
            for gj in g.iter_mut() {
                *gj = *gj * factor;
            }
            g[k] = g[k] - ws;
            T::narrow(s.widen().ln())
        }
    };
    let value = -w * ((y_pred[k] - m) - ln_s);
    // Keras multiplies every log-probability by its one-hot target: 0·(-inf) is NaN.
    if value.is_finite() && has_neg_inf_besides(y_pred, k) {
        T::nan()
    } else {
        value
    }
}

/// [`SparseCategoricalCrossentropy`] from logits with PyTorch's label smoothing `eps`: the exact
/// loss is `(1-ε)·w_k·(lse - x_k) + ε/C·Σ_c w_c·(lse - x_c)` (with `lse` the log-sum-exp).
#[inline(always)]
fn sparse_logits_smoothed<T: Float>(
    y_pred: &[T],
    k: usize,
    weights: Option<&[f64]>,
    eps: T,
    scale: T,
    grad: Option<&mut [T]>,
) -> T {
    let one = T::one();
    let c = T::c(y_pred.len() as f64);
    let w = |j: usize| class_weight::<T>(weights, j);
    let m = row_max(y_pred);
    let (mut s, mut w_total, mut w_dot_shifted) = (WideSum::default(), WideSum::default(), WideSum::default());
    for (j, &x) in y_pred.iter().enumerate() {
        s.add((x - m).exp_fast());
        w_total.add(w(j));
        w_dot_shifted.add(w(j) * (x - m));
    }
    let (s, w_total) = (T::narrow(s.total()), T::narrow(w_total.total()));
    let ln_s = T::narrow(s.widen().ln());
    // Σ_c w_c·(lse - x_c) = W·ln s - Σ_c w_c·(x_c - m), both in f64.
    let smooth = T::narrow(w_total.widen() * ln_s.widen() - w_dot_shifted.total());
    let picked = w(k) * (ln_s - (y_pred[k] - m));
    if let Some(g) = grad {
        let (a, b) = ((one - eps) * w(k), eps / c);
        let soft = (a + b * w_total) * scale / s;
        for (j, (gj, &x)) in g.iter_mut().zip(y_pred).enumerate() {
            *gj = soft * (x - m).exp_fast() - scale * b * w(j);
        }
        g[k] = g[k] - scale * a;
    }
    (one - eps) * picked + eps / c * smooth
}

/// Whether some `x[j]`, `j ≠ k`, is `-inf`: a counting pass without early exit (it vectorises;
/// cheap beside the row's exponentials), then a look at `k`.
#[inline(always)]
fn has_neg_inf_besides<T: Float>(x: &[T], k: usize) -> bool {
    let count = x.iter().fold(0u32, |n, &v| n + u32::from(v == T::neg_infinity()));
    count > u32::from(x[k] == T::neg_infinity())
}

/// [`SparseCategoricalCrossentropy`] from probabilities, for label `k` with class weight `w`.
#[inline(always)]
fn sparse_probs<T: Float>(y_pred: &[T], k: usize, w: T, scale: T, grad: Option<&mut [T]>) -> T {
    let (eps, hi) = (T::EPSILON_KERAS, one_minus_eps::<T>());
    let total = row_total(y_pred);
    if renormalisation_fails(total) {
        return nan_row(grad);
    }
    let o = y_pred[k] / total;
    if let Some(g) = grad {
        let inside = clip_passes(o, eps, hi);
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
    -w * clip(o, eps, hi).ln_fast()
}

/// Categorical focal cross-entropy (Keras 3) over the row: `s = softmax(x)` from logits, else
/// `p`; `o = clip(s/Σs, eps, 1-eps)`; `loss = Σ_c α_c (1 - o_c)^γ · (-y_c ln o_c)`.
/// `alpha` has one entry (shared) or one per class. Sums are taken in `f64`; the
/// renormalisation rule of [`CategoricalCrossentropy`] applies to `Σs`.
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
        let total = T::narrow(lane_sum_wide(y_pred, prob));
        if renormalisation_fails(total) {
            return nan_row(grad);
        }
        let mut value = WideSum::default();
        let mut a_dot_s = WideSum::default();
        let mut g = grad;
        for (c, (&y, &x)) in y_true.iter().zip(y_pred).enumerate() {
            let s = prob(x);
            let o = clip(s / total, eps, hi);
            let modulating = (one - o).powf(gamma);
            let cce = -y * o.ln_fast();
            value.add(modulating * alpha(c) * cce);
            if let Some(g) = g.as_deref_mut() {
                // ∂term/∂o, zero where o was clipped.
                let inside = clip_passes(s / total, eps, hi);
                let dmod =
                    if gamma == T::zero() { T::zero() } else { gamma * (one - o).powf(gamma - one) * y * o.ln_fast() };
                let a = if inside { alpha(c) * (dmod - modulating * y / o) } else { T::zero() };
                g[c] = a;
                a_dot_s.add(a * s);
            }
        }
        if let Some(g) = g {
            // Through the renormalisation o = s/Σs, then (from logits) through the softmax.
            let a_dot_s = T::narrow(a_dot_s.total());
            let mut gp_dot_s = WideSum::default();
            for (gc, &x) in g.iter_mut().zip(y_pred) {
                *gc = *gc / total - a_dot_s / (total * total);
                gp_dot_s.add(*gc * prob(x));
            }
            let gp_dot_s = T::narrow(gp_dot_s.total());
            for (gc, &x) in g.iter_mut().zip(y_pred) {
                *gc = scale * if self.from_logits { prob(x) * (*gc - gp_dot_s) } else { *gc };
            }
        }
        T::narrow(value.total())
    }
}
