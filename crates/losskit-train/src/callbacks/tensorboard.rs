//! `TensorBoard`: event files that TensorBoard reads (record framing, masked CRC-32C, the
//! `Event`/`Summary` protobuf messages), laid out as Keras does (`train/`, `validation/`).

use super::{Callback, CallbackState, Logs};
use crate::model::Model;
use losskit::{Error, Result};
use losskit_tensor::npy::write_atomic;
use prost::Message;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `tensorflow.Event` (the fields TensorBoard needs for scalars).
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a `simple_value` (always written, even when 0).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// TFRecord's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// One TFRecord: length, its CRC, the data, its CRC.
fn record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// One event file, kept in memory and rewritten atomically.
struct EventFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl EventFile {
    fn create(dir: &Path, stamp: u64) -> Result<EventFile> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), "cannot create", e))?;
        let path = dir.join(format!("events.out.tfevents.{stamp}.{}", hostname()));
        let mut f = EventFile { path, bytes: Vec::new() };
        f.push(Event { wall_time: now(), step: 0, what: Some(What::FileVersion("brain.Event:2".into())) });
        f.flush()?;
        Ok(f)
    }
    fn push(&mut self, e: Event) {
        record(&e.encode_to_vec(), &mut self.bytes);
    }
    fn scalars(&mut self, step: i64, values: Vec<(String, f64)>) {
        if values.is_empty() {
            return;
        }
        let value = values.into_iter().map(|(tag, v)| SummaryValue { tag, simple_value: Some(v as f32) }).collect();
        self.push(Event { wall_time: now(), step, what: Some(What::Summary(Summary { value })) });
    }
    fn flush(&self) -> Result<()> {
        // Synced: a backup records the file's length, and a resumed run cuts it back to that.
        write_atomic(&self.path, |w| w.write_all(&self.bytes))
    }
    /// The file as it was when `len` bytes long (a backup's record of it): what was written
    /// after is dropped, so a resumed run does not log an epoch twice.
    fn reopen(path: PathBuf, len: usize) -> Result<EventFile> {
        let ferr = |msg: String| Error::file(path.display().to_string(), msg);
        let mut bytes = std::fs::read(&path)
            .map_err(|e| Error::io(path.display().to_string(), "cannot read the TensorBoard log to resume it", e))?;
        if bytes.len() < len {
            return Err(ferr(format!(
                "the TensorBoard log has {} bytes, fewer than the {len} the backup recorded (damaged?)",
                bytes.len()
            )));
        }
        bytes.truncate(len);
        Ok(EventFile { path, bytes })
    }
}

fn stamp() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The file's name (it lives in `<log_dir>/train` or `/validation`, which the callback knows:
/// a run folder moved, copied or resumed from another directory still finds it) and length.
fn file_state(f: &Option<EventFile>) -> serde_json::Value {
    match f {
        Some(f) => {
            let name = f.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            serde_json::json!({"file": name, "len": f.bytes.len()})
        }
        None => serde_json::Value::Null,
    }
}

/// The event file a backup recorded, in `dir` (an older backup's whole path: its file name).
fn file_from_state(v: &serde_json::Value, dir: &Path) -> Result<Option<EventFile>> {
    if v.is_null() {
        return Ok(None);
    }
    let name = v["file"].as_str().or_else(|| v["path"].as_str()).and_then(|p| Path::new(p).file_name());
    match (name, v["len"].as_u64()) {
        (Some(name), Some(len)) => EventFile::reopen(dir.join(name), len as usize).map(Some),
        _ => Err(Error::Config(format!("backup: TensorBoard state: bad event file entry {v}"))),
    }
}

/// How often scalars are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateFreq {
    /// Once per epoch (`epoch_<metric>`, step = epoch).
    Epoch,
    /// Also every `n` training batches (`batch_<metric>`, step = global batch count).
    Batch(usize),
}

/// Writes TensorBoard event files: `<log_dir>/train/events.out.tfevents.<secs>.<host>` with
/// `epoch_loss`, `epoch_accuracy`, ..., `epoch_learning_rate`, and
/// `<log_dir>/validation/...` with the `val_*` logs under the same tags (no `val_` prefix), as
/// Keras lays them out. Files are rewritten through a temporary file after each epoch, so a
/// killed run never leaves a half-written record.
pub struct TensorBoard {
    log_dir: PathBuf,
    update_freq: UpdateFreq,
    train: Option<EventFile>,
    validation: Option<EventFile>,
    global_batch: i64,
}

impl TensorBoard {
    /// Event files under `log_dir`, one scalar set per epoch.
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        TensorBoard {
            log_dir: log_dir.into(),
            update_freq: UpdateFreq::Epoch,
            train: None,
            validation: None,
            global_batch: 0,
        }
    }
    /// Also write per-batch scalars.
    pub fn update_freq(mut self, f: UpdateFreq) -> Self {
        self.update_freq = f;
        self
    }
}

impl TensorBoard {
    /// The training event file, created on first use.
    fn train_file(&mut self) -> Result<&mut EventFile> {
        if self.train.is_none() {
            self.train = Some(EventFile::create(&self.log_dir.join("train"), stamp())?);
        }
        Ok(self.train.as_mut().expect("created above"))
    }
}

impl Callback for TensorBoard {
    fn on_train_begin(&mut self, _logs: &Logs, _model: &mut Model) -> Result<()> {
        // The files are created when first written (a resumed run reopens its own instead).
        self.train = None;
        self.validation = None;
        self.global_batch = 0;
        Ok(())
    }

    fn on_train_batch_end(&mut self, _batch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        self.global_batch += 1;
        if let UpdateFreq::Batch(n) = self.update_freq {
            if n > 0 && self.global_batch % n as i64 == 0 {
                let step = self.global_batch;
                let train = self.train_file()?;
                train.scalars(step, logs.iter().map(|(k, v)| (format!("batch_{k}"), *v)).collect());
            }
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, epoch: usize, logs: &Logs, model: &mut Model) -> Result<()> {
        let step = epoch as i64;
        let mut train_values: Vec<(String, f64)> =
            logs.iter().filter(|(k, _)| !k.starts_with("val_")).map(|(k, v)| (format!("epoch_{k}"), *v)).collect();
        if let Some(opt) = model.optimizer_mut() {
            train_values.push(("epoch_learning_rate".into(), opt.learning_rate()));
        }
        let val_values: Vec<(String, f64)> =
            logs.iter().filter_map(|(k, v)| k.strip_prefix("val_").map(|b| (format!("epoch_{b}"), *v))).collect();
        let train = self.train_file()?;
        train.scalars(step, train_values);
        train.flush()?;
        if !val_values.is_empty() {
            if self.validation.is_none() {
                self.validation = Some(EventFile::create(&self.log_dir.join("validation"), stamp())?);
            }
            if let Some(val) = self.validation.as_mut() {
                val.scalars(step, val_values);
                val.flush()?;
            }
        }
        Ok(())
    }

    /// The event files' paths and lengths, and the batch count: a resumed run cuts its files
    /// back to these lengths and appends, so no epoch is logged twice.
    fn state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("TensorBoard");
        s.set("train", file_state(&self.train));
        s.set("validation", file_state(&self.validation));
        s.set("global_batch", self.global_batch);
        Some(s)
    }
    fn restore_state(&mut self, s: CallbackState) -> Result<()> {
        self.train = file_from_state(s.get("train")?, &self.log_dir.join("train"))?;
        self.validation = file_from_state(s.get("validation")?, &self.log_dir.join("validation"))?;
        self.global_batch = s.get("global_batch")?.as_i64().unwrap_or(0);
        Ok(())
    }
}
