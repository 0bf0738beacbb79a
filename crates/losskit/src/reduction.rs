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

    /// Keras' rescaling of a 0/1 mask with `valid` ones among `count` values: `count/valid` for
    /// the count-dividing reductions (0 when nothing is valid), so that the mean is over the
    /// valid values; 1 for the others.
    pub(crate) fn mask_scale(self, count: usize, valid: f64) -> f64 {
        match self.divides_by_count() {
            true if valid == 0.0 => 0.0,
            true => count as f64 / valid,
            false => 1.0,
        }
    }
}

/// `"sum_over_batch_size".parse::<Reduction>()`: [`Reduction::parse`].
impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Reduction> {
        Reduction::parse(s)
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

/// The per-sample values weighted by `sample_weight` and `mask` (with Keras' mask rescaling
/// by `count / valid` for count-dividing reductions when `rescale_mask`), with the combined
/// weight they were multiplied by, if any.
fn weighted_values(
    loss: &str,
    values: &Tensor,
    sample_weight: Option<&Tensor>,
    mask: Option<&Tensor>,
    reduction: Reduction,
    rescale_mask: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let dtype = values.dtype();
    let mut weight = sample_weight.map(|w| w.detach().to_dtype(dtype));
    if let Some(mask) = mask {
        let mask = mask.detach().to_dtype(dtype);
        let m = if rescale_mask && reduction.divides_by_count() {
            let valid = mask.sum_all().to_scalar()?;
            mask.mul_scalar(reduction.mask_scale(mask.numel(), valid))?
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
    Ok((values, weight))
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
    let (values, weight) = weighted_values(loss, values, sample_weight, mask, reduction, true)?;
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

/// One shard's part of a reduction over a batch split across processes: the weighted sum
/// `Σ wᵢ·lᵢ` of its per-sample values (on the tape) and its share of the denominator — the
/// number of values for `sum_over_batch_size`/`mean` (of unmasked values, with a mask: Keras
/// rescales the mask by `count / valid`, which over the whole batch is dividing by the valid
/// count), the sum of the weights for `mean_with_sample_weight` (the count without weights),
/// `None` for `sum`. The reduced loss over the whole batch is
/// `Σ_shards sum / Σ_shards denominator`, which is what each shard's `sum / global denominator`
/// adds up to; `none` is an error (nothing to share).
pub fn reduce_partial(
    loss: &str,
    values: &Tensor,
    sample_weight: Option<&Tensor>,
    mask: Option<&Tensor>,
    reduction: Reduction,
) -> Result<(Tensor, Option<f64>)> {
    if reduction == Reduction::None {
        return Err(Error::Config(format!(
            "{loss}: a loss with reduction \"none\" cannot be reduced over a batch split across processes"
        )));
    }
    let (values, weight) = weighted_values(loss, values, sample_weight, mask, reduction, false)?;
    let total = values.sum_all();
    let denominator = match (reduction, &weight, mask) {
        (Reduction::Sum, _, _) => None,
        (Reduction::MeanWithSampleWeight, Some(w), _) => Some(w.sum_all().to_scalar()?),
        (_, _, Some(m)) => Some(m.sum_all().to_scalar()? * (values.numel() / m.numel().max(1)) as f64),
        _ => Some(values.numel() as f64),
    };
    Ok((total, denominator))
}

/// TensorFlow's `tf.nn.compute_average_loss` for a data-parallel loop: the per-example losses
/// of this process' shard (shape `(n,)` or more), weighted by `sample_weight` (broadcast as
/// Keras does), summed, and divided by the *global* batch size — so that adding the results
/// (and their gradients) over all processes gives the mean over the whole batch, however it
/// was split. A global batch size of 0 is an error.
pub fn compute_average_loss(
    per_example_loss: &Tensor,
    sample_weight: Option<&Tensor>,
    global_batch_size: usize,
) -> Result<Tensor> {
    if global_batch_size == 0 {
        return Err(Error::invalid_parameter("compute_average_loss", "global_batch_size", 0, ">= 1"));
    }
    let (total, _) = reduce_partial("compute_average_loss", per_example_loss, sample_weight, None, Reduction::Sum)?;
    total.mul_scalar(1.0 / global_batch_size as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
    }

    #[test]
    fn shards_add_up_to_the_whole_batch_reduction() {
        let (values, weights) = ([0.5, 2.0, 1.5, 4.0, 3.0], [1.0, 0.0, 2.0, 0.5, 1.0]);
        for reduction in [Reduction::SumOverBatchSize, Reduction::MeanWithSampleWeight, Reduction::Sum] {
            let whole = reduce_weighted_values("l", &t(&values), Some(&t(&weights)), None, reduction).unwrap();
            // Shards of 3 and 2 values: their sums over the global denominator add up.
            let parts: Vec<(Tensor, Option<f64>)> = [(0, 3), (3, 5)]
                .iter()
                .map(|&(a, b)| {
                    reduce_partial("l", &t(&values[a..b]), Some(&t(&weights[a..b])), None, reduction).unwrap()
                })
                .collect();
            let global: Option<f64> = parts.iter().map(|p| p.1).sum();
            let total: f64 = parts.iter().map(|(s, _)| s.to_scalar().unwrap() / global.unwrap_or(1.0)).sum();
            assert!((total - whole.to_scalar().unwrap()).abs() < 1e-12, "{reduction:?}");
        }
        assert!(reduce_partial("l", &t(&values), None, None, Reduction::None).is_err());
        // A mask (ignored tokens): Keras rescales it by count / valid within the batch; the
        // shards' shares still add up to the whole batch's value.
        let mask = [1.0, 0.0, 1.0, 1.0, 0.0];
        for reduction in [Reduction::SumOverBatchSize, Reduction::MeanWithSampleWeight] {
            let whole =
                reduce_weighted_values("l", &t(&values), Some(&t(&weights)), Some(&t(&mask)), reduction).unwrap();
            let parts: Vec<(Tensor, Option<f64>)> = [(0, 2), (2, 5)]
                .iter()
                .map(|&(a, b)| {
                    reduce_partial("l", &t(&values[a..b]), Some(&t(&weights[a..b])), Some(&t(&mask[a..b])), reduction)
                        .unwrap()
                })
                .collect();
            let global: f64 = parts.iter().map(|p| p.1.unwrap()).sum();
            let total: f64 = parts.iter().map(|(s, _)| s.to_scalar().unwrap() / global).sum();
            assert!((total - whole.to_scalar().unwrap()).abs() < 1e-12, "masked {reduction:?}: {total} vs {whole:?}");
        }
    }

    #[test]
    fn compute_average_loss_divides_by_the_global_batch() {
        let l = compute_average_loss(&t(&[1.0, 3.0]), Some(&t(&[2.0, 1.0])), 8).unwrap();
        assert_eq!(l.to_scalar().unwrap(), (2.0 + 3.0) / 8.0);
        assert_eq!(compute_average_loss(&t(&[1.0, 3.0]), None, 4).unwrap().to_scalar().unwrap(), 1.0);
        assert!(compute_average_loss(&t(&[1.0]), None, 0).is_err());
    }
}
