//! Regression kernels: the per-sample value is a mean (or, for KLD and cosine, a sum) over a row.

use crate::sum::{fold_lanes, lane_sum2_wide, lane_sum2_widened, lane_sum_wide, lane_sum_widened, BLOCK};
use crate::{clip, clip_passes, maximum, sign, ElementKernel, Float, RowKernel};

/// An element-wise loss term: `(value, ∂value/∂p)` of one `(y_true, y_pred)` pair. A named
/// `#[inline(always)]` method (closures may stay out of line, which stops vectorisation).
pub(crate) trait Term<T> {
    /// The value and the derivative w.r.t. the prediction.
    fn term(&self, t: T, p: T) -> (T, T);
}

/// Mean over a row of an element term `f(t, p) -> (value, ∂value/∂p)`, value and gradient in one
/// pass (see [`sum_row`]). A mean over an empty row is NaN, as in NumPy and Keras.
#[inline(always)]
pub(crate) fn mean_row<T: Float>(
    y_true: &[T],
    y_pred: &[T],
    scale: T,
    grad: Option<&mut [T]>,
    term: &impl Term<T>,
) -> T {
    let n = T::c(y_pred.len() as f64);
    T::narrow(sum_row(y_true, y_pred, scale / n, grad, term) / n.widen())
}

/// `Σ f(t, p).value` over a row, in `f64`, writing `k · f(t, p).derivative` into `grad`.
/// Blocks of [`BLOCK`] values are summed in 8 lanes of `T` (the loop vectorises), the block sums in
/// `f64` ([`crate::sum`]); without `grad` the derivative half of `f` is dead code and compiles
/// away.
#[inline(always)]
pub(crate) fn sum_row<T: Float>(y_true: &[T], y_pred: &[T], k: T, grad: Option<&mut [T]>, term: &impl Term<T>) -> f64 {
    let Some(g) = grad else {
        return lane_sum2_wide(y_true, y_pred, |t, p| term.term(t, p).0);
    };
    let mut total = 0.0;
    // Whole blocks as fixed-size arrays (a known trip count keeps the inner loop vectorised),
    // then the rest. Plain loops: iterator closures may stay out of line and lose the caller's
    // AVX features.
    let (gb, gr) = g.as_chunks_mut::<BLOCK>();
    let (tb, tr) = y_true.as_chunks::<BLOCK>();
    let (pb, pr) = y_pred.as_chunks::<BLOCK>();
    for ((g, t), p) in gb.iter_mut().zip(tb).zip(pb) {
        total += block_with_grad(t, p, k, g, term).widen();
    }
    total + block_with_grad(tr, pr, k, gr, term).widen()
}

/// One block of [`sum_row`] with a gradient: the value sum in 8 lanes of `T`.
#[inline(always)]
fn block_with_grad<T: Float>(y_true: &[T], y_pred: &[T], k: T, g: &mut [T], term: &impl Term<T>) -> T {
    let mut lanes = [T::zero(); 8];
    let mut tail = T::zero();
    let mut gc = g.chunks_exact_mut(8);
    let mut tc = y_true.chunks_exact(8);
    let mut pc = y_pred.chunks_exact(8);
    for ((gs, ts), ps) in (&mut gc).zip(&mut tc).zip(&mut pc) {
        for l in 0..8 {
            let (v, d) = term.term(ts[l], ps[l]);
            lanes[l] = lanes[l] + v;
            gs[l] = d * k;
        }
    }
    for ((gj, &t), &p) in gc.into_remainder().iter_mut().zip(tc.remainder()).zip(pc.remainder()) {
        let (v, d) = term.term(t, p);
        tail = tail + v;
        *gj = d * k;
    }
    fold_lanes(lanes) + tail
}

/// `(y - p)²`, averaged over the row. Gradient `2(p - y)/n`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanSquaredError;

impl<T: Float> Term<T> for MeanSquaredError {
    #[inline(always)]
    fn term(&self, t: T, p: T) -> (T, T) {
        let e = p - t;
        (e * e, e + e)
    }
}

impl<T: Float> RowKernel<T> for MeanSquaredError {
    const NAME: &'static str = "mean_squared_error";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// `|y - p|`, averaged over the row. Gradient `sign(p - y)/n` with `sign(0) = 0`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanAbsoluteError;

impl<T: Float> Term<T> for MeanAbsoluteError {
    #[inline(always)]
    fn term(&self, t: T, p: T) -> (T, T) {
        let e = p - t;
        (e.abs(), sign(e))
    }
}

impl<T: Float> RowKernel<T> for MeanAbsoluteError {
    const NAME: &'static str = "mean_absolute_error";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// `100 · |y - p| / max(|y|, eps)`, averaged over the row.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanAbsolutePercentageError;

impl<T: Float> Term<T> for MeanAbsolutePercentageError {
    #[inline(always)]
    fn term(&self, t: T, p: T) -> (T, T) {
        let hundred = T::c(100.0);
        let e = t - p;
        let denom = t.abs().max(T::EPSILON_KERAS);
        (hundred * (e.abs() / denom), -hundred * sign(e) / denom)
    }
}

impl<T: Float> RowKernel<T> for MeanAbsolutePercentageError {
    const NAME: &'static str = "mean_absolute_percentage_error";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// `(ln(max(p, eps) + 1) - ln(max(y, eps) + 1))²`, averaged over the row.
///
/// `ln(x + 1)` is evaluated as Keras does (the sum rounded, then `ln`), not as `ln_1p`, so the
/// f32 values agree bit for bit in the common case.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanSquaredLogarithmicError;

impl<T: Float> Term<T> for MeanSquaredLogarithmicError {
    #[inline(always)]
    fn term(&self, t: T, p: T) -> (T, T) {
        let eps = T::EPSILON_KERAS;
        let pc = maximum(p, eps) + T::one();
        let d = pc.ln_fast() - (maximum(t, eps) + T::one()).ln_fast();
        // maximum(p, eps) passes the gradient to p unless p < eps (TensorFlow's tie rule; a NaN
        // passes, so its gradient is NaN).
        let dp = if p < eps { T::zero() } else { (d + d) / pc };
        (d * d, dp)
    }
}

impl<T: Float> RowKernel<T> for MeanSquaredLogarithmicError {
    const NAME: &'static str = "mean_squared_logarithmic_error";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// Huber loss with threshold `delta`: `½e²` if `|e| ≤ δ`, else `δ|e| - ½δ²` (`e = p - y`),
/// averaged over the row. The boundary belongs to the quadratic branch.
#[derive(Debug, Clone, Copy)]
pub struct Huber {
    /// The threshold `δ ≥ 0` between the quadratic and the linear branch.
    pub delta: f64,
}

/// Huber's constants, converted to `T` once per row.
struct HuberTerm<T> {
    delta: T,
    half: T,
    linear_offset: T,
}

impl<T: Float> Term<T> for HuberTerm<T> {
    #[inline(always)]
    fn term(&self, t: T, p: T) -> (T, T) {
        let e = p - t;
        let a = e.abs();
        let small = a <= self.delta;
        // Both branches, then a blend: the loop vectorises.
        let quadratic = self.half * (e * e);
        let linear = self.delta * a - self.linear_offset;
        // Clamping e to [-δ, δ] is the derivative of both branches (δ·sign(e) outside).
        let clamped = clip(e, -self.delta, self.delta);
        (if small { quadratic } else { linear }, clamped)
    }
}

impl<T: Float> RowKernel<T> for Huber {
    const NAME: &'static str = "huber_loss";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let delta = T::c(self.delta);
        let half = T::c(0.5);
        mean_row(y_true, y_pred, scale, grad, &HuberTerm { delta, half, linear_offset: half * (delta * delta) })
    }
}

/// PyTorch's `SmoothL1Loss` element: `½d²/β` if `|d| < β`, else `|d| - ½β` (`d = p - y`); with
/// `β = 0` it is `|d|`. Gradient `clip(d/β, -1, 1)` (`sign(d)` for `β = 0`). As a row kernel,
/// the mean over the row.
#[derive(Debug, Clone, Copy)]
pub struct SmoothL1 {
    /// The threshold `β ≥ 0`.
    pub beta: f64,
}

impl<T: Float> Term<T> for SmoothL1 {
    #[inline(always)]
    fn term(&self, t: T, p: T) -> (T, T) {
        let (beta, half, one) = (T::c(self.beta), T::c(0.5), T::one());
        let d = p - t;
        let a = d.abs();
        if self.beta == 0.0 {
            return (a, sign(d));
        }
        let quadratic = half * (d * d) / beta;
        let linear = a - half * beta;
        // Both branches, then a blend; the clip keeps a NaN.
        (if a < beta { quadratic } else { linear }, clip(d / beta, -one, one))
    }
}

impl<T: Float> ElementKernel<T> for SmoothL1 {
    const NAME: &'static str = "smooth_l1_loss";
    #[inline(always)]
    fn element(&self, t: T, p: T) -> (T, T) {
        self.term(t, p)
    }
}

impl<T: Float> RowKernel<T> for SmoothL1 {
    const NAME: &'static str = "smooth_l1_loss";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// `ln cosh(p - y)`, written `x + softplus(-2x) - ln 2` so it stays finite for large `|x|`,
/// averaged over the row. Gradient `tanh(x)/n`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogCosh;

impl<T: Float> Term<T> for LogCosh {
    #[inline(always)]
    fn term(&self, t: T, p: T) -> (T, T) {
        let two = T::c(2.0);
        let x = p - t;
        let z = -two * x;
        // One exponential for both softplus(z) and sigmoid(z): e = e^{-|z|}.
        let e = (-z.abs()).exp_fast();
        let softplus_z = z.max(T::zero()) + e.ln_1p_fast();
        let sigmoid_z = (if z >= T::zero() { T::one() } else { e }) / (T::one() + e);
        // d/dx = 1 - 2·sigmoid(-2x) = tanh(x).
        (x + softplus_z - T::LN_2, T::one() - two * sigmoid_z)
    }
}

impl<T: Float> RowKernel<T> for LogCosh {
    const NAME: &'static str = "log_cosh";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// `p - y·ln(p + eps)`, averaged over the row. Gradient `(1 - y/(p + eps))/n`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Poisson;

impl<T: Float> Term<T> for Poisson {
    #[inline(always)]
    fn term(&self, t: T, p: T) -> (T, T) {
        let eps = T::EPSILON_KERAS;
        let q = p + eps;
        (p - t * q.ln_fast(), T::one() - t / q)
    }
}

impl<T: Float> RowKernel<T> for Poisson {
    const NAME: &'static str = "poisson";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        mean_row(y_true, y_pred, scale, grad, self)
    }
}

/// Kullback–Leibler divergence `Σ t·ln(t/q)` over the row, with `t = clip(y, eps, 1)` and
/// `q = clip(p, eps, 1)`. Gradient `-t/q` on the closed clip range `[eps, 1]` (and at NaN),
/// 0 outside.
#[derive(Debug, Clone, Copy, Default)]
pub struct KLDivergence;

impl<T: Float> Term<T> for KLDivergence {
    #[inline(always)]
    fn term(&self, y: T, p: T) -> (T, T) {
        let (eps, one) = (T::EPSILON_KERAS, T::one());
        let (t, q) = (clip(y, eps, one), clip(p, eps, one));
        (t * (t / q).ln_fast(), if clip_passes(p, eps, one) { -t / q } else { T::zero() })
    }
}

impl<T: Float> RowKernel<T> for KLDivergence {
    const NAME: &'static str = "kl_divergence";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        T::narrow(sum_row(y_true, y_pred, scale, grad, self))
    }
}

/// Negative cosine similarity over the row: `-Σ n(y)·n(p)` with
/// `n(x) = x · min(1/‖x‖₂, 1/eps)` (a zero vector stays zero).
///
/// With `ip` the capped inverse norm of `p`, `ŷ = n(y)`, `p̂ = n(p)` and `c = Σ ŷ·p̂`, the
/// gradient is `-ip·(ŷ - c·p̂)` while the cap is not active, and `-ip·ŷ` when it is.
/// Norms, products and sums are taken in `f64` (an f32 vector whose squares overflow f32 still
/// normalises; an f64 one is rescaled by a power of two first), so the value stays in `[-1, 1]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CosineSimilarity;

/// `Σx²` of a row when it fits in `T` (no square overflows), in `T`.
#[inline(always)]
fn square_sum<T: Float>(x: &[T]) -> Option<T> {
    let ss = T::narrow(lane_sum_wide(x, |v| v * v));
    (ss != T::infinity()).then_some(ss)
}

/// `min(1/√ss, cap)`, keeping a NaN (`min` would turn it into the cap).
#[inline(always)]
fn capped_inverse<F: num_traits::Float>(ss: F, cap: F) -> F {
    let inv = F::one() / ss.sqrt();
    if inv > cap {
        cap
    } else {
        inv
    }
}

/// `min(1/‖x‖₂, 1/eps)` in `f64` for a row whose squares overflow `T`: the squares are taken in
/// `f64`, after scaling `x` by a power of two (exact) if even those overflow.
#[inline(never)]
fn capped_inverse_norm_wide<T: Float>(x: &[T]) -> f64 {
    let cap = 1.0 / T::EPSILON_KERAS.widen();
    let ss = lane_sum_widened(x, |v| v * v);
    if ss != f64::INFINITY {
        return capped_inverse(ss, cap);
    }
    let amax = x.iter().fold(0.0f64, |m, &v| m.max(v.widen().abs()));
    if !amax.is_finite() {
        return capped_inverse(ss, cap);
    }
    // 2^-e with 2^e ≥ amax: the scaled values are at most 1 in magnitude.
    let s = (-amax.log2().ceil()).exp2();
    let scaled = lane_sum_widened(x, |v| (v * s) * (v * s));
    // min(s/√scaled, cap) = s·min(1/√scaled, cap/s).
    s * capped_inverse(scaled, cap / s)
}

impl<T: Float> RowKernel<T> for CosineSimilarity {
    const NAME: &'static str = "cosine_similarity";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let n = y_pred.len().min(y_true.len());
        let (y_true, y_pred) = (&y_true[..n], &y_pred[..n]);
        if let (Some(yy), Some(pp)) = (square_sum(y_true), square_sum(y_pred)) {
            // The common case, in T: 1/‖x‖ is a normal number of T here.
            let cap = T::one() / T::EPSILON_KERAS;
            let (iy, ip) = (capped_inverse(yy, cap), capped_inverse(pp, cap));
            // Keras normalises each side first, then sums the products.
            let c = T::narrow(lane_sum2_wide(y_true, y_pred, |a, b| (a * iy) * (b * ip)));
            if let Some(g) = grad {
                let k = -scale * ip;
                let c_active = if ip >= cap { T::zero() } else { c };
                for ((gj, &y), &p) in g.iter_mut().zip(y_true).zip(y_pred) {
                    *gj = k * (y * iy - c_active * (p * ip));
                }
            }
            return -c;
        }
        cosine_wide(y_true, y_pred, scale, grad)
    }
}

/// [`CosineSimilarity`] of a row whose squares overflow `T`, in `f64`.
#[inline(never)]
fn cosine_wide<T: Float>(y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
    let cap = 1.0 / T::EPSILON_KERAS.widen();
    let (iy, ip) = (capped_inverse_norm_wide(y_true), capped_inverse_norm_wide(y_pred));
    let c = lane_sum2_widened(y_true, y_pred, |a, b| (a * iy) * (b * ip));
    if let Some(g) = grad {
        let k = -scale.widen() * ip;
        let c_active = if ip >= cap { 0.0 } else { c };
        for ((gj, &y), &p) in g.iter_mut().zip(y_true).zip(y_pred) {
            *gj = T::narrow(k * (y.widen() * iy - c_active * (p.widen() * ip)));
        }
    }
    T::narrow(-c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_rows;

    fn value_and_grad<K: RowKernel<f64>>(k: &K, t: &[f64], p: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>) {
        let rows = p.len() / cols;
        let mut v = vec![0.0; rows];
        let mut g = vec![0.0; p.len()];
        run_rows(k, t, p, cols, None, &mut v, Some(&mut g)).unwrap();
        (v, g)
    }

    fn check_fd<K: RowKernel<f64>>(k: &K, t: &[f64], p: &[f64], cols: usize) {
        let (_, g) = value_and_grad(k, t, p, cols);
        let h = 1e-6;
        for j in 0..p.len() {
            let mut pp = p.to_vec();
            pp[j] += h;
            let (vp, _) = value_and_grad(k, t, &pp, cols);
            pp[j] -= 2.0 * h;
            let (vm, _) = value_and_grad(k, t, &pp, cols);
            let fd: f64 = vp.iter().zip(&vm).map(|(a, b)| (a - b) / (2.0 * h)).sum();
            assert!((fd - g[j]).abs() <= 1e-5 * (1.0 + fd.abs()), "{} j={j}: fd {fd} vs {}", K::NAME, g[j]);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let t = [0.2, 0.9, 0.4, 0.7, 0.1, 0.5];
        let p = [0.3, 0.6, 0.45, 0.2, 0.35, 0.8];
        check_fd(&MeanSquaredError, &t, &p, 3);
        check_fd(&MeanAbsoluteError, &t, &p, 3);
        check_fd(&MeanAbsolutePercentageError, &t, &p, 3);
        check_fd(&MeanSquaredLogarithmicError, &t, &p, 3);
        check_fd(&Huber { delta: 0.2 }, &t, &p, 3);
        check_fd(&LogCosh, &t, &p, 3);
        check_fd(&Poisson, &t, &p, 3);
        check_fd(&KLDivergence, &t, &p, 3);
        check_fd(&CosineSimilarity, &t, &p, 3);
    }

    #[test]
    fn upstream_scales_each_row() {
        let t = [0.0, 1.0, 1.0, 0.0];
        let p = [0.5, 0.5, 0.25, 0.75];
        let mut v = [0.0; 2];
        let mut g = [0.0; 4];
        run_rows(&MeanSquaredError, &t, &p, 2, Some(&[2.0, -1.0]), &mut v, Some(&mut g)).unwrap();
        assert_eq!(v, [0.25, 0.5625]);
        assert_eq!(g, [1.0, -1.0, 0.75, -0.75]);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut v = [0.0f32; 2];
        let err = run_rows(&MeanSquaredError, &[0.0; 3], &[0.0; 4], 2, None, &mut v, None).unwrap_err();
        assert!(err.to_string().contains("y_true has length 3, expected 4"), "{err}");
        let err = run_rows(&MeanSquaredError, &[0.0; 3], &[0.0; 3], 2, None, &mut v, None).unwrap_err();
        assert!(matches!(err, crate::KernelError::Layout { .. }));
    }

    #[test]
    fn parallel_path_equals_serial_path() {
        let cols = 64;
        let rows = 1024; // 65536 values: above the parallel threshold
        let t: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
        let p: Vec<f32> = (0..rows * cols).map(|i| ((i * 104729) % 97) as f32 / 97.0).collect();
        let mut v = vec![0.0; rows];
        let mut g = vec![0.0; rows * cols];
        run_rows(&LogCosh, &t, &p, cols, None, &mut v, Some(&mut g)).unwrap();
        for r in [0, 511, 1023] {
            let span = r * cols..(r + 1) * cols;
            let mut gr = vec![0.0; cols];
            let vr = LogCosh.row(&t[span.clone()], &p[span.clone()], 1.0, Some(&mut gr));
            assert_eq!(vr, v[r]);
            assert_eq!(gr, g[span]);
        }
    }
}
