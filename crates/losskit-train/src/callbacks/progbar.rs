//! `ProgbarLogger`: Keras' console output.

use super::{Callback, FitParams, Logs};
use crate::model::Model;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use losskit::Result;
use std::io::IsTerminal;
use std::time::Instant;

/// Keras' `" - name: value"` list of logs, 4 decimals.
pub(crate) fn format_logs(logs: &Logs) -> String {
    logs.iter().map(|(k, v)| format!(" - {k}: {v:.4}")).collect()
}

/// Keras' time per step: `2ms/step`, `150us/step`, `1s/step`.
fn per_step(seconds: f64) -> String {
    if seconds >= 1.0 || seconds == 0.0 {
        format!("{seconds:.0}s/step")
    } else if seconds >= 1e-3 {
        format!("{:.0}ms/step", seconds * 1e3)
    } else {
        format!("{:.0}us/step", seconds * 1e6)
    }
}

/// Keras' console progress: `Epoch 1/5` then, with `verbose = 1`, a live bar
/// `45/45 ━━━━━━━━━━━━━━━━━━━━ 0s 2ms/step - accuracy: 0.9123 - loss: 0.3012` (drawn with
/// indicatif when stdout is a terminal; one final line per epoch otherwise), or with
/// `verbose = 2` one line per epoch `45/45 - 0s - 2ms/step - accuracy: ... - loss: ...`.
/// `fit` adds one automatically when `verbose > 0`.
pub struct ProgbarLogger {
    verbose: u8,
    params: FitParams,
    bar: Option<ProgressBar>,
    started: Instant,
    tty: bool,
}

impl ProgbarLogger {
    /// A logger at verbosity 1 (bar) or 2 (one line per epoch).
    pub fn new(verbose: u8) -> Self {
        ProgbarLogger {
            verbose,
            params: FitParams::default(),
            bar: None,
            started: Instant::now(),
            tty: std::io::stdout().is_terminal(),
        }
    }
}

impl Callback for ProgbarLogger {
    fn set_params(&mut self, params: &FitParams) {
        self.params = *params;
    }
    fn on_epoch_begin(&mut self, epoch: usize, _logs: &Logs, _model: &mut Model) -> Result<()> {
        if self.verbose == 0 {
            return Ok(());
        }
        println!("Epoch {}/{}", epoch + 1, self.params.epochs);
        self.started = Instant::now();
        if self.verbose == 1 && self.tty {
            let bar = ProgressBar::with_draw_target(Some(self.params.steps as u64), ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{pos}/{len} {bar:20} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("━━ ");
            bar.set_style(style);
            self.bar = Some(bar);
        }
        Ok(())
    }
    fn on_train_batch_end(&mut self, batch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        if let Some(bar) = &self.bar {
            bar.set_position(batch as u64 + 1);
            bar.set_message(format_logs(logs));
        }
        Ok(())
    }
    fn on_epoch_end(&mut self, _epoch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        if self.verbose == 0 {
            return Ok(());
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64();
        let steps = self.params.steps.max(1);
        let step = per_step(secs / steps as f64);
        if self.verbose == 1 {
            println!("{steps}/{steps} {} {secs:.0}s {step}{}", "━".repeat(20), format_logs(logs));
        } else {
            println!("{steps}/{steps} - {secs:.0}s - {step}{}", format_logs(logs));
        }
        Ok(())
    }
}
