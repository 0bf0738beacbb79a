//! Step 3 of a planned step: the loss and its gradient with respect to the model's output,
//! by the loss' row kernel on the step's buffers or through a small tape of its own.

use super::{buf, read, Buffers};
use losskit::{Reduction, Result, RowLoss};
use losskit_tensor::Element;

/// Output `k`'s loss kernel, with the targets of the buffers `b` (its batch's) written as it
/// reads them (sparse labels as class indices, checked as the loss checks them).
pub(super) fn kernel_targets<'m, T: Element>(
    model: &'m crate::Model,
    k: usize,
    classes: usize,
    b: &mut Buffers,
) -> Result<RowLoss<'m>> {
    let loss = &model.compiled.as_ref().expect("checked in new").losses[k];
    let kernel = losskit::row_kernel(loss.as_ref()).expect("checked in new");
    let targets = buf::<T>(&mut b.targets);
    targets.copy_from_slice(read::<T>(&b.y));
    kernel.prepare_targets(loss.name(), targets, classes)?;
    Ok(kernel)
}

/// How the step computes the loss and its gradient with respect to the model's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LossPath {
    /// The loss' row kernel on the step's buffers ([`losskit::row_kernel`]): no allocation.
    Kernel,
    /// The loss (a custom closure, a loss with no row kernel or one with a mask of its own)
    /// called on the output through a small tape of its own: the layers stay planned.
    Tape,
}

/// How the per-sample values are reduced to the loss.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reduce {
    /// Divides the (weighted) sum (else it is the plain sum).
    pub(super) divides: bool,
    /// Weights each value by the batch's sample weight first.
    pub(super) weighted: bool,
    /// Divides by the sum of the weights, not the number of values (with `weighted`).
    pub(super) by_weight_sum: bool,
}

impl Reduce {
    /// The reduction these flags describe.
    fn reduction(self) -> Reduction {
        match (self.divides, self.by_weight_sum) {
            (false, _) => Reduction::Sum,
            (true, true) => Reduction::MeanWithSampleWeight,
            (true, false) => Reduction::SumOverBatchSize,
        }
    }
}

/// Step 3: the per-sample values and `∂L/∂output` into the last stage's gradient buffer; the
/// reduced loss. As `losskit::compute`: `L = Σ values·w · factor` (`w` = 1 without weights;
/// see [`losskit::reduction_factor`]), each row's gradient the kernel's times `factor·w` (inside the
/// kernel's pass on large outputs, as the folded reduction computes it).
pub(super) fn loss_and_gradient<T: Element>(kernel: RowLoss<'_>, reduce: Reduce, b: &mut Buffers) -> Result<f64> {
    let last = b.outs.len() - 1;
    let y_pred = read::<T>(&b.outs[last]);
    let cols = y_pred.len() / b.rows.max(1);
    let weights = reduce.weighted.then(|| read::<T>(&b.w));
    let (values, grad, row_scale) = (buf::<T>(&mut b.values), buf::<T>(&mut b.grads[last]), buf::<T>(&mut b.scale));
    let loss = kernel.reduced_value_and_gradient(
        read::<T>(&b.targets),
        y_pred,
        cols,
        weights,
        reduce.reduction(),
        values,
        grad,
        row_scale,
    )?;
    Ok(loss.to_f64().unwrap_or(f64::NAN))
}

/// The loss alone, as the tape computes it without gradients: the kernel's values, weighted,
/// reduced.
pub(super) fn loss_value<T: Element>(kernel: RowLoss<'_>, reduce: Reduce, b: &mut Buffers) -> Result<f64> {
    let last = b.outs.len() - 1;
    let y_pred = read::<T>(&b.outs[last]);
    let cols = y_pred.len() / b.rows.max(1);
    let weights = reduce.weighted.then(|| read::<T>(&b.w));
    let values = buf::<T>(&mut b.values);
    let loss = kernel.reduced_value(read::<T>(&b.targets), y_pred, cols, weights, reduce.reduction(), values)?;
    Ok(loss.to_f64().unwrap_or(f64::NAN))
}

/// A loss weight on a row kernel's loss, as the tape's `L·w` (in `T`) and its backward
/// (`∂L/∂output` times `w` in `T`, the kernel node's scaling by its upstream): the weighted loss,
/// and the gradient in `grad` scaled in place when given.
pub(super) fn weighted<T: Element>(loss: f64, w: f64, grad: Option<&mut [T]>) -> f64 {
    let w = T::c(w);
    if let Some(g) = grad {
        g.iter_mut().for_each(|v| *v = *v * w);
    }
    (T::c(loss) * w).to_f64().unwrap_or(f64::NAN)
}

/// Step 3 for a loss with no row kernel ([`LossPath::Tape`]): the compiled loss called on the
/// batch's targets, the model's output (a leaf of a fresh tape) and the sample weights, times
/// the output's loss weight when it has one, as the tape's step calls it; with `gradient`,
/// `∂L/∂output` from its backward pass into the last stage's gradient buffer. The reduced
/// (weighted) loss.
pub(super) fn tape_loss<T: Element>(
    model: &crate::Model,
    reduce: Reduce,
    loss_weight: Option<f64>,
    b: &mut Buffers,
    gradient: bool,
) -> Result<f64> {
    tape_loss_of::<T>(model, 0, reduce, loss_weight, b, gradient).map(|(_, weighted)| weighted)
}

/// [`tape_loss`] of output `k` (its compiled loss): the loss, and the loss times its weight.
pub(super) fn tape_loss_of<T: Element>(
    model: &crate::Model,
    k: usize,
    reduce: Reduce,
    loss_weight: Option<f64>,
    b: &mut Buffers,
    gradient: bool,
) -> Result<(f64, f64)> {
    let loss = &model.compiled.as_ref().expect("checked in new").losses[k];
    let last = b.outs.len() - 1;
    let out = b.outs[last].clone();
    let out = if gradient { out.requires_grad() } else { out };
    let value = loss.call(&b.y, &out, reduce.weighted.then_some(&b.w))?;
    let unweighted = value.to_scalar()?;
    let value = match loss_weight {
        Some(w) => value.mul_scalar(w)?,
        None => value,
    };
    let scalar = value.to_scalar()?;
    if gradient {
        let mut grads = value.backward()?;
        drop(value);
        let g = buf::<T>(&mut b.grads[last]);
        match grads.remove(&out) {
            Some(d) => match d.values::<T>() {
                Some(v) => g.copy_from_slice(v),
                None => g.copy_from_slice(&d.to_vec::<T>()),
            },
            // The loss does not depend on the output.
            None => g.fill(T::zero()),
        }
    }
    Ok((unweighted, scalar))
}
