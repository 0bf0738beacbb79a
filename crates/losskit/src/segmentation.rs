//! Overlap losses for segmentation: Dice and Tversky, composed from tensor ops.

use crate::config::{require, Params};
use crate::{Loss, PerSample, Reduction, Result, Tensor, EPSILON};
use serde_json::{json, Value};

/// `Σ` over `axes`, or over everything (a scalar) when `axes` is `None`.
fn sum_over(t: &Tensor, axes: &Option<Vec<isize>>) -> Result<Tensor> {
    match axes {
        None => Ok(t.sum_all()),
        Some(a) => t.sum(a, false),
    }
}

/// [`sum_over`] of several tensors; one pass over memory when they have one shape.
fn sums_over(ts: &[&Tensor], axes: &Option<Vec<isize>>) -> Result<Vec<Tensor>> {
    if ts.iter().any(|t| t.shape() != ts[0].shape() || t.dtype() != ts[0].dtype()) {
        return ts.iter().map(|t| sum_over(t, axes)).collect();
    }
    let all: Vec<isize>;
    let axes = match axes {
        Some(a) => a.as_slice(),
        None => {
            all = (0..ts[0].rank() as isize).collect();
            &all
        }
    };
    Tensor::sum_many(ts, axes, false)
}

fn axes_config(axes: &Option<Vec<isize>>) -> Value {
    match axes {
        None => Value::Null,
        Some(a) => json!(a),
    }
}

/// Dice loss: `I = Σ y·p`, `l = 1 - 2I / (Σy + Σp + 1e-7)`, sums over `axis`.
///
/// `axis = None` (the default) sums over **all** elements and returns one scalar, which every
/// reduction returns as is (a `(B,)` sample weight turns it into a vector, as in Keras);
/// `axis = [1, 2, 3]` gives one value per image of a `(B, H, W, C)` batch. No clipping:
/// non-binary inputs are allowed. Alias `dice`.
#[derive(Debug, Clone)]
pub struct Dice {
    name: String,
    reduction: Reduction,
    axis: Option<Vec<isize>>,
}

impl Default for Dice {
    fn default() -> Self {
        Dice { name: Self::DEFAULT_NAME.into(), reduction: Reduction::SumOverBatchSize, axis: None }
    }
}

loss_basics!(Dice);

impl Dice {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "dice";
    /// The loss over all elements.
    pub fn new() -> Self {
        Self::default()
    }
    /// The axes summed over (`None` = all).
    pub fn with_axis(mut self, axis: Option<Vec<isize>>) -> Self {
        self.axis = axis;
        self
    }
    /// Builds from a Keras config (`name`, `reduction`, `axis`).
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("Dice", config)?;
        let loss = Self::new()
            .with_name(p.name(Self::DEFAULT_NAME)?)
            .with_reduction(p.reduction()?)
            .with_axis(p.opt_axes("axis")?);
        p.finish()?;
        Ok(loss)
    }
}

impl Loss for Dice {
    loss_identity!(Dice);
    fn config(&self) -> Value {
        json!({"name": self.name, "reduction": self.reduction.keras_name(), "axis": axes_config(&self.axis)})
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        let product = y_true.mul(y_pred)?;
        let [intersection, sum_true, sum_pred]: [Tensor; 3] =
            sums_over(&[&product, y_true, y_pred], &self.axis)?.try_into().expect("three sums");
        let denom = sum_true.add(&sum_pred)?.add_scalar(EPSILON)?;
        let dice = intersection.mul_scalar(2.0)?.div(&denom)?;
        Ok(dice.neg().add_scalar(1.0)?.into())
    }
}

/// Tversky loss: `TP = Σ y·p`, `A = Σ (1-p)·y`, `B = Σ p·(1-y)`,
/// `l = 1 - TP / (TP + α·A + β·B + 1e-7)`, sums over `axis` (default all → scalar).
///
/// ⚠ Keras' code (kept for parity) puts `α` on `Σ(1-p)·y`, the **missed positives** (false
/// negatives), and `β` on the false positives — the reverse of its docstring and of Salehi et
/// al. Defaults `α = β = 0.5` (then it equals Dice). Alias `tversky`.
#[derive(Debug, Clone)]
pub struct Tversky {
    name: String,
    reduction: Reduction,
    alpha: f64,
    beta: f64,
    axis: Option<Vec<isize>>,
}

impl Default for Tversky {
    fn default() -> Self {
        Tversky {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            alpha: 0.5,
            beta: 0.5,
            axis: None,
        }
    }
}

loss_basics!(Tversky);

impl Tversky {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "tversky";
    /// The loss with weights `alpha` (false negatives, as Keras computes) and `beta`.
    pub fn new(alpha: f64, beta: f64) -> Result<Self> {
        require(alpha.is_finite(), "Tversky", "alpha", alpha, "a finite number")?;
        require(beta.is_finite(), "Tversky", "beta", beta, "a finite number")?;
        Ok(Tversky { alpha, beta, ..Self::default() })
    }
    /// The axes summed over (`None` = all).
    pub fn with_axis(mut self, axis: Option<Vec<isize>>) -> Self {
        self.axis = axis;
        self
    }
    /// Builds from a Keras config (`name`, `reduction`, `alpha`, `beta`, `axis`).
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("Tversky", config)?;
        let (name, reduction) = (p.name(Self::DEFAULT_NAME)?, p.reduction()?);
        let (alpha, beta, axis) = (p.f64("alpha", 0.5)?, p.f64("beta", 0.5)?, p.opt_axes("axis")?);
        p.finish()?;
        Ok(Self::new(alpha, beta)?.with_name(name).with_reduction(reduction).with_axis(axis))
    }
}

impl Loss for Tversky {
    loss_identity!(Tversky);
    fn config(&self) -> Value {
        json!({"name": self.name, "reduction": self.reduction.keras_name(), "alpha": self.alpha, "beta": self.beta,
               "axis": axes_config(&self.axis)})
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        let product = y_true.mul(y_pred)?;
        let missed = y_pred.neg().add_scalar(1.0)?.mul(y_true)?;
        let false_pos = y_pred.mul(&y_true.neg().add_scalar(1.0)?)?;
        let [tp, missed, false_pos]: [Tensor; 3] =
            sums_over(&[&product, &missed, &false_pos], &self.axis)?.try_into().expect("three sums");
        let denom =
            tp.add(&missed.mul_scalar(self.alpha)?)?.add(&false_pos.mul_scalar(self.beta)?)?.add_scalar(EPSILON)?;
        Ok(tp.div(&denom)?.neg().add_scalar(1.0)?.into())
    }
}
