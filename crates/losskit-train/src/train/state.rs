//! The state of `fit`'s loop besides the model: the data, metrics, callbacks, options, the
//! NaN guard's history, where the loop is, and how it steps.

use super::data::FitData;
use super::logs::Accumulators;
use super::step::Stepper;
use crate::callbacks::backup::RunFacts;
use crate::callbacks::sealed::Token;
use crate::callbacks::{BackupAndRestore, Callback, History, Logs};
use crate::metrics::Metric;
use crate::nan::GradNormHistory;
use losskit::{Error, Result};
use losskit_tensor::random;

/// The options the epoch and batch loops read.
#[derive(Clone, Copy)]
pub(crate) struct LoopOptions {
    pub(crate) batch_size: usize,
    pub(crate) nan_guard: bool,
    pub(crate) epochs: usize,
    pub(crate) shuffle: bool,
    pub(crate) verbose: u8,
}

/// Where the loop is, and what it has gathered: what a backup records besides the model.
pub(crate) struct Progress {
    /// The epoch to run, or the one in progress when `step > 0` (0-based).
    pub(crate) epoch: usize,
    /// Batches of `epoch` done.
    pub(crate) step: usize,
    /// The shuffle generator before `epoch`'s permutation.
    pub(crate) shuffle_rng: random::Rng,
    /// The running sums of a resumed, partly done epoch.
    pub(crate) sums: Option<Accumulators>,
    pub(crate) history: History,
    pub(crate) last_logs: Logs,
    /// A callback stopped training.
    pub(crate) stopped: bool,
}

impl Progress {
    /// A fresh run from `epoch`.
    pub(crate) fn start(epoch: usize, seed: u64) -> Progress {
        Progress {
            epoch,
            step: 0,
            shuffle_rng: random::rng(seed),
            sums: None,
            history: History::default(),
            last_logs: Logs::new(),
            stopped: false,
        }
    }
}

/// What `fit`'s loop works with besides the model: the data, the metrics, the callbacks (and
/// which of them is the backup), the options, the NaN guard's norm history, the progress.
pub(crate) struct FitLoop<'d, 'c> {
    pub(crate) data: &'d FitData,
    pub(crate) metrics: Vec<Vec<Metric>>,
    pub(crate) callbacks: Vec<&'c mut dyn Callback>,
    /// The index of the [`BackupAndRestore`] among `callbacks`.
    pub(crate) backup: Option<usize>,
    pub(crate) opts: LoopOptions,
    pub(crate) facts: RunFacts,
    pub(crate) norms: GradNormHistory,
    pub(crate) progress: Progress,
    /// How each step is taken, chosen before the first.
    pub(crate) stepper: Stepper<'c>,
    /// The pool's other workers kept awake between the steps' parallel regions (or napping
    /// while the calling thread alone is faster), once training starts.
    pub(crate) awake: Option<losskit_kernels::threads::KeepAwake>,
}

impl<'d, 'c> FitLoop<'d, 'c> {
    pub(crate) fn new(
        data: &'d FitData,
        metrics: Vec<Vec<Metric>>,
        mut callbacks: Vec<&'c mut dyn Callback>,
        opts: LoopOptions,
        facts: RunFacts,
        progress: Progress,
    ) -> Result<Self> {
        let backups: Vec<usize> =
            callbacks.iter_mut().enumerate().filter_map(|(i, cb)| cb.as_backup(Token).map(|_| i)).collect();
        if backups.len() > 1 {
            return Err(Error::Config("fit: more than one BackupAndRestore callback".into()));
        }
        Ok(FitLoop {
            data,
            metrics,
            callbacks,
            backup: backups.first().copied(),
            opts,
            facts,
            norms: GradNormHistory::default(),
            progress,
            stepper: Stepper::Tape,
            awake: None,
        })
    }

    /// The backup callback, if any.
    pub(crate) fn backup(&mut self) -> Option<&mut BackupAndRestore> {
        let i = self.backup?;
        self.callbacks[i].as_backup(Token)
    }
}
