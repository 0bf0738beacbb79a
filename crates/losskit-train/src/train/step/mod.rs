//! The training step, on one of its paths, chosen once per `fit` ([`choose`]), one file each:
//! `planned.rs` (with the plan itself in `plan.rs`), `fused_head.rs`, `tape.rs`,
//! `distributed.rs`.

mod distributed;
mod fused_head;
mod plan;
mod planned;
mod tape;

pub(crate) use distributed::{
    distributed_planned_step, distributed_step, global_losses, join_group, local_sums, loss_shares,
};
pub(crate) use plan::StepPlan;
pub(crate) use planned::{inference_plan, planned_step};
pub(crate) use tape::{losses_on, train_step};

use super::data::{Dataset, FitData};
use super::guard::GuardAt;
use super::logs::{accumulate, Accumulators};
use crate::distribute::Collective;
use crate::metrics::Metric;
use crate::model::Model;
pub use crate::step_path::{StepKind, StepPath};
use losskit::Result;

/// How the loop takes each step of a `fit`.
pub(crate) enum Stepper<'c> {
    /// Through the plan.
    Planned(Box<StepPlan>),
    /// Through the tape (the fused head inside it when the model allows it).
    Tape,
    /// Through the tape, sharded over the workers of the group.
    Distributed(&'c dyn Collective),
    /// Through the plan, sharded over the workers of the group.
    DistributedPlanned(Box<StepPlan>, &'c dyn Collective),
}

/// The path for this model and run: data-parallel when `group` has several workers (through
/// the plan when the model allows it, else the tape), else the planned step when the model
/// allows it, else the tape (with the fused head when it applies);
/// with the reason for each faster path not taken. A path that
/// [`Compile`](crate::Compile) requires and cannot be taken is an error naming why.
pub(crate) fn choose<'c>(
    model: &mut Model,
    data: &FitData,
    group: Option<&'c dyn Collective>,
) -> Result<(Stepper<'c>, StepPath)> {
    let mut not_taken = Vec::new();
    if let Some(group) = group {
        return Ok(match planned::step_plan(model, data, true)? {
            Ok(plan) => (
                Stepper::DistributedPlanned(Box::new(plan), group),
                StepPath { kind: StepKind::DistributedPlanned, not_taken },
            ),
            Err(why) => {
                not_taken.push((StepKind::DistributedPlanned, why));
                (Stepper::Distributed(group), StepPath { kind: StepKind::Distributed, not_taken })
            }
        });
    }
    match planned::step_plan(model, data, false)? {
        Ok(plan) => return Ok((Stepper::Planned(Box::new(plan)), StepPath { kind: StepKind::Planned, not_taken })),
        Err(why) => not_taken.push((StepKind::Planned, why)),
    }
    let kind = match fused_head::why_not_fused(model) {
        None => StepKind::FusedHead,
        Some(why) => {
            not_taken.push((StepKind::FusedHead, why));
            StepKind::Tape
        }
    };
    Ok((Stepper::Tape, StepPath { kind, not_taken }))
}

impl<'c> Stepper<'c> {
    /// The other workers of a data-parallel run (more than one), if this is one.
    pub(crate) fn group(&self) -> Option<&'c dyn Collective> {
        match self {
            Stepper::Distributed(group) | Stepper::DistributedPlanned(_, group) => Some(*group),
            _ => None,
        }
    }

    /// One training step on the rows `idx` of `data` (with the NaN guard when `guard` is
    /// given), the batch's loss and metrics into `acc`.
    pub(crate) fn step(
        &mut self,
        model: &mut Model,
        data: &FitData,
        metrics: &[Vec<Metric>],
        idx: &[usize],
        guard: Option<GuardAt<'_>>,
        acc: &mut Accumulators,
    ) -> Result<()> {
        match self {
            Stepper::Distributed(group) => distributed_step(model, *group, data, metrics, idx, guard, acc),
            Stepper::DistributedPlanned(plan, group) => {
                distributed_planned_step(model, plan, *group, data, metrics, idx, guard, acc)
            }
            Stepper::Planned(plan) => planned_step(model, plan, data, metrics, guard, idx, acc),
            Stepper::Tape => {
                let batch = Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), idx, true)?;
                let out = train_step(model, &batch, guard)?;
                accumulate(acc, metrics, batch.ys.iter().zip(&out.outputs), out.loss, &out.each, idx.len() as f64)
            }
        }
    }
}
