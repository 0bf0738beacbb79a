//! [`Fit`]: Keras' `fit(...)` arguments, and [`Targets`]: one tensor or one per output.

use crate::callbacks::Callback;
use crate::distribute::Collective;
use losskit::{Error, Result, Tensor};
use std::collections::BTreeMap;

/// Targets for `fit`/`evaluate`: one tensor, or one per named output.
#[derive(Debug, Clone)]
pub enum Targets {
    /// The target of a single-output model.
    Single(Tensor),
    /// Targets by output name.
    Named(Vec<(String, Tensor)>),
}

impl From<Tensor> for Targets {
    fn from(t: Tensor) -> Self {
        Targets::Single(t)
    }
}
impl From<&Tensor> for Targets {
    fn from(t: &Tensor) -> Self {
        Targets::Single(t.clone())
    }
}
impl From<Vec<(&str, Tensor)>> for Targets {
    fn from(v: Vec<(&str, Tensor)>) -> Self {
        Targets::Named(v.into_iter().map(|(n, t)| (n.to_string(), t)).collect())
    }
}

impl Targets {
    /// One target per output, in output order.
    pub(crate) fn ordered(&self, names: &[String]) -> Result<Vec<Tensor>> {
        match self {
            Targets::Single(t) if names.len() == 1 => Ok(vec![t.clone()]),
            Targets::Single(_) => {
                Err(Error::Config(format!("the model has {} outputs {names:?}: give targets by name", names.len())))
            }
            Targets::Named(v) => names
                .iter()
                .map(|n| {
                    v.iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, t)| t.clone())
                        .ok_or_else(|| Error::Config(format!("no targets for output {n:?}")))
                })
                .collect(),
        }
    }
}

/// Keras' `fit(...)` arguments, as a builder. Defaults as Keras: batch 32, 1 epoch, verbose 1,
/// shuffle, no validation.
pub struct Fit<'a> {
    pub(crate) batch_size: usize,
    pub(crate) epochs: usize,
    pub(crate) verbose: u8,
    pub(crate) validation_split: f64,
    pub(crate) validation_data: Option<(Tensor, Targets)>,
    pub(crate) shuffle: bool,
    pub(crate) class_weight: Option<BTreeMap<i64, f64>>,
    pub(crate) sample_weight: Option<Tensor>,
    pub(crate) initial_epoch: usize,
    pub(crate) seed: u64,
    pub(crate) check_data: bool,
    pub(crate) nan_guard: bool,
    pub(crate) callbacks: Vec<&'a mut dyn Callback>,
    pub(crate) group: Option<&'a dyn Collective>,
}

impl Default for Fit<'_> {
    fn default() -> Self {
        Fit {
            batch_size: 32,
            epochs: 1,
            verbose: 1,
            validation_split: 0.0,
            validation_data: None,
            shuffle: true,
            class_weight: None,
            sample_weight: None,
            initial_epoch: 0,
            seed: 0,
            check_data: true,
            nan_guard: true,
            callbacks: Vec::new(),
            group: None,
        }
    }
}

impl<'a> Fit<'a> {
    /// Keras' defaults.
    pub fn new() -> Fit<'a> {
        Fit::default()
    }
    /// Samples per gradient step (default 32).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// The epoch to stop before (default 1).
    pub fn epochs(mut self, n: usize) -> Self {
        self.epochs = n;
        self
    }
    /// 0 silent, 1 a progress bar, 2 one line per epoch (see [`ProgbarLogger`](crate::ProgbarLogger)).
    pub fn verbose(mut self, v: u8) -> Self {
        self.verbose = v;
        self
    }
    /// The last fraction of the samples (taken before shuffling) is held out for validation.
    pub fn validation_split(mut self, f: f64) -> Self {
        self.validation_split = f;
        self
    }
    /// Explicit validation inputs and targets.
    pub fn validation_data(mut self, x: Tensor, y: impl Into<Targets>) -> Self {
        self.validation_data = Some((x, y.into()));
        self
    }
    /// Whether to shuffle the training samples each epoch (default true).
    pub fn shuffle(mut self, on: bool) -> Self {
        self.shuffle = on;
        self
    }
    /// Weights per class (Keras' `class_weight`): each sample is weighted by its class' weight
    /// (missing classes weigh 1). Single-output models only; not with `sample_weight`.
    pub fn class_weight(mut self, w: BTreeMap<i64, f64>) -> Self {
        self.class_weight = Some(w);
        self
    }
    /// Per-sample weights, shape `(N,)` (or anything the loss broadcasts).
    pub fn sample_weight(mut self, w: Tensor) -> Self {
        self.sample_weight = Some(w);
        self
    }
    /// The epoch to start from (for resuming).
    pub fn initial_epoch(mut self, e: usize) -> Self {
        self.initial_epoch = e;
        self
    }
    /// Seed of the shuffling order.
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// Whether to check the data for NaN/Inf, bad targets and scale before training (default on).
    pub fn check_data(mut self, on: bool) -> Self {
        self.check_data = on;
        self
    }
    /// Whether to stop with a diagnosis when a loss or gradient goes non-finite, before the
    /// optimizer applies it (default on). Off, NaNs flow on as in Keras.
    pub fn nan_guard(mut self, on: bool) -> Self {
        self.nan_guard = on;
        self
    }
    /// Adds a callback.
    pub fn callback(mut self, cb: &'a mut dyn Callback) -> Self {
        self.callbacks.push(cb);
        self
    }
    /// Trains data-parallel with the workers of `group` (see [`crate::distribute`]): each
    /// worker computes its shard of every global batch of `batch_size` rows, losses are
    /// reduced over the global batch, gradients summed across workers. Every worker calls
    /// `fit` with the same data, model, seed and options; only rank 0 shows progress.
    pub fn distribute(mut self, group: &'a dyn Collective) -> Self {
        self.group = Some(group);
        self
    }
}
