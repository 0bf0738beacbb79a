//! Callbacks: the interface (Keras' hooks), the History that `fit` returns, and the built-ins
//! (progress bar, CSV, TensorBoard, learning-curve plots, early stopping, checkpoints,
//! learning-rate control, NaN termination, backups to resume a killed run).

pub(crate) mod backup;
mod control;
mod csv_logger;
mod lambda;
pub mod plot;
mod progbar;
mod tensorboard;

pub use backup::{BackupAndRestore, BackupWeights, CallbackState, SaveFreq};
pub use control::{EarlyStopping, LearningRateScheduler, Mode, ModelCheckpoint, ReduceLROnPlateau, TerminateOnNaN};
pub use csv_logger::CsvLogger;
pub use lambda::LambdaCallback;
pub use plot::{plot_history, PlotLearningCurves};
pub use progbar::ProgbarLogger;
pub use tensorboard::{TensorBoard, UpdateFreq};

use crate::model::Model;
use losskit::Result;
use std::collections::BTreeMap;

/// The seal of [`Callback`]'s internal hook: a type other crates cannot name or make.
pub(crate) mod sealed {
    /// Passed by `fit` to [`Callback::as_backup`](super::Callback::as_backup).
    #[derive(Debug, Clone, Copy)]
    pub struct Token;
}
/// Metric values by name (`"loss"`, `"accuracy"`, `"val_loss"`, ...), in alphabetical order as
/// Keras' CSV and History list them.
pub type Logs = BTreeMap<String, f64>;

/// What `fit` tells callbacks before training (Keras' `callback.params`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FitParams {
    /// The epoch `fit` stops before.
    pub epochs: usize,
    /// The first epoch.
    pub initial_epoch: usize,
    /// Training batches per epoch.
    pub steps: usize,
    /// `fit`'s verbosity.
    pub verbose: u8,
}

/// Hooks called by `fit`, `evaluate` and `predict`. Every hook has a no-op default; a callback
/// stops training by setting `model.stop_training = true`. Batch logs carry running means
/// over the epoch so far (as Keras reports them); epoch logs add the `val_*` entries.
#[allow(unused_variables)]
pub trait Callback {
    /// Receives the run's parameters before `on_train_begin`.
    fn set_params(&mut self, params: &FitParams) {}
    /// Before the first epoch.
    fn on_train_begin(&mut self, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// After the last epoch (also when stopped early).
    fn on_train_end(&mut self, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// Before an epoch (0-based).
    fn on_epoch_begin(&mut self, epoch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// After an epoch, with its training and validation logs.
    fn on_epoch_end(&mut self, epoch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// Before a training batch.
    fn on_train_batch_begin(&mut self, batch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// After a training batch (running means of the epoch so far).
    fn on_train_batch_end(&mut self, batch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// Before evaluation.
    fn on_test_begin(&mut self, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// After evaluation.
    fn on_test_end(&mut self, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// Before an evaluation batch.
    fn on_test_batch_begin(&mut self, batch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// After an evaluation batch.
    fn on_test_batch_end(&mut self, batch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// Before prediction.
    fn on_predict_begin(&mut self, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// After prediction.
    fn on_predict_end(&mut self, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// Before a prediction batch.
    fn on_predict_batch_begin(&mut self, batch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// After a prediction batch.
    fn on_predict_batch_end(&mut self, batch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        Ok(())
    }
    /// The state this callback needs to carry on after a resume, for
    /// [`BackupAndRestore`]'s backups; `None` (the default) for callbacks without one.
    fn state(&self) -> Option<CallbackState> {
        None
    }
    /// Puts back a [`Callback::state`] when `fit` resumes from a backup (after
    /// `on_train_begin`, so what that resets is overwritten).
    fn restore_state(&mut self, state: CallbackState) -> Result<()> {
        Ok(())
    }
    /// Sealed (the argument cannot be named outside losskit-train): the
    /// [`BackupAndRestore`] callback itself, which `fit` drives (`None` for every other).
    #[doc(hidden)]
    fn as_backup(&mut self, _: sealed::Token) -> Option<&mut BackupAndRestore> {
        None
    }
}

/// What `fit` returns: the epochs run and, per metric, one value per epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The epochs run (0-based; starts at `initial_epoch`).
    pub epochs: Vec<usize>,
    /// Values per metric name, one per epoch.
    pub history: BTreeMap<String, Vec<f64>>,
}

impl History {
    /// The values of one metric.
    pub fn get(&self, name: &str) -> Option<&[f64]> {
        self.history.get(name).map(Vec::as_slice)
    }
    /// The last value of one metric.
    pub fn last(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(|v| v.last().copied())
    }
    /// Reads a history written by [`CsvLogger`] (or Keras' `CSVLogger`): an `epoch` column and
    /// one column per metric. Errors name the file and the line.
    pub fn from_csv(path: impl AsRef<std::path::Path>) -> Result<History> {
        let path = path.as_ref();
        let ferr = |msg: String| losskit::Error::file(path.display().to_string(), msg);
        let mut reader = csv::ReaderBuilder::new().from_path(path).map_err(|e| ferr(format!("cannot read: {e}")))?;
        let headers: Vec<String> =
            reader.headers().map_err(|e| ferr(format!("bad header: {e}")))?.iter().map(String::from).collect();
        let epoch_col =
            headers.iter().position(|h| h == "epoch").ok_or_else(|| ferr("no `epoch` column in the header".into()))?;
        let mut history = History::default();
        for (i, record) in reader.records().enumerate() {
            let line = i + 2;
            let record = record.map_err(|e| ferr(format!("line {line}: {e}")))?;
            let parse = |s: &str| -> Option<f64> {
                match s.trim() {
                    "nan" | "NaN" => Some(f64::NAN),
                    "inf" => Some(f64::INFINITY),
                    "-inf" => Some(f64::NEG_INFINITY),
                    t => t.parse().ok(),
                }
            };
            let epoch = record
                .get(epoch_col)
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| ferr(format!("line {line}: bad epoch")))?;
            let mut logs = Logs::new();
            for (j, h) in headers.iter().enumerate() {
                if j == epoch_col {
                    continue;
                }
                let field = record.get(j).ok_or_else(|| ferr(format!("line {line}: missing column {h}")))?;
                let v = parse(field)
                    .ok_or_else(|| ferr(format!("line {line}: {field:?} in column {h} is not a number")))?;
                logs.insert(h.clone(), v);
            }
            history.push(epoch, &logs);
        }
        if history.epochs.is_empty() {
            return Err(ferr("no rows".into()));
        }
        Ok(history)
    }

    /// Appends one epoch's logs.
    pub fn push(&mut self, epoch: usize, logs: &Logs) {
        self.epochs.push(epoch);
        for (k, v) in logs {
            self.history.entry(k.clone()).or_default().push(*v);
        }
    }
}
