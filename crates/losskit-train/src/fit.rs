//! `fit`, `evaluate`: the training loop with Keras' semantics (running-mean logs, validation
//! split before shuffling, `class_weight` → per-sample weights, callbacks).

use crate::callbacks::backup::{RunFacts, Snapshot};
use crate::callbacks::{BackupAndRestore, Callback, CallbackState, FitParams, History, Logs, ProgbarLogger, SaveFreq};
use crate::distribute::{self, Collective};
use crate::metrics::{self, Metric};
use crate::model::Model;
use crate::nan::{self, GradNormHistory};
use crate::step::StepPlan;
use losskit::{no_grad, Error, LinearCrossEntropy, Reduction, Result, Tensor};
use losskit_tensor::random;
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
    fn ordered(&self, names: &[String]) -> Result<Vec<Tensor>> {
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
    batch_size: usize,
    epochs: usize,
    verbose: u8,
    validation_split: f64,
    validation_data: Option<(Tensor, Targets)>,
    shuffle: bool,
    class_weight: Option<BTreeMap<i64, f64>>,
    sample_weight: Option<Tensor>,
    initial_epoch: usize,
    seed: u64,
    check_data: bool,
    nan_guard: bool,
    callbacks: Vec<&'a mut dyn Callback>,
    group: Option<&'a dyn Collective>,
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
    /// 0 silent, 1 a progress bar, 2 one line per epoch (see [`ProgbarLogger`]).
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

/// Rows `idx` of a tensor.
fn rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    t.gather(0, idx)
}

fn count_rows(what: &str, t: &Tensor) -> Result<usize> {
    t.shape()
        .first()
        .copied()
        .ok_or_else(|| Error::Shape { op: "fit".into(), msg: format!("{what} needs a batch axis, got a scalar") })
}

/// Keras' `class_weight` → per-sample weights: argmax of one-hot rows, squeeze of `(N, 1)`,
/// then round to the nearest class; missing classes weigh 1.
fn class_weights_to_samples(y: &Tensor, cw: &BTreeMap<i64, f64>) -> Result<Tensor> {
    let n = count_rows("y", y)?;
    let per_row = y.numel().checked_div(n).unwrap_or(0);
    let v = y.to_vec::<f64>();
    let classes: Vec<f64> = if y.rank() > 1 && per_row > 1 {
        v.chunks(per_row)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold((0usize, f64::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
                    .0 as f64
            })
            .collect()
    } else {
        v
    };
    let w: Vec<f64> = classes.iter().map(|c| *cw.get(&(c.round() as i64)).unwrap_or(&1.0)).collect();
    Ok(Tensor::from_vec(w, &[n])?.to_dtype(y.dtype()))
}

struct Accumulators {
    loss: (f64, f64),
    output_losses: Vec<(f64, f64)>,
    metrics: Vec<Vec<(f64, f64)>>,
}

/// Where a logged value comes from in the [`Accumulators`].
#[derive(Debug, Clone, Copy)]
enum LogSlot {
    /// The total loss.
    Loss,
    /// Output `i`'s loss.
    Output(usize),
    /// Output `o`'s metric `m`.
    Metric(usize, usize),
}

impl Accumulators {
    /// The (sum, count) pair behind a logged value.
    fn at(&self, slot: LogSlot) -> (f64, f64) {
        match slot {
            LogSlot::Loss => self.loss,
            LogSlot::Output(i) => self.output_losses[i],
            LogSlot::Metric(o, m) => self.metrics[o][m],
        }
    }

    fn new(outputs: usize, metrics: usize) -> Self {
        Accumulators {
            loss: (0.0, 0.0),
            output_losses: vec![(0.0, 0.0); outputs],
            metrics: vec![vec![(0.0, 0.0); metrics]; outputs],
        }
    }

    /// One batch of `nb` samples: its total loss, each output's loss, and the metrics'
    /// (sum, count) pairs flattened in output-then-metric order.
    fn add_batch(&mut self, loss: f64, each: &[f64], metric_sums: &[f64], nb: f64) {
        self.loss.0 += loss * nb;
        self.loss.1 += nb;
        for (a, l) in self.output_losses.iter_mut().zip(each) {
            a.0 += l * nb;
            a.1 += nb;
        }
        for (a, pair) in self.metrics.iter_mut().flatten().zip(metric_sums.chunks_exact(2)) {
            a.0 += pair[0];
            a.1 += pair[1];
        }
    }

    /// Every (sum, count) pair in order: the loss, each output's loss, each output's metrics.
    fn flat(&self) -> Vec<f64> {
        std::iter::once(&self.loss)
            .chain(&self.output_losses)
            .chain(self.metrics.iter().flatten())
            .flat_map(|&(s, c)| [s, c])
            .collect()
    }

    /// The inverse of [`Accumulators::flat`] for `(outputs, metrics per output)`.
    fn from_flat(v: &[f64], (outputs, metrics): (usize, usize)) -> std::result::Result<Self, String> {
        let expected = 2 * (1 + outputs + outputs * metrics);
        if v.len() != expected {
            return Err(format!("{} running sums where {expected} were expected", v.len()));
        }
        let pairs: Vec<(f64, f64)> = v.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        Ok(Accumulators {
            loss: pairs[0],
            output_losses: pairs[1..=outputs].to_vec(),
            metrics: (0..outputs).map(|o| pairs[1 + outputs + o * metrics..][..metrics].to_vec()).collect(),
        })
    }
}

/// Inputs, targets (one per output) and optional per-sample weights: a training set, a
/// validation set or one batch.
struct Dataset {
    x: Tensor,
    ys: Vec<Tensor>,
    w: Option<Tensor>,
}

impl Dataset {
    /// The rows `idx` of `x`, every target and (if `with_weights`) the weights.
    fn rows_of(x: &Tensor, ys: &[Tensor], w: Option<&Tensor>, idx: &[usize], with_weights: bool) -> Result<Dataset> {
        Ok(Dataset {
            x: rows(x, idx)?,
            ys: ys.iter().map(|t| rows(t, idx)).collect::<Result<_>>()?,
            w: if with_weights { w.map(|w| rows(w, idx)).transpose()? } else { w.cloned() },
        })
    }
}

/// The training data of `fit`, prepared once, and the validation set if any.
struct FitData {
    x: Tensor,
    ys: Vec<Tensor>,
    w: Option<Tensor>,
    n: usize,
    validation: Option<Dataset>,
}

/// The options the epoch and batch loops read.
#[derive(Clone, Copy)]
struct LoopOptions {
    batch_size: usize,
    nan_guard: bool,
    epochs: usize,
    shuffle: bool,
    verbose: u8,
}

/// Where the loop is, and what it has gathered: what a backup records besides the model.
struct Progress {
    /// The epoch to run, or the one in progress when `step > 0` (0-based).
    epoch: usize,
    /// Batches of `epoch` done.
    step: usize,
    /// The shuffle generator before `epoch`'s permutation.
    shuffle_rng: random::Rng,
    /// The running sums of a resumed, partly done epoch.
    sums: Option<Accumulators>,
    history: History,
    last_logs: Logs,
    /// A callback stopped training.
    stopped: bool,
}

impl Progress {
    /// A fresh run from `epoch`.
    fn start(epoch: usize, seed: u64) -> Progress {
        Progress {
            epoch,
            step: 0,
            shuffle_rng: random::rng(seed),
            sums: None,
            history: History::default(),
            last_logs: Logs::new(),
            stopped: false,
        }
    }
}

/// What `fit`'s loop works with besides the model: the data, the metrics, the callbacks (and
/// which of them is the backup), the options, the NaN guard's norm history, the progress.
struct FitLoop<'d, 'c> {
    data: &'d FitData,
    metrics: Vec<Vec<Metric>>,
    callbacks: Vec<&'c mut dyn Callback>,
    /// The index of the [`BackupAndRestore`] among `callbacks`.
    backup: Option<usize>,
    opts: LoopOptions,
    facts: RunFacts,
    norms: GradNormHistory,
    progress: Progress,
    /// The other workers of a data-parallel run (more than one).
    group: Option<&'c dyn Collective>,
    /// The planned (tape-free) step, when the model and the run allow it.
    plan: Option<StepPlan>,
}

impl<'d, 'c> FitLoop<'d, 'c> {
    fn new(
        data: &'d FitData,
        metrics: Vec<Vec<Metric>>,
        mut callbacks: Vec<&'c mut dyn Callback>,
        opts: LoopOptions,
        facts: RunFacts,
        progress: Progress,
    ) -> Result<Self> {
        let backups: Vec<usize> =
            callbacks.iter_mut().enumerate().filter_map(|(i, cb)| cb.as_backup().map(|_| i)).collect();
        if backups.len() > 1 {
            return Err(Error::Config("fit: more than one BackupAndRestore callback".into()));
        }
        Ok(FitLoop {
            data,
            metrics,
            callbacks,
            backup: backups.first().copied(),
            opts,
            facts,
            norms: GradNormHistory::default(),
            progress,
            group: None,
            plan: None,
        })
    }

    /// The backup callback, if any.
    fn backup(&mut self) -> Option<&mut BackupAndRestore> {
        let i = self.backup?;
        self.callbacks[i].as_backup()
    }
}

/// Where the NaN guard is: the step's epoch and index, and the gradient-norm history it records.
struct GuardAt<'n> {
    epoch: usize,
    step: usize,
    norms: &'n mut GradNormHistory,
}

/// What one training step reports: the total loss, each output's loss, the outputs.
struct StepOutput {
    loss: f64,
    each: Vec<f64>,
    outputs: Vec<Tensor>,
}

/// Per-sample weights for `fit`: from `class_weight` (single output only) or `sample_weight`,
/// never both.
fn fit_sample_weights(ys: &[Tensor], opts: &Fit<'_>) -> Result<Option<Tensor>> {
    if opts.class_weight.is_some() && opts.sample_weight.is_some() {
        return Err(Error::Config("fit: class_weight and sample_weight cannot be combined".into()));
    }
    match &opts.class_weight {
        Some(cw) => {
            if ys.len() != 1 {
                return Err(Error::Config("fit: class_weight needs a single-output model".into()));
            }
            Ok(Some(class_weights_to_samples(&ys[0], cw)?))
        }
        None => Ok(opts.sample_weight.clone()),
    }
}

/// `batch_size >= 1` and `validation_split` in `[0, 1)`.
fn check_fit_options(opts: &Fit<'_>) -> Result<()> {
    if opts.batch_size == 0 {
        return Err(Error::invalid_parameter("fit", "batch_size", "0", ">= 1"));
    }
    let f = opts.validation_split;
    if !(0.0..1.0).contains(&f) {
        return Err(Error::invalid_parameter("fit", "validation_split", f, "a number in [0, 1)"));
    }
    Ok(())
}

/// Training and validation row indices: the last fraction `f` of the `n` rows validates.
fn validation_split(n: usize, f: f64) -> Result<(Vec<usize>, Vec<usize>)> {
    if f == 0.0 {
        return Ok(((0..n).collect(), Vec::new()));
    }
    let split = (n as f64 * (1.0 - f)).floor() as usize;
    if split == 0 || split == n {
        return Err(Error::Config(format!(
            "fit: validation_split {f} leaves no training or no validation samples out of {n}"
        )));
    }
    Ok(((0..split).collect(), (split..n).collect()))
}

fn mean((s, c): (f64, f64)) -> f64 {
    if c == 0.0 {
        0.0
    } else {
        s / c
    }
}

impl Model {
    fn compiled_or_err(&self) -> Result<()> {
        if self.compiled.is_none() {
            return Err(Error::Config("the model must be compiled before fit/evaluate".into()));
        }
        Ok(())
    }

    /// Log names of the metrics: `accuracy`, or `<output>_accuracy` with several outputs.
    fn metric_log_names(&self) -> Vec<Vec<String>> {
        let names = self.output_names();
        let metric_names = self.compiled.as_ref().map(|c| c.metric_names.clone()).unwrap_or_default();
        names
            .iter()
            .map(|o| {
                metric_names.iter().map(|m| if names.len() == 1 { m.clone() } else { format!("{o}_{m}") }).collect()
            })
            .collect()
    }

    fn resolve_metrics(&self, ys: &[Tensor], n: usize) -> Result<Vec<Vec<Metric>>> {
        let c = self.compiled.as_ref().expect("checked");
        let shapes = self.output_shapes();
        ys.iter()
            .zip(shapes)
            .map(|(y, s)| {
                let pred: Vec<usize> = std::iter::once(n).chain(s).collect();
                c.metric_names.iter().map(|m| metrics::resolve(m, y.shape(), &pred)).collect()
            })
            .collect()
    }

    /// Checks the data before any step: row counts, sparse labels against the model's classes,
    /// and one forward pass + loss on the first rows (a loss whose shape does not fit the
    /// model's output fails here).
    fn check_data(&mut self, x: &Tensor, ys: &[Tensor], w: Option<&Tensor>) -> Result<usize> {
        let n = count_rows("x", x)?;
        for (name, y) in self.output_names().iter().zip(ys) {
            let m = count_rows("y", y)?;
            if m != n {
                return Err(Error::Shape {
                    op: "fit".into(),
                    msg: format!("x has {n} samples but y ({name}) has {m}"),
                });
            }
        }
        if let Some(w) = w {
            let m = count_rows("sample_weight", w)?;
            if m != n {
                return Err(Error::Shape {
                    op: "fit".into(),
                    msg: format!("x has {n} samples but sample_weight has {m}"),
                });
            }
        }
        if n == 0 {
            return Err(Error::Shape { op: "fit".into(), msg: "no samples".into() });
        }
        self.ensure_built(x)?;
        let shapes = self.output_shapes();
        let compiled = self.compiled.as_ref().expect("checked");
        for ((loss, y), shape) in compiled.losses.iter().zip(ys).zip(&shapes) {
            if loss.class_name() == "SparseCategoricalCrossentropy" {
                let classes = shape.last().copied().unwrap_or(0);
                let ignore = loss.config()["ignore_class"].as_i64();
                for (i, v) in y.to_vec::<f64>().iter().enumerate() {
                    let k = v.trunc();
                    if ignore.is_some_and(|c| k as i64 == c) {
                        continue;
                    }
                    if !(v.is_finite() && k >= 0.0 && (k as usize) < classes) {
                        return Err(Error::Value {
                            op: "fit".into(),
                            msg: format!(
                                "label {v} at position {i} of y is outside the model's {classes} classes (0..{classes}) for loss {}",
                                loss.name()
                            ),
                        });
                    }
                }
            }
        }
        let head: Vec<usize> = (0..n.min(2)).collect();
        let xb = rows(x, &head)?;
        let outs = no_grad(|| self.forward(&xb, false))?;
        let compiled = self.compiled.as_ref().expect("checked");
        for ((loss, y), out) in compiled.losses.iter().zip(ys).zip(&outs) {
            let v = no_grad(|| loss.call(&rows(y, &head)?, out, None))?;
            if v.numel() != 1 {
                return Err(Error::Shape {
                    op: "fit".into(),
                    msg: format!(
                        "loss {} returned shape {:?}; training needs a reduction to a scalar",
                        loss.name(),
                        v.shape()
                    ),
                });
            }
        }
        Ok(n)
    }

    /// One forward pass with the losses: `(total, per-output losses)`.
    fn losses_on(
        &mut self,
        xb: &Tensor,
        yb: &[Tensor],
        wb: Option<&Tensor>,
        training: bool,
    ) -> Result<(Tensor, Vec<f64>, Vec<Tensor>)> {
        let (losses, outs) = match self.fused_head()? {
            Some(fused) => (vec![self.fused_loss(&fused, xb, yb, wb, training)?], Vec::new()),
            None => {
                let outs = self.forward(xb, training)?;
                let compiled = self.compiled.as_ref().expect("checked");
                let losses = outs
                    .iter()
                    .zip(yb)
                    .zip(&compiled.losses)
                    .map(|((out, y), loss)| loss.call(y, out, wb))
                    .collect::<Result<Vec<_>>>()?;
                (losses, outs)
            }
        };
        let (total, each) = self.weighted_total(losses, 1.0)?;
        Ok((total, each, outs))
    }

    /// `Σ wᵢ·Lᵢ` over the outputs' losses (loss weights), plus the layers' regularization
    /// times `reg_share` (1, or 1/workers in a data-parallel step); with each output's
    /// unweighted loss.
    fn weighted_total(&self, losses: Vec<Tensor>, reg_share: f64) -> Result<(Tensor, Vec<f64>)> {
        let compiled = self.compiled.as_ref().expect("checked");
        let mut total: Option<Tensor> = None;
        let mut each = Vec::with_capacity(losses.len());
        for (l, weight) in losses.into_iter().zip(&compiled.loss_weights) {
            each.push(l.to_scalar()?);
            let term = match weight {
                Some(w) => l.mul_scalar(*w)?,
                None => l,
            };
            total = Some(match total {
                None => term,
                Some(t) => t.add(&term)?,
            });
        }
        let mut total = total.ok_or_else(|| Error::Config("the model has no outputs".into()))?;
        if let Some(reg) = self.regularization_loss()? {
            total = total.add(&if reg_share == 1.0 { reg } else { reg.mul_scalar(reg_share)? })?;
        }
        Ok((total, each))
    }

    /// The fused loss for the last layer, when [`Compile::fused_head`](crate::Compile::fused_head)
    /// and the model allow it (`Err` with the reason when it was required and is not possible).
    fn fused_head(&self) -> Result<Option<LinearCrossEntropy>> {
        let compiled = self.compiled.as_ref().expect("checked");
        if compiled.fused_head == Some(false) {
            return Ok(None);
        }
        let fused = self.fusable(compiled);
        match (fused, compiled.fused_head) {
            (Ok(l), _) => Ok(Some(l)),
            (Err(why), Some(true)) => Err(Error::Config(format!("compile: fused_head(Some(true)) but {why}"))),
            (Err(_), _) => Ok(None),
        }
    }

    /// The fused loss equal to the compiled one, or why there is none.
    fn fusable(&self, compiled: &crate::compile::Compiled) -> std::result::Result<LinearCrossEntropy, String> {
        if !self.heads.is_empty() || compiled.losses.len() != 1 {
            return Err("the model has several outputs".into());
        }
        if !compiled.metric_names.is_empty() {
            return Err("metrics need the logits".into());
        }
        if self.trunk.last().and_then(|l| l.linear_head()).is_none() {
            return Err("the last layer is not a linear Dense".into());
        }
        let loss = &compiled.losses[0];
        let config = loss.config();
        match loss.class_name() {
            "LinearCrossEntropy" => LinearCrossEntropy::from_config(&config).map_err(|e| e.to_string()),
            "SparseCategoricalCrossentropy" if config["from_logits"] == true => {
                let reduction = match loss.reduction() {
                    // Keras' `mean` divides by the count, as `sum_over_batch_size`.
                    Reduction::SumOverBatchSize | Reduction::Mean => Reduction::SumOverBatchSize,
                    r @ (Reduction::Sum | Reduction::MeanWithSampleWeight) => r,
                    Reduction::None => return Err("the loss' reduction is none".into()),
                };
                if !matches!(config["axis"].as_i64(), None | Some(-1)) {
                    return Err("the loss' axis is not the last".into());
                }
                Ok(LinearCrossEntropy::new()
                    .with_reduction(reduction)
                    .with_ignore_index(config["ignore_class"].as_i64()))
            }
            other => Err(format!("the loss is {other}, not a sparse cross-entropy from logits")),
        }
    }

    /// The loss through the fused last layer: the trunk up to it, then the loss of its kernel
    /// and bias against the labels in one node (the outputs are never computed).
    fn fused_loss(
        &mut self,
        fused: &LinearCrossEntropy,
        xb: &Tensor,
        yb: &[Tensor],
        wb: Option<&Tensor>,
        training: bool,
    ) -> Result<Tensor> {
        self.ensure_built(xb)?;
        let mut h = xb.to_dtype(self.dtype);
        let (last, rest) = self.trunk.split_last().expect("fusable: a last layer");
        for layer in rest {
            h = layer.forward(&h, training, &mut self.rng)?;
        }
        let (kernel, bias) = last.linear_head().expect("fusable: a linear Dense");
        // Keras' labels may carry a trailing axis of 1: (B, 1) for (B,) tokens.
        let tokens = &h.shape()[..h.rank() - 1];
        let labels = if yb[0].shape() != tokens && yb[0].numel() == tokens.iter().product::<usize>() {
            yb[0].reshape(&tokens.iter().map(|&d| d as isize).collect::<Vec<_>>())?
        } else {
            yb[0].clone()
        };
        fused.forward_dense(&h, kernel, bias, &labels, wb)
    }

    /// Keeps (in [`Model::warnings`]) and prints (when verbose) [`Model::cannot_learn`]'s
    /// warning, once per `fit`.
    fn warn_if_cannot_learn(&mut self, logs: &Logs, verbose: u8) {
        const TAG: &str = "is probably too high";
        if self.warnings.iter().any(|w| w.contains(TAG)) {
            return;
        }
        if let Some(w) = self.cannot_learn(logs) {
            if verbose > 0 {
                eprintln!("warning: {w}");
            }
            self.warnings.push(w);
        }
    }

    /// A warning when the epoch shows a run that cannot learn: the loss at a clipped
    /// cross-entropy's ceiling (`-ln 1e-7 ≈ 16.1`: probability ~0 for the true class) or the
    /// accuracy at chance level, while the learning rate is above the optimizer's usual range
    /// (SGD > 1, adaptive optimizers > 0.1).
    fn cannot_learn(&self, logs: &Logs) -> Option<String> {
        let compiled = self.compiled.as_ref()?;
        let lr = compiled.optimizer.learning_rate();
        let usual = match compiled.optimizer.rule() {
            crate::Rule::Sgd { .. } => 1.0,
            _ => 0.1,
        };
        if lr <= usual {
            return None;
        }
        let rate = nan::human_number(lr);
        let ceiling = -(1e-7f64).ln();
        let loss = compiled.losses.first()?;
        let clipped_ce = loss.class_name().contains("Crossentropy") && loss.config()["from_logits"] != true;
        if clipped_ce && logs.get("loss").is_some_and(|&l| l >= 0.8 * ceiling) {
            return Some(format!(
                "the loss stayed at ~{:.1}, the clipped cross-entropy's ceiling: the model assigns probability ~0 to the true class; the learning rate {rate} is probably too high",
                logs["loss"]
            ));
        }
        let classes = self.output_shapes().first().and_then(|s| s.last().copied()).unwrap_or(0);
        let chance = if classes > 1 { 1.0 / classes as f64 } else { 0.5 };
        if logs.get("accuracy").is_some_and(|&a| a <= 1.5 * chance) {
            return Some(format!(
                "the accuracy stayed at chance level ({:.3} for {classes} classes): the learning rate {rate} is probably too high",
                logs["accuracy"]
            ));
        }
        None
    }

    fn logs_of(&self, acc: &Accumulators, prefix: &str) -> Logs {
        self.log_entries(acc, prefix).into_iter().map(|(k, slot)| (k, mean(acc.at(slot)))).collect()
    }

    /// The logs' names and where each value comes from: `loss`, each output's `<name>_loss`
    /// (with several outputs), each output's metrics.
    fn log_entries(&self, acc: &Accumulators, prefix: &str) -> Vec<(String, LogSlot)> {
        let mut entries = vec![(format!("{prefix}loss"), LogSlot::Loss)];
        let names = self.output_names();
        if names.len() > 1 {
            for (i, (n, _)) in names.iter().zip(&acc.output_losses).enumerate() {
                entries.push((format!("{prefix}{n}_loss"), LogSlot::Output(i)));
            }
        }
        for (o, (out_names, vals)) in self.metric_log_names().iter().zip(&acc.metrics).enumerate() {
            for (m, (n, _)) in out_names.iter().zip(vals).enumerate() {
                entries.push((format!("{prefix}{n}"), LogSlot::Metric(o, m)));
            }
        }
        entries
    }

    /// `logs` set to the running means of `acc`, in place: the names are made on the first call
    /// (empty `entries`) and only the values change after it, so a batch's logs allocate nothing.
    fn refresh_logs(&self, logs: &mut Logs, acc: &Accumulators, entries: &mut Vec<(String, LogSlot)>) {
        if entries.is_empty() {
            *entries = self.log_entries(acc, "");
        }
        for (k, slot) in entries.iter() {
            let v = mean(acc.at(*slot));
            match logs.get_mut(k) {
                Some(old) => *old = v,
                None => {
                    logs.insert(k.clone(), v);
                }
            }
        }
    }

    fn accumulate(
        acc: &mut Accumulators,
        metrics: &[Vec<Metric>],
        yb: &[Tensor],
        outs: &[Tensor],
        total: f64,
        each: &[f64],
        nb: f64,
    ) -> Result<()> {
        acc.loss.0 += total * nb;
        acc.loss.1 += nb;
        for (o, l) in acc.output_losses.iter_mut().zip(each) {
            o.0 += l * nb;
            o.1 += nb;
        }
        for ((ms, accs), (y, out)) in metrics.iter().zip(acc.metrics.iter_mut()).zip(yb.iter().zip(outs)) {
            for (m, a) in ms.iter().zip(accs.iter_mut()) {
                let (s, c) = m.batch(y, out)?;
                a.0 += s;
                a.1 += c;
            }
        }
        Ok(())
    }

    /// Keras' `fit`: trains for `epochs - initial_epoch` epochs and returns the [`History`].
    ///
    /// The logged `loss` is the running mean over the epoch's samples (batch losses weighted by
    /// batch size), reset each epoch; with several outputs each output's loss is logged as
    /// `<name>_loss` (with sample weights, without loss weights). `val_*` entries come from
    /// `validation_split` (the last fraction, taken before shuffling) or `validation_data`.
    /// Data errors (row counts, labels outside the model's classes, a loss that does not fit
    /// the output) are reported before the first step. With a [`BackupAndRestore`] callback
    /// whose folder holds a backup, training resumes where the backup left it (the History
    /// returned then covers the whole run).
    pub fn fit(&mut self, x: &Tensor, y: impl Into<Targets>, opts: Fit<'_>) -> Result<History> {
        let group = opts.group.filter(|g| g.size() > 1);
        let result = self.fit_run(x, y.into(), opts);
        if let (Err(e), Some(g)) = (&result, group) {
            g.fail(e);
        }
        result
    }

    /// [`Model::fit`]'s work (its caller tells the other workers when it fails).
    fn fit_run(&mut self, x: &Tensor, y: Targets, mut opts: Fit<'_>) -> Result<History> {
        self.compiled_or_err()?;
        let data = self.prepare_fit(x, y, &mut opts)?;
        if let Some(group) = opts.group {
            self.join_group(group)?;
            if group.rank() != 0 {
                opts.verbose = 0;
            }
        }
        let metrics = self.resolve_metrics(&data.ys, data.n)?;
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
        let facts = RunFacts { samples: data.n, batch_size: opts.batch_size, shuffle: opts.shuffle, seed: opts.seed };
        let progress = Progress::start(opts.initial_epoch, opts.seed);
        let mut run = FitLoop::new(&data, metrics, callbacks, loop_opts, facts, progress)?;
        run.group = opts.group.filter(|g| g.size() > 1);
        if run.group.is_some() && run.backup.is_some() {
            return Err(Error::Config("fit: BackupAndRestore is not supported with several workers yet".into()));
        }
        run.plan = self.step_plan(&data, run.group.is_some())?;
        let states = self.resume(&mut run)?;
        // The pool's other workers stay awake between the step's parallel regions.
        let _awake = losskit_kernels::threads::keep_pool_awake();
        self.begin_training(&mut run, states)?;
        while !run.progress.stopped && run.progress.epoch < run.opts.epochs {
            self.run_epoch(&mut run)?;
        }
        self.end_training(&mut run)?;
        Ok(run.progress.history)
    }

    /// Puts a backup's state (if `run` has a [`BackupAndRestore`] with one) into the model and
    /// the loop, and returns the callbacks' states for [`Model::begin_training`].
    fn resume(&mut self, run: &mut FitLoop<'_, '_>) -> Result<Vec<CallbackState>> {
        let facts = run.facts.clone();
        let Some(backup) = run.backup() else { return Ok(Vec::new()) };
        backup.resumed_from = None;
        let path = backup.path();
        let Some(snap) = backup.load()? else { return Ok(Vec::new()) };
        snap.check(&facts, &self.get_weights(), &path)?;
        backup.resumed_from = Some((snap.epoch, snap.step));
        let weights: Vec<Tensor> = snap.weights.iter().map(|(_, t)| t.clone()).collect();
        self.set_weights(&weights)?;
        self.compiled.as_mut().expect("checked").optimizer.set_state(snap.optimizer)?;
        self.rng = snap.model_rng;
        let sums = if snap.step > 0 {
            let shape = (run.data.ys.len(), run.metrics.first().map_or(0, Vec::len));
            Some(Accumulators::from_flat(&snap.sums, shape).map_err(|m| Error::File {
                path: path.display().to_string(),
                msg: format!("{m}: the backup does not fit this model's outputs and metrics"),
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

    /// The callbacks' `set_params` and `on_train_begin`, then (when resuming) their states put
    /// back: the same kinds of stateful callbacks, in the same order, as when backed up.
    fn begin_training(&mut self, run: &mut FitLoop<'_, '_>, states: Vec<CallbackState>) -> Result<()> {
        let steps = run.data.n.div_ceil(run.opts.batch_size);
        let params =
            FitParams { epochs: run.opts.epochs, initial_epoch: run.progress.epoch, steps, verbose: run.opts.verbose };
        for cb in run.callbacks.iter_mut() {
            cb.set_params(&params);
        }
        self.stop_training = false;
        let empty = Logs::new();
        for cb in run.callbacks.iter_mut() {
            cb.on_train_begin(&empty, self)?;
        }
        if run.backup.is_none() || run.backup().and_then(|b| b.resumed_from).is_none() {
            return Ok(());
        }
        let mut stateful: Vec<&mut &mut dyn Callback> =
            run.callbacks.iter_mut().filter(|cb| cb.state().is_some()).collect();
        let kinds_now: Vec<String> = stateful.iter().filter_map(|cb| cb.state()).map(|s| s.kind).collect();
        let kinds_then: Vec<String> = states.iter().map(|s| s.kind.clone()).collect();
        if kinds_now != kinds_then {
            let path = run.backup().map(|b| b.path().display().to_string()).unwrap_or_default();
            return Err(Error::File {
                path,
                msg: format!(
                    "the backup was made with the callbacks [{}], this fit has [{}]: resume with the same callbacks (or delete the backup to start over)",
                    kinds_then.join(", "),
                    kinds_now.join(", ")
                ),
            });
        }
        for (cb, state) in stateful.iter_mut().zip(states) {
            cb.restore_state(state)?;
        }
        Ok(())
    }

    /// One epoch: the callbacks around it, the shuffled batches, validation, the History, the
    /// cannot-learn warning, and the backup.
    fn run_epoch(&mut self, run: &mut FitLoop<'_, '_>) -> Result<()> {
        let epoch = run.progress.epoch;
        let empty = Logs::new();
        for cb in run.callbacks.iter_mut() {
            cb.on_epoch_begin(epoch, &empty, self)?;
        }
        let mut shuffle_rng = run.progress.shuffle_rng.clone();
        let order: Vec<usize> = if run.opts.shuffle {
            random::permutation(run.data.n, &mut shuffle_rng)
        } else {
            (0..run.data.n).collect()
        };
        let acc = self.train_epoch(run, &order)?;
        run.progress.shuffle_rng = shuffle_rng;
        run.progress.step = 0;
        let mut logs = self.logs_of(&acc, "");
        if let Some(v) = &run.data.validation {
            let (batch, group) = (run.opts.batch_size, run.group);
            let val = self.evaluate_inner(&v.x, &v.ys, v.w.as_ref(), batch, &mut run.callbacks, group)?;
            for (k, v) in val {
                logs.insert(format!("val_{k}"), v);
            }
        }
        run.progress.history.push(epoch, &logs);
        for cb in run.callbacks.iter_mut() {
            cb.on_epoch_end(epoch, &logs, self)?;
        }
        self.warn_if_cannot_learn(&logs, run.opts.verbose);
        run.progress.last_logs = logs;
        run.progress.epoch = epoch + 1;
        run.progress.stopped = self.stop_training;
        if run.backup().is_some_and(|b| b.frequency() == SaveFreq::Epoch) {
            self.back_up(run, None)?;
        }
        Ok(())
    }

    /// `on_train_end` for every callback, then the backup's deletion (training ended normally).
    fn end_training(&mut self, run: &mut FitLoop<'_, '_>) -> Result<()> {
        let last_logs = run.progress.last_logs.clone();
        for cb in run.callbacks.iter_mut() {
            cb.on_train_end(&last_logs, self)?;
        }
        match run.backup() {
            Some(b) => b.finish(),
            None => Ok(()),
        }
    }

    /// Writes the backup: the model's weights, optimizer state and RNG, the loop's progress
    /// (with the epoch's running sums `sums` when inside an epoch) and the callbacks' states.
    fn back_up(&self, run: &mut FitLoop<'_, '_>, sums: Option<&Accumulators>) -> Result<()> {
        let callbacks: Vec<CallbackState> = run.callbacks.iter().filter_map(|cb| cb.state()).collect();
        let p = &run.progress;
        let snapshot = Snapshot {
            epoch: p.epoch,
            step: p.step,
            stopped: p.stopped,
            run: run.facts.clone(),
            weights: self.get_weights(),
            optimizer: self.compiled.as_ref().expect("checked").optimizer.state(),
            model_rng: self.rng.clone(),
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

    /// Everything `fit` settles before the first step: per-sample weights (from `class_weight`
    /// or `sample_weight`), the data checks and their warnings, the options' ranges, and the
    /// validation split (the last fraction, before any shuffling; sample weights split too).
    fn prepare_fit(&mut self, x: &Tensor, y: Targets, opts: &mut Fit<'_>) -> Result<FitData> {
        self.ensure_built(x)?;
        let ys = y.ordered(&self.output_names())?;
        let weights = fit_sample_weights(&ys, opts)?;
        let n_all = self.check_data(x, &ys, weights.as_ref())?;
        self.warnings.clear();
        self.last_diagnosis = None;
        if opts.check_data {
            let sw = if opts.class_weight.is_some() { None } else { weights.as_ref() };
            self.warnings = self.data_warnings(x, &ys, sw, opts.class_weight.as_ref())?;
            for w in &self.warnings {
                eprintln!("warning: {w}");
            }
        }
        check_fit_options(opts)?;
        let (train_idx, val_idx) = validation_split(n_all, opts.validation_split)?;
        let validation = if let Some((vx, vy)) = opts.validation_data.take() {
            Some(Dataset { x: vx, ys: vy.ordered(&self.output_names())?, w: None })
        } else if !val_idx.is_empty() {
            let vw = match &weights {
                Some(w) if opts.class_weight.is_none() => Some(rows(w, &val_idx)?),
                _ => None,
            };
            Some(Dataset::rows_of(x, &ys, vw.as_ref(), &val_idx, false)?)
        } else {
            None
        };
        let train = if val_idx.is_empty() {
            Dataset { x: x.clone(), ys, w: weights }
        } else {
            Dataset::rows_of(x, &ys, weights.as_ref(), &train_idx, true)?
        };
        Ok(FitData { n: train_idx.len(), x: train.x, ys: train.ys, w: train.w, validation })
    }

    /// The warnings of [`nan::check_data`] for `x` and the targets of every output.
    fn data_warnings(
        &self,
        x: &Tensor,
        ys: &[Tensor],
        sample_weight: Option<&Tensor>,
        class_weight: Option<&BTreeMap<i64, f64>>,
    ) -> Result<Vec<String>> {
        let losses = self.compiled.as_ref().expect("checked").losses.clone();
        let named: Vec<(String, Tensor, &dyn losskit::Loss)> = self
            .output_names()
            .into_iter()
            .zip(ys)
            .zip(&losses)
            .map(|((n, y), l)| (n, y.clone(), l.as_ref()))
            .collect();
        nan::check_data(x, &named, sample_weight, class_weight)
    }

    /// One epoch's batches in `order` (from the loop's current step: a resumed epoch skips the
    /// batches done), a [`Model::train_step`] each, with the batch callbacks, the running means
    /// of the loss and metrics, and the backups every N batches. Stops early when a callback
    /// asks.
    fn train_epoch(&mut self, run: &mut FitLoop<'_, '_>, order: &[usize]) -> Result<Accumulators> {
        let empty = Logs::new();
        let outputs = run.data.ys.len();
        let mut acc = run
            .progress
            .sums
            .take()
            .unwrap_or_else(|| Accumulators::new(outputs, run.metrics.first().map_or(0, Vec::len)));
        let batch_size = run.opts.batch_size;
        let every = match run.backup().map(|b| b.frequency()) {
            Some(SaveFreq::Batches(n)) => Some(n as u64),
            _ => None,
        };
        let (mut logs, mut entries) = (Logs::new(), Vec::new());
        for (step, idx) in order.chunks(batch_size).enumerate().skip(run.progress.step) {
            for cb in run.callbacks.iter_mut() {
                cb.on_train_batch_begin(step, &empty, self)?;
            }
            match run.group {
                Some(group) => self.distributed_step(run, group, idx, step, &mut acc)?,
                None if run.plan.is_some() => {
                    let plan = run.plan.as_mut().expect("checked");
                    let guard = run.opts.nan_guard.then_some(GuardAt {
                        epoch: run.progress.epoch,
                        step,
                        norms: &mut run.norms,
                    });
                    self.planned_step(plan, run.data, &run.metrics, guard, idx, &mut acc)?;
                }
                None => {
                    let data = run.data;
                    let batch = Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), idx, true)?;
                    let out = self.train_step(&batch, run.opts.nan_guard, run.progress.epoch, step, &mut run.norms)?;
                    let nb = idx.len() as f64;
                    Self::accumulate(&mut acc, &run.metrics, &batch.ys, &out.outputs, out.loss, &out.each, nb)?;
                }
            }
            self.refresh_logs(&mut logs, &acc, &mut entries);
            for cb in run.callbacks.iter_mut() {
                cb.on_train_batch_end(step, &logs, self)?;
            }
            run.progress.step = step + 1;
            let iterations = self.compiled.as_ref().expect("checked").optimizer.iterations();
            if every.is_some_and(|n| iterations.is_multiple_of(n)) {
                self.back_up(run, Some(&acc))?;
            }
            if self.stop_training {
                break;
            }
        }
        Ok(acc)
    }

    /// The planned step for this run ([`Compile::planned_step`](crate::Compile::planned_step)):
    /// `None` when it is off, or not possible and not required.
    fn step_plan(&mut self, data: &FitData, distributed: bool) -> Result<Option<StepPlan>> {
        let wanted = self.compiled.as_ref().expect("checked").planned_step;
        if wanted == Some(false) {
            return Ok(None);
        }
        match (self.plannable(data, distributed), wanted) {
            (Ok(plan), _) => Ok(Some(plan)),
            (Err(why), Some(true)) => Err(Error::Config(format!("compile: planned_step(Some(true)) but {why}"))),
            (Err(_), _) => Ok(None),
        }
    }

    /// The plan for inference on `x` (and, to evaluate, the loss against `y`), when
    /// [`Compile::planned_step`](crate::Compile::planned_step) is not off and the model allows
    /// it (`None`: the tape runs the model).
    pub(crate) fn inference_plan(&self, x: &Tensor, y: Option<&Tensor>) -> Option<StepPlan> {
        if self.compiled.as_ref().is_some_and(|c| c.planned_step == Some(false)) {
            return None;
        }
        if y.is_some() && !matches!(self.fused_head(), Ok(None)) {
            return None;
        }
        StepPlan::new(self, x, y).ok()
    }

    /// The planned step for this model and run, or why there is none.
    fn plannable(&mut self, data: &FitData, distributed: bool) -> std::result::Result<StepPlan, String> {
        if distributed {
            return Err("the run has several workers".into());
        }
        if self.fused_head().map_err(|e| e.to_string())?.is_some() {
            return Err("the fused linear + cross-entropy head trains the last layer".into());
        }
        if data.ys.len() != 1 {
            return Err("the model has several outputs".into());
        }
        self.ensure_built(&data.x).map_err(|e| e.to_string())?;
        let plan = StepPlan::new(self, &data.x, Some(&data.ys[0]))?;
        match &data.w {
            Some(w) => plan.with_sample_weights(w, data.x.shape().first().copied().unwrap_or(0)),
            None => Ok(plan),
        }
    }

    /// One training step through `plan` on the rows `idx`: the step, then (with the NaN guard:
    /// `guard` is the epoch, the step and the norm history) the guard's record and verdict,
    /// then the batch's loss and metrics into `acc`.
    fn planned_step(
        &mut self,
        plan: &mut StepPlan,
        data: &FitData,
        metrics: &[Vec<Metric>],
        guard: Option<GuardAt<'_>>,
        idx: &[usize],
        acc: &mut Accumulators,
    ) -> Result<()> {
        let check = guard.is_some().then_some(true);
        let (loss, applied) = plan.run(self, &data.x, &data.ys[0], data.w.as_ref(), idx, check)?;
        if let Some(guard) = guard {
            guard.norms.push_sums(&plan.sum_squares, || self.weight_names());
            if !applied {
                let batch = Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), idx, true)?;
                return self.fail_step(&batch, loss, plan.weight_grads(), guard);
            }
        }
        let (ys, outs) = plan.reading(idx.len());
        Self::accumulate(acc, metrics, ys, outs, loss, &[loss], idx.len() as f64)
    }

    /// Every weight's name, in weight order.
    fn weight_names(&self) -> Vec<String> {
        self.params().iter().map(|p| p.name.clone()).collect()
    }

    /// Joins a data-parallel run: rank 0's weights everywhere, and this worker's own stream of
    /// the model's generator (dropout masks differ between shards).
    fn join_group(&mut self, group: &dyn Collective) -> Result<()> {
        let weights = self.get_weights();
        let mut flat: Vec<f64> = weights.iter().flat_map(|(_, t)| t.to_vec::<f64>()).collect();
        group.broadcast(&mut flat, 0)?;
        let tensors = unflatten(&flat, weights.iter().map(|(_, t)| t.shape()), self.dtype)?;
        self.set_weights(&tensors)?;
        self.rng.set_stream(group.rank() as u64);
        Ok(())
    }

    /// One data-parallel step on this worker's shard of the global batch `idx`: the losses'
    /// shares of the global reduction, their gradients, one all-reduce of the gradients with
    /// the loss and the metrics' sums, the NaN guard, the update; the batch goes into `acc`
    /// with its global sums.
    fn distributed_step(
        &mut self,
        run: &mut FitLoop<'_, '_>,
        group: &dyn Collective,
        idx: &[usize],
        step: usize,
        acc: &mut Accumulators,
    ) -> Result<()> {
        let data = run.data;
        let rows = distribute::shard(idx, group.rank(), group.size());
        let batch =
            (!rows.is_empty()).then(|| Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), rows, true)).transpose()?;
        let outputs = data.ys.len();
        let (shares, outs) = match &batch {
            Some(b) => self.loss_shares(b)?,
            None => (vec![(None, None); outputs], Vec::new()),
        };
        // First all-reduce (small, f64): each output's weighted sum and denominator, and the
        // metrics' (sum, count) pairs, all known after the forward pass.
        let partials = shares
            .iter()
            .map(|(sum, own)| Ok((sum.as_ref().map(Tensor::to_scalar).transpose()?.unwrap_or(0.0), *own)))
            .collect::<Result<Vec<_>>>()?;
        let ys: &[Tensor] = batch.as_ref().map_or(&[], |b| &b.ys);
        let outs_now: Vec<Tensor> = outs.iter().map(Tensor::detach).collect();
        let mut sums = local_sums(&partials, outputs, &run.metrics, ys, &outs_now)?;
        group.all_reduce_sum(&mut sums)?;
        let (loss, each) = self.global_losses(&sums, outputs)?;
        // Each output's share: its weighted sum over the global denominator.
        let losses: Vec<Tensor> = shares
            .into_iter()
            .zip(sums.chunks_exact(2).map(|pair| pair[1]))
            .map(|((sum, own), global)| match sum {
                None => Ok(Tensor::scalar(0.0f64).to_dtype(self.dtype)),
                Some(t) if own.is_none() => Ok(t),
                Some(t) if global == 0.0 => t.mul_scalar(0.0),
                Some(t) => t.mul_scalar(1.0 / global),
            })
            .collect::<Result<_>>()?;
        let (total, _) = self.weighted_total(losses, 1.0 / group.size() as f64)?;
        let mut grads = total.backward()?;
        drop(total);
        drop((outs, outs_now));
        let params: Vec<(Tensor, Vec<usize>)> = self
            .params()
            .iter()
            .map(|p| (grads.remove(&p.value).unwrap_or_else(|| p.value.zeros_like()), p.value.shape().to_vec()))
            .collect();
        drop(grads);
        // Second all-reduce: the gradients, in the model's dtype.
        let shapes = || params.iter().map(|(_, s)| s.as_slice());
        let g = match self.dtype {
            losskit::DType::F32 => {
                let mut buf: Vec<f32> = params.iter().flat_map(|(g, _)| g.to_vec::<f32>()).collect();
                group.all_reduce_sum_f32(&mut buf)?;
                unflatten(&buf, shapes(), self.dtype)?
            }
            losskit::DType::F64 => {
                let mut buf: Vec<f64> = params.iter().flat_map(|(g, _)| g.to_vec::<f64>()).collect();
                group.all_reduce_sum(&mut buf)?;
                unflatten(&buf, shapes(), self.dtype)?
            }
        };
        if run.opts.nan_guard {
            let whole = match batch {
                Some(b) => b,
                None => Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), idx, true)?,
            };
            self.guarded_update(&whole, loss, &g, GuardAt { epoch: run.progress.epoch, step, norms: &mut run.norms })?;
        } else {
            self.apply_update(&g)?;
        }
        acc.add_batch(loss, &each, &sums[2 * outputs..], idx.len() as f64);
        Ok(())
    }

    /// Each output's share of its loss' global reduction on one shard
    /// ([`losskit::compute_partial`]), and the outputs (on the tape).
    #[allow(clippy::type_complexity)]
    fn loss_shares(&mut self, batch: &Dataset) -> Result<(Vec<(Option<Tensor>, Option<f64>)>, Vec<Tensor>)> {
        let outs = self.forward(&batch.x, true)?;
        let compiled = self.compiled.as_ref().expect("checked");
        let shares = outs
            .iter()
            .zip(&batch.ys)
            .zip(&compiled.losses)
            .map(|((out, y), loss)| {
                losskit::compute_partial(loss.as_ref(), y, out, batch.w.as_ref()).map(|(t, d)| (Some(t), d))
            })
            .collect::<Result<_>>()?;
        Ok((shares, outs))
    }

    /// The optimizer's update of every weight with the gradients `g` (in weight order).
    fn apply_update(&mut self, g: &[Tensor]) -> Result<()> {
        self.with_optimizer(|opt, params| opt.apply(params, g))
    }

    /// [`Model::apply_update`] when every gradient value is finite, with the gradients' `Σ g²`.
    fn apply_update_checked(&mut self, g: &[Tensor]) -> Result<crate::GradientCheck> {
        self.with_optimizer(|opt, params| opt.apply_checked(params, g, true))
    }

    /// Runs `f` on the optimizer and the weights (the optimizer is taken out of the compiled
    /// state meanwhile, so both can be borrowed mutably).
    fn with_optimizer<R>(
        &mut self,
        f: impl FnOnce(&mut crate::Optimizer, &mut [&mut crate::layers::Param]) -> Result<R>,
    ) -> Result<R> {
        let compiled = self.compiled.as_mut().expect("checked");
        let mut optimizer = std::mem::replace(&mut compiled.optimizer, crate::Optimizer::sgd(0.0)?);
        let result = f(&mut optimizer, &mut self.params_mut());
        self.compiled.as_mut().expect("checked").optimizer = optimizer;
        result
    }

    /// Keras' `train_step`: forward with the losses, gradients, the NaN guard's check (when on),
    /// and the optimizer's update of every parameter.
    fn train_step(
        &mut self,
        batch: &Dataset,
        nan_guard: bool,
        epoch: usize,
        step: usize,
        norms: &mut GradNormHistory,
    ) -> Result<StepOutput> {
        let (total, each, outs) = self.losses_on(&batch.x, &batch.ys, batch.w.as_ref(), true)?;
        let loss = total.to_scalar()?;
        let mut grads = total.backward()?;
        // Drop the graph (the loss and the outputs hold it, and it holds the weights) so the
        // optimizer updates the weights in place instead of copying them.
        drop(total);
        let outputs: Vec<Tensor> = outs.iter().map(Tensor::detach).collect();
        drop(outs);
        let g: Vec<Tensor> =
            self.params().iter().map(|p| grads.remove(&p.value).unwrap_or_else(|| p.value.zeros_like())).collect();
        drop(grads);
        if nan_guard {
            self.guarded_update(batch, loss, &g, GuardAt { epoch, step, norms })?;
        } else {
            self.apply_update(&g)?;
        }
        Ok(StepOutput { loss, each, outputs })
    }

    /// The optimizer's update under the NaN guard: the gradients' norms are measured just before
    /// the update ([`crate::Optimizer::apply_checked`]) and recorded per layer; at a non-finite
    /// loss or gradient nothing is applied (the weights stay those after the last good step)
    /// and the step stops with a diagnosis (also kept in [`Model::last_diagnosis`]).
    fn guarded_update(&mut self, batch: &Dataset, loss: f64, g: &[Tensor], guard: GuardAt<'_>) -> Result<()> {
        if loss.is_finite() {
            let check = self.apply_update_checked(g)?;
            guard.norms.push_sums(&check.sum_squares, || self.weight_names());
            if check.applied {
                return Ok(());
            }
        } else {
            // The loss alone condemns the step: measure the gradients for the diagnosis.
            let sums: Vec<f64> = g.iter().map(Tensor::sum_of_squares).collect();
            guard.norms.push_sums(&sums, || self.weight_names());
        }
        self.fail_step(batch, loss, g, guard)
    }

    /// Stops a step the guard condemned: the diagnosis of `batch` (kept in
    /// [`Model::last_diagnosis`]) as the error.
    fn fail_step(&mut self, batch: &Dataset, loss: f64, g: &[Tensor], guard: GuardAt<'_>) -> Result<()> {
        let names = self.weight_names();
        let GuardAt { epoch, step, norms } = guard;
        let d = self.diagnose(epoch, step, loss, &batch.x, &batch.ys, batch.w.as_ref(), names, g, norms)?;
        let text = d.to_string();
        self.last_diagnosis = Some(d);
        Err(Error::NonFinite { op: "fit".into(), diagnosis: text })
    }

    #[allow(clippy::too_many_arguments)]
    fn diagnose(
        &mut self,
        epoch: usize,
        batch: usize,
        loss: f64,
        xb: &Tensor,
        yb: &[Tensor],
        wb: Option<&Tensor>,
        grad_names: Vec<String>,
        grads: &[Tensor],
        history: &GradNormHistory,
    ) -> Result<nan::Diagnosis> {
        let trace = self.trace(xb)?;
        let outs = no_grad(|| self.forward(xb, false))?;
        let compiled = self.compiled.as_ref().expect("checked");
        let mut data_loss = 0.0;
        let mut output_loss_finite = true;
        for ((loss, y), out) in compiled.losses.iter().zip(yb).zip(&outs) {
            let v = no_grad(|| loss.call(y, out, wb))?.to_scalar()?;
            output_loss_finite &= v.is_finite();
            data_loss += v;
        }
        let regularization = no_grad(|| self.regularization_loss())?.map(|r| r.to_scalar()).transpose()?;
        let learning_rate = self.compiled.as_ref().expect("checked").optimizer.learning_rate();
        Ok(nan::diagnose(nan::Failure {
            epoch,
            batch,
            loss,
            x: xb,
            trace,
            output_loss_finite,
            regularization,
            data_loss,
            regularizers: self.regularizers(),
            grad_names,
            grads,
            history,
            learning_rate,
        }))
    }

    /// The loss and metrics over `x`, `ys` in batches, as running means over all samples;
    /// with `group`, each worker takes its shard of every batch ([`Model::shard_losses`]).
    fn evaluate_inner(
        &mut self,
        x: &Tensor,
        ys: &[Tensor],
        w: Option<&Tensor>,
        batch_size: usize,
        callbacks: &mut [&mut dyn Callback],
        group: Option<&dyn Collective>,
    ) -> Result<Logs> {
        let n = count_rows("x", x)?;
        let metrics = self.resolve_metrics(ys, n)?;
        let mut acc = Accumulators::new(ys.len(), metrics.first().map_or(0, Vec::len));
        let empty = Logs::new();
        for cb in callbacks.iter_mut() {
            cb.on_test_begin(&empty, self)?;
        }
        let batch_size = batch_size.max(1);
        let (mut logs, mut entries) = (Logs::new(), Vec::new());
        let mut plan = match (group.filter(|g| g.size() > 1), w, ys) {
            (None, None, [y]) => self.inference_plan(x, Some(y)),
            (None, Some(w), [y]) => self.inference_plan(x, Some(y)).and_then(|p| p.with_sample_weights(w, n).ok()),
            _ => None,
        };
        for (step, start) in (0..n).step_by(batch_size).enumerate() {
            let idx: Vec<usize> = (start..(start + batch_size).min(n)).collect();
            for cb in callbacks.iter_mut() {
                cb.on_test_batch_begin(step, &empty, self)?;
            }
            match group.filter(|g| g.size() > 1) {
                Some(g) => self.shard_losses(x, ys, w, &idx, &metrics, g, &mut acc)?,
                None if plan.is_some() => {
                    let plan = plan.as_mut().expect("checked");
                    let loss = plan.infer(self, x, Some((&ys[0], w)), &idx)?.expect("the loss of targets");
                    let (yb, outs) = plan.reading(idx.len());
                    Self::accumulate(&mut acc, &metrics, yb, outs, loss, &[loss], idx.len() as f64)?;
                }
                None => {
                    let xb = rows(x, &idx)?;
                    let yb: Vec<Tensor> = ys.iter().map(|t| rows(t, &idx)).collect::<Result<_>>()?;
                    let wb = w.map(|w| rows(w, &idx)).transpose()?;
                    let (total, each, outs) = no_grad(|| self.losses_on(&xb, &yb, wb.as_ref(), false))?;
                    Self::accumulate(&mut acc, &metrics, &yb, &outs, total.to_scalar()?, &each, idx.len() as f64)?;
                }
            }
            self.refresh_logs(&mut logs, &acc, &mut entries);
            for cb in callbacks.iter_mut() {
                cb.on_test_batch_end(step, &logs, self)?;
            }
        }
        let logs = self.logs_of(&acc, "");
        for cb in callbacks.iter_mut() {
            cb.on_test_end(&logs, self)?;
        }
        Ok(logs)
    }

    /// From a batch's all-reduced [`local_sums`]: each output's loss over the whole batch (its
    /// weighted sum over the global denominator; the sum alone for `sum`; 0 for a zero
    /// denominator) and the total, with loss weights and the regularization.
    fn global_losses(&self, sums: &[f64], outputs: usize) -> Result<(f64, Vec<f64>)> {
        let compiled = self.compiled.as_ref().expect("checked");
        let each: Vec<f64> = (0..outputs)
            .map(|o| match compiled.losses[o].reduction() {
                Reduction::Sum => sums[2 * o],
                _ if sums[2 * o + 1] == 0.0 => 0.0,
                _ => sums[2 * o] / sums[2 * o + 1],
            })
            .collect();
        let regularization = no_grad(|| self.regularization_loss())?.map(|r| r.to_scalar()).transpose()?;
        let total = each.iter().zip(&compiled.loss_weights).map(|(l, w)| l * w.unwrap_or(1.0)).sum::<f64>()
            + regularization.unwrap_or(0.0);
        Ok((total, each))
    }

    /// One evaluation batch `idx` split across the workers of `group`: each worker's losses
    /// (weighted sums and denominators) and metric sums, summed across workers, then divided
    /// by the batch's global denominators, into `acc`.
    #[allow(clippy::too_many_arguments)]
    fn shard_losses(
        &mut self,
        x: &Tensor,
        ys: &[Tensor],
        w: Option<&Tensor>,
        idx: &[usize],
        metrics: &[Vec<Metric>],
        group: &dyn Collective,
        acc: &mut Accumulators,
    ) -> Result<()> {
        let rows_here = distribute::shard(idx, group.rank(), group.size());
        let outputs = ys.len();
        let mut buf = if rows_here.is_empty() {
            local_sums(&[], outputs, metrics, &[], &[])?
        } else {
            let batch = Dataset::rows_of(x, ys, w, rows_here, true)?;
            let outs = no_grad(|| self.forward(&batch.x, false))?;
            let compiled = self.compiled.as_ref().expect("checked");
            let partials = outs
                .iter()
                .zip(&batch.ys)
                .zip(&compiled.losses)
                .map(|((out, y), loss)| {
                    let (sum, denominator) =
                        no_grad(|| losskit::compute_partial(loss.as_ref(), y, out, batch.w.as_ref()))?;
                    Ok((sum.to_scalar()?, denominator))
                })
                .collect::<Result<Vec<_>>>()?;
            local_sums(&partials, outputs, metrics, &batch.ys, &outs)?
        };
        group.all_reduce_sum(&mut buf)?;
        let (total, each) = self.global_losses(&buf, outputs)?;
        acc.add_batch(total, &each, &buf[2 * outputs..], idx.len() as f64);
        Ok(())
    }

    /// Keras' `evaluate`: the loss and metrics over `x`, `y` in batches (no dropout), as
    /// running means over all samples. `sample_weight` weights the loss.
    pub fn evaluate(
        &mut self,
        x: &Tensor,
        y: impl Into<Targets>,
        batch_size: usize,
        sample_weight: Option<&Tensor>,
    ) -> Result<Logs> {
        let ys = self.evaluation_targets(x, y.into(), sample_weight)?;
        self.evaluate_inner(x, &ys, sample_weight, batch_size, &mut [], None)
    }

    /// What `evaluate` checks first: compiled, built for `x`, one target per output, the data
    /// (row counts, labels, the loss' fit), and the data's warnings.
    fn evaluation_targets(&mut self, x: &Tensor, y: Targets, sample_weight: Option<&Tensor>) -> Result<Vec<Tensor>> {
        self.compiled_or_err()?;
        self.ensure_built(x)?;
        let ys = y.ordered(&self.output_names())?;
        self.check_data(x, &ys, sample_weight)?;
        self.warnings = self.data_warnings(x, &ys, sample_weight, None)?;
        Ok(ys)
    }

    /// [`Model::evaluate`] data-parallel: each worker of `group` evaluates its shard of every
    /// batch, and the losses (over each batch's global denominator) and metrics are summed
    /// across workers; every worker returns the same logs, equal to one process' evaluation.
    pub fn evaluate_distributed(
        &mut self,
        x: &Tensor,
        y: impl Into<Targets>,
        batch_size: usize,
        sample_weight: Option<&Tensor>,
        group: &dyn Collective,
    ) -> Result<Logs> {
        let ys = self.evaluation_targets(x, y.into(), sample_weight)?;
        let result = self.evaluate_inner(x, &ys, sample_weight, batch_size, &mut [], Some(group));
        if let (Err(e), true) = (&result, group.size() > 1) {
            group.fail(e);
        }
        result
    }

    /// [`Model::predict`] data-parallel: each worker of `group` predicts its contiguous share
    /// of the rows, and every worker returns all the predictions (gathered by a sum of
    /// zero-padded shares, exact).
    pub fn predict_distributed(
        &mut self,
        x: &Tensor,
        batch_size: usize,
        group: &dyn Collective,
    ) -> Result<Vec<Tensor>> {
        self.ensure_built(x)?;
        let n = count_rows("x", x)?;
        let all: Vec<usize> = (0..n).collect();
        let share = distribute::shard(&all, group.rank(), group.size());
        let mine = if share.is_empty() { Vec::new() } else { self.predict(&rows(x, share)?, batch_size)? };
        let shapes = self.output_shapes();
        let mut gathered = Vec::with_capacity(shapes.len());
        for (o, shape) in shapes.iter().enumerate() {
            let per_row: usize = shape.iter().product();
            let mut buf = vec![0.0; n * per_row];
            if let Some(p) = mine.get(o) {
                let start = share.first().copied().unwrap_or(0) * per_row;
                buf[start..start + p.numel()].copy_from_slice(&p.to_vec::<f64>());
            }
            group.all_reduce_sum(&mut buf)?;
            let full: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
            gathered.push(Tensor::from_vec(buf, &full)?.to_dtype(self.dtype));
        }
        Ok(gathered)
    }
}

/// Tensors of `shapes` (in order) from the flat values `flat`, in `dtype`.
fn unflatten<'s, T: losskit_tensor::Element>(
    flat: &[T],
    shapes: impl Iterator<Item = &'s [usize]>,
    dtype: losskit::DType,
) -> Result<Vec<Tensor>> {
    let mut at = 0;
    shapes
        .map(|shape| {
            let n: usize = shape.iter().product();
            let t = Tensor::from_vec(flat[at..at + n].to_vec(), shape)?.to_dtype(dtype);
            at += n;
            Ok(t)
        })
        .collect()
}

/// A worker's share of a data-parallel batch, flat, for one all-reduce: each output's loss
/// `(weighted sum, denominator)` from `partials` (0 for a worker without rows or a `sum`
/// reduction's missing denominator), then every metric's `(sum, count)` on its rows `ys` and
/// outputs `outs` (none when it has no rows).
fn local_sums(
    partials: &[(f64, Option<f64>)],
    outputs: usize,
    metrics: &[Vec<Metric>],
    ys: &[Tensor],
    outs: &[Tensor],
) -> Result<Vec<f64>> {
    let metric_values = metrics.iter().map(Vec::len).sum::<usize>() * 2;
    let mut sums: Vec<f64> = partials.iter().flat_map(|&(sum, d)| [sum, d.unwrap_or(0.0)]).collect();
    sums.resize(2 * outputs, 0.0);
    for ((ms, y), out) in metrics.iter().zip(ys).zip(outs) {
        for m in ms {
            let (sum, count) = m.batch(y, out)?;
            sums.extend([sum, count]);
        }
    }
    sums.resize(2 * outputs + metric_values, 0.0);
    Ok(sums)
}
