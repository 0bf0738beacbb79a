//! Callbacks that steer training: TerminateOnNaN, EarlyStopping, ReduceLROnPlateau,
//! LearningRateScheduler, ModelCheckpoint.

use super::{Callback, CallbackState, Logs};
use crate::model::Model;
use losskit::{Error, Result, Tensor};
use std::path::PathBuf;

/// Whether a monitored value improves by going down or up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `max` for names ending in `acc`, `accuracy` or `auc`, else `min` (Keras' `"auto"`).
    Auto,
    /// Lower is better.
    Min,
    /// Higher is better.
    Max,
}

impl Mode {
    /// Whether `current` beats `reference` by more than `min_delta` in this mode's direction
    /// (any value beats a NaN reference, i.e. the first one).
    fn improved(self, monitor: &str, current: f64, reference: f64, min_delta: f64) -> bool {
        if reference.is_nan() {
            return true;
        }
        if self.maximize(monitor) {
            current - min_delta > reference
        } else {
            current + min_delta < reference
        }
    }

    fn maximize(self, monitor: &str) -> bool {
        match self {
            Mode::Max => true,
            Mode::Min => false,
            Mode::Auto => monitor.ends_with("acc") || monitor.ends_with("accuracy") || monitor.ends_with("auc"),
        }
    }
}

fn missing(callback: &str, monitor: &str, logs: &Logs) -> Error {
    Error::Config(format!(
        "{callback}: the monitored metric {monitor:?} is not in the logs (available: {})",
        logs.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// Stops training when the loss becomes NaN or infinite (Keras' `TerminateOnNaN`): after the
/// training batch whose running-mean `loss` is not finite, prints
/// `Batch {i}: Invalid loss, terminating training` and sets `stop_training` (the epoch's end
/// still runs), or with `raise_error` returns an error at once.
#[derive(Debug, Clone, Default)]
pub struct TerminateOnNaN {
    raise_error: bool,
    /// The batch at which training was stopped, if it was.
    pub stopped_at: Option<usize>,
}

impl TerminateOnNaN {
    /// Stops training (no error).
    pub fn new() -> Self {
        Self::default()
    }
    /// Return an error instead of stopping quietly.
    pub fn raise_error(mut self, on: bool) -> Self {
        self.raise_error = on;
        self
    }
}

impl Callback for TerminateOnNaN {
    fn on_train_batch_end(&mut self, batch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        match logs.get("loss") {
            Some(l) if !l.is_finite() => {
                self.stopped_at = Some(batch);
                if self.raise_error {
                    return Err(Error::Value {
                        op: "TerminateOnNaN".into(),
                        msg: format!("batch {batch}: invalid loss {l}"),
                    });
                }
                println!("Batch {batch}: Invalid loss, terminating training");
                model.stop_training = true;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Stops training when `monitor` has stopped improving (Keras 3's `EarlyStopping`): an
/// improvement is a change of more than `min_delta` in the right direction; after `patience`
/// epochs without one, training stops. Epochs before `start_from_epoch` are not counted. With
/// `restore_best_weights`, the weights of the best epoch are put back when training ends.
pub struct EarlyStopping {
    monitor: String,
    min_delta: f64,
    patience: usize,
    mode: Mode,
    baseline: Option<f64>,
    restore_best_weights: bool,
    start_from_epoch: usize,
    wait: usize,
    best: f64,
    best_weights: Option<Vec<Tensor>>,
    /// The best epoch seen (0-based).
    pub best_epoch: Option<usize>,
    /// The epoch at which training was stopped, if it was.
    pub stopped_epoch: Option<usize>,
}

impl EarlyStopping {
    /// Monitors `monitor` (e.g. `"val_loss"`) with Keras' defaults: `min_delta` 0,
    /// `patience` 0, mode auto, no baseline, no restoring, from epoch 0.
    pub fn new(monitor: &str) -> Self {
        EarlyStopping {
            monitor: monitor.into(),
            min_delta: 0.0,
            patience: 0,
            mode: Mode::Auto,
            baseline: None,
            restore_best_weights: false,
            start_from_epoch: 0,
            wait: 0,
            best: f64::NAN,
            best_weights: None,
            best_epoch: None,
            stopped_epoch: None,
        }
    }
    /// Smallest change that counts as an improvement.
    pub fn min_delta(mut self, d: f64) -> Self {
        self.min_delta = d.abs();
        self
    }
    /// Epochs without improvement before stopping.
    pub fn patience(mut self, p: usize) -> Self {
        self.patience = p;
        self
    }
    /// Direction of improvement.
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }
    /// A value the metric must beat for the patience to reset.
    pub fn baseline(mut self, b: f64) -> Self {
        self.baseline = Some(b);
        self
    }
    /// Restore the best epoch's weights at the end.
    pub fn restore_best_weights(mut self, on: bool) -> Self {
        self.restore_best_weights = on;
        self
    }
    /// Ignore epochs before this one (warm-up).
    pub fn start_from_epoch(mut self, e: usize) -> Self {
        self.start_from_epoch = e;
        self
    }

    fn improves(&self, current: f64, reference: f64) -> bool {
        self.mode.improved(&self.monitor, current, reference, self.min_delta)
    }
}

fn weights_of(model: &Model) -> Vec<Tensor> {
    model.get_weights().into_iter().map(|(_, t)| t).collect()
}

impl Callback for EarlyStopping {
    fn on_train_begin(&mut self, _logs: &Logs, _model: &mut Model) -> Result<()> {
        self.wait = 0;
        self.best = self.baseline.unwrap_or(f64::NAN);
        self.best_weights = None;
        self.best_epoch = None;
        self.stopped_epoch = None;
        Ok(())
    }
    fn on_epoch_end(&mut self, epoch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        let current = *logs.get(&self.monitor).ok_or_else(|| missing("EarlyStopping", &self.monitor, logs))?;
        if self.restore_best_weights && self.best_weights.is_none() {
            self.best_weights = Some(weights_of(model));
        }
        if epoch < self.start_from_epoch {
            return Ok(());
        }
        self.wait += 1;
        if self.improves(current, self.best) {
            self.best = current;
            self.best_epoch = Some(epoch);
            if self.restore_best_weights {
                self.best_weights = Some(weights_of(model));
            }
            if self.baseline.is_none_or(|b| self.improves(current, b)) {
                self.wait = 0;
            }
            return Ok(());
        }
        if self.wait >= self.patience && epoch > 0 {
            self.stopped_epoch = Some(epoch);
            model.stop_training = true;
        }
        Ok(())
    }
    fn on_train_end(&mut self, _logs: &Logs, model: &mut Model) -> Result<()> {
        if self.restore_best_weights {
            if let Some(w) = self.best_weights.take() {
                model.set_weights(&w)?;
            }
        }
        Ok(())
    }
    fn state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("EarlyStopping");
        s.set("wait", self.wait);
        s.set_f64("best", self.best);
        s.set("best_epoch", self.best_epoch);
        s.set("stopped_epoch", self.stopped_epoch);
        if let Some(w) = &self.best_weights {
            s.tensors = w.iter().enumerate().map(|(i, t)| (format!("best_weights/{i}"), t.clone())).collect();
        }
        Some(s)
    }
    fn restore_state(&mut self, s: CallbackState) -> Result<()> {
        self.wait = s.get_usize("wait")?.unwrap_or(0);
        self.best = s.get_f64("best")?;
        self.best_epoch = s.get_usize("best_epoch")?;
        self.stopped_epoch = s.get_usize("stopped_epoch")?;
        self.best_weights = (!s.tensors.is_empty()).then(|| s.tensors.into_iter().map(|(_, t)| t).collect());
        Ok(())
    }
}

/// Multiplies the learning rate by `factor` when `monitor` has not improved by more than
/// `min_delta` for `patience` epochs (Keras' `ReduceLROnPlateau`), then waits `cooldown`
/// epochs; never below `min_lr`.
pub struct ReduceLROnPlateau {
    monitor: String,
    factor: f64,
    patience: usize,
    mode: Mode,
    min_delta: f64,
    cooldown: usize,
    min_lr: f64,
    wait: usize,
    cooldown_counter: usize,
    best: f64,
}

impl ReduceLROnPlateau {
    /// Keras' defaults: factor 0.1, patience 10, min_delta 1e-4, no cooldown, min_lr 0.
    pub fn new(monitor: &str) -> Result<Self> {
        Ok(ReduceLROnPlateau {
            monitor: monitor.into(),
            factor: 0.1,
            patience: 10,
            mode: Mode::Auto,
            min_delta: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
            wait: 0,
            cooldown_counter: 0,
            best: f64::NAN,
        })
    }
    /// The factor (`< 1`, as Keras requires).
    pub fn factor(mut self, f: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&f) {
            return Err(Error::invalid_parameter("ReduceLROnPlateau", "factor", f, "a number in [0, 1)"));
        }
        self.factor = f;
        Ok(self)
    }
    /// Epochs without improvement before reducing.
    pub fn patience(mut self, p: usize) -> Self {
        self.patience = p;
        self
    }
    /// Direction of improvement.
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }
    /// Smallest change that counts as an improvement.
    pub fn min_delta(mut self, d: f64) -> Self {
        self.min_delta = d;
        self
    }
    /// Epochs to wait after a reduction.
    pub fn cooldown(mut self, c: usize) -> Self {
        self.cooldown = c;
        self
    }
    /// The lowest learning rate.
    pub fn min_lr(mut self, lr: f64) -> Self {
        self.min_lr = lr;
        self
    }
}

impl Callback for ReduceLROnPlateau {
    fn on_train_begin(&mut self, _logs: &Logs, _model: &mut Model) -> Result<()> {
        self.wait = 0;
        self.cooldown_counter = 0;
        self.best = f64::NAN;
        Ok(())
    }
    fn on_epoch_end(&mut self, _epoch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        let current = *logs.get(&self.monitor).ok_or_else(|| missing("ReduceLROnPlateau", &self.monitor, logs))?;
        // Keras' own form for this callback (`a > b + min_delta`), kept for parity.
        let max = self.mode.maximize(&self.monitor);
        let better = self.best.is_nan()
            || if max { current > self.best + self.min_delta } else { current < self.best - self.min_delta };
        let in_cooldown = self.cooldown_counter > 0;
        if in_cooldown {
            self.cooldown_counter -= 1;
            self.wait = 0;
        }
        if better {
            self.best = current;
            self.wait = 0;
        } else if !in_cooldown {
            self.wait += 1;
            if self.wait >= self.patience {
                if let Some(opt) = model.optimizer_mut() {
                    let old = opt.learning_rate();
                    if old > self.min_lr {
                        opt.set_learning_rate((old * self.factor).max(self.min_lr))?;
                        self.cooldown_counter = self.cooldown;
                        self.wait = 0;
                    }
                }
            }
        }
        Ok(())
    }
    fn state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("ReduceLROnPlateau");
        s.set("wait", self.wait);
        s.set("cooldown_counter", self.cooldown_counter);
        s.set_f64("best", self.best);
        Some(s)
    }
    fn restore_state(&mut self, s: CallbackState) -> Result<()> {
        self.wait = s.get_usize("wait")?.unwrap_or(0);
        self.cooldown_counter = s.get_usize("cooldown_counter")?.unwrap_or(0);
        self.best = s.get_f64("best")?;
        Ok(())
    }
}

/// Sets the learning rate at the start of each epoch to `schedule(epoch, current_lr)`.
pub struct LearningRateScheduler {
    schedule: Box<dyn FnMut(usize, f64) -> f64>,
}

impl LearningRateScheduler {
    /// A scheduler from `schedule(epoch, lr) -> new lr`.
    pub fn new(schedule: impl FnMut(usize, f64) -> f64 + 'static) -> Self {
        LearningRateScheduler { schedule: Box::new(schedule) }
    }
}

impl Callback for LearningRateScheduler {
    fn on_epoch_begin(&mut self, epoch: usize, _logs: &Logs, model: &mut Model) -> Result<()> {
        if let Some(opt) = model.optimizer_mut() {
            let lr = (self.schedule)(epoch, opt.learning_rate());
            opt.set_learning_rate(lr)?;
        }
        Ok(())
    }
}

/// Saves the weights (safetensors, through a temporary file and a rename) after each epoch,
/// or only when `monitor` improves with `save_best_only`. `{epoch}` / `{epoch:02d}` in the
/// path become the 1-based epoch number, as in Keras.
pub struct ModelCheckpoint {
    filepath: String,
    monitor: String,
    save_best_only: bool,
    mode: Mode,
    best: f64,
    /// The files written, in order.
    pub saved: Vec<PathBuf>,
}

impl ModelCheckpoint {
    /// Checkpoints to `filepath` every epoch, monitoring `val_loss` when `save_best_only`.
    pub fn new(filepath: &str) -> Self {
        ModelCheckpoint {
            filepath: filepath.into(),
            monitor: "val_loss".into(),
            save_best_only: false,
            mode: Mode::Auto,
            best: f64::NAN,
            saved: Vec::new(),
        }
    }
    /// The metric that decides what "best" is.
    pub fn monitor(mut self, m: &str) -> Self {
        self.monitor = m.into();
        self
    }
    /// Save only when the monitored metric improves.
    pub fn save_best_only(mut self, on: bool) -> Self {
        self.save_best_only = on;
        self
    }
    /// Direction of improvement.
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }

    fn path_for(&self, epoch: usize) -> PathBuf {
        let n = epoch + 1;
        PathBuf::from(self.filepath.replace("{epoch:02d}", &format!("{n:02}")).replace("{epoch}", &n.to_string()))
    }
}

impl Callback for ModelCheckpoint {
    fn on_train_begin(&mut self, _logs: &Logs, _model: &mut Model) -> Result<()> {
        self.best = f64::NAN;
        Ok(())
    }
    fn on_epoch_end(&mut self, epoch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        if self.save_best_only {
            let current = *logs.get(&self.monitor).ok_or_else(|| missing("ModelCheckpoint", &self.monitor, logs))?;
            if !self.mode.improved(&self.monitor, current, self.best, 0.0) {
                return Ok(());
            }
            self.best = current;
        }
        let path = self.path_for(epoch);
        model.save_weights(&path)?;
        self.saved.push(path);
        Ok(())
    }
    fn state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("ModelCheckpoint");
        s.set_f64("best", self.best);
        s.set("saved", self.saved.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
        Some(s)
    }
    fn restore_state(&mut self, s: CallbackState) -> Result<()> {
        self.best = s.get_f64("best")?;
        self.saved = serde_json::from_value::<Vec<String>>(s.get("saved")?.clone())
            .map_err(|e| losskit::Error::Config(format!("backup: ModelCheckpoint state: {e}")))?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        Ok(())
    }
}
