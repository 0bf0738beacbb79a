//! Sequence losses: CTC.

use crate::config::Params;
use crate::kernel_node::run_node;
use crate::targets::class_indices;
use crate::{Error, Loss, PerSample, Reduction, Result, Tensor};
use losskit_kernels as kernels;
use serde_json::Value;

/// Connectionist temporal classification (Graves et al. 2006), as Keras 3 computes it:
/// `l_b = -ln p(label_b | x_b)` summed over all alignments, blank = class 0.
///
/// Shapes: `y_true` `(B, L)` integer labels, **0 = blank and padding** (the label length is
/// the number of non-zero entries, zeros must be trailing); `y_pred` `(B, T, K)` **logits** (a
/// log-softmax is applied inside); every sequence uses all `T` frames → `(B,)`.
/// ⚠ Keras' log-zero is `-1e5`, so a label that needs more frames than `T` (repeats need a
/// blank between them) costs about `1e5` instead of `inf` — kept for parity. The reduction is a
/// plain mean over the batch (PyTorch's `CTCLoss` divides by target lengths first).
/// Alias `ctc`.
#[derive(Debug, Clone)]
pub struct Ctc {
    name: String,
    reduction: Reduction,
}

impl Default for Ctc {
    fn default() -> Self {
        Ctc { name: Self::DEFAULT_NAME.into(), reduction: Reduction::SumOverBatchSize }
    }
}

loss_basics!(Ctc);

impl Ctc {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "ctc";
    /// The loss with Keras' defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Builds from a Keras config (`name`, `reduction`).
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("CTC", config)?;
        let loss = Self::new().with_name(p.name(Self::DEFAULT_NAME)?).with_reduction(p.reduction()?);
        p.finish()?;
        Ok(loss)
    }
}

impl Loss for Ctc {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "CTC"
    }
    fn reduction(&self) -> Reduction {
        self.reduction
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        let (ts, ps) = (y_true.shape(), y_pred.shape());
        if ts.len() != 2 || ps.len() != 3 || ts[0] != ps[0] || ps[2] == 0 {
            return Err(Error::Shape {
                op: self.name.clone(),
                msg: format!("expected labels (B, L) and logits (B, T, K) with K > 0, got {ts:?} and {ps:?}"),
            });
        }
        let (batch, steps, classes) = (ps[0], ps[1], ps[2]);
        let (labels, _) = class_indices(&self.name, y_true, classes, None)?;
        let logits = y_pred.reshape(&[batch as isize, (steps * classes) as isize])?;
        let kernel = kernels::Ctc { classes, max_label_len: ts[1] };
        Ok(run_node("ctc", kernel, &labels.to_dtype(y_pred.dtype()), &logits, Default::default())?.into())
    }
}
