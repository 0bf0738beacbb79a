//! `losskit fit`, `evaluate`, `predict`, `plot`: the seed's model on a dataset, and the run
//! folder it leaves (history.csv, curves.png/svg, TensorBoard logs, model.safetensors, model.json).

use crate::{EvaluateArgs, FitArgs, PlotArgs, PredictArgs};
use losskit::{Error, Loss, Result, Tensor};
use losskit_train::datasets::{self, Dataset, LabelColumn, SampleNames, Split};
use losskit_train::{
    load_keras_model, plot_history, BackupAndRestore, Collective, Compile, CsvLogger, Dense, Dropout, EarlyStopping,
    Fit, Flatten, History, KerasCompile, KerasModel, Model, Optimizer, OptimizerState, PlotLearningCurves,
    ReduceLROnPlateau, Rescaling, Sequential, TensorBoard,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The run's own facts, in `run.json` beside the Keras `model.json`: where the data came from
/// and how its inputs and targets were prepared, for `evaluate`, `predict` and `--resume`.
#[derive(Debug, Serialize, Deserialize)]
struct RunSpec {
    data: String,
    label_column: Option<String>,
    input_shape: Vec<usize>,
    classes: usize,
    /// Inputs are multiplied by this before the model: 1 since the model scales its raw inputs
    /// itself (`rescaling`); runs of losskit before that kept 1/16 (digits) or 1/255 (images).
    scale: f64,
    /// The factor of the model's leading `Rescaling` layer, when it has one.
    #[serde(default)]
    rescaling: Option<f64>,
    /// Targets are one-hot encoded (dense losses) rather than class indices.
    one_hot: bool,
    loss: Value,
    seed: u64,
    validation_split: f64,
}

fn label_column(s: &Option<String>) -> LabelColumn {
    match s {
        None => LabelColumn::Last,
        Some(c) => c.parse::<usize>().map(LabelColumn::Index).unwrap_or_else(|_| LabelColumn::Name(c.clone())),
    }
}

/// The dataset and the factor that brings its inputs to [0, 1].
fn load_data(data: &str, label: &Option<String>) -> Result<(Split, f64)> {
    match data {
        "digits" => Ok((Split { train: datasets::digits()?, test: None }, 1.0 / 16.0)),
        "fashion-mnist" | "fashion_mnist" => Ok((datasets::fashion_mnist(None)?, 1.0 / 255.0)),
        "mnist" => Ok((datasets::mnist(None)?, 1.0 / 255.0)),
        path => {
            let (split, names) = datasets::load_path_named(Path::new(path), &label_column(label))?;
            check_finite(path, &split.train, &names)?;
            if let Some(test) = &split.test {
                check_finite(&format!("{path} (test part)"), test, &SampleNames::Indices)?;
            }
            let max = split.train.x.max_abs();
            Ok((split, if max > 1.0 { 1.0 / max } else { 1.0 }))
        }
    }
}

/// Refuses a NaN or infinite value in the file before any shuffle or split, naming the file,
/// the user's line (CSV, the header counted) or sample index, and the column.
fn check_finite(path: &str, data: &Dataset, names: &SampleNames) -> Result<()> {
    let x = data.x.to_vec::<f64>();
    let per_sample = x.len() / data.len().max(1);
    let bad_x = x.iter().position(|v| !v.is_finite()).map(|i| (i / per_sample.max(1), i % per_sample.max(1), x[i]));
    let y = data.y.to_vec::<f64>();
    let bad_y = y.iter().position(|v| !v.is_finite()).map(|i| (i, usize::MAX, y[i]));
    let first = match (bad_x, bad_y) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    let Some((sample, feature, value)) = first else { return Ok(()) };
    let what = if feature == usize::MAX {
        "the label".to_string()
    } else {
        format!("feature {feature} (0-based, the label column left out)")
    };
    Err(Error::file(
        path,
        format!(
            "{}: {what} is {value}; losskit fit needs finite numbers: clean or impute the file (or drop the row)",
            names.describe(sample)
        ),
    ))
}

fn is_sparse(loss: &dyn Loss) -> bool {
    matches!(loss.class_name(), "SparseCategoricalCrossentropy" | "CategoricalGeneralizedCrossEntropy")
}

fn targets(y: &Tensor, classes: usize, one_hot: bool) -> Result<Tensor> {
    if one_hot {
        Tensor::one_hot(&y.to_dtype(losskit::DType::F64), classes, losskit::DType::F32)
    } else {
        Ok(y.clone())
    }
}

fn classes_of(y: &Tensor) -> Result<usize> {
    let v = y.to_vec::<f64>();
    if let Some((i, bad)) = v.iter().enumerate().find(|(_, l)| !(l.is_finite() && **l >= 0.0 && l.fract() == 0.0)) {
        return Err(Error::Value {
            op: "fit".into(),
            msg: format!("label {bad} at row {i} is not a class index (a whole number >= 0)"),
        });
    }
    Ok(v.iter().fold(0.0f64, |m, &l| m.max(l)) as usize + 1)
}

/// The seed's model from the flags: Flatten, the hidden Dense relu layers (each followed by the
/// dropout), and a Dense output (linear for a loss from logits, softmax otherwise).
fn flags_model(args: &FitArgs, input_shape: &[usize], classes: usize, from_logits: bool) -> Result<Model> {
    let widths = if args.layers.is_empty() { vec![args.hidden] } else { args.layers.clone() };
    let mut model = Sequential::new().seed(args.seed).add(Flatten::new());
    for units in widths {
        model = model.add(Dense::new(units).activation("relu")?).add(Dropout::new(args.dropout)?);
    }
    let mut model = model.add(Dense::new(classes).activation(if from_logits { "linear" } else { "softmax" })?);
    model.build(input_shape)?;
    Ok(model)
}

/// The model of a Keras file (`--model`, or the run's own `model.json` when resuming): a
/// trained `.keras` archive keeps its weights (unless `--reinit`), others draw them from
/// `--seed`; its inputs and outputs must fit the data.
fn file_model(file: KerasModel, args: &FitArgs, input_shape: &[usize], classes: usize) -> Result<Model> {
    let path = args.model.as_ref().map_or_else(|| "model.json".into(), |p| p.display().to_string());
    let ferr = |msg: String| Error::file(path.clone(), msg);
    if let Some(shape) = file.input_shape.as_ref().filter(|s| s.as_slice() != input_shape) {
        return Err(ferr(format!(
            "the model takes inputs of shape (N, {}), the data's are (N, {})",
            dims(shape),
            dims(input_shape)
        )));
    }
    let keep = file.trained && !args.reinit;
    let mut model = file.model.seed(args.seed);
    if !keep {
        model.build(input_shape)?;
    }
    let units = model.output_shapes().first().and_then(|s| s.last().copied()).unwrap_or(0);
    if units != classes {
        return Err(ferr(format!(
            "the model's last layer has {units} outputs, the data has {classes} classes (0..{classes}): give it {classes} units"
        )));
    }
    Ok(model)
}

fn dims(shape: &[usize]) -> String {
    shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

/// The run's own model file, or `--model`.
fn model_file(args: &FitArgs) -> Result<Option<KerasModel>> {
    match (&args.resume, &args.model) {
        (Some(dir), _) if dir.join("model.json").exists() => load_keras_model(dir.join("model.json")).map(Some),
        (_, Some(path)) => load_keras_model(path).map(Some),
        _ => Ok(None),
    }
}

/// Whether one of `flags` was given on the command line (a given flag overrides the model
/// file's setting).
fn was_given(given: &[String], flags: &[&str]) -> bool {
    given.iter().any(|g| flags.contains(&g.as_str()))
}

/// The loss: the model file's, unless `--loss` / `--loss-config` are given.
fn choose_loss(args: &FitArgs, given: &[String], compiled: Option<&KerasCompile>) -> Result<Arc<dyn Loss>> {
    let file = compiled.and_then(|c| c.loss.as_ref());
    if let Some(l) = file.filter(|_| !was_given(given, &["--loss", "--loss-config"])) {
        return Ok(l.clone());
    }
    let config: Value = match &args.loss_config {
        Some(t) => {
            serde_json::from_str(t).map_err(|e| Error::Config(format!("--loss-config is not valid JSON: {e}")))?
        }
        None => json!({}),
    };
    Ok(Arc::from(losskit::build(&args.loss, &config)?))
}

/// The compile settings: the model file's optimizer and metrics unless `--optimizer` /
/// `--metrics` are given; `--lr` and `--clipnorm` apply on top; the file's loss weights.
fn choose_compile(
    args: &FitArgs,
    given: &[String],
    compiled: Option<KerasCompile>,
    loss: Arc<dyn Loss>,
) -> Result<Compile> {
    let file_opt = compiled.as_ref().and_then(|c| c.optimizer.clone());
    let mut optimizer = match file_opt.filter(|_| !was_given(given, &["--optimizer"])) {
        // A trained archive's optimizer goes on from its state, unless --reinit.
        Some(mut o) if args.reinit => {
            o.set_state(OptimizerState { iterations: 0, learning_rate: o.learning_rate(), slots: Vec::new() })?;
            o
        }
        Some(o) => o,
        None => Optimizer::parse(&args.optimizer)?,
    };
    if let Some(lr) = args.lr {
        optimizer.set_learning_rate(lr)?;
    }
    if let Some(c) = args.clipnorm {
        optimizer = optimizer.clipnorm(c)?;
    }
    let file_metrics = compiled.as_ref().map(|c| c.metrics.clone());
    let metrics = match file_metrics.filter(|_| !was_given(given, &["--metrics"])) {
        Some(m) => m,
        None => args.metrics.clone(),
    };
    let names: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let mut c = Compile::new().optimizer(optimizer).loss(loss).metrics(&names);
    if let Some(w) = compiled.and_then(|c| c.loss_weights) {
        c = c.loss_weights(&w);
    }
    Ok(c)
}

/// `model.json`: the model in Keras 3's JSON (with its compile_config); `model.keras`: the
/// same with its weights and optimizer state, which `keras.saving.load_model` opens.
fn write_model(dir: &Path, model: &Model) -> Result<()> {
    let text = model.to_json()?;
    losskit_tensor::npy::write_atomic(dir.join("model.json"), |w| w.write_all(text.as_bytes()))?;
    model.save_keras(dir.join("model.keras"))
}

fn class_weights(arg: &str, y: &Tensor, classes: usize) -> Result<BTreeMap<i64, f64>> {
    if arg == "balanced" {
        let v = y.to_vec::<f64>();
        let mut counts = vec![0usize; classes];
        for l in &v {
            counts[*l as usize] += 1;
        }
        return Ok(counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(k, &c)| (k as i64, v.len() as f64 / (classes as f64 * c as f64)))
            .collect());
    }
    let map: BTreeMap<String, f64> = serde_json::from_str(arg).map_err(|e| {
        Error::Config(format!("--class-weight must be \"balanced\" or a JSON map {{\"class\": weight}}: {e}"))
    })?;
    map.into_iter()
        .map(|(k, v)| {
            k.parse::<i64>()
                .map(|k| (k, v))
                .map_err(|_| Error::Config(format!("--class-weight: class {k:?} is not an integer")))
        })
        .collect()
}

fn run_dir(out: &Option<PathBuf>) -> Result<PathBuf> {
    let dir = match out {
        Some(d) => d.clone(),
        None => {
            let base = PathBuf::from("runs").join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string());
            let mut dir = base.clone();
            let mut n = 1;
            while dir.exists() {
                dir = PathBuf::from(format!("{}-{n}", base.display()));
                n += 1;
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display().to_string(), "cannot create", e))?;
    Ok(dir)
}

/// The files and folders `losskit fit` writes into a run folder.
const RUN_FILES: [&str; 9] = [
    "run.json",
    "history.csv",
    "curves.png",
    "curves.svg",
    "model.json",
    "model.keras",
    "model.safetensors",
    "logs",
    "backup",
];

/// Whether `dir` holds a run of `losskit fit` (any of its files).
fn holds_run(dir: &Path) -> bool {
    RUN_FILES.iter().any(|f| dir.join(f).exists())
}

/// Refuses `--out DIR` onto a folder that holds a run, unless `--overwrite` (before anything
/// is read or written).
fn refuse_existing_run(out: Option<&Path>, overwrite: bool) -> Result<()> {
    match out {
        Some(dir) if !overwrite && holds_run(dir) => Err(Error::Config(format!(
            "--out {}: the folder holds a run already; --resume {} continues it, --overwrite replaces it, or choose another --out",
            dir.display(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Removes the temporary files a crashed write left in a run folder (`.NAME.tmp-PID`, beside
/// the file it was to replace: the folder, `backup/`, `logs/train`, `logs/validation`).
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    for sub in ["", "backup", "logs/train", "logs/validation"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.contains(".tmp-") {
                std::fs::remove_file(entry.path())
                    .map_err(|e| Error::io(entry.path().display().to_string(), "cannot remove", e))?;
            }
        }
    }
    Ok(())
}

/// Removes the run files of `dir` (an `--overwrite`): only what `losskit fit` writes.
fn remove_run_files(dir: &Path) -> Result<()> {
    for f in RUN_FILES {
        let path = dir.join(f);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else if path.exists() {
            std::fs::remove_file(&path)
        } else {
            Ok(())
        };
        removed.map_err(|e| Error::io(path.display().to_string(), "cannot remove (--overwrite)", e))?;
    }
    Ok(())
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Config(e.to_string()))?;
    losskit_tensor::npy::write_atomic(path, |w| w.write_all(text.as_bytes()))
}

fn fmt_logs(logs: &BTreeMap<String, f64>) -> String {
    logs.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(" - ")
}

/// `run.json`: the flags a run was started with, for `losskit fit --resume`.
#[derive(Serialize, Deserialize)]
struct RunFile {
    version: u32,
    args: FitArgs,
    spec: Option<RunSpec>,
    /// The path the training steps took and why not each faster one ([`Model::step_path`]),
    /// written when training ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step_path: Option<String>,
    /// The epochs done when the run last finished (`None`: it has not finished yet). Its
    /// last backup is kept, so `--resume RUN --epochs N` with more epochs extends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_epochs: Option<usize>,
}

/// The backup folder inside a run folder.
fn backup_dir(run: &Path) -> PathBuf {
    run.join("backup")
}

/// The flags `--resume` may change: the number of epochs and the verbosity.
const RESUME_FLAGS: [&str; 3] = ["--resume", "--epochs", "--verbose"];

/// The flags of the run in `dir` (its `run.json`), with `--epochs` / `--verbose` taken from
/// `args` when `given`; an error when other flags are given with other values than the run's,
/// or when there is nothing to resume.
fn resumed_args(dir: &Path, args: &FitArgs, given: &[String]) -> Result<(FitArgs, Option<usize>)> {
    let path = dir.join("run.json");
    let ferr = |msg: String| Error::file(path.display().to_string(), msg);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ferr(format!("cannot read (is {} a run folder of `losskit fit`?): {e}", dir.display())))?;
    let file: RunFile = serde_json::from_str(&text).map_err(|e| ferr(format!("not a run file: {e}")))?;
    let mut stored = file.args;
    let requested_then = stored.epochs;
    let (now, then) = (serde_json::to_value(args), serde_json::to_value(&stored));
    let (Ok(now), Ok(then)) = (now, then) else { return Err(ferr("cannot compare the flags".into())) };
    let changed: Vec<&str> = given
        .iter()
        .map(String::as_str)
        .filter(|f| !RESUME_FLAGS.contains(f))
        .filter(|f| {
            let key = f.trim_start_matches("--").replace('-', "_");
            now.get(&key) != then.get(&key)
        })
        .collect();
    if !changed.is_empty() {
        return Err(Error::Config(format!(
            "--resume continues the run with the flags it was started with ({}); only --epochs and --verbose can change, not {}",
            path.display(),
            changed.join(", ")
        )));
    }
    stored.out = Some(dir.to_path_buf());
    stored.resume = args.resume.clone();
    if given.iter().any(|f| f == "--epochs") {
        stored.epochs = args.epochs;
    }
    if given.iter().any(|f| f == "--verbose") {
        stored.verbose = args.verbose;
    }
    let backup = BackupAndRestore::new(backup_dir(dir)).path();
    let ferr = |msg: String| Error::file(dir.display().to_string(), msg);
    match file.finished_epochs {
        Some(done) if done < requested_then => {
            return Err(ferr(format!(
                "this run stopped early (EarlyStopping) after {done} of its {requested_then} epochs: nothing to resume"
            )))
        }
        Some(done) if done >= stored.epochs => {
            return Err(ferr(format!(
                "this run has finished its {done} epochs: `--resume {} --epochs N` with N above {done} extends it",
                dir.display()
            )))
        }
        Some(_) if !backup.exists() => {
            return Err(ferr(format!("the run's last backup ({}) is gone: it cannot be extended", backup.display())))
        }
        None if !backup.exists() && dir.join("model.safetensors").exists() => {
            return Err(ferr(
                "this run has finished (model.safetensors is written, no backup is left): nothing to resume".into(),
            ))
        }
        None if !backup.exists() => eprintln!(
            "note: no backup in {} yet (the run stopped before its first epoch ended): starting it from epoch 1",
            backup.display()
        ),
        _ => {}
    }
    Ok((stored, file.finished_epochs))
}

/// The processes of this run: this one alone, or (built with `--features mpi`, started by
/// `mpirun -np N`) the MPI job's, training data-parallel.
struct Workers {
    #[cfg(feature = "mpi")]
    mpi: losskit_train::distribute::Mpi,
}

impl Workers {
    fn start() -> Result<Workers> {
        Ok(Workers {
            #[cfg(feature = "mpi")]
            mpi: losskit_train::distribute::Mpi::init()?,
        })
    }
    /// The group when there are several workers.
    fn group(&self) -> Option<&dyn Collective> {
        #[cfg(feature = "mpi")]
        if self.mpi.size() > 1 {
            return Some(&self.mpi);
        }
        None
    }
    /// Whether this process prints and writes the run's files (rank 0).
    fn chief(&self) -> bool {
        self.group().is_none_or(|g| g.rank() == 0)
    }
    /// How many processes train.
    fn count(&self) -> usize {
        self.group().map_or(1, |g| g.size())
    }
    /// The run folder: rank 0 chooses (`--out`, or a new `runs/DATE-TIME`) and creates it;
    /// the other workers learn its path from rank 0 (for the backup they all read).
    fn run_dir(&self, out: &Option<PathBuf>) -> Result<PathBuf> {
        let chosen = if self.chief() { Some(run_dir(out)?) } else { None };
        let Some(group) = self.group() else { return Ok(chosen.expect("one process is rank 0")) };
        let text = chosen.as_ref().map(|d| {
            std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()).to_string_lossy().into_owned().into_bytes()
        });
        let mut len = [text.as_ref().map_or(0.0, |t| t.len() as f64)];
        group.broadcast(&mut len, 0)?;
        // Bytes as small integers: exact in f64 whatever the collective does with them.
        let mut bytes: Vec<f64> = text.unwrap_or_default().iter().map(|&b| f64::from(b)).collect();
        bytes.resize(len[0] as usize, 0.0);
        group.broadcast(&mut bytes, 0)?;
        let path = String::from_utf8(bytes.iter().map(|&b| b as u8).collect())
            .map_err(|_| Error::Config("the run folder's path is not UTF-8".into()))?;
        Ok(chosen.unwrap_or_else(|| PathBuf::from(path)))
    }
}

/// A run resumes with as many processes as trained it (its backup says how many): the shards
/// of every batch, and so the dropout draws, depend on the count.
fn check_process_count(dir: &Path, processes: usize) -> Result<()> {
    let Some(backup) = BackupAndRestore::new(backup_dir(dir)).weights()? else { return Ok(()) };
    if backup.workers == processes {
        return Ok(());
    }
    let how = match backup.workers {
        1 => format!("without mpirun: `losskit fit --resume {}`", dir.display()),
        n => format!("with `mpirun -np {n} losskit fit --resume {}`", dir.display()),
    };
    Err(Error::file(
        dir.display().to_string(),
        format!(
            "the run was trained by {} process{}, this is {processes}: resume it {how}",
            backup.workers,
            if backup.workers == 1 { "" } else { "es" }
        ),
    ))
}

/// `losskit fit`; `given` lists the flags given on the command line (for `--resume`). Under
/// `mpirun` (with the `mpi` feature) every process runs it; a failure on one stops all.
pub fn fit(args: &FitArgs, given: &[String]) -> Result<()> {
    let workers = Workers::start()?;
    let result = fit_on(&workers, args, given);
    if let (Err(e), Some(g)) = (&result, workers.group()) {
        g.fail(e);
    }
    result
}

/// The data, the model and its compile settings of a run.
struct Prepared {
    model: Model,
    spec: RunSpec,
    x: Tensor,
    y: Tensor,
    class_weight: Option<BTreeMap<i64, f64>>,
    train_samples: usize,
    /// What `fit` says when it goes on from a trained archive's weights.
    continued: Option<String>,
}

/// The samples of `x` in the model's per-sample `shape` (the same number of values).
fn in_shape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if &x.shape()[1..] == shape {
        return Ok(x.clone());
    }
    let dims: Vec<isize> = std::iter::once(x.shape()[0] as isize).chain(shape.iter().map(|&d| d as isize)).collect();
    x.reshape(&dims)
}

fn prepare(args: &FitArgs, given: &[String], split: &Split, scale: f64) -> Result<Prepared> {
    let train = split.train.shuffled(args.seed)?;
    let classes = classes_of(&train.y)?.max(split.test.as_ref().map(|t| classes_of(&t.y)).transpose()?.unwrap_or(0));
    let data_shape = train.x.shape()[1..].to_vec();
    let file = model_file(args)?;
    // A model whose Input has the data's size in another shape (`(784,)` for 28 × 28 images)
    // gets the data in its shape, as a Keras user reshapes it.
    let input_shape = match file.as_ref().and_then(|f| f.input_shape.clone()) {
        Some(s) if s.iter().product::<usize>() == data_shape.iter().product::<usize>() => s,
        _ => data_shape,
    };
    if let (Some(f), Some(path)) = (&file, &args.model) {
        let flags_say = was_given(given, &["--loss", "--loss-config"]) && was_given(given, &["--optimizer"]);
        if f.compile.is_none() && !flags_say && args.resume.is_none() {
            // Keras refuses to `fit` a model that was never compiled.
            return Err(Error::file(
                path.display().to_string(),
                "the model was saved uncompiled (no compile_config): give --loss and --optimizer, or compile it before saving",
            ));
        }
    }
    let compiled = file.as_ref().and_then(|f| f.compile.clone());
    let loss = choose_loss(args, given, compiled.as_ref())?;
    let one_hot = !is_sparse(loss.as_ref());
    let continued = file.as_ref().filter(|f| f.trained && !args.reinit).map(|f| {
        let steps = f.compile.as_ref().and_then(|c| c.optimizer.as_ref()).map_or(0, Optimizer::iterations);
        format!(
            "Continuing from the trained weights in {} (its optimizer at step {steps}); --reinit draws fresh ones",
            args.model.as_ref().map_or_else(String::new, |p| p.display().to_string())
        )
    });
    let mut model = match file {
        Some(f) => file_model(f, args, &input_shape, classes)?,
        None => flags_model(args, &input_shape, classes, loss.config()["from_logits"] == true)?,
    };
    // The model takes the raw inputs: its own leading Rescaling scales them, or one put first
    // here when the data needs scaling, so that the model files it leaves take raw inputs too.
    let inside = model.input_rescaling();
    if inside.is_none() && scale != 1.0 {
        model = model.prepend(Rescaling::new(scale, 0.0)?)?;
    }
    let spec = RunSpec {
        data: args.data.clone(),
        label_column: args.label_column.clone(),
        input_shape: input_shape.clone(),
        classes,
        scale: 1.0,
        rescaling: inside.or((scale != 1.0).then_some(scale)),
        one_hot,
        loss: losskit::serialize(loss.as_ref()),
        seed: args.seed,
        validation_split: args.validation_split,
    };
    model.compile(choose_compile(args, given, compiled, loss)?)?;
    Ok(Prepared {
        x: in_shape(&train.x, &input_shape)?,
        y: targets(&train.y, classes, one_hot)?,
        class_weight: args.class_weight.as_deref().map(|cw| class_weights(cw, &train.y, classes)).transpose()?,
        train_samples: train.len(),
        model,
        spec,
        continued,
    })
}

/// The data and model files of `args` as absolute paths, so that `run.json` finds them from any
/// working directory (names of built-in datasets stay as they are).
fn absolute_paths(args: &FitArgs) -> FitArgs {
    let mut args = args.clone();
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if Path::new(&args.data).exists() {
        args.data = absolute(Path::new(&args.data)).display().to_string();
    }
    args.model = args.model.as_deref().map(absolute);
    args
}

fn fit_on(workers: &Workers, args: &FitArgs, given: &[String]) -> Result<()> {
    let started = Instant::now();
    let args = &absolute_paths(args);
    let (mut args, finished_before) = match &args.resume {
        Some(dir) => {
            let resumed = resumed_args(dir, args, given)?;
            check_process_count(dir, workers.count())?;
            resumed
        }
        None => (args.clone(), None),
    };
    if !workers.chief() {
        args.verbose = 0;
    }
    // Rank 0 alone: another worker could look after rank 0 has begun writing the run.
    if args.resume.is_none() && workers.chief() {
        refuse_existing_run(args.out.as_deref(), args.overwrite)?;
    }
    let args = &args;
    let (split, scale) = load_data(&args.data, &args.label_column)?;
    let Prepared { mut model, spec, x, y, class_weight, train_samples, continued } =
        prepare(args, given, &split, scale)?;
    let (classes, one_hot, spec_scale) = (spec.classes, spec.one_hot, spec.scale);
    let input_shape = spec.input_shape.clone();
    // Everything is checked: only now does the folder of an --overwrite lose its run's files,
    // and a resumed run its crashed writes' temporary files.
    if let (Some(out), true, true) = (&args.out, args.overwrite, workers.chief()) {
        remove_run_files(out)?;
    }
    if let (Some(out), true, true) = (&args.out, args.resume.is_some(), workers.chief()) {
        remove_stale_temporaries(out)?;
    }
    let run = workers.run_dir(&args.out)?;
    let dir = workers.chief().then(|| run.clone());
    let mut run_file =
        RunFile { version: 1, args: args.clone(), spec: Some(spec), step_path: None, finished_epochs: finished_before };
    if let Some(dir) = &dir {
        write_json(&dir.join("run.json"), &run_file)?;
        write_model(dir, &model)?;
    }
    if args.verbose > 0 {
        print!("{}", model.summary());
        if let Some(c) = &continued {
            println!("{c}");
        }
        let n_val = (train_samples as f64 * args.validation_split).ceil() as usize;
        println!(
            "Training on {} samples of {}, validating on {} (seed {})",
            train_samples - n_val,
            args.data,
            n_val,
            args.seed
        );
        if let Some(g) = workers.group() {
            println!(
                "Data-parallel on {} MPI processes: each global batch of {} split across them",
                g.size(),
                args.batch_size
            );
        }
    }
    let history = train(&mut model, &x, &y, class_weight, args, &run, workers.group())?;
    let Some(dir) = dir else { return Ok(()) };
    run_file.step_path = model.step_path().map(ToString::to_string);
    run_file.finished_epochs = Some(history.epochs.len());
    write_json(&dir.join("run.json"), &run_file)?;
    model.save_weights(dir.join("model.safetensors"))?;
    write_model(&dir, &model)?;
    let test = match &split.test {
        Some(t) => {
            let tx = in_shape(&t.x.mul_scalar(spec_scale)?, &input_shape)?;
            let ty = targets(&t.y, classes, one_hot)?;
            Some((model.evaluate(&tx, &ty, 256, None)?, t.len()))
        }
        None => None,
    };
    summary(&history, test.as_ref(), &dir, args, started.elapsed().as_secs_f64());
    Ok(())
}

/// `fit` with the run's callbacks: the files (rank 0 only, into the run folder `run`), early
/// stopping, the learning-rate plateau, and the backup (every process: rank 0 writes it, all
/// read it on resume).
fn train(
    model: &mut Model,
    x: &Tensor,
    y: &Tensor,
    class_weight: Option<BTreeMap<i64, f64>>,
    args: &FitArgs,
    run: &Path,
    group: Option<&dyn Collective>,
) -> Result<History> {
    let chief = group.is_none_or(|g| g.rank() == 0);
    let mut csv = CsvLogger::new(run.join("history.csv"));
    let mut tb = TensorBoard::new(run.join("logs"));
    let mut plots = PlotLearningCurves::new(run);
    // Kept when the run ends, so that `--resume RUN --epochs N` can extend it.
    let mut backup = BackupAndRestore::new(backup_dir(run)).delete_checkpoint(false);
    let mut fit = Fit::new()
        .epochs(args.epochs)
        .batch_size(args.batch_size)
        .validation_split(args.validation_split)
        .seed(args.seed)
        .verbose(args.verbose);
    if let Some(cw) = class_weight {
        fit = fit.class_weight(cw);
    }
    if let Some(g) = group {
        fit = fit.distribute(g);
    }
    let mut early =
        args.early_stopping.map(|p| EarlyStopping::new(&args.monitor).patience(p).restore_best_weights(true));
    let mut plateau =
        args.reduce_lr_on_plateau.map(|p| ReduceLROnPlateau::new(&args.monitor).map(|r| r.patience(p))).transpose()?;
    if chief {
        fit = fit.callback(&mut csv).callback(&mut tb);
    }
    if let Some(e) = early.as_mut() {
        fit = fit.callback(e);
    }
    if let Some(r) = plateau.as_mut() {
        fit = fit.callback(r);
    }
    if chief && !args.no_plots {
        fit = fit.callback(&mut plots);
    }
    // Last, so that its backup records every other callback's end-of-epoch state.
    fit = fit.callback(&mut backup);
    model.fit(x, y, fit).map_err(|e| match (&e, model.last_diagnosis()) {
        // The NaN guard's report with advice in this command's flags.
        (Error::NonFinite { .. }, Some(d)) => Error::NonFinite { op: "fit".into(), diagnosis: d.for_cli().to_string() },
        _ => e,
    })
}

fn summary(history: &History, test: Option<&(BTreeMap<String, f64>, usize)>, dir: &Path, args: &FitArgs, secs: f64) {
    let last: BTreeMap<String, f64> =
        history.history.iter().filter_map(|(k, v)| v.last().map(|x| (k.clone(), *x))).collect();
    println!("\nFinished {} epochs in {secs:.1}s", history.epochs.len());
    println!("  final: {}", fmt_logs(&last));
    let (key, better): (&str, fn(f64, f64) -> bool) =
        if history.get("val_accuracy").is_some() { ("val_accuracy", |a, b| a > b) } else { ("val_loss", |a, b| a < b) };
    if let Some(vals) = history.get(key) {
        if let Some((i, v)) = vals.iter().enumerate().fold(None, |best: Option<(usize, f64)>, (i, &v)| match best {
            Some((_, b)) if !better(v, b) => best,
            _ => Some((i, v)),
        }) {
            println!("  best {key}: {v:.4} at epoch {}", history.epochs[i] + 1);
        }
    }
    if let Some((logs, n)) = test {
        println!("  test ({n} samples): {}", fmt_logs(logs));
    }
    println!("Files in {}/:", dir.display());
    let mut files = vec![
        "history.csv",
        "logs/ (TensorBoard: train/, validation/)",
        "model.safetensors",
        "model.json (Keras 3 JSON)",
        "model.keras (Keras 3 archive with the weights: keras.saving.load_model)",
        "run.json",
    ];
    if !args.no_plots {
        files.insert(1, "curves.png, curves.svg");
    }
    for f in files {
        println!("  {f}");
    }
}

/// A run folder's facts (`run.json`) and its model (`model.json`, `model.safetensors`).
fn load_run(dir: &Path) -> Result<(RunSpec, Model)> {
    let path = dir.join("run.json");
    let ferr = |msg: String| Error::file(path.display().to_string(), msg);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ferr(format!(
            "cannot read ({e}): {} is not a run folder of `losskit fit`, which holds run.json, model.json, model.keras and model.safetensors once finished, or backup/ while training (or give a .keras archive)",
            dir.display()
        ))
    })?;
    let file: RunFile = serde_json::from_str(&text).map_err(|e| ferr(format!("not a run file: {e}")))?;
    let spec =
        file.spec.ok_or_else(|| ferr("the run's facts are missing (it stopped before training began)".into()))?;
    let mut model = load_keras_model(dir.join("model.json"))?.model;
    model.build(&spec.input_shape)?;
    let finished = dir.join("model.safetensors");
    if finished.exists() {
        model.load_weights(finished)?;
        return Ok((spec, model));
    }
    // A killed run: the weights of its last backup.
    match BackupAndRestore::new(backup_dir(dir)).weights()? {
        Some(losskit_train::BackupWeights { weights, epoch, batch, .. }) => {
            let values: Vec<Tensor> = weights.into_iter().map(|(_, t)| t).collect();
            model.set_weights(&values)?;
            let at = if batch == 0 { format!("after epoch {epoch}") } else { format!("in epoch {}, batch {batch}", epoch + 1) };
            eprintln!(
                "note: {} did not finish (no model.safetensors): using the weights of its last backup, taken {at}",
                dir.display()
            );
            Ok((spec, model))
        }
        None => Err(Error::file(
            dir.display().to_string(),
            "the run has no weights yet: it stopped before its first backup (no model.safetensors, no backup/backup.safetensors)",
        )),
    }
}

/// Where `evaluate` and `predict` found their model.
enum Source {
    /// A run folder of `losskit fit`.
    Run,
    /// A `.keras` archive, with its compile settings when it was saved compiled.
    Archive(Option<Box<Compile>>),
}

/// What `evaluate` and `predict` run: a run folder's model and facts, or a `.keras`
/// archive's model (its weights, compiled as saved) with the facts its file and `--data` give.
fn load_model_arg(path: &Path, data: Option<&str>) -> Result<(RunSpec, Model, Source)> {
    if path.is_dir() || path.extension().is_none_or(|e| e != "keras") {
        let (spec, model) = load_run(path)?;
        return Ok((spec, model, Source::Run));
    }
    let ferr = |msg: String| Error::file(path.display().to_string(), msg);
    let keras = load_keras_model(path)?;
    if !keras.trained {
        return Err(ferr("the archive has no weights (model.weights.h5)".into()));
    }
    let input_shape = keras.input_shape.clone().unwrap_or_default();
    let classes = keras.model.output_shapes().first().and_then(|s| s.last().copied()).unwrap_or(0);
    let loss = keras.compile.as_ref().and_then(|c| c.loss.clone());
    // A model that rescales its inputs itself takes the data raw; others as `fit` scales it.
    let rescaling = keras.model.input_rescaling();
    let (scale, data) = match data {
        Some(d) if rescaling.is_none() => (load_data(d, &None)?.1, d.to_string()),
        Some(d) => (1.0, d.to_string()),
        None => (1.0, String::new()),
    };
    let spec = RunSpec {
        data,
        label_column: None,
        input_shape,
        classes,
        scale,
        rescaling,
        one_hot: loss.as_ref().is_some_and(|l| !is_sparse(l.as_ref())),
        loss: loss.as_ref().map_or(Value::Null, |l| losskit::serialize(l.as_ref())),
        seed: 0,
        validation_split: 0.0,
    };
    Ok((spec, keras.model, Source::Archive(keras.compile.map(|c| Box::new(c.to_compile())))))
}

/// `model.evaluate`, split across the MPI processes when there are several.
fn evaluate_on(workers: &Workers, model: &mut Model, x: &Tensor, y: &Tensor) -> Result<BTreeMap<String, f64>> {
    match workers.group() {
        Some(g) => model.evaluate_distributed(x, y, 256, None, g),
        None => model.evaluate(x, y, 256, None),
    }
}

/// `losskit evaluate`.
pub fn evaluate(args: &EvaluateArgs) -> Result<()> {
    let workers = Workers::start()?;
    let (spec, mut model, source) = load_model_arg(&args.model, args.data.as_deref())?;
    let archive = matches!(source, Source::Archive(_));
    if archive && args.data.is_none() {
        return Err(Error::Config(format!(
            "evaluate --model {}: a .keras archive does not record its data: give --data",
            args.model.display()
        )));
    }
    let data = args.data.clone().unwrap_or_else(|| spec.data.clone());
    let (split, _) = load_data(&data, &spec.label_column)?;
    let (set, on): (Dataset, &str) = match split.test {
        Some(t) => (t, "test"),
        None if archive => (split.train, "all"),
        None => {
            // The samples `fit` held out: the same seeded shuffle, the last fraction.
            let all = split.train.shuffled(spec.seed)?;
            let n = all.len();
            let start = (n as f64 * (1.0 - spec.validation_split)).floor() as usize;
            let idx: Vec<usize> = (start..n).collect();
            (Dataset { x: all.x.gather(0, &idx)?, y: all.y.gather(0, &idx)? }, "validation")
        }
    };
    let compile = match source {
        Source::Archive(Some(c)) => *c,
        Source::Archive(None) => {
            return Err(Error::file(
                args.model.display().to_string(),
                "the model was saved uncompiled: evaluate needs its loss (compile it before saving)",
            ))
        }
        Source::Run => Compile::new().optimizer("sgd").loss(losskit::from_config(&spec.loss)?).metrics(&["accuracy"]),
    };
    model.compile(compile)?;
    let x = in_shape(&set.x.mul_scalar(spec.scale)?, &spec.input_shape)?;
    let y = targets(&set.y, spec.classes, spec.one_hot)?;
    let mut logs: BTreeMap<String, Value> =
        evaluate_on(&workers, &mut model, &x, &y)?.into_iter().map(|(k, v)| (k, json!(v))).collect();
    logs.insert("samples".into(), json!(set.len()));
    logs.insert("on".into(), json!(on));
    if workers.chief() {
        println!("{}", serde_json::to_string(&logs).map_err(|e| Error::Config(e.to_string()))?);
    }
    Ok(())
}

/// A warning when `predict`'s raw inputs look already scaled: every value in [0, 1] for a model
/// that scales its inputs itself (by `scale` < 1, e.g. 1/255).
fn already_scaled(x: &Tensor, scale: f64) -> Option<String> {
    if scale >= 1.0 || x.numel() == 0 {
        return None;
    }
    let max = x.max_abs();
    (max <= 1.0).then(|| {
        format!(
            "the inputs are all within [0, 1], but the model multiplies raw inputs by {} itself (as in training): pass the raw values (0 to {:.0}), not scaled ones",
            losskit_train::human_number(scale),
            1.0 / scale
        )
    })
}

/// `losskit predict`.
pub fn predict(args: &PredictArgs) -> Result<()> {
    let (spec, mut model, _) = load_model_arg(&args.model, None)?;
    let (x, _) = losskit_tensor::npy::read_npy(&args.input)?;
    let size = |s: &[usize]| s.iter().product::<usize>();
    if x.rank() == 0 || size(&x.shape()[1..]) != size(&spec.input_shape) {
        return Err(Error::Shape {
            op: "predict".into(),
            msg: format!("inputs of shape {:?} do not fit the model's (N, {:?})", x.shape(), spec.input_shape),
        });
    }
    // The model multiplies the inputs by this (its Rescaling, or the run's scale before it).
    let raw_scale = spec.rescaling.unwrap_or(1.0) * spec.scale;
    if let Some(w) = already_scaled(&x, raw_scale) {
        if !args.force {
            return Err(Error::Value { op: "predict".into(), msg: format!("{w} (--force predicts anyway)") });
        }
        eprintln!("warning: {w}");
    }
    let x = in_shape(&x.to_dtype(losskit::DType::F32).mul_scalar(spec.scale)?, &spec.input_shape)?;
    let workers = Workers::start()?;
    let probs = match workers.group() {
        Some(g) => model.predict_distributed(&x, 256, g)?.remove(0),
        None => model.predict(&x, 256)?.remove(0),
    };
    if !workers.chief() {
        return Ok(());
    }
    match &args.output {
        Some(path) => {
            losskit_tensor::npy::write_npy(path, &probs)?;
            println!("{}", json!({"written": path.display().to_string(), "shape": probs.shape()}));
        }
        None => {
            let v = probs.to_vec::<f32>();
            let classes: Vec<usize> = v
                .chunks(spec.classes.max(1))
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
                        .0
                })
                .collect();
            println!("{}", json!({ "classes": classes }));
        }
    }
    Ok(())
}

/// `losskit plot`.
pub fn plot(args: &PlotArgs) -> Result<()> {
    let history = History::from_csv(&args.history)?;
    let ext = args.output.extension().and_then(|e| e.to_str()).map(str::to_lowercase);
    let panels = match ext.as_deref() {
        Some("png") => plot_history(&history, Some(&args.output), None)?,
        Some("svg") => plot_history(&history, None, Some(&args.output))?,
        _ => return Err(Error::file(args.output.display().to_string(), "the output must end in .png or .svg")),
    };
    println!("{}", json!({"written": args.output.display().to_string(), "panels": panels}));
    Ok(())
}
