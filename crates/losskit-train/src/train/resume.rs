//! Backup and resume (Keras' `BackupAndRestore`): what a backup records besides the
//! callbacks' own state, and putting it back.
//!
//! Data-parallel workers back up together: at each backup every worker's dropout generator
//! is gathered (one all-reduce) and rank 0 writes the one file; on resume every worker reads
//! it (so `backup_dir` must be on a file system they all share), checks that they all found
//! the same backup, and takes its own generator. Everything else in a backup is the same on
//! every worker.

use super::logs::Accumulators;
use super::state::{FitLoop, Progress};
use crate::callbacks::backup::{SaveFreq, Snapshot};
use crate::callbacks::CallbackState;
use crate::distribute::Collective;
use crate::model::Model;
use losskit::{Error, Result, Tensor};
use losskit_tensor::random::Rng;
use std::path::Path;

/// Puts a backup's state (if `run` has a [`BackupAndRestore`] with one) into the model and
/// the loop, and returns the callbacks' states for [`Model::begin_training`].
pub(crate) fn resume(model: &mut Model, run: &mut FitLoop<'_, '_>) -> Result<Vec<CallbackState>> {
    let facts = run.facts.clone();
    let group = run.stepper.group();
    let Some(backup) = run.backup() else { return Ok(Vec::new()) };
    backup.resumed_from = None;
    let path = backup.path();
    let snap = backup.load()?;
    if let Some(g) = group {
        agree_on_backup(g, snap.as_ref(), &path)?;
    }
    let Some(snap) = snap else { return Ok(Vec::new()) };
    snap.check(&facts, &model.get_weights(), &path)?;
    backup.resumed_from = Some((snap.epoch, snap.step));
    let weights: Vec<Tensor> = snap.weights.iter().map(|(_, t)| t.clone()).collect();
    model.set_weights(&weights)?;
    model.compiled.as_mut().expect("checked").optimizer.set_state(snap.optimizer)?;
    // `check` saw as many generators as this run has workers.
    model.rng = snap.model_rngs[group.map_or(0, |g| g.rank())].clone();
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

/// Writes the backup: the model's weights, optimizer state and RNG (every worker's, gathered
/// to rank 0, which alone writes), the loop's progress (with the epoch's running sums `sums`
/// when inside an epoch) and the callbacks' states.
pub(crate) fn back_up(model: &Model, run: &mut FitLoop<'_, '_>, sums: Option<&Accumulators>) -> Result<()> {
    let group = run.stepper.group();
    let model_rngs = match group {
        Some(g) => gather_rngs(g, &model.rng)?,
        None => vec![model.rng.clone()],
    };
    if group.is_some_and(|g| g.rank() != 0) {
        return Ok(());
    }
    let callbacks: Vec<CallbackState> = run.callbacks.iter().filter_map(|cb| cb.state()).collect();
    let p = &run.progress;
    let snapshot = Snapshot {
        epoch: p.epoch,
        step: p.step,
        stopped: p.stopped,
        run: run.facts.clone(),
        weights: model.get_weights(),
        optimizer: model.compiled.as_ref().expect("checked").optimizer.state(),
        model_rngs,
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

/// Data-parallel workers either all have a [`BackupAndRestore`](crate::BackupAndRestore)
/// with the same frequency, or none has: they back up together.
pub(crate) fn check_backups_agree(run: &mut FitLoop<'_, '_>) -> Result<()> {
    let Some(group) = run.stepper.group() else { return Ok(()) };
    let freq = run.backup().map(|b| match b.frequency() {
        SaveFreq::Epoch => 0.0,
        SaveFreq::Batches(n) => n as f64,
    });
    let mine = [f64::from(u8::from(freq.is_some())), freq.unwrap_or(0.0)];
    let mut all = mine;
    group.all_reduce_sum(&mut all)?;
    let size = group.size() as f64;
    if all[0] != 0.0 && (all[0] != size || all[1] != size * mine[1]) {
        return Err(Error::Config(format!(
            "fit: {} of {} data-parallel workers have a BackupAndRestore, with different save_freq or not at all: give every worker one with the same save_freq (rank 0 writes the backup, every worker reads it)",
            all[0],
            group.size()
        )));
    }
    Ok(())
}

/// Every worker read the same backup (or found none): they compare what they read, which
/// also keeps rank 0 from writing or deleting the backup before every worker has read it.
fn agree_on_backup(group: &dyn Collective, snap: Option<&Snapshot>, path: &Path) -> Result<()> {
    let mine = match snap {
        Some(s) => [1.0, s.epoch as f64, s.step as f64, s.optimizer.iterations as f64],
        None => [0.0; 4],
    };
    let mut all = mine;
    group.all_reduce_sum(&mut all)?;
    let size = group.size() as f64;
    if all.iter().zip(&mine).any(|(a, m)| *a != size * m) {
        return Err(Error::file(
            path.display().to_string(),
            format!(
                "the {} data-parallel workers do not read the same backup ({} of them found one here): the backup folder must be on a file system every worker shares",
                group.size(),
                all[0]
            ),
        ));
    }
    Ok(())
}

/// A ChaCha8 generator's position as 14 32-bit words: seed (8), stream (2), word position (4).
const RNG_WORDS: usize = 14;

fn rng_words(rng: &Rng) -> [u32; RNG_WORDS] {
    let mut words = [0u32; RNG_WORDS];
    for (w, b) in words.iter_mut().zip(rng.get_seed().chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    let (stream, pos) = (rng.get_stream(), rng.get_word_pos());
    for i in 0..2 {
        words[8 + i] = (stream >> (32 * i)) as u32;
    }
    for i in 0..4 {
        words[10 + i] = (pos >> (32 * i)) as u32;
    }
    words
}

fn rng_from_words(words: &[u32]) -> Rng {
    use rand::SeedableRng;
    let mut seed = [0u8; 32];
    for (b, w) in seed.chunks_exact_mut(4).zip(words) {
        b.copy_from_slice(&w.to_le_bytes());
    }
    let stream = (0..2).fold(0u64, |s, i| s | u64::from(words[8 + i]) << (32 * i));
    let pos = (0..4).fold(0u128, |p, i| p | u128::from(words[10 + i]) << (32 * i));
    let mut rng = Rng::from_seed(seed);
    rng.set_stream(stream);
    rng.set_word_pos(pos);
    rng
}

/// Every worker's generator, in rank order: each fills its slot of a zeroed buffer with its
/// words (integers below 2^32, exact in f64) and one all-reduce sums them.
fn gather_rngs(group: &dyn Collective, rng: &Rng) -> Result<Vec<Rng>> {
    let mut buf = vec![0.0f64; group.size() * RNG_WORDS];
    let slot = &mut buf[group.rank() * RNG_WORDS..][..RNG_WORDS];
    slot.iter_mut().zip(rng_words(rng)).for_each(|(b, w)| *b = f64::from(w));
    group.all_reduce_sum(&mut buf)?;
    Ok(buf
        .chunks_exact(RNG_WORDS)
        .map(|c| rng_from_words(&c.iter().map(|&v| v as u32).collect::<Vec<u32>>()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn a_generator_survives_its_words() {
        let mut rng = losskit_tensor::random::rng(77);
        rng.set_stream(3);
        for _ in 0..1001 {
            rng.next_u32();
        }
        let mut back = rng_from_words(&rng_words(&rng));
        assert_eq!(back.get_word_pos(), 1001);
        assert_eq!(back.get_stream(), 3);
        assert_eq!(
            (0..5).map(|_| back.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| rng.next_u64()).collect::<Vec<_>>()
        );
    }
}
