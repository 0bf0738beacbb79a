//! The regression losses: MSE, MAE, MAPE, MSLE, Huber, LogCosh, Poisson, KL divergence and
//! cosine similarity. Each is one fused kernel node (`losskit-kernels`), differentiable with
//! respect to `y_pred`; `y_true` is a constant.
//!
//! # Shapes
//! `y_true` and `y_pred` broadcast to a common shape `(B, ..., D)` (after rank alignment); the
//! per-sample values have shape `(B, ...)`: the last axis is reduced (mean, or sum for
//! [`KLDivergence`] and [`CosineSimilarity`], which can also reduce another `axis`). Rank-1
//! inputs are one sample whose features are the single axis (Keras' rule).

use crate::config::Params;
use crate::kernel_node::row_loss;
use crate::row_loss::{RowKernelKind, RowLoss};
use crate::{Error, Loss, PerSample, Reduction, Result, Tensor};
use losskit_kernels as kernels;
use serde_json::{json, Value};

/// A regression loss with no parameter besides `name` and `reduction`, backed by its kernel.
macro_rules! parameterless_loss {
    ($(#[$doc:meta])* $ty:ident, $default_name:literal) => {
        simple_loss! {
            $(#[$doc])*
            $ty, $default_name,
            |t, p| row_loss($default_name, kernels::$ty, t, p),
            RowLoss::new(RowKernelKind::$ty(kernels::$ty))
        }
    };
}

parameterless_loss! {
    /// Mean squared error: `loss = mean_last((y_true - y_pred)²)`.
    ///
    /// Shapes: `(B, ..., D)` → `(B, ...)`. Aliases `mse`, `MSE`, `mean_squared_error`.
    MeanSquaredError, "mean_squared_error"
}

parameterless_loss! {
    /// Mean absolute error: `loss = mean_last(|y_true - y_pred|)`; gradient `sign(p - y)/D`
    /// with `sign(0) = 0`.
    ///
    /// Shapes: `(B, ..., D)` → `(B, ...)`. Aliases `mae`, `MAE`, `mean_absolute_error`.
    MeanAbsoluteError, "mean_absolute_error"
}

parameterless_loss! {
    /// Mean absolute percentage error:
    /// `loss = 100 · mean_last(|y_true - y_pred| / max(|y_true|, 1e-7))`.
    ///
    /// The denominator uses `|y_true|` (as Keras' code does, although its docs say `y_true`), so
    /// negative targets work; `y_true = 0` divides by `1e-7`.
    /// Shapes: `(B, ..., D)` → `(B, ...)`. Aliases `mape`, `MAPE`.
    MeanAbsolutePercentageError, "mean_absolute_percentage_error"
}

parameterless_loss! {
    /// Mean squared logarithmic error:
    /// `loss = mean_last((ln(max(y_pred, 1e-7) + 1) - ln(max(y_true, 1e-7) + 1))²)`.
    ///
    /// Both inputs are clamped below at `1e-7`, so negative values behave like ~0.
    /// Shapes: `(B, ..., D)` → `(B, ...)`. Aliases `msle`, `MSLE`.
    MeanSquaredLogarithmicError, "mean_squared_logarithmic_error"
}

parameterless_loss! {
    /// Log-cosh: `loss = mean_last(ln cosh(y_pred - y_true))`, evaluated as
    /// `x + softplus(-2x) - ln 2` so it stays finite for large `|x|` (`x = 100 → 99.30685`).
    ///
    /// Shapes: `(B, ..., D)` → `(B, ...)`. Aliases `log_cosh`, `logcosh` (Keras 2).
    LogCosh, "log_cosh"
}

parameterless_loss! {
    /// Poisson: `loss = mean_last(y_pred - y_true · ln(y_pred + 1e-7))`.
    ///
    /// No clipping: `y_pred < 0` gives NaN (as in Keras), `y_pred = 0` gives `-y·ln(1e-7)`.
    /// Shapes: `(B, ..., D)` → `(B, ...)`. Alias `poisson`.
    Poisson, "poisson"
}

parameterless_loss! {
    /// Kullback–Leibler divergence of probability vectors:
    /// `loss = Σ_last t · ln(t / q)`, `t = clip(y_true, 1e-7, 1)`, `q = clip(y_pred, 1e-7, 1)`.
    ///
    /// The lower clip is `1e-7` (Keras' docs say 0), so `y_true = 0` adds a tiny
    /// `1e-7·ln(1e-7/q)`. Inputs are probabilities (PyTorch's `KLDivLoss` takes log-probabilities).
    /// The gradient is 0 where `y_pred` is clipped.
    /// Shapes: `(B, ..., C)` → `(B, ...)`. Aliases `kld`, `KLD`, `kl_divergence`,
    /// `kullback_leibler_divergence` (Keras 2).
    KLDivergence, "kl_divergence"
}

/// Huber loss: with `e = y_pred - y_true`,
/// `h = ½e²` if `|e| ≤ δ`, else `δ·|e| - ½δ²`; `loss = mean_last(h)`.
///
/// `delta` must be finite and `≥ 0` (default 1). Unlike Keras, `delta` is kept in
/// [`Loss::config`], so a saved loss reloads with its own `delta`.
/// Shapes: `(B, ..., D)` → `(B, ...)`. Aliases `huber`, `huber_loss` (Keras 2).
#[derive(Debug, Clone)]
pub struct Huber {
    name: String,
    reduction: Reduction,
    delta: f64,
}

impl Huber {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "huber_loss";

    /// A Huber loss with threshold `delta`. Errors when `delta` is negative or not finite.
    pub fn new(delta: f64) -> Result<Self> {
        if !(delta.is_finite() && delta >= 0.0) {
            return Err(Error::InvalidParameter {
                loss: "Huber".into(),
                param: "delta".into(),
                value: delta.to_string(),
                expected: "a finite number >= 0".into(),
            });
        }
        Ok(Huber { name: Self::DEFAULT_NAME.into(), reduction: Reduction::SumOverBatchSize, delta })
    }

    /// The threshold `δ`.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// Builds from a Keras config (`name`, `reduction`, `delta`).
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("Huber", config)?;
        let (name, reduction, delta) = (p.name(Self::DEFAULT_NAME)?, p.reduction()?, p.f64("delta", 1.0)?);
        p.finish()?;
        Ok(Huber::new(delta)?.with_name(name).with_reduction(reduction))
    }
}

impl Default for Huber {
    fn default() -> Self {
        Huber { name: Self::DEFAULT_NAME.into(), reduction: Reduction::SumOverBatchSize, delta: 1.0 }
    }
}

loss_basics!(Huber);

impl Loss for Huber {
    loss_identity!(Huber);
    fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
        true
    }
    fn config(&self) -> Value {
        json!({ "name": self.name, "reduction": self.reduction.keras_name(), "delta": self.delta })
    }
    fn row_kernel(&self, _: crate::loss::sealed::Token) -> Option<RowLoss<'_>> {
        Some(RowLoss::new(RowKernelKind::Huber(kernels::Huber { delta: self.delta })))
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        Ok(row_loss("huber_loss", kernels::Huber { delta: self.delta }, y_true, y_pred)?.into())
    }
}

/// Cosine similarity loss along `axis` (default `-1`):
/// `n(x) = x · min(1/‖x‖₂, 1e7)`, `loss = -Σ_axis n(y_true) · n(y_pred)` ∈ `[-1, 1]`
/// (`-1` = same direction; a zero vector gives `-0`).
///
/// Unlike Keras, `axis` is kept in [`Loss::config`].
/// Shapes: the inputs' common shape without `axis`.
#[derive(Debug, Clone)]
pub struct CosineSimilarity {
    name: String,
    reduction: Reduction,
    axis: isize,
}

impl Default for CosineSimilarity {
    fn default() -> Self {
        CosineSimilarity { name: Self::DEFAULT_NAME.into(), reduction: Reduction::SumOverBatchSize, axis: -1 }
    }
}

impl CosineSimilarity {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "cosine_similarity";

    /// The loss along the last axis.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the axis along which vectors are compared (negative counts from the end).
    pub fn with_axis(mut self, axis: isize) -> Self {
        self.axis = axis;
        self
    }

    /// Builds from a Keras config (`name`, `reduction`, `axis`).
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("CosineSimilarity", config)?;
        let loss = CosineSimilarity {
            name: p.name(Self::DEFAULT_NAME)?,
            reduction: p.reduction()?,
            axis: p.int("axis", -1)? as isize,
        };
        p.finish()?;
        Ok(loss)
    }
}

loss_basics!(CosineSimilarity);

impl Loss for CosineSimilarity {
    loss_identity!(CosineSimilarity);
    fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
        true
    }
    fn config(&self) -> Value {
        json!({ "name": self.name, "reduction": self.reduction.keras_name(), "axis": self.axis })
    }
    fn row_kernel(&self, _: crate::loss::sealed::Token) -> Option<RowLoss<'_>> {
        // Another axis is moved last first.
        (self.axis == -1).then_some(RowLoss::new(RowKernelKind::CosineSimilarity(kernels::CosineSimilarity)))
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        let rank = y_pred.rank().max(y_true.rank());
        let axis = if self.axis < 0 { self.axis + rank as isize } else { self.axis };
        if axis < 0 || axis as usize >= rank {
            return Err(Error::Shape {
                op: self.name.clone(),
                msg: format!("axis {} is out of range for inputs of rank {rank}", self.axis),
            });
        }
        let axis = axis as usize;
        if axis + 1 == rank {
            return Ok(row_loss("cosine_similarity", kernels::CosineSimilarity, y_true, y_pred)?.into());
        }
        // Move `axis` last (a copy) so the row kernel sees contiguous vectors.
        let shape =
            losskit_tensor::broadcast_shapes(y_true.shape(), y_pred.shape()).ok_or_else(|| Error::Broadcast {
                op: format!("{} (y_true vs y_pred)", self.name),
                lhs: y_true.shape().to_vec(),
                rhs: y_pred.shape().to_vec(),
            })?;
        let mut perm: Vec<usize> = (0..rank).filter(|&a| a != axis).collect();
        perm.push(axis);
        let t = y_true.broadcast_to(&shape)?.transpose(Some(&perm))?;
        let p = y_pred.broadcast_to(&shape)?.transpose(Some(&perm))?;
        Ok(row_loss("cosine_similarity", kernels::CosineSimilarity, &t, &p)?.into())
    }
}
