//! The tape's step (Keras' `train_step`): forward with the losses, `backward`, the update.

use super::fused_head::{fused_head, fused_loss};
use crate::model::Model;
use crate::train::data::Dataset;
use crate::train::guard::{guarded_update, GuardAt};
use crate::train::update::apply_update;
use losskit::{Error, Result, Tensor};

/// What one training step reports: the total loss, each output's loss, the outputs.
pub(crate) struct StepOutput {
    pub(crate) loss: f64,
    pub(crate) each: Vec<f64>,
    pub(crate) outputs: Vec<Tensor>,
}

/// One forward pass with the losses: `(total, per-output losses)`.
pub(crate) fn losses_on(
    model: &mut Model,
    xb: &Tensor,
    yb: &[Tensor],
    wb: Option<&Tensor>,
    training: bool,
) -> Result<(Tensor, Vec<f64>, Vec<Tensor>)> {
    let (losses, outs) = match fused_head(model)? {
        Some(fused) => (vec![fused_loss(model, &fused, xb, yb, wb, training)?], Vec::new()),
        None => {
            let outs = model.forward(xb, training)?;
            let compiled = model.compiled.as_ref().expect("checked");
            let losses = outs
                .iter()
                .zip(yb)
                .zip(&compiled.losses)
                .map(|((out, y), loss)| loss.call(y, out, wb))
                .collect::<Result<Vec<_>>>()?;
            (losses, outs)
        }
    };
    let (total, each) = weighted_total(model, losses, 1.0)?;
    Ok((total, each, outs))
}

/// `Σ wᵢ·Lᵢ` over the outputs' losses (loss weights), plus the layers' regularization
/// times `reg_share` (1, or 1/workers in a data-parallel step); with each output's
/// unweighted loss.
pub(crate) fn weighted_total(model: &Model, losses: Vec<Tensor>, reg_share: f64) -> Result<(Tensor, Vec<f64>)> {
    let compiled = model.compiled.as_ref().expect("checked");
    let mut total: Option<Tensor> = None;
    let mut each = Vec::with_capacity(losses.len());
    for (l, weight) in losses.into_iter().zip(&compiled.loss_weights) {
        each.push(l.to_scalar()?);
        let term = match weight {
            Some(w) => l.mul_scalar(*w)?,
            None => l,
        };
        total = Some(match total {
            None => term,
            Some(t) => t.add(&term)?,
        });
    }
    let mut total = total.ok_or_else(|| Error::Config("the model has no outputs".into()))?;
    if let Some(reg) = model.regularization_loss()? {
        total = total.add(&if reg_share == 1.0 { reg } else { reg.mul_scalar(reg_share)? })?;
    }
    Ok((total, each))
}

/// Keras' `train_step`: forward with the losses, gradients, the NaN guard's check (when on),
/// and the optimizer's update of every parameter.
pub(crate) fn train_step(model: &mut Model, batch: &Dataset, guard: Option<GuardAt<'_>>) -> Result<StepOutput> {
    let (total, each, outs) = losses_on(model, &batch.x, &batch.ys, batch.w.as_ref(), true)?;
    let loss = total.to_scalar()?;
    let mut grads = total.backward()?;
    // Drop the graph (the loss and the outputs hold it, and it holds the weights) so the
    // optimizer updates the weights in place instead of copying them.
    drop(total);
    let outputs: Vec<Tensor> = outs.iter().map(Tensor::detach).collect();
    drop(outs);
    let g: Vec<Tensor> =
        model.params().iter().map(|p| grads.remove(&p.value).unwrap_or_else(|| p.value.zeros_like())).collect();
    drop(grads);
    if let Some(guard) = guard {
        guarded_update(model, batch, loss, &g, guard)?;
    } else {
        apply_update(model, &g)?;
    }
    Ok(StepOutput { loss, each, outputs })
}
