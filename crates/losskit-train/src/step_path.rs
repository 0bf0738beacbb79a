//! Which path `fit`'s training steps take ([`StepKind`]), and why not each faster one
//! ([`StepPath`]): kept by the model, printed by `fit` at verbose 1.

use std::fmt;

/// The ways `fit` takes a training step, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepKind {
    /// The planned step: the layers, the loss' row kernel and the update over buffers kept
    /// across steps, no tape (a warm step allocates nothing); the tape's bits.
    Planned,
    /// The tape, with the last Dense layer and a sparse cross-entropy from logits fused into
    /// one node ([`losskit::LinearCrossEntropy`]): the logits are never stored.
    FusedHead,
    /// The tape: any model, any loss.
    Tape,
    /// Data-parallel: each worker's shard of the batch on the tape, gradients all-reduced.
    Distributed,
    /// Data-parallel through the plan: each worker's shard of the batch over the planned
    /// step's buffers, gradients all-reduced from them; the tape's data-parallel bits.
    DistributedPlanned,
}

impl StepKind {
    /// The path's name in messages: `planned step`, `fused head`, `tape`, `data-parallel tape`,
    /// `data-parallel planned step`.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Planned => "planned step",
            StepKind::FusedHead => "fused head",
            StepKind::Tape => "tape",
            StepKind::Distributed => "data-parallel tape",
            StepKind::DistributedPlanned => "data-parallel planned step",
        }
    }
}

/// Which path a `fit`'s steps took, and why not each faster one
/// ([`Model::step_path`](crate::Model::step_path)).
///
/// Displayed as `tape (planned step: layer 2 `dense` (Dense) is not plannable: it has a
/// regularizer; fused head: the last layer is not a linear Dense)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPath {
    /// The path taken.
    pub kind: StepKind,
    /// Each faster path not taken, with the reason.
    pub not_taken: Vec<(StepKind, String)>,
}

impl fmt::Display for StepPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if self.not_taken.is_empty() {
            return Ok(());
        }
        let reasons: Vec<String> = self.not_taken.iter().map(|(k, why)| format!("{}: {why}", k.name())).collect();
        write!(f, " ({})", reasons.join("; "))
    }
}
