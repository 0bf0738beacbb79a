//! The planned step ([`StepPlan`]): when the model allows it, each step without the tape.

use super::fused_head::fused_head;
use super::plan::StepPlan;
use crate::metrics::Metric;
use crate::model::Model;
use crate::train::data::{Dataset, FitData};
use crate::train::guard::{fail_step, weight_names, GuardAt};
use crate::train::logs::{accumulate, Accumulators};
use losskit::{Error, Result, Tensor};

/// The planned step for this run ([`Compile::planned_step`](crate::Compile::planned_step)),
/// or why there is none (it is off, or not possible); an error when it is required and not
/// possible.
pub(crate) fn step_plan(
    model: &mut Model,
    data: &FitData,
    distributed: bool,
) -> Result<std::result::Result<StepPlan, String>> {
    let wanted = model.compiled.as_ref().expect("checked").planned_step;
    if wanted == Some(false) {
        return Ok(Err("off (Compile::planned_step(Some(false)))".into()));
    }
    match (plannable(model, data, distributed), wanted) {
        (Err(why), Some(true)) => Err(Error::Config(format!("compile: planned_step(Some(true)) but {why}"))),
        (plan, _) => Ok(plan),
    }
}

/// The plan for inference on `x` (and, to evaluate, the loss against `y`), when
/// [`Compile::planned_step`](crate::Compile::planned_step) is not off and the model allows
/// it (`None`: the tape runs the model).
pub(crate) fn inference_plan(model: &Model, x: &Tensor, y: Option<&Tensor>) -> Option<StepPlan> {
    if model.compiled.as_ref().is_some_and(|c| c.planned_step == Some(false)) {
        return None;
    }
    if y.is_some() && !matches!(fused_head(model), Ok(None)) {
        return None;
    }
    StepPlan::new(model, x, y).ok()
}

/// The planned step for this model and run, or why there is none.
pub(crate) fn plannable(model: &mut Model, data: &FitData, distributed: bool) -> std::result::Result<StepPlan, String> {
    if fused_head(model).map_err(|e| e.to_string())?.is_some() {
        return Err("the fused linear + cross-entropy head trains the last layer".into());
    }
    model.ensure_built(&data.x).map_err(|e| e.to_string())?;
    let plan = match model.heads.is_empty() {
        true => StepPlan::new(model, &data.x, Some(&data.ys[0]))?,
        false => StepPlan::with_heads(model, &data.x, &data.ys)?,
    };
    if distributed {
        plan.shardable()?;
    }
    match &data.w {
        Some(w) => plan.with_sample_weights(w, data.x.shape().first().copied().unwrap_or(0)),
        None => Ok(plan),
    }
}

/// One training step through `plan` on the rows `idx`: the step, then (with the NaN guard:
/// `guard` is the epoch, the step and the norm history) the guard's record and verdict,
/// then the batch's loss and metrics into `acc`.
pub(crate) fn planned_step(
    model: &mut Model,
    plan: &mut StepPlan,
    data: &FitData,
    metrics: &[Vec<Metric>],
    guard: Option<GuardAt<'_>>,
    idx: &[usize],
    acc: &mut Accumulators,
) -> Result<()> {
    let check = guard.is_some().then_some(true);
    let (loss, applied) = plan.run(model, &data.x, &data.ys, data.w.as_ref(), idx, check)?;
    if let Some(guard) = guard {
        guard.norms.push_sums(&plan.sum_squares, || weight_names(model));
        if !applied {
            let batch = Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), idx, true)?;
            return fail_step(model, &batch, loss, plan.weight_grads(), guard);
        }
    }
    let each = if plan.output_losses().is_empty() { std::slice::from_ref(&loss) } else { plan.output_losses() };
    accumulate(acc, metrics, plan.outputs(idx.len()), loss, each, idx.len() as f64)
}
