//! Custom losses from closures.

use crate::{Loss, PerSample, Reduction, Result, Tensor};
use std::sync::Arc;

/// The signature of a custom per-sample loss: `(y_true, y_pred) → per-sample values`.
pub type LossFn = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// A loss from a closure over tensors, going through the same call path as the built-ins
/// (rank alignment, `sample_weight`, reduction) and differentiated by the tape.
///
/// The closure receives aligned `y_true` (in `y_pred`'s dtype) and `y_pred`, and returns the
/// per-sample values, e.g. `(B,)` for `(B, D)` inputs.
///
/// ```
/// use losskit::{CustomLoss, Loss, Tensor};
/// let mse = CustomLoss::new("my_mse", |t: &Tensor, p: &Tensor| p.sub(t)?.square().mean(&[-1], false));
/// let y = Tensor::from_vec(vec![1.0f32, 2.0], &[1, 2])?;
/// let p = Tensor::from_vec(vec![1.0f32, 4.0], &[1, 2])?;
/// assert_eq!(mse.call(&y, &p, None)?.to_scalar()?, 2.0);
/// # Ok::<(), losskit::Error>(())
/// ```
#[derive(Clone)]
pub struct CustomLoss {
    name: String,
    reduction: Reduction,
    f: Arc<LossFn>,
}

impl CustomLoss {
    /// A custom loss named `name` computing per-sample values with `f`.
    pub fn new(
        name: impl Into<String>,
        f: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Self {
        CustomLoss { name: name.into(), reduction: Reduction::SumOverBatchSize, f: Arc::new(f) }
    }

    /// Sets the reduction (default `sum_over_batch_size`).
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
}

impl std::fmt::Debug for CustomLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomLoss({:?}, {})", self.name, self.reduction)
    }
}

impl Loss for CustomLoss {
    fn name(&self) -> &str {
        &self.name
    }
    fn reduction(&self) -> Reduction {
        self.reduction
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        Ok((self.f)(y_true, y_pred)?.into())
    }
}
