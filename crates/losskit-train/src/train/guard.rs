//! The NaN guard: a step whose loss or gradient is not finite changes nothing and stops `fit`
//! with a diagnosis of the batch.

use super::data::Dataset;
use super::update::apply_update_checked;
use crate::model::Model;
use crate::nan::{self, GradNormHistory};
use losskit::{no_grad, Error, Result, Tensor};

/// Where the NaN guard is: the step's epoch and index, and the gradient-norm history it records.
pub(crate) struct GuardAt<'n> {
    pub(crate) epoch: usize,
    pub(crate) step: usize,
    pub(crate) norms: &'n mut GradNormHistory,
}

/// The optimizer's update under the NaN guard: the gradients' norms are measured just before
/// the update ([`crate::Optimizer::apply_checked`]) and recorded per layer; at a non-finite
/// loss or gradient nothing is applied (the weights stay those after the last good step)
/// and the step stops with a diagnosis (also kept in [`Model::last_diagnosis`]).
pub(crate) fn guarded_update(
    model: &mut Model,
    batch: &Dataset,
    loss: f64,
    g: &[Tensor],
    guard: GuardAt<'_>,
) -> Result<()> {
    if loss.is_finite() {
        let check = apply_update_checked(model, g)?;
        guard.norms.push_sums(&check.sum_squares, || weight_names(model));
        if check.applied {
            return Ok(());
        }
    } else {
        // The loss alone condemns the step: measure the gradients for the diagnosis.
        let sums: Vec<f64> = g.iter().map(Tensor::sum_of_squares).collect();
        guard.norms.push_sums(&sums, || weight_names(model));
    }
    fail_step(model, batch, loss, g, guard)
}

/// Stops a step the guard condemned: the diagnosis of `batch` (kept in
/// [`Model::last_diagnosis`]) as the error.
pub(crate) fn fail_step(model: &mut Model, batch: &Dataset, loss: f64, g: &[Tensor], guard: GuardAt<'_>) -> Result<()> {
    let names = weight_names(model);
    let GuardAt { epoch, step, norms } = guard;
    let d = diagnose(model, epoch, step, loss, &batch.x, &batch.ys, batch.w.as_ref(), names, g, norms)?;
    let text = d.to_string();
    model.last_diagnosis = Some(d);
    Err(Error::NonFinite { op: "fit".into(), diagnosis: text })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn diagnose(
    model: &mut Model,
    epoch: usize,
    batch: usize,
    loss: f64,
    xb: &Tensor,
    yb: &[Tensor],
    wb: Option<&Tensor>,
    grad_names: Vec<String>,
    grads: &[Tensor],
    history: &GradNormHistory,
) -> Result<nan::Diagnosis> {
    let trace = model.trace(xb)?;
    let outs = no_grad(|| model.forward(xb, false))?;
    let compiled = model.compiled.as_ref().expect("checked");
    let mut data_loss = 0.0;
    let mut output_loss_finite = true;
    for ((loss, y), out) in compiled.losses.iter().zip(yb).zip(&outs) {
        let v = no_grad(|| loss.call(y, out, wb))?.to_scalar()?;
        output_loss_finite &= v.is_finite();
        data_loss += v;
    }
    let regularization = no_grad(|| model.regularization_loss())?.map(|r| r.to_scalar()).transpose()?;
    let learning_rate = model.compiled.as_ref().expect("checked").optimizer.learning_rate();
    Ok(nan::diagnose(nan::Failure {
        epoch,
        batch,
        loss,
        x: xb,
        trace,
        output_loss_finite,
        regularization,
        data_loss,
        regularizers: model.regularizers(),
        grad_names,
        grads,
        history,
        learning_rate,
    }))
}

/// Every weight's name, in weight order.
pub(crate) fn weight_names(model: &Model) -> Vec<String> {
    model.params().iter().map(|p| p.name.clone()).collect()
}
