//! `fit`'s loops: the epochs (callbacks, shuffling, validation, History, backups) and each
//! epoch's batches, one step each on the path chosen before the first.

use super::advice::warn_if_cannot_learn;
use super::data::{compiled_or_err, prepare_fit};
use super::evaluate::evaluate_inner;
use super::guard::GuardAt;
use super::logs::{logs_of, refresh_logs, resolve_metrics, Accumulators};
use super::options::{Fit, Targets};
use super::resume::{back_up, check_backups_agree, resume};
use super::state::{FitLoop, LoopOptions, Progress};
use super::step::{self, join_group};
use crate::callbacks::backup::RunFacts;
use crate::callbacks::{Callback, CallbackState, FitParams, History, Logs, ProgbarLogger, SaveFreq};
use crate::model::Model;
use losskit::{Error, Result, Tensor};
use losskit_tensor::random;
use std::time::Instant;

/// [`Model::fit`]'s work (its caller tells the other workers when it fails).
pub(crate) fn fit_run(model: &mut Model, x: &Tensor, y: Targets, mut opts: Fit<'_>) -> Result<History> {
    compiled_or_err(model)?;
    let data = prepare_fit(model, x, y, &mut opts)?;
    if let Some(group) = opts.group {
        join_group(model, group)?;
        if group.rank() != 0 {
            opts.verbose = 0;
        }
    }
    let metrics = resolve_metrics(model, &data.ys, data.n)?;
    let mut progbar = ProgbarLogger::new(opts.verbose);
    let mut callbacks: Vec<&mut dyn Callback> = Vec::new();
    if opts.verbose > 0 {
        callbacks.push(&mut progbar);
    }
    for cb in opts.callbacks.iter_mut() {
        callbacks.push(&mut **cb);
    }
    let loop_opts = LoopOptions {
        batch_size: opts.batch_size,
        nan_guard: opts.nan_guard,
        epochs: opts.epochs,
        shuffle: opts.shuffle,
        verbose: opts.verbose,
    };
    let group = opts.group.filter(|g| g.size() > 1);
    let facts = RunFacts {
        samples: data.n,
        batch_size: opts.batch_size,
        shuffle: opts.shuffle,
        seed: opts.seed,
        workers: group.map_or(1, |g| g.size()),
    };
    let progress = Progress::start(opts.initial_epoch, opts.seed);
    let mut run = FitLoop::new(&data, metrics, callbacks, loop_opts, facts, progress)?;
    let (stepper, path) = step::choose(model, &data, group)?;
    run.stepper = stepper;
    check_backups_agree(&mut run)?;
    if loop_opts.verbose > 0 {
        println!("Training step: {path}");
    }
    model.step_path = Some(path);
    let states = resume(model, &mut run)?;
    // The pool's other workers stay awake between the step's parallel regions.
    run.awake = Some(losskit_kernels::threads::keep_pool_awake());
    begin_training(model, &mut run, states)?;
    while !run.progress.stopped && run.progress.epoch < run.opts.epochs {
        run_epoch(model, &mut run)?;
    }
    end_training(model, &mut run)?;
    Ok(run.progress.history)
}

/// The callbacks' `set_params` and `on_train_begin`, then (when resuming) their states put
/// back: the same kinds of stateful callbacks, in the same order, as when backed up.
pub(crate) fn begin_training(model: &mut Model, run: &mut FitLoop<'_, '_>, states: Vec<CallbackState>) -> Result<()> {
    let steps = run.data.n.div_ceil(run.opts.batch_size);
    let params =
        FitParams { epochs: run.opts.epochs, initial_epoch: run.progress.epoch, steps, verbose: run.opts.verbose };
    for cb in run.callbacks.iter_mut() {
        cb.set_params(&params);
    }
    model.stop_training = false;
    let empty = Logs::new();
    for cb in run.callbacks.iter_mut() {
        cb.on_train_begin(&empty, model)?;
    }
    if run.backup.is_none() || run.backup().and_then(|b| b.resumed_from).is_none() {
        return Ok(());
    }
    let chief = run.stepper.group().is_none_or(|g| g.rank() == 0);
    let mut stateful: Vec<&mut &mut dyn Callback> =
        run.callbacks.iter_mut().filter(|cb| cb.state().is_some()).collect();
    let kinds_now: Vec<String> = stateful.iter().filter_map(|cb| cb.state()).map(|s| s.kind).collect();
    let kinds_then: Vec<String> = states.iter().map(|s| s.kind.clone()).collect();
    let Some(matched) = states_for(&kinds_now, states, chief) else {
        let path = run.backup().map(|b| b.path().display().to_string()).unwrap_or_default();
        let same = if chief { "the same callbacks" } else { "callbacks that rank 0 has too, in its order" };
        return Err(Error::file(
            path,
            format!(
                "the backup was made with the callbacks [{}], this fit has [{}]: resume with {same} (or delete the backup to start over)",
                kinds_then.join(", "),
                kinds_now.join(", ")
            ),
        ));
    };
    for (cb, state) in stateful.iter_mut().zip(matched) {
        cb.restore_state(state)?;
    }
    Ok(())
}

/// The backed-up `states` for stateful callbacks of `kinds`: all of them, kind for kind in
/// the same order (`exact`: one process, or rank 0, which wrote the backup); on another
/// data-parallel worker, which may lack rank 0's file-writing callbacks, each kind taken in
/// order from rank 0's (the others, such as EarlyStopping, see the same logs on every worker).
/// `None` when they do not match.
fn states_for(kinds: &[String], states: Vec<CallbackState>, exact: bool) -> Option<Vec<CallbackState>> {
    if exact {
        return (kinds.len() == states.len() && kinds.iter().zip(&states).all(|(k, s)| *k == s.kind)).then_some(states);
    }
    let mut left = states.into_iter();
    kinds.iter().map(|k| left.by_ref().find(|s| s.kind == *k)).collect()
}

/// One epoch: the callbacks around it, the shuffled batches, validation, the History, the
/// cannot-learn warning, and the backup.
pub(crate) fn run_epoch(model: &mut Model, run: &mut FitLoop<'_, '_>) -> Result<()> {
    let epoch = run.progress.epoch;
    let empty = Logs::new();
    for cb in run.callbacks.iter_mut() {
        cb.on_epoch_begin(epoch, &empty, model)?;
    }
    let mut shuffle_rng = run.progress.shuffle_rng.clone();
    let order: Vec<usize> =
        if run.opts.shuffle { random::permutation(run.data.n, &mut shuffle_rng) } else { (0..run.data.n).collect() };
    let acc = train_epoch(model, run, &order)?;
    run.progress.shuffle_rng = shuffle_rng;
    run.progress.step = 0;
    let mut logs = logs_of(model, &acc, "");
    if let Some(v) = &run.data.validation {
        let (batch, group) = (run.opts.batch_size, run.stepper.group());
        let val = evaluate_inner(model, &v.x, &v.ys, v.w.as_ref(), batch, &mut run.callbacks, group)?;
        for (k, v) in val {
            logs.insert(format!("val_{k}"), v);
        }
    }
    run.progress.history.push(epoch, &logs);
    for cb in run.callbacks.iter_mut() {
        cb.on_epoch_end(epoch, &logs, model)?;
    }
    warn_if_cannot_learn(model, &logs, run.opts.verbose);
    run.progress.last_logs = logs;
    run.progress.epoch = epoch + 1;
    run.progress.stopped = model.stop_training;
    if run.backup().is_some_and(|b| b.frequency() == SaveFreq::Epoch) {
        back_up(model, run, None)?;
    }
    Ok(())
}

/// Keras' `finalize_variable_values` (with `use_ema` the weights take their averages), then
/// `on_train_end` for every callback, then the backup's deletion (training ended normally).
pub(crate) fn end_training(model: &mut Model, run: &mut FitLoop<'_, '_>) -> Result<()> {
    if model.compiled.as_ref().is_some_and(|c| c.optimizer.ema().is_some()) {
        crate::train::update::with_optimizer(model, |opt, params| opt.finalize_variable_values(params))?;
    }
    let last_logs = run.progress.last_logs.clone();
    for cb in run.callbacks.iter_mut() {
        cb.on_train_end(&last_logs, model)?;
    }
    let chief = run.stepper.group().is_none_or(|g| g.rank() == 0);
    match run.backup() {
        Some(b) if chief => b.finish(),
        _ => Ok(()),
    }
}

/// One epoch's batches in `order` (from the loop's current step: a resumed epoch skips the
/// batches done), a [`Model::train_step`] each, with the batch callbacks, the running means
/// of the loss and metrics, and the backups every N batches. Stops early when a callback
/// asks.
pub(crate) fn train_epoch(model: &mut Model, run: &mut FitLoop<'_, '_>, order: &[usize]) -> Result<Accumulators> {
    let empty = Logs::new();
    let outputs = run.data.ys.len();
    let mut acc =
        run.progress.sums.take().unwrap_or_else(|| Accumulators::new(outputs, run.metrics.first().map_or(0, Vec::len)));
    let batch_size = run.opts.batch_size;
    let every = match run.backup().map(|b| b.frequency()) {
        Some(SaveFreq::Batches(n)) => Some(n as u64),
        _ => None,
    };
    let (mut logs, mut entries) = (Logs::new(), Vec::new());
    for (step, idx) in order.chunks(batch_size).enumerate().skip(run.progress.step) {
        for cb in run.callbacks.iter_mut() {
            cb.on_train_batch_begin(step, &empty, model)?;
        }
        let guard = run.opts.nan_guard.then_some(GuardAt { epoch: run.progress.epoch, step, norms: &mut run.norms });
        let started = Instant::now();
        run.stepper.step(model, run.data, &run.metrics, idx, guard, &mut acc)?;
        if let Some(awake) = run.awake.as_mut() {
            awake.step_done(started.elapsed());
        }
        refresh_logs(model, &mut logs, &acc, &mut entries);
        for cb in run.callbacks.iter_mut() {
            cb.on_train_batch_end(step, &logs, model)?;
        }
        run.progress.step = step + 1;
        let iterations = model.compiled.as_ref().expect("checked").optimizer.iterations();
        if every.is_some_and(|n| iterations.is_multiple_of(n)) {
            back_up(model, run, Some(&acc))?;
        }
        if model.stop_training {
            break;
        }
    }
    Ok(acc)
}
