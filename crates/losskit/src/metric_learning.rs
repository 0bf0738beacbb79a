//! Metric-learning losses over a batch of embeddings: Circle (Keras 3).

use crate::config::{require, Params};
use crate::{Loss, PerSample, Reduction, Result, Tensor};
use serde_json::{json, Value};

/// `[i, j] = 1` where `f(label_i, label_j)` holds, as a constant `(B, B)` tensor.
fn pair_mask(labels: &[f64], dtype: losskit_tensor::DType, f: impl Fn(usize, usize) -> bool) -> Result<Tensor> {
    let n = labels.len();
    let v: Vec<f64> = (0..n * n).map(|k| f64::from(u8::from(f(k / n, k % n)))).collect();
    Ok(Tensor::from_vec(v, &[n, n])?.to_dtype(dtype))
}

/// Circle loss (Sun et al. 2020) on the batch's own pairs. With cosine distances
/// `d_ij = max(1 - e_i·e_j, 0)`, margin `m`, scale `γ`:
///
/// ```text
/// pos: label_i == label_j (i ≠ j if remove_diagonal)     neg: label_i != label_j
/// wp = max((m + d)·pos, 0)        P_ij = -γ·wp·(m - d)        on pos, else -inf
/// wn = max((1 + m - d)·neg, 0)    N_ij =  γ·wn·((1 - m) - d)  on neg, else -inf
/// l_i = softplus(logsumexp_j P_ij + logsumexp_j N_ij)
/// ```
///
/// A sample without positives (or negatives) gets exactly 0. The loss attaches the mask
/// `l > 0`, so the default mean is over the positive-loss samples only (Keras' behaviour).
/// Shapes: labels `(B,)`, embeddings `(B, D)` (meant to be L2-normalised) → `(B,)`.
/// Defaults `gamma = 80`, `margin = 0.4`, `remove_diagonal = true`. Alias `circle`.
#[derive(Debug, Clone)]
pub struct Circle {
    name: String,
    reduction: Reduction,
    gamma: f64,
    margin: f64,
    remove_diagonal: bool,
}

impl Default for Circle {
    fn default() -> Self {
        Circle {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            gamma: 80.0,
            margin: 0.4,
            remove_diagonal: true,
        }
    }
}

loss_basics!(Circle);

impl Circle {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "circle";
    /// The loss with scale `gamma` and `margin` (both finite).
    pub fn new(gamma: f64, margin: f64) -> Result<Self> {
        require(gamma.is_finite(), "Circle", "gamma", gamma, "a finite number")?;
        require(margin.is_finite(), "Circle", "margin", margin, "a finite number")?;
        Ok(Circle { gamma, margin, ..Self::default() })
    }
    /// Whether a sample is excluded from its own positives (default true).
    pub fn with_remove_diagonal(mut self, on: bool) -> Self {
        self.remove_diagonal = on;
        self
    }
    /// Builds from a Keras config (`name`, `reduction`, `gamma`, `margin`, `remove_diagonal`).
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("Circle", config)?;
        let (name, reduction) = (p.name(Self::DEFAULT_NAME)?, p.reduction()?);
        let (gamma, margin, rd) = (p.f64("gamma", 80.0)?, p.f64("margin", 0.4)?, p.bool("remove_diagonal", true)?);
        p.finish()?;
        Ok(Self::new(gamma, margin)?.with_name(name).with_reduction(reduction).with_remove_diagonal(rd))
    }
}

impl Loss for Circle {
    loss_identity!(Circle);
    fn config(&self) -> Value {
        json!({"name": self.name, "reduction": self.reduction.keras_name(), "gamma": self.gamma, "margin": self.margin,
               "remove_diagonal": self.remove_diagonal})
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        if y_pred.rank() != 2 || y_true.rank() != 1 || y_true.shape()[0] != y_pred.shape()[0] {
            return Err(crate::Error::Shape {
                op: self.name.clone(),
                msg: format!(
                    "expected labels (B,) and embeddings (B, D), got {:?} and {:?}",
                    y_true.shape(),
                    y_pred.shape()
                ),
            });
        }
        let dtype = y_pred.dtype();
        let labels: Vec<f64> = y_true.to_vec::<f64>().into_iter().map(f64::trunc).collect();
        let rd = self.remove_diagonal;
        let pos = pair_mask(&labels, dtype, |i, j| labels[i] == labels[j] && !(rd && i == j))?;
        let neg = pair_mask(&labels, dtype, |i, j| labels[i] != labels[j])?;
        let (m, g) = (self.margin, self.gamma);
        let d = y_pred.matmul(&y_pred.transpose(None)?)?.neg().add_scalar(1.0)?.maximum_scalar(0.0)?;
        let pos_w = d.add_scalar(m)?.mul(&pos)?.maximum_scalar(0.0)?;
        let neg_w = d.neg().add_scalar(1.0 + m)?.mul(&neg)?.maximum_scalar(0.0)?;
        let p_logits = pos_w.mul(&d.neg().add_scalar(m)?)?.mul_scalar(-g)?;
        let n_logits = neg_w.mul(&d.neg().add_scalar(1.0 - m)?)?.mul_scalar(g)?;
        let minus_inf = y_pred.scalar_like(f64::NEG_INFINITY);
        let p_loss = Tensor::where_cond(&pos, &p_logits, &minus_inf)?.logsumexp(&[1], false)?;
        let n_loss = Tensor::where_cond(&neg, &n_logits, &minus_inf)?.logsumexp(&[1], false)?;
        let values = p_loss.add(&n_loss)?.softplus();
        let mask = values.to_vec::<f64>().into_iter().map(|v| f64::from(u8::from(v > 0.0))).collect();
        let mask = Tensor::from_vec(mask, values.shape())?.to_dtype(dtype);
        Ok(PerSample { values, mask: Some(mask) })
    }
}
