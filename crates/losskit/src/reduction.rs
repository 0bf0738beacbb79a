//! Weighting and reduction: Keras' `reduce_weighted_values`, the one place where masks,
//! `sample_weight` and the reduction are applied.

use crate::align::squeeze_or_expand_to_same_rank;
use crate::{Error, Result, Tensor};
use losskit_tensor::broadcast_shapes;
use std::fmt;

/// How per-sample loss values become the loss (Keras 3 `reduction`).
///
/// With per-sample values `l`, weights `w` and mask `m`:
///
/// | reduction | result |
/// |---|---|
/// | `None` | `l·w·m`, unreduced |
/// | `Sum` | `Σ l·w·m` |
/// | `SumOverBatchSize` (default) = `Mean` | `Σ l·w·m / N`, `N` = element count of `l·w` (with a mask: `Σm`) |
/// | `MeanWithSampleWeight` | `Σ l·w·m / Σ(w·m)` |
///
/// A zero divisor gives 0, never NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// No reduction: the (weighted) per-sample values.
    None,
    /// The sum of the weighted values.
    Sum,
    /// The sum divided by the number of elements (Keras' default).
    #[default]
    SumOverBatchSize,
    /// Identical to `SumOverBatchSize` (Keras 3 alias).
    Mean,
    /// The sum divided by the sum of the sample weights.
    MeanWithSampleWeight,
}

impl Reduction {
    /// All reductions, in Keras' order of names.
    pub const ALL: [Reduction; 5] = [
        Reduction::SumOverBatchSize,
        Reduction::Sum,
        Reduction::Mean,
        Reduction::MeanWithSampleWeight,
        Reduction::None,
    ];

    /// Keras' name: `"none"`, `"sum"`, `"sum_over_batch_size"`, `"mean"`, `"mean_with_sample_weight"`.
    pub fn keras_name(self) -> &'static str {
        match self {
            Reduction::None => "none",
            Reduction::Sum => "sum",
            Reduction::SumOverBatchSize => "sum_over_batch_size",
            Reduction::Mean => "mean",
            Reduction::MeanWithSampleWeight => "mean_with_sample_weight",
        }
    }

    /// Parses a Keras reduction name. Errors name the allowed values (Keras 2's `"auto"` is not one).
    pub fn parse(s: &str) -> Result<Reduction> {
        Reduction::ALL.into_iter().find(|r| r.keras_name() == s).ok_or_else(|| Error::InvalidParameter {
            loss: "Loss".into(),
            param: "reduction".into(),
            value: format!("{s:?}"),
            expected:
                "one of \"sum_over_batch_size\", \"sum\", \"mean\", \"mean_with_sample_weight\", \"none\" or null"
                    .into(),
        })
    }

    fn divides_by_count(self) -> bool {
        matches!(self, Reduction::SumOverBatchSize | Reduction::Mean)
    }
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keras_name())
    }
}

fn check_broadcast(loss: &str, what: &str, values: &Tensor, other: &Tensor) -> Result<()> {
    if broadcast_shapes(values.shape(), other.shape()).is_none() {
        return Err(Error::Shape {
            op: loss.to_string(),
            msg: format!(
                "{what} of shape {:?} does not broadcast against the per-sample losses of shape {:?} \
                 (expected a scalar, the per-sample shape, or it with a trailing 1)",
                other.shape(),
                values.shape()
            ),
        });
    }
    Ok(())
}

/// `a / b`, or 0 (with a zero gradient) when `b == 0`: Keras' `divide_no_nan` for a constant `b`.
fn divide_no_nan(total: &Tensor, denominator: f64) -> Result<Tensor> {
    if denominator == 0.0 {
        let zero = total.scalar_like(0.0);
        return Tensor::where_cond(&zero, total, &zero);
    }
    total.mul_scalar(1.0 / denominator)
}

/// Applies `mask`, then `sample_weight`, then `reduction` to per-sample `values`
/// (Keras 3 `reduce_weighted_values`, spec §1.4). `loss` names the caller in errors.
///
/// * `mask`: 1 = keep, 0 = drop, in the per-sample shape. Under `Mean`/`SumOverBatchSize` the
///   kept values are re-weighted by `total/valid` so the mean is over valid entries only.
/// * `sample_weight`: any shape that broadcasts after rank alignment (scalar, `(B,)`,
///   `(B, 1)`, the per-sample shape...).
pub fn reduce_weighted_values(
    loss: &str,
    values: &Tensor,
    sample_weight: Option<&Tensor>,
    mask: Option<&Tensor>,
    reduction: Reduction,
) -> Result<Tensor> {
    let dtype = values.dtype();
    let mut weight = sample_weight.map(|w| w.detach().to_dtype(dtype));
    if let Some(mask) = mask {
        let mask = mask.detach().to_dtype(dtype);
        let m = if reduction.divides_by_count() {
            let valid = mask.sum_all().to_scalar()?;
            let scale = if valid == 0.0 { 0.0 } else { mask.numel() as f64 / valid };
            mask.mul_scalar(scale)?
        } else {
            mask
        };
        weight = Some(match weight {
            None => m,
            Some(w) => {
                let (m, w) = squeeze_or_expand_to_same_rank(&m, &w)?;
                check_broadcast(loss, "sample_weight", &m, &w)?;
                w.mul(&m)?
            }
        });
    }
    let mut values = values.clone();
    if let Some(w) = &weight {
        let (v, w2) = squeeze_or_expand_to_same_rank(&values, w)?;
        check_broadcast(loss, "sample_weight", &v, &w2)?;
        values = v.mul(&w2)?;
        weight = Some(w2);
    }
    if reduction == Reduction::None || values.rank() == 0 || values.shape() == [0] {
        return Ok(values);
    }
    let total = values.sum_all();
    match reduction {
        Reduction::Sum => Ok(total),
        Reduction::MeanWithSampleWeight if weight.is_some() => {
            let w = weight.as_ref().map(|w| w.sum_all().to_scalar()).transpose()?.unwrap_or(0.0);
            divide_no_nan(&total, w)
        }
        _ => divide_no_nan(&total, values.numel() as f64),
    }
}
