//! `BackupAndRestore`: a killed `fit` resumes where its last backup left it and ends on the same
//! bits as an uninterrupted run (Keras' callback of the same name, extended to the RNG states,
//! the History and the other callbacks' states).
//!
//! The backup is one safetensors file, `<backup_dir>/backup.safetensors`, written through a
//! temporary file and a rename: the weights, the optimizer's slots and the tensors of callback
//! states as tensors; everything else (epoch, batch, iteration count, learning rate, the RNG
//! states, the History, the callbacks' numbers) as JSON in the file's metadata. Floating-point
//! numbers in the JSON are written as Rust's shortest round-trip text (`"0.1"`, `"NaN"`,
//! `"inf"`), so they read back bit for bit.

use super::{Callback, History};
use crate::optimizers::OptimizerState;
use losskit::{Error, Result, Tensor};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The backup format's name and version, in the file's metadata.
const FORMAT: &str = "losskit-backup";
const VERSION: u64 = 1;
const FILE_NAME: &str = "backup.safetensors";

/// When [`BackupAndRestore`] writes its backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFreq {
    /// At the end of every epoch (Keras' `save_freq="epoch"`).
    Epoch,
    /// Every `n` training batches, counted over the whole run (Keras' `save_freq=n`); a run
    /// resumed from such a backup continues inside the epoch, at the next batch.
    Batches(usize),
}

/// Keras' `BackupAndRestore(backup_dir, save_freq, delete_checkpoint)`: backs up the training
/// state to `backup_dir`, and when `fit` starts with a backup there, resumes from it.
///
/// The state is everything the rest of the run depends on: the weights, the optimizer's slots,
/// iteration count and learning rate, the epoch (and batch, with [`SaveFreq::Batches`]), the
/// shuffle and dropout RNG states, the History so far, the epoch's running sums, and the state
/// of every callback that has one ([`Callback::state`]: EarlyStopping, ReduceLROnPlateau,
/// ModelCheckpoint, CsvLogger, TensorBoard, PlotLearningCurves). Resumed with the same data and
/// options, `fit` ends on bitwise the same weights and History as a run never interrupted.
///
/// A backup that cannot be used is an error, never a silent fresh start: a damaged or
/// truncated file, another format version, another model (weight names, shapes, dtype),
/// another training set size, batch size, seed or shuffle setting, or other stateful callbacks.
/// No backup file means a fresh start. With `delete_checkpoint` (the default), the backup is
/// deleted when `fit` ends normally (also when stopped early), as in Keras.
///
/// Data-parallel workers ([`Fit::distribute`](crate::Fit::distribute)) each get a
/// `BackupAndRestore` on the same folder, with the same `save_freq`, on a file system they all
/// share (a worker without one is an error). At each backup every worker's dropout generator
/// is gathered to rank 0, which alone writes the file; on resume every worker reads it, they
/// check that they read the same backup, and each takes its own generator back. A backup
/// resumes only with as many workers as made it (the shards, and so the dropout draws, depend
/// on the count). Rank 0 restores every stateful callback as one process does; another worker
/// restores the ones it has, matched by kind in rank 0's order (it may lack rank 0's
/// file-writing callbacks; the others see the same logs on every worker).
#[derive(Debug, Clone)]
pub struct BackupAndRestore {
    backup_dir: PathBuf,
    save_freq: SaveFreq,
    delete_checkpoint: bool,
    /// Where the last `fit` resumed from: `(epoch, batch)`, both 0-based (`None`: a fresh start).
    pub resumed_from: Option<(usize, usize)>,
}

impl BackupAndRestore {
    /// Backups in `backup_dir` (created when needed), at the end of every epoch.
    pub fn new(backup_dir: impl Into<PathBuf>) -> Self {
        BackupAndRestore {
            backup_dir: backup_dir.into(),
            save_freq: SaveFreq::Epoch,
            delete_checkpoint: true,
            resumed_from: None,
        }
    }
    /// How often to back up ([`SaveFreq::Batches`] needs `n >= 1`).
    pub fn save_freq(mut self, f: SaveFreq) -> Result<Self> {
        if f == SaveFreq::Batches(0) {
            return Err(Error::invalid_parameter(
                "BackupAndRestore",
                "save_freq",
                0,
                "\"epoch\" or a number of batches >= 1",
            ));
        }
        self.save_freq = f;
        Ok(self)
    }
    /// Whether to delete the backup when training ends normally (default true).
    pub fn delete_checkpoint(mut self, on: bool) -> Self {
        self.delete_checkpoint = on;
        self
    }
    /// The backup file: `<backup_dir>/backup.safetensors`.
    pub fn path(&self) -> PathBuf {
        self.backup_dir.join(FILE_NAME)
    }
    pub(crate) fn frequency(&self) -> SaveFreq {
        self.save_freq
    }

    /// Writes `snapshot` atomically.
    pub(crate) fn save(&self, snapshot: &Snapshot) -> Result<()> {
        std::fs::create_dir_all(&self.backup_dir)
            .map_err(|e| Error::io(self.backup_dir.display().to_string(), "cannot create the backup folder", e))?;
        let (tensors, state) = snapshot.encode();
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("state".to_string(), state.to_string()),
        ]);
        crate::tensor_file::write(&self.path(), &tensors, Some(metadata))
    }

    /// The backup, if there is one. Damaged or foreign files are errors naming the file.
    pub(crate) fn load(&self) -> Result<Option<Snapshot>> {
        let path = self.path();
        if !path.exists() {
            return Ok(None);
        }
        let damaged = |msg: String| {
            Error::file(
                path.display().to_string(),
                format!("{msg}; the backup cannot be used (delete it to start the run over)"),
            )
        };
        let file = crate::tensor_file::read(&path).map_err(|e| damaged(e.to_string()))?;
        if file.metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(damaged("not a losskit backup (no `format: losskit-backup` in its metadata)".into()));
        }
        let version = file.metadata.get("version").cloned().unwrap_or_default();
        if version != VERSION.to_string() {
            return Err(damaged(format!("backup format version {version:?}; this losskit reads version {VERSION}")));
        }
        let state: Value = file
            .metadata
            .get("state")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| damaged("its state is missing or not JSON".into()))?;
        Snapshot::decode(&state, file.tensors).map(Some).map_err(damaged)
    }

    /// The backup's weights and where the run was ([`BackupWeights`]); `None` when there is no
    /// backup. For a killed run's evaluation. Damaged or foreign files are errors naming the
    /// file.
    pub fn weights(&self) -> Result<Option<BackupWeights>> {
        Ok(self.load()?.map(|s| BackupWeights {
            weights: s.weights,
            epoch: s.epoch,
            batch: s.step,
            workers: s.run.workers,
        }))
    }

    /// Deletes the backup when `delete_checkpoint` is on.
    pub(crate) fn finish(&self) -> Result<()> {
        let path = self.path();
        if self.delete_checkpoint && path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(path.display().to_string(), "cannot delete", e))?;
        }
        Ok(())
    }
}

impl Callback for BackupAndRestore {
    fn as_backup(&mut self, _: super::sealed::Token) -> Option<&mut BackupAndRestore> {
        Some(self)
    }
}

/// What a callback keeps in a backup ([`Callback::state`]): its numbers, flags and strings as
/// JSON fields, and its tensors (e.g. EarlyStopping's best weights) by name. `kind` names the
/// callback, so that a backup is only restored into the same kind.
#[derive(Debug, Clone, Default)]
pub struct CallbackState {
    /// The callback's type (`"EarlyStopping"`, ...).
    pub kind: String,
    /// Its JSON fields (use [`CallbackState::set_f64`] for exact floating-point values).
    pub fields: Map<String, Value>,
    /// Its tensors.
    pub tensors: Vec<(String, Tensor)>,
}

impl CallbackState {
    /// An empty state of a kind.
    pub fn new(kind: &str) -> Self {
        CallbackState { kind: kind.into(), ..Default::default() }
    }
    /// Sets a JSON field.
    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.fields.insert(key.into(), v.into());
    }
    /// Sets a float field exactly (NaN and infinities included).
    pub fn set_f64(&mut self, key: &str, v: f64) {
        self.fields.insert(key.into(), exact(v));
    }
    /// A field, or an error naming it.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.fields.get(key).ok_or_else(|| Error::Config(format!("backup: {} state has no {key:?}", self.kind)))
    }
    /// A float field written by [`CallbackState::set_f64`].
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        parse_exact(self.get(key)?).map_err(|m| Error::Config(format!("backup: {} state {key:?}: {m}", self.kind)))
    }
    /// An unsigned integer field (`null` reads as `None`).
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key)? {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| Error::Config(format!("backup: {} state {key:?} is not a count", self.kind))),
        }
    }
}

/// A float as JSON text that reads back bit for bit.
fn exact(v: f64) -> Value {
    Value::String(format!("{v:?}"))
}

fn parse_exact(v: &Value) -> std::result::Result<f64, String> {
    v.as_str().and_then(|s| s.parse::<f64>().ok()).ok_or_else(|| format!("{v} is not a number"))
}

/// A ChaCha8 generator's position: seed, stream and word position.
fn rng_json(rng: &ChaCha8Rng) -> Value {
    let seed: String = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
    json!({"seed": seed, "stream": rng.get_stream().to_string(), "word_pos": rng.get_word_pos().to_string()})
}

fn rng_from_json(v: &Value) -> std::result::Result<ChaCha8Rng, String> {
    use rand::SeedableRng;
    let bad = || format!("bad RNG state {v}");
    let hex = v["seed"].as_str().ok_or_else(bad)?;
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    let stream: u64 = v["stream"].as_str().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let word_pos: u128 = v["word_pos"].as_str().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let mut rng = ChaCha8Rng::from_seed(seed);
    rng.set_stream(stream);
    rng.set_word_pos(word_pos);
    Ok(rng)
}

fn history_json(h: &History) -> Value {
    let values: Map<String, Value> =
        h.history.iter().map(|(k, v)| (k.clone(), Value::Array(v.iter().map(|x| exact(*x)).collect()))).collect();
    json!({"epochs": h.epochs, "values": values})
}

fn history_from_json(v: &Value) -> std::result::Result<History, String> {
    let epochs: Vec<usize> = serde_json::from_value(v["epochs"].clone()).map_err(|e| format!("history epochs: {e}"))?;
    let mut history = BTreeMap::new();
    for (k, vals) in v["values"].as_object().ok_or("history without values")? {
        let vals = vals.as_array().ok_or_else(|| format!("history {k:?} is not a list"))?;
        let vals = vals.iter().map(parse_exact).collect::<std::result::Result<Vec<f64>, String>>()?;
        if vals.len() != epochs.len() {
            return Err(format!("history {k:?} has {} values for {} epochs", vals.len(), epochs.len()));
        }
        history.insert(k.clone(), vals);
    }
    Ok(History { epochs, history })
}

/// [`History`] as a [`CallbackState`] field (exact values), for callbacks that keep one.
pub(crate) fn set_history(state: &mut CallbackState, key: &str, h: &History) {
    state.set(key, history_json(h));
}

/// The [`History`] stored by [`set_history`].
pub(crate) fn get_history(state: &CallbackState, key: &str) -> Result<History> {
    history_from_json(state.get(key)?).map_err(|m| Error::Config(format!("backup: {} state: {m}", state.kind)))
}

/// The facts of a run that a backup must agree with to be resumed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunFacts {
    pub samples: usize,
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Data-parallel workers (1: one process).
    pub workers: usize,
}

/// The weights a backup holds ([`BackupAndRestore::weights`]) and where the run was.
#[derive(Debug, Clone)]
pub struct BackupWeights {
    /// The weights, by name, in the model's order.
    pub weights: Vec<(String, Tensor)>,
    /// The epoch to run next, 0-based (or the one in progress when `batch > 0`).
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch: usize,
    /// The data-parallel workers that trained it (1: one process); a resume needs as many.
    pub workers: usize,
}

/// Everything a resumed `fit` needs.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The epoch to run (0-based): the next one, or the one in progress when `step > 0`.
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub step: usize,
    /// A callback stopped training (the run only has `on_train_end` left).
    pub stopped: bool,
    pub run: RunFacts,
    /// The model's weights, by name, and its dtype.
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: OptimizerState,
    /// The model's generator (dropout) now, one per data-parallel worker (each draws from
    /// its own stream), and the shuffle generator before `epoch`'s permutation.
    pub model_rngs: Vec<ChaCha8Rng>,
    pub shuffle_rng: ChaCha8Rng,
    /// The epoch's running sums when `step > 0` (flattened running sums of the loss and metrics).
    pub sums: Vec<f64>,
    pub history: History,
    pub last_logs: BTreeMap<String, f64>,
    pub callbacks: Vec<CallbackState>,
}

impl Snapshot {
    fn encode(&self) -> (Vec<(String, Tensor)>, Value) {
        let mut tensors: Vec<(String, Tensor)> =
            self.weights.iter().map(|(n, t)| (format!("weights/{n}"), t.clone())).collect();
        for (i, slots) in self.optimizer.slots.iter().enumerate() {
            for (k, t) in slots.iter().enumerate() {
                tensors.push((format!("optimizer/{i}/{k}"), t.clone()));
            }
        }
        let mut callbacks = Vec::new();
        for (i, cb) in self.callbacks.iter().enumerate() {
            for (n, t) in &cb.tensors {
                tensors.push((format!("callbacks/{i}/{n}"), t.clone()));
            }
            let names: Vec<&str> = cb.tensors.iter().map(|(n, _)| n.as_str()).collect();
            callbacks.push(json!({"kind": cb.kind, "fields": cb.fields, "tensors": names}));
        }
        let weights: Vec<Value> =
            self.weights.iter().map(|(n, t)| json!([n, t.shape(), t.dtype().to_string()])).collect();
        let last_logs: Map<String, Value> = self.last_logs.iter().map(|(k, v)| (k.clone(), exact(*v))).collect();
        let state = json!({
            "epoch": self.epoch,
            "step": self.step,
            "stopped": self.stopped,
            "run": {
                "samples": self.run.samples,
                "batch_size": self.run.batch_size,
                "shuffle": self.run.shuffle,
                "seed": self.run.seed.to_string(),
                "workers": self.run.workers,
            },
            "weights": weights,
            "optimizer": {
                "iterations": self.optimizer.iterations.to_string(),
                "learning_rate": exact(self.optimizer.learning_rate),
                "slots_per_weight": self.optimizer.slots.first().map_or(0, Vec::len),
                "weights_with_slots": self.optimizer.slots.len(),
            },
            "rng": {
                "model": self.model_rngs.first().map(rng_json),
                "shuffle": rng_json(&self.shuffle_rng),
                "workers": self.model_rngs.iter().map(rng_json).collect::<Vec<_>>(),
            },
            "sums": self.sums.iter().map(|v| exact(*v)).collect::<Vec<_>>(),
            "history": history_json(&self.history),
            "last_logs": last_logs,
            "callbacks": callbacks,
        });
        (tensors, state)
    }

    fn decode(state: &Value, mut tensors: BTreeMap<String, Tensor>) -> std::result::Result<Snapshot, String> {
        let count = |v: &Value, what: &str| v.as_u64().map(|n| n as usize).ok_or_else(|| format!("no {what}"));
        let number =
            |v: &Value, what: &str| v.as_str().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| format!("no {what}"));
        let mut take = |name: String| tensors.remove(&name).ok_or_else(|| format!("tensor {name:?} is missing"));
        let weights = state["weights"]
            .as_array()
            .ok_or("no weight list")?
            .iter()
            .map(|w| {
                let name = w[0].as_str().ok_or("bad weight entry")?.to_string();
                let t = take(format!("weights/{name}"))?;
                Ok((name, t))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let opt = &state["optimizer"];
        let per_weight = count(&opt["slots_per_weight"], "optimizer slots")?;
        let with_slots = count(&opt["weights_with_slots"], "optimizer slots")?;
        let slots = (0..with_slots)
            .map(|i| (0..per_weight).map(|k| take(format!("optimizer/{i}/{k}"))).collect())
            .collect::<std::result::Result<Vec<Vec<Tensor>>, String>>()?;
        let optimizer = OptimizerState {
            iterations: number(&opt["iterations"], "optimizer iterations")?,
            learning_rate: parse_exact(&opt["learning_rate"])?,
            slots,
        };
        let callbacks = state["callbacks"]
            .as_array()
            .ok_or("no callback list")?
            .iter()
            .enumerate()
            .map(|(i, cb)| {
                let names = cb["tensors"].as_array().ok_or("bad callback entry")?;
                let tensors = names
                    .iter()
                    .map(|n| {
                        let n = n.as_str().ok_or("bad callback tensor name")?.to_string();
                        Ok((n.clone(), take(format!("callbacks/{i}/{n}"))?))
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()?;
                Ok(CallbackState {
                    kind: cb["kind"].as_str().ok_or("bad callback kind")?.into(),
                    fields: cb["fields"].as_object().cloned().ok_or("bad callback fields")?,
                    tensors,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let run = &state["run"];
        let last_logs = state["last_logs"]
            .as_object()
            .ok_or("no last logs")?
            .iter()
            .map(|(k, v)| parse_exact(v).map(|x| (k.clone(), x)))
            .collect::<std::result::Result<_, String>>()?;
        let snapshot = Snapshot {
            epoch: count(&state["epoch"], "epoch")?,
            step: count(&state["step"], "step")?,
            stopped: state["stopped"].as_bool().ok_or("no stopped flag")?,
            run: RunFacts {
                samples: count(&run["samples"], "sample count")?,
                batch_size: count(&run["batch_size"], "batch size")?,
                shuffle: run["shuffle"].as_bool().ok_or("no shuffle flag")?,
                seed: number(&run["seed"], "seed")?,
                // Backups made before data-parallel resume existed were one process's.
                workers: if run["workers"].is_null() { 1 } else { count(&run["workers"], "worker count")? },
            },
            weights,
            optimizer,
            model_rngs: match state["rng"]["workers"].as_array() {
                Some(all) => all.iter().map(rng_from_json).collect::<std::result::Result<_, _>>()?,
                None => vec![rng_from_json(&state["rng"]["model"])?],
            },
            shuffle_rng: rng_from_json(&state["rng"]["shuffle"])?,
            sums: state["sums"]
                .as_array()
                .ok_or("no sums")?
                .iter()
                .map(parse_exact)
                .collect::<std::result::Result<_, _>>()?,
            history: history_from_json(&state["history"])?,
            last_logs,
            callbacks,
        };
        if snapshot.model_rngs.len() != snapshot.run.workers {
            return Err(format!(
                "it holds {} dropout generators for {} workers",
                snapshot.model_rngs.len(),
                snapshot.run.workers
            ));
        }
        Ok(snapshot)
    }

    /// Whether this backup belongs to a run with `facts` and weights `model_weights`
    /// (`(name, shape, dtype)`); the error says what differs, in the user's terms.
    pub(crate) fn check(&self, facts: &RunFacts, model_weights: &[(String, Tensor)], path: &Path) -> Result<()> {
        let differs = |msg: String| {
            Error::file(
                path.display().to_string(),
                format!(
                    "{msg}: this backup belongs to another run (delete it, or use another backup_dir, to start over)"
                ),
            )
        };
        let describe = |w: &[(String, Tensor)]| -> Vec<String> {
            w.iter().map(|(n, t)| format!("{n} {:?} {}", t.shape(), t.dtype())).collect()
        };
        let (ours, theirs) = (describe(model_weights), describe(&self.weights));
        if ours != theirs {
            return Err(differs(format!(
                "the backup's model has weights [{}], this model [{}]",
                theirs.join(", "),
                ours.join(", ")
            )));
        }
        let r = &self.run;
        let checks = [
            ("training samples", r.samples.to_string(), facts.samples.to_string()),
            ("batch_size", r.batch_size.to_string(), facts.batch_size.to_string()),
            ("shuffle", r.shuffle.to_string(), facts.shuffle.to_string()),
            ("seed", r.seed.to_string(), facts.seed.to_string()),
            ("data-parallel workers", r.workers.to_string(), facts.workers.to_string()),
        ];
        for (what, backup, now) in checks {
            if backup != now {
                return Err(differs(format!("the backup was made with {what} {backup}, this fit has {now}")));
            }
        }
        let slots = &self.optimizer.slots;
        let slots_fit = slots.is_empty()
            || (slots.len() == model_weights.len()
                && slots.iter().zip(model_weights).all(|(s, (_, w))| s.iter().all(|t| t.shape() == w.shape())));
        if !slots_fit {
            return Err(differs("its optimizer slots do not have the weights' shapes".into()));
        }
        Ok(())
    }
}
