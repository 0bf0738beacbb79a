//! `LambdaCallback`: callbacks from closures.

use super::{Callback, Logs};
use crate::model::Model;
use losskit::Result;

type EpochFn = Box<dyn FnMut(usize, &Logs) -> Result<()>>;
type TrainFn = Box<dyn FnMut(&Logs) -> Result<()>>;

/// A callback built from closures (Keras' `LambdaCallback`); unset hooks do nothing.
#[derive(Default)]
pub struct LambdaCallback {
    on_epoch_begin: Option<EpochFn>,
    on_epoch_end: Option<EpochFn>,
    on_batch_begin: Option<EpochFn>,
    on_batch_end: Option<EpochFn>,
    on_train_begin: Option<TrainFn>,
    on_train_end: Option<TrainFn>,
}

impl LambdaCallback {
    /// A callback with no hooks.
    pub fn new() -> Self {
        Self::default()
    }
    /// `f(epoch, logs)` before each epoch.
    pub fn on_epoch_begin(mut self, f: impl FnMut(usize, &Logs) -> Result<()> + 'static) -> Self {
        self.on_epoch_begin = Some(Box::new(f));
        self
    }
    /// `f(epoch, logs)` after each epoch.
    pub fn on_epoch_end(mut self, f: impl FnMut(usize, &Logs) -> Result<()> + 'static) -> Self {
        self.on_epoch_end = Some(Box::new(f));
        self
    }
    /// `f(batch, logs)` before each training batch.
    pub fn on_batch_begin(mut self, f: impl FnMut(usize, &Logs) -> Result<()> + 'static) -> Self {
        self.on_batch_begin = Some(Box::new(f));
        self
    }
    /// `f(batch, logs)` after each training batch.
    pub fn on_batch_end(mut self, f: impl FnMut(usize, &Logs) -> Result<()> + 'static) -> Self {
        self.on_batch_end = Some(Box::new(f));
        self
    }
    /// `f(logs)` before training.
    pub fn on_train_begin(mut self, f: impl FnMut(&Logs) -> Result<()> + 'static) -> Self {
        self.on_train_begin = Some(Box::new(f));
        self
    }
    /// `f(logs)` after training.
    pub fn on_train_end(mut self, f: impl FnMut(&Logs) -> Result<()> + 'static) -> Self {
        self.on_train_end = Some(Box::new(f));
        self
    }
}

fn call_epoch(f: &mut Option<EpochFn>, i: usize, logs: &Logs) -> Result<()> {
    f.as_mut().map_or(Ok(()), |f| f(i, logs))
}

impl Callback for LambdaCallback {
    fn on_train_begin(&mut self, logs: &Logs, _model: &mut Model) -> Result<()> {
        self.on_train_begin.as_mut().map_or(Ok(()), |f| f(logs))
    }
    fn on_train_end(&mut self, logs: &Logs, _model: &mut Model) -> Result<()> {
        self.on_train_end.as_mut().map_or(Ok(()), |f| f(logs))
    }
    fn on_epoch_begin(&mut self, epoch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        call_epoch(&mut self.on_epoch_begin, epoch, logs)
    }
    fn on_epoch_end(&mut self, epoch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        call_epoch(&mut self.on_epoch_end, epoch, logs)
    }
    fn on_train_batch_begin(&mut self, batch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        call_epoch(&mut self.on_batch_begin, batch, logs)
    }
    fn on_train_batch_end(&mut self, batch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        call_epoch(&mut self.on_batch_end, batch, logs)
    }
}
