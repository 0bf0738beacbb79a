//! Metric-learning losses over a batch of embeddings: Circle (Keras 3).

use crate::config::{require, Params};
use crate::{Loss, PerSample, Reduction, Result, Tensor};
use serde_json::{json, Value};

/// `[i, j] = 1` where `f(i, j)` holds, as a constant `(rows, cols)` tensor.
fn pair_mask(
    rows: usize,
    cols: usize,
    dtype: losskit_tensor::DType,
    f: impl Fn(usize, usize) -> bool,
) -> Result<Tensor> {
    let v: Vec<f64> = (0..rows * cols).map(|k| f64::from(u8::from(f(k / cols, k % cols)))).collect();
    Ok(Tensor::from_vec(v, &[rows, cols])?.to_dtype(dtype))
}

/// Labels as Keras casts them to int32 (truncated toward zero).
fn int_labels(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().into_iter().map(f64::trunc).collect()
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
///
/// With a reference set ([`Circle::with_reference`], Keras' `circle(..., ref_labels,
/// ref_embeddings)`), the pairs are each sample against each of `R` reference embeddings
/// (`d` is `(B, R)`, `e_j` the references; `remove_diagonal` drops the pairs `(i, i)`). The
/// reference set is not part of the config (Keras' `Circle` class has none).
#[derive(Debug, Clone)]
pub struct Circle {
    name: String,
    reduction: Reduction,
    gamma: f64,
    margin: f64,
    remove_diagonal: bool,
    /// Reference labels `(R,)` and embeddings `(R, D)`, when not the batch's own.
    reference: Option<(Vec<f64>, Tensor)>,
}

impl Default for Circle {
    fn default() -> Self {
        Circle {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            gamma: 80.0,
            margin: 0.4,
            remove_diagonal: true,
            reference: None,
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
    /// Pairs each sample with a reference set instead of the batch: labels `(R,)` and
    /// embeddings `(R, D)` (meant to be L2-normalised; gradients flow into them when they are
    /// tracked). Errors when the shapes do not fit.
    pub fn with_reference(mut self, ref_labels: &Tensor, ref_embeddings: &Tensor) -> Result<Self> {
        if ref_labels.rank() != 1 || ref_embeddings.rank() != 2 || ref_embeddings.shape()[0] != ref_labels.shape()[0] {
            return Err(crate::Error::Shape {
                op: "Circle::with_reference".into(),
                msg: format!(
                    "expected reference labels (R,) and embeddings (R, D), got {:?} and {:?}",
                    ref_labels.shape(),
                    ref_embeddings.shape()
                ),
            });
        }
        self.reference = Some((int_labels(ref_labels), ref_embeddings.clone()));
        Ok(self)
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
        let labels = int_labels(y_true);
        let (keys, reference) = match &self.reference {
            Some((l, e)) if e.shape()[1] == y_pred.shape()[1] => (l.clone(), e.to_dtype(dtype)),
            Some((_, e)) => {
                return Err(crate::Error::Shape {
                    op: self.name.clone(),
                    msg: format!("embeddings {:?} against reference embeddings {:?}", y_pred.shape(), e.shape()),
                })
            }
            None => (labels.clone(), y_pred.clone()),
        };
        let (rows, cols, rd) = (labels.len(), keys.len(), self.remove_diagonal);
        let pos = pair_mask(rows, cols, dtype, |i, j| labels[i] == keys[j] && !(rd && i == j))?;
        let neg = pair_mask(rows, cols, dtype, |i, j| labels[i] != keys[j])?;
        let (m, g) = (self.margin, self.gamma);
        let d = y_pred.matmul(&reference.transpose(None)?)?.neg().add_scalar(1.0)?.maximum_scalar(0.0)?;
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
