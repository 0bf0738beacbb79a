//! Regression kernels: the per-sample value is a mean (or, for KLD and cosine, a sum) over a row.

use crate::{sign, Float, RowKernel};

/// An element-wise loss term: `(value, ∂value/∂p)` of one `(y_true, y_pred)` pair. A named
/// `#[inline(always)]` method (closures may stay out of line, which stops vectorisation).
pub(crate) trait Term<T> {
    /// The value and the derivative w.r.t. the prediction.
    fn term(&self, t: T, p: T) -> (T, T);
}

/// Mean over a row of an element term `f(t, p) -> (value, ∂value/∂p)`, value and gradient in one
/// pass. Values are summed in 8 independent lanes so the loop vectorises; without `grad` the
/// derivative half of `f` is dead code and compiles away.
#[inline(always)]
pub(crate) fn mean_row<T: Float>(
    y_true: &[T],
    y_pred: &[T],
    scale: T,
    grad: Option<&mut [T]>,
    term: &impl Term<T>,
) -> T {
    let f = |t: T, p: T| term.term(t, p);
    let n = T::c(y_pred.len() as f64);
    let mut lanes = [T::zero(); 8];
    let mut tail = T::zero();
    match grad {
        Some(g) => {
            let k = scale / n;
            let mut gc = g.chunks_exact_mut(8);
            let mut tc = y_true.chunks_exact(8);
            let mut pc = y_pred.chunks_exact(8);
            for ((gs, ts), ps) in (&mut gc).zip(&mut tc).zip(&mut pc) {
                for l in 0..8 {
                    let (v, d) = f(ts[l], ps[l]);
                    lanes[l] = lanes[l] + v;
                    gs[l] = d * k;
                }
            }
            for ((gj, &t), &p) in gc.into_remainder().iter_mut().zip(tc.remainder()).zip(pc.remainder()) {
                let (v, d) = f(t, p);
                tail = tail + v;
                *gj = d * k;
            }
        }
        None => {
            let mut tc = y_true.chunks_exact(8);
            let mut pc = y_pred.chunks_exact(8);
            for (ts, ps) in (&mut tc).zip(&mut pc) {
                for l in 0..8 {
                    lanes[l] = lanes[l] + f(ts[l], ps[l]).0;
                }
            }
            for (&t, &p) in tc.remainder().iter().zip(pc.remainder()) {
                tail = tail + f(t, p).0;
            }
        }
    }
    // A mean over an empty row is NaN, as in NumPy and Keras.
    (lanes.iter().fold(T::zero(), |a, &b| a + b) + tail) / n
}

/// `Σ f(a_i)` in 8 independent lanes (vectorises).
#[inline(always)]
pub(crate) fn lane_sum<T: Float>(a: &[T], f: impl Fn(T) -> T) -> T {
    let mut lanes = [T::zero(); 8];
    let mut chunks = a.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = lanes[l] + f(c[l]);
        }
    }
    let tail = chunks.remainder().iter().fold(T::zero(), |s, &v| s + f(v));
    lanes.iter().fold(T::zero(), |x, &y| x + y) + tail
}

/// `Σ f(a_i, b_i)` in 8 independent lanes (vectorises).
#[inline(always)]
pub(crate) fn lane_sum2<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut lanes = [T::zero(); 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            lanes[l] = lanes[l] + f(x[l], y[l]);
        }
    }
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::zero(), |s, (&x, &y)| s + f(x, y));
    lanes.iter().fold(T::zero(), |x, &y| x + y) + tail
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
        let pc = p.max(eps) + T::one();
        let d = pc.ln_fast() - (t.max(eps) + T::one()).ln_fast();
        // maximum(p, eps) passes the gradient to p when p >= eps (TensorFlow's tie rule).
        let dp = if p >= eps { (d + d) / pc } else { T::zero() };
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
        let clamped = e.max(-self.delta).min(self.delta);
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
/// `q = clip(p, eps, 1)`. Gradient `-t/q` strictly inside the clip range, 0 outside.
#[derive(Debug, Clone, Copy, Default)]
pub struct KLDivergence;

impl<T: Float> RowKernel<T> for KLDivergence {
    const NAME: &'static str = "kl_divergence";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let eps = T::EPSILON_KERAS;
        let one = T::one();
        let clip = |x: T| x.max(eps).min(one);
        let mut sum = T::zero();
        match grad {
            Some(g) => {
                for ((gj, &y), &p) in g.iter_mut().zip(y_true).zip(y_pred) {
                    let (t, q) = (clip(y), clip(p));
                    sum = sum + t * (t / q).ln_fast();
                    *gj = if p > eps && p < one { -scale * t / q } else { T::zero() };
                }
            }
            None => {
                for (&y, &p) in y_true.iter().zip(y_pred) {
                    let (t, q) = (clip(y), clip(p));
                    sum = sum + t * (t / q).ln_fast();
                }
            }
        }
        sum
    }
}

/// Negative cosine similarity over the row: `-Σ n(y)·n(p)` with
/// `n(x) = x · min(1/‖x‖₂, 1/eps)` (a zero vector stays zero).
///
/// With `iy`, `ip` the two capped inverse norms and `s = y·p`, the gradient is
/// `-iy·(ip·y - s·ip³·p)` while the cap is not active, and `-iy·ip·y` when it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct CosineSimilarity;

impl<T: Float> RowKernel<T> for CosineSimilarity {
    const NAME: &'static str = "cosine_similarity";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let cap = T::one() / T::EPSILON_KERAS;
        let n = y_pred.len().min(y_true.len());
        let (y_true, y_pred) = (&y_true[..n], &y_pred[..n]);
        let yy = lane_sum(y_true, |v| v * v);
        let pp = lane_sum(y_pred, |v| v * v);
        let yp = lane_sum2(y_true, y_pred, |a, b| a * b);
        let inv_norm = |s: T| (T::one() / s.sqrt()).min(cap);
        let (iy, ip) = (inv_norm(yy), inv_norm(pp));
        if let Some(g) = grad {
            let capped = ip >= cap;
            let a = -scale * iy * ip;
            let b = if capped { T::zero() } else { scale * iy * yp * ip * ip * ip };
            for ((gj, &y), &p) in g.iter_mut().zip(y_true).zip(y_pred) {
                *gj = a * y + b * p;
            }
        }
        // Keras normalises each side first, then sums the products.
        -lane_sum2(y_true, y_pred, |a, b| (a * iy) * (b * ip))
    }
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
