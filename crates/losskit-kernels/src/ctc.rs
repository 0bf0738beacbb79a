//! Connectionist temporal classification (CTC) loss, Keras 3 / optax formulation.

use crate::{Float, RowKernel};

/// Keras' "log zero": impossible alignments cost about `1e5` instead of `inf`.
const LOG_EPSILON: f64 = -1e5;

/// `ln(eᵃ + eᵇ)` and the two partial derivatives `(eᵃ⁻ʳ, eᵇ⁻ʳ)`.
#[inline]
fn log_add_exp<T: Float>(a: T, b: T) -> T {
    let m = a.max(b);
    m + (-(a - b).abs()).exp().ln_1p()
}

/// `a = [phi₀, lae(phi_{i+1}, emit_i + le·repeat_i)]`: the blank states after the emit-to-blank
/// transition of one step (recomputed by the backward pass rather than stored).
#[inline]
fn enter_states<T: Float>(phi: &[T], emit: &[T], repeat: &[T], le: T, a: &mut [T]) {
    a[0] = phi[0];
    for i in 0..emit.len() {
        a[i + 1] = log_add_exp(phi[i + 1], emit[i] + le * repeat[i]);
    }
}

/// CTC loss of one sequence: `-ln p(label | x)` with `x` of shape `(T, K)` (logits; a
/// log-softmax is applied inside) and the label padded with blanks to `max_label_len`.
///
/// Blank = class 0. The label length is the number of non-zero entries (zeros must be
/// trailing padding, as in Keras). Every input has its full length `T`. The recursion is the
/// blank/emit ("phi"/"emit") form Keras uses on JAX, with log-zero `-1e5`, so an infeasible
/// label (needing more than `T` frames) gives a large finite loss (`≈ 1e5`) rather than `inf`.
/// The gradient is the exact derivative of that recursion (reverse mode, in the same pass).
///
/// As a [`RowKernel`]: a row of `y_pred` is the flattened `(T, K)` logits of one sequence and
/// its `y_true` row holds `max_label_len` class indices (as floats) in `0..K`.
#[derive(Debug, Clone, Copy)]
pub struct Ctc {
    /// `K`, the number of classes including the blank.
    pub classes: usize,
    /// `N`, the padded label length.
    pub max_label_len: usize,
}

impl<T: Float> RowKernel<T> for Ctc {
    const NAME: &'static str = "ctc";

    fn true_cols(&self, _cols: usize) -> usize {
        self.max_label_len
    }

    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let (k, n) = (self.classes.max(1), self.max_label_len);
        let steps = y_pred.len() / k;
        let le = T::c(LOG_EPSILON);
        let target: Vec<usize> = y_true.iter().map(|v| v.to_usize().unwrap_or(0).min(k - 1)).collect();
        let label_len = y_true.iter().filter(|&&v| v != T::zero()).count();
        let repeat: Vec<T> =
            (0..n).map(|i| if i + 1 < n && target[i] == target[i + 1] { T::one() } else { T::zero() }).collect();

        // Log-softmax of every frame.
        let mut lp = vec![T::zero(); steps * k];
        for t in 0..steps {
            let x = &y_pred[t * k..(t + 1) * k];
            let m = x.iter().copied().fold(T::neg_infinity(), T::max);
            let s = x.iter().fold(T::zero(), |a, &v| a + (v - m).exp()).ln();
            for (o, &v) in lp[t * k..(t + 1) * k].iter_mut().zip(x) {
                *o = (v - m) - s;
            }
        }

        // Forward recursion; phi has n+1 states (blank before/after each label), emit has n.
        let mut phi = vec![le; (steps + 1) * (n + 1)];
        let mut emit = vec![le; (steps + 1) * n];
        phi[0] = T::zero();
        let mut a = vec![T::zero(); n + 1];
        for t in 0..steps {
            let (p0, e0) = (t * (n + 1), t * n);
            let (p1, e1) = ((t + 1) * (n + 1), (t + 1) * n);
            let blank = lp[t * k];
            enter_states(&phi[p0..p0 + n + 1], &emit[e0..e0 + n], &repeat, le, &mut a);
            for i in 0..n {
                let e = lp[t * k + target[i]];
                emit[e1 + i] = log_add_exp(a[i] + e, emit[e0 + i] + e);
            }
            phi[p1] = a[0] + blank;
            for i in 0..n {
                phi[p1 + i + 1] = log_add_exp(a[i + 1] + blank, emit[e0 + i] + blank + le * (T::one() - repeat[i]));
            }
        }
        let (pt, et) = (steps * (n + 1), steps * n);
        let last = |i: usize| if i == 0 { phi[pt] } else { log_add_exp(phi[pt + i], emit[et + i - 1]) };
        let value = -last(label_len);

        if let Some(g) = grad {
            // Reverse mode through the recursion: adjoints of phi[t] / emit[t].
            let mut g_phi = vec![T::zero(); n + 1];
            let mut g_emit = vec![T::zero(); n];
            let top = -scale;
            if label_len == 0 {
                g_phi[0] = top;
            } else {
                let r = last(label_len);
                g_phi[label_len] = top * (phi[pt + label_len] - r).exp();
                g_emit[label_len - 1] = top * (emit[et + label_len - 1] - r).exp();
            }
            let mut g_lp = vec![T::zero(); steps * k];
            let mut g_a = vec![T::zero(); n + 1];
            for t in (0..steps).rev() {
                let (p0, e0) = (t * (n + 1), t * n);
                let (p1, e1) = ((t + 1) * (n + 1), (t + 1) * n);
                let blank = lp[t * k];
                enter_states(&phi[p0..p0 + n + 1], &emit[e0..e0 + n], &repeat, le, &mut a);
                let mut prev_phi = vec![T::zero(); n + 1];
                let mut prev_emit = vec![T::zero(); n];
                let mut g_blank = T::zero();
                // next_phi = [a0 + blank, lae(a[i+1] + blank, emit[i] + blank + le(1-r))]
                g_a[0] = g_phi[0];
                g_blank = g_blank + g_phi[0];
                for i in 0..n {
                    let out = phi[p1 + i + 1];
                    let u = a[i + 1] + blank;
                    let v = emit[e0 + i] + blank + le * (T::one() - repeat[i]);
                    let (wu, wv) = ((u - out).exp(), (v - out).exp());
                    g_a[i + 1] = g_phi[i + 1] * wu;
                    prev_emit[i] = prev_emit[i] + g_phi[i + 1] * wv;
                    g_blank = g_blank + g_phi[i + 1] * (wu + wv);
                }
                // next_emit = lae(a[i] + e, emit[i] + e)
                for i in 0..n {
                    let out = emit[e1 + i];
                    let e = lp[t * k + target[i]];
                    let (wu, wv) = ((a[i] + e - out).exp(), (emit[e0 + i] + e - out).exp());
                    g_a[i] = g_a[i] + g_emit[i] * wu;
                    prev_emit[i] = prev_emit[i] + g_emit[i] * wv;
                    g_lp[t * k + target[i]] = g_lp[t * k + target[i]] + g_emit[i] * (wu + wv);
                }
                g_lp[t * k] = g_lp[t * k] + g_blank;
                // a = [phi0, lae(phi[i+1], emit[i] + le·r)]
                prev_phi[0] = g_a[0];
                for i in 0..n {
                    let out = a[i + 1];
                    prev_phi[i + 1] = g_a[i + 1] * (phi[p0 + i + 1] - out).exp();
                    prev_emit[i] = prev_emit[i] + g_a[i + 1] * (emit[e0 + i] + le * repeat[i] - out).exp();
                }
                g_phi = prev_phi;
                g_emit = prev_emit;
            }
            // Through the log-softmax of each frame.
            for t in 0..steps {
                let total = g_lp[t * k..(t + 1) * k].iter().fold(T::zero(), |s, &v| s + v);
                for c in 0..k {
                    g[t * k + c] = g_lp[t * k + c] - lp[t * k + c].exp() * total;
                }
            }
        }
        value
    }
}
