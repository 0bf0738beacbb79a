//! Sparsemax loss (Martins & Astudillo 2016).

use crate::{Float, RowKernel};

/// `p = sparsemax(z)`: the Euclidean projection of `z` onto the simplex. Sort `z` descending,
/// `k_z = max{k : 1 + k·z_(k) > Σ_{i≤k} z_(i)}`, `τ = (Σ_{i≤k_z} z_(i) - 1)/k_z`, `p = max(z - τ, 0)`.
pub fn sparsemax<T: Float>(z: &[T], p: &mut [T]) {
    let mut sorted: Vec<T> = z.to_vec();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    let (mut cum, mut k_z, mut cum_k) = (T::zero(), 0usize, T::zero());
    for (k, &v) in sorted.iter().enumerate() {
        cum = cum + v;
        if T::one() + T::c((k + 1) as f64) * v > cum {
            k_z = k + 1;
            cum_k = cum;
        }
    }
    if k_z == 0 {
        p.iter_mut().for_each(|v| *v = T::nan());
        return;
    }
    let tau = (cum_k - T::one()) / T::c(k_z as f64);
    for (o, &v) in p.iter_mut().zip(z) {
        *o = (v - tau).max(T::zero());
    }
}

/// The sparsemax loss of one row: `y_true` the target distribution `q`, `y_pred` the logits `z`:
/// `Σ_{p_j>0} p_j(z_j - p_j/2) + Σ_j q_j(q_j/2 - z_j)`, gradient `p - q`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SparsemaxLoss;

impl<T: Float> RowKernel<T> for SparsemaxLoss {
    const NAME: &'static str = "sparsemax_loss";
    #[inline(always)]
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let mut p = vec![T::zero(); y_pred.len()];
        sparsemax(y_pred, &mut p);
        let half = T::c(0.5);
        let mut value = T::zero();
        for ((&q, &z), &pj) in y_true.iter().zip(y_pred).zip(&p) {
            if pj > T::zero() || pj.is_nan() {
                value = value + pj * (z - pj * half);
            }
            // q_j = 0 with an infinite z_j contributes 0 (not 0·∞).
            if !(q == T::zero() && z.is_infinite()) {
                value = value + q * (q * half - z);
            }
        }
        if let Some(g) = grad {
            for ((gj, &q), &pj) in g.iter_mut().zip(y_true).zip(&p) {
                *gj = scale * (pj - q);
            }
        }
        value
    }
}
