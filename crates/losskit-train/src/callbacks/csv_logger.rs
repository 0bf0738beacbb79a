//! `CsvLogger`: one row per epoch, as Keras' `CSVLogger`.

use super::{Callback, CallbackState, Logs};
use crate::model::Model;
use losskit::{Error, Result};
use losskit_tensor::npy::write_replacing;

use std::path::PathBuf;

/// Writes `epoch,<logs in alphabetical order>` (Keras' `CSVLogger` columns: `epoch`, then
/// e.g. `accuracy,loss,val_accuracy,val_loss`) with one row per epoch. The whole file is
/// rewritten through a temporary file and a rename after each epoch, so it is never left
/// half-written. With `append`, rows are added after an existing file's rows (its header is
/// kept).
pub struct CsvLogger {
    path: PathBuf,
    separator: char,
    append: bool,
    header: Option<Vec<String>>,
    lines: Vec<String>,
}

impl CsvLogger {
    /// A logger writing to `path` (overwriting it when training starts).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CsvLogger { path: path.into(), separator: ',', append: false, header: None, lines: Vec::new() }
    }
    /// Append to an existing file instead of replacing it.
    pub fn append(mut self, on: bool) -> Self {
        self.append = on;
        self
    }
    /// The field separator (default `,`).
    pub fn separator(mut self, c: char) -> Self {
        self.separator = c;
        self
    }

    fn flush(&self) -> Result<()> {
        write_replacing(&self.path, false, |w| {
            for line in &self.lines {
                writeln!(w, "{line}")?;
            }
            Ok(())
        })
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        v.to_string()
    }
}

impl Callback for CsvLogger {
    fn on_train_begin(&mut self, _logs: &Logs, _model: &mut Model) -> Result<()> {
        self.lines.clear();
        self.header = None;
        if self.append && self.path.exists() {
            let text = std::fs::read_to_string(&self.path)
                .map_err(|e| Error::io(self.path.display().to_string(), "cannot read", e))?;
            self.lines = text.lines().map(String::from).collect();
            self.header = self.lines.first().map(|h| h.split(self.separator).skip(1).map(String::from).collect());
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, epoch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        let header = self.header.get_or_insert_with(|| logs.keys().cloned().collect()).clone();
        if self.lines.is_empty() {
            let mut h = vec!["epoch".to_string()];
            h.extend(header.iter().cloned());
            self.lines.push(h.join(&self.separator.to_string()));
        }
        let mut row = vec![epoch.to_string()];
        row.extend(header.iter().map(|k| logs.get(k).map_or_else(|| "NA".to_string(), |v| number(*v))));
        self.lines.push(row.join(&self.separator.to_string()));
        self.flush()
    }

    /// The header and the lines written so far: a resumed run rewrites the file with them, so
    /// epochs after the backup are neither lost nor repeated.
    fn state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("CsvLogger");
        s.set("header", self.header.clone());
        s.set("lines", self.lines.clone());
        Some(s)
    }
    fn restore_state(&mut self, s: CallbackState) -> Result<()> {
        let bad = |e: serde_json::Error| Error::Config(format!("backup: CsvLogger state: {e}"));
        self.header = serde_json::from_value(s.get("header")?.clone()).map_err(bad)?;
        self.lines = serde_json::from_value(s.get("lines")?.clone()).map_err(bad)?;
        if !self.lines.is_empty() {
            self.flush()?;
        }
        Ok(())
    }
}
