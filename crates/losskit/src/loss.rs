//! The `Loss` trait and the one call path every loss goes through.

use crate::align::squeeze_or_expand_to_same_rank;
use crate::kernel_node::fold;
use crate::reduction::{reduce_weighted_values, Reduction};
use crate::row_loss::RowLoss;
use crate::{Error, Result, Tensor};
use serde_json::{json, Value};
use std::rc::Rc;

/// What a loss computes before weighting and reduction.
#[derive(Debug, Clone)]
pub struct PerSample {
    /// Per-sample loss values (e.g. `(B,)` for `(B, C)` inputs reduced over the last axis).
    pub values: Tensor,
    /// An optional mask the loss attaches to its values (1 = keep, 0 = drop), in their shape.
    pub mask: Option<Tensor>,
}

impl From<Tensor> for PerSample {
    fn from(values: Tensor) -> Self {
        PerSample { values, mask: None }
    }
}

/// A loss function with Keras semantics.
///
/// Implementors say only how to compute per-sample values ([`Loss::per_sample`]); calling the
/// loss ([`Loss::call`]) runs the shared path: rank alignment → per-sample values → mask →
/// `sample_weight` → [`Reduction`]. A custom loss is a type implementing `name` and
/// `per_sample` (or a closure wrapped in [`CustomLoss`](crate::CustomLoss)).
pub trait Loss: Send + Sync {
    /// The instance name (Keras `name`, e.g. `"mean_squared_error"`).
    fn name(&self) -> &str;

    /// The per-sample loss of aligned inputs: `y_true` has `y_pred`'s dtype and rank-aligned
    /// shape. Must be built from differentiable tensor operations (or a fused op).
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample>;

    /// Sealed (only losskit's own losses can say `true`: the argument cannot be named outside
    /// it): whether [`Loss::per_sample`]'s values are exactly one fused row kernel's output,
    /// with no mask of the loss' own or one the kernel is told of. Lets [`compute`] fold the
    /// reduction's per-row weights into the kernel's gradient on large inputs (one pass instead
    /// of two). Only an optimisation: a wrong `true` costs nothing when no row kernel runs and
    /// a second `per_sample` run when the values are changed after the kernel, never a wrong
    /// value or gradient.
    #[doc(hidden)]
    fn single_row_kernel(&self, _: sealed::Token) -> bool {
        false
    }

    /// Sealed (see [`row_kernel`], the public way to ask): for a loss whose per-sample values
    /// are one row kernel over `(y_true, y_pred)` with the class axis last and nothing else,
    /// that kernel.
    #[doc(hidden)]
    fn row_kernel(&self, _: sealed::Token) -> Option<RowLoss<'_>> {
        None
    }

    /// The Keras class name (`"MeanSquaredError"`); defaults to the instance name.
    fn class_name(&self) -> &str {
        self.name()
    }

    /// The reduction applied by [`Loss::call`]; Keras' default is `sum_over_batch_size`.
    fn reduction(&self) -> Reduction {
        Reduction::SumOverBatchSize
    }

    /// Keras' `get_config()`: `name`, `reduction` and the constructor parameters.
    fn config(&self) -> Value {
        json!({ "name": self.name(), "reduction": self.reduction().keras_name() })
    }

    /// Computes the reduced loss: `y_true` is cast to `y_pred`'s dtype, both are rank-aligned,
    /// then per-sample values are weighted by `sample_weight` and reduced.
    fn call(&self, y_true: &Tensor, y_pred: &Tensor, sample_weight: Option<&Tensor>) -> Result<Tensor> {
        compute(self, y_true, y_pred, sample_weight, None)
    }

    /// As [`Loss::call`], with a Keras mask on `y_pred` (1 = keep) in the per-sample shape.
    fn call_masked(
        &self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        compute(self, y_true, y_pred, sample_weight, mask)
    }
}

/// The seal of [`Loss`]'s internal hooks: a type other crates cannot name or make.
pub(crate) mod sealed {
    /// Passed by losskit to its own losses' hooks.
    #[derive(Debug, Clone, Copy)]
    pub struct Token;
}

impl std::fmt::Debug for dyn Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.class_name(), self.config())
    }
}

/// The one call path (Keras `Loss.__call__`, spec §1.2): validate and align → per-sample →
/// mask (the input mask AND the loss' own) → `sample_weight` → reduction.
///
/// Errors on empty inputs and on non-float `sample_weight`/mask shapes that do not broadcast.
pub fn compute<L: Loss + ?Sized>(
    loss: &L,
    y_true: &Tensor,
    y_pred: &Tensor,
    sample_weight: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let name = loss.name();
    if y_pred.numel() == 0 || y_true.numel() == 0 {
        return Err(Error::Shape {
            op: name.to_string(),
            msg: format!(
                "empty input: y_true {:?}, y_pred {:?}; expected at least one value",
                y_true.shape(),
                y_pred.shape()
            ),
        });
    }
    let y_true = y_true.to_dtype(y_pred.dtype());
    let (y_true, y_pred) = squeeze_or_expand_to_same_rank(&y_true, y_pred)?;
    let PerSample { values, mask: own_mask } = match folded(loss, &y_true, &y_pred, sample_weight, mask)? {
        Fold::Reduced(reduced) => return Ok(reduced),
        Fold::Plain(Some(per_sample)) => per_sample,
        Fold::Plain(None) => loss.per_sample(&y_true, &y_pred)?,
    };
    let mask = combined_mask(mask, own_mask.as_ref())?;
    reduce_weighted_values(name, &values, sample_weight, mask.as_ref(), loss.reduction())
}

/// The input mask AND the loss' own (a product of 0/1 masks).
fn combined_mask(input: Option<&Tensor>, own: Option<&Tensor>) -> Result<Option<Tensor>> {
    Ok(match (input, own) {
        (None, None) => None,
        (Some(m), None) | (None, Some(m)) => Some(m.clone()),
        (Some(a), Some(b)) => Some(a.detach().to_dtype(b.dtype()).mul(b)?),
    })
}

/// Inputs of at least this many values fold the reduction into the kernel's gradient; below,
/// differentiating the reduction first costs more than the scaling pass it saves.
pub(crate) const FOLD_MIN_VALUES: usize = 1 << 16;

/// What [`folded`] did.
enum Fold {
    /// The reduced loss, its gradient folded into the kernel's.
    Reduced(Tensor),
    /// The plain path applies: with the per-sample values when they were computed plainly
    /// (no kernel took the offer), `None` when `per_sample` must run (again).
    Plain(Option<PerSample>),
}

/// [`compute`] with the reduction folded into a row kernel's gradient (see
/// `kernel_node::fold`): the same value, and a gradient that is the kernel's own output, for
/// a [`Loss::single_row_kernel`] loss on large inputs with a reduction other than `none` and
/// constant weights and mask.
///
/// The per-row scale `s = ∂loss/∂values` is the reduction differentiated at zeros (it is linear
/// in the values), so it is the very upstream the plain path's backward would compute.
fn folded<L: Loss + ?Sized>(
    loss: &L,
    y_true: &Tensor,
    y_pred: &Tensor,
    sample_weight: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Fold> {
    let constant = |t: Option<&Tensor>| t.is_none_or(|t| !t.is_tracked());
    let reduction = loss.reduction();
    let applies = loss.single_row_kernel(sealed::Token)
        && reduction != Reduction::None
        && losskit_tensor::is_grad_enabled()
        && y_pred.is_tracked()
        && y_pred.numel() >= FOLD_MIN_VALUES
        && constant(sample_weight)
        && constant(mask);
    if !applies {
        return Ok(Fold::Plain(None));
    }
    let (name, weight, fixed_mask) = (loss.name().to_string(), sample_weight.cloned(), mask.cloned());
    let scale_of: Rc<fold::MakeScale> = Rc::new(move |shape, dtype, own_mask| {
        let probe = Tensor::zeros(shape, dtype).requires_grad();
        let mask = combined_mask(fixed_mask.as_ref(), own_mask)?;
        let reduced = reduce_weighted_values(&name, &probe, weight.as_ref(), mask.as_ref(), reduction)?;
        let mut grads = reduced.backward()?;
        Ok(grads.remove(&probe).unwrap_or_else(|| probe.zeros_like()))
    });
    let (per_sample, outcome) = fold::with_offer(scale_of, || loss.per_sample(y_true, y_pred));
    let per_sample = per_sample?;
    Ok(match outcome {
        fold::Outcome::NotTaken => Fold::Plain(Some(per_sample)),
        fold::Outcome::Taken(Some(h))
            if per_sample.values.id() == h.values_id && per_sample.mask.as_ref().map(Tensor::id) == h.mask_id =>
        {
            let mask = combined_mask(mask, per_sample.mask.as_ref())?;
            let value =
                reduce_weighted_values(loss.name(), &per_sample.values, sample_weight, mask.as_ref(), reduction)?;
            Fold::Reduced(fold::reduced_node(loss.name(), &value, h))
        }
        // Values computed with a scale the result does not carry: computed again, plainly.
        fold::Outcome::Taken(_) => Fold::Plain(None),
    })
}

/// [`compute`] for one shard of a batch split across processes: the loss' weighted sum and its
/// share of the reduction's denominator ([`reduce_partial`](crate::reduce_partial)), so that a
/// data-parallel step divides by the *global* count or weight sum.
pub fn compute_partial<L: Loss + ?Sized>(
    loss: &L,
    y_true: &Tensor,
    y_pred: &Tensor,
    sample_weight: Option<&Tensor>,
) -> Result<(Tensor, Option<f64>)> {
    let y_true = y_true.to_dtype(y_pred.dtype());
    let (y_true, y_pred) = squeeze_or_expand_to_same_rank(&y_true, y_pred)?;
    let PerSample { values, mask } = loss.per_sample(&y_true, &y_pred)?;
    crate::reduce_partial(loss.name(), &values, sample_weight, mask.as_ref(), loss.reduction())
}
