//! Backup and resume (Keras' `BackupAndRestore`): what a backup records besides the
//! callbacks' own state, and putting it back.

use super::logs::Accumulators;
use super::state::{FitLoop, Progress};
use crate::callbacks::backup::Snapshot;
use crate::callbacks::CallbackState;
use crate::model::Model;
use losskit::{Error, Result, Tensor};

/// Puts a backup's state (if `run` has a [`BackupAndRestore`] with one) into the model and
/// the loop, and returns the callbacks' states for [`Model::begin_training`].
pub(crate) fn resume(model: &mut Model, run: &mut FitLoop<'_, '_>) -> Result<Vec<CallbackState>> {
    let facts = run.facts.clone();
    let Some(backup) = run.backup() else { return Ok(Vec::new()) };
    backup.resumed_from = None;
    let path = backup.path();
    let Some(snap) = backup.load()? else { return Ok(Vec::new()) };
    snap.check(&facts, &model.get_weights(), &path)?;
    backup.resumed_from = Some((snap.epoch, snap.step));
    let weights: Vec<Tensor> = snap.weights.iter().map(|(_, t)| t.clone()).collect();
    model.set_weights(&weights)?;
    model.compiled.as_mut().expect("checked").optimizer.set_state(snap.optimizer)?;
    model.rng = snap.model_rng;
    let sums = if snap.step > 0 {
        let shape = (run.data.ys.len(), run.metrics.first().map_or(0, Vec::len));
        Some(Accumulators::from_flat(&snap.sums, shape).map_err(|m| {
            Error::file(
                path.display().to_string(),
                format!("{m}: the backup does not fit this model's outputs and metrics"),
            )
        })?)
    } else {
        None
    };
    if run.opts.verbose > 0 {
        let batch = if snap.step > 0 { format!(", batch {}", snap.step + 1) } else { String::new() };
        println!("Resuming from {}: epoch {}/{}{batch}", path.display(), snap.epoch + 1, run.opts.epochs);
    }
    run.progress = Progress {
        epoch: snap.epoch,
        step: snap.step,
        shuffle_rng: snap.shuffle_rng,
        sums,
        history: snap.history,
        last_logs: snap.last_logs,
        stopped: snap.stopped,
    };
    Ok(snap.callbacks)
}

/// Writes the backup: the model's weights, optimizer state and RNG, the loop's progress
/// (with the epoch's running sums `sums` when inside an epoch) and the callbacks' states.
pub(crate) fn back_up(model: &Model, run: &mut FitLoop<'_, '_>, sums: Option<&Accumulators>) -> Result<()> {
    let callbacks: Vec<CallbackState> = run.callbacks.iter().filter_map(|cb| cb.state()).collect();
    let p = &run.progress;
    let snapshot = Snapshot {
        epoch: p.epoch,
        step: p.step,
        stopped: p.stopped,
        run: run.facts.clone(),
        weights: model.get_weights(),
        optimizer: model.compiled.as_ref().expect("checked").optimizer.state(),
        model_rng: model.rng.clone(),
        shuffle_rng: p.shuffle_rng.clone(),
        sums: sums.map(Accumulators::flat).unwrap_or_default(),
        history: p.history.clone(),
        last_logs: p.last_logs.clone(),
        callbacks,
    };
    match run.backup() {
        Some(b) => b.save(&snapshot),
        None => Ok(()),
    }
}
