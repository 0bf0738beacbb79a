//! Keras' trainer: `fit`, `evaluate` and `predict` on a [`Model`], split along the seams of
//! Keras' own trainer (`trainer.py`, `compile_utils.py`, `epoch_iterator.py`, `data_adapters/`
//! and the backends' `train_step`):
//!
//! | file | holds |
//! |---|---|
//! | `options.rs` | [`Fit`] (`fit`'s arguments) and [`Targets`] |
//! | `data.rs` | the data checks, `class_weight` → sample weights, the validation split, batches |
//! | `logs.rs` | an epoch's running sums of loss and metrics, and the logs made from them |
//! | `fit_loop.rs` | the epoch and batch loops with their callbacks |
//! | `resume.rs` | backup and resume |
//! | `guard.rs` | the NaN guard and its diagnosis |
//! | `advice.rs` | the "cannot learn" warning |
//! | `step/` | the training step's paths ([`StepKind`]), chosen once per `fit`, one file each |
//! | `evaluate.rs` | `evaluate` and `predict` |
//!
//! The methods below are the trainer's public face; everything behind them is a function of
//! the model and the loop's state.

mod advice;
mod data;
mod evaluate;
mod fit_loop;
mod guard;
mod logs;
mod options;
mod resume;
mod state;
pub(crate) mod step;
mod update;

pub use options::{Fit, Targets};
pub use step::{StepKind, StepPath};

use crate::callbacks::{History, Logs};
use crate::distribute::Collective;
use crate::model::Model;
use losskit::{Result, Tensor};

impl Model {
    /// Keras' `fit`: trains for `epochs - initial_epoch` epochs and returns the [`History`].
    ///
    /// The logged `loss` is the running mean over the epoch's samples (batch losses weighted by
    /// batch size), reset each epoch; with several outputs each output's loss is logged as
    /// `<name>_loss` (with sample weights, without loss weights). `val_*` entries come from
    /// `validation_split` (the last fraction, taken before shuffling) or `validation_data`.
    /// Data errors (row counts, labels outside the model's classes, a loss that does not fit
    /// the output) are reported before the first step. With a
    /// [`BackupAndRestore`](crate::BackupAndRestore) callback whose folder holds a backup,
    /// training resumes where the backup left it (the History returned then covers the whole
    /// run). The path the steps took, and why not each faster one, is [`Model::step_path`].
    pub fn fit(&mut self, x: &Tensor, y: impl Into<Targets>, opts: Fit<'_>) -> Result<History> {
        let group = opts.group.filter(|g| g.size() > 1);
        let result = fit_loop::fit_run(self, x, y.into(), opts);
        if let (Err(e), Some(g)) = (&result, group) {
            g.fail(e);
        }
        result
    }

    /// Keras' `evaluate`: the loss and metrics over `x`, `y` in batches (no dropout), as
    /// running means over all samples. `sample_weight` weights the loss.
    pub fn evaluate(
        &mut self,
        x: &Tensor,
        y: impl Into<Targets>,
        batch_size: usize,
        sample_weight: Option<&Tensor>,
    ) -> Result<Logs> {
        let ys = data::evaluation_targets(self, x, y.into(), sample_weight)?;
        evaluate::evaluate_inner(self, x, &ys, sample_weight, batch_size, &mut [], None)
    }

    /// [`Model::evaluate`] data-parallel: each worker of `group` evaluates its shard of every
    /// batch, and the losses (over each batch's global denominator) and metrics are summed
    /// across workers; every worker returns the same logs, equal to one process' evaluation.
    pub fn evaluate_distributed(
        &mut self,
        x: &Tensor,
        y: impl Into<Targets>,
        batch_size: usize,
        sample_weight: Option<&Tensor>,
        group: &dyn Collective,
    ) -> Result<Logs> {
        let ys = data::evaluation_targets(self, x, y.into(), sample_weight)?;
        let result = evaluate::evaluate_inner(self, x, &ys, sample_weight, batch_size, &mut [], Some(group));
        if let (Err(e), true) = (&result, group.size() > 1) {
            group.fail(e);
        }
        result
    }

    /// Keras' `predict`: the outputs for `x` (`(n, ...)`, one tensor per output) in batches of
    /// `batch_size` (no dropout, no gradients).
    pub fn predict(&mut self, x: &Tensor, batch_size: usize) -> Result<Vec<Tensor>> {
        evaluate::predict(self, x, batch_size)
    }

    /// [`Model::predict`] data-parallel: each worker of `group` predicts its contiguous share
    /// of the rows, and every worker returns all the predictions (gathered by a sum of
    /// zero-padded shares, exact).
    pub fn predict_distributed(
        &mut self,
        x: &Tensor,
        batch_size: usize,
        group: &dyn Collective,
    ) -> Result<Vec<Tensor>> {
        evaluate::predict_distributed(self, x, batch_size, group)
    }

    /// The path the last `fit` took for its steps, and for each faster path it could not
    /// take, why (`None` before the first `fit`).
    pub fn step_path(&self) -> Option<&StepPath> {
        self.step_path.as_ref()
    }
}
