//! The callback interface (Keras' hooks) and the History that `fit` returns.

use crate::model::Model;
use losskit::Result;
use std::collections::BTreeMap;

/// Metric values by name (`"loss"`, `"accuracy"`, `"val_loss"`, ...), in alphabetical order as
/// Keras' CSV and History list them.
pub type Logs = BTreeMap<String, f64>;

/// Hooks called by `fit`, `evaluate` and `predict`. Every hook has a no-op default; a callback
/// stops training by setting `model.stop_training = true`. Batch logs carry running means
/// over the epoch so far (as Keras reports them); epoch logs add the `val_*` entries.
#[allow(unused_variables)]
pub trait Callback {
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
    pub(crate) fn push(&mut self, epoch: usize, logs: &Logs) {
        self.epochs.push(epoch);
        for (k, v) in logs {
            self.history.entry(k.clone()).or_default().push(*v);
        }
    }
}
