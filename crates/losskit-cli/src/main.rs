//! `losskit`: train the seed's model (`fit`), evaluate and predict with a saved run, plot a
//! history, list the losses, and compute a loss and its gradient from `.npy` files.

mod bench;
mod bench_composed;
mod bench_linear_ce;
mod compute;
mod run;
mod timing;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "losskit",
    version,
    about = "Keras 3 losses in Rust: train with them, list them, compute them and their gradients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trains the seed's model (Flatten, Dense relu, Dropout, Dense softmax) and writes a run folder.
    Fit(Box<FitArgs>),
    /// Evaluates a saved run on its dataset's test set (or held-out validation samples).
    Evaluate(EvaluateArgs),
    /// Predicts class probabilities for inputs in an .npy file with a saved run.
    Predict(PredictArgs),
    /// Draws learning curves from a history.csv (PNG or SVG by the output's extension).
    Plot(PlotArgs),
    /// Lists every loss with its class name, aliases and a one-line description.
    List,
    /// Times each fused loss kernel (value + gradient) against the composed tensor-op path and a
    /// STREAM triad, in the same run.
    Bench(BenchArgs),
    /// Computes a loss (and optionally its gradient) from .npy files; prints {"loss": V}.
    Compute(ComputeArgs),
}

/// `losskit fit` arguments (kept in the run folder's `run.json` for `--resume`).
#[derive(clap::Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FitArgs {
    /// digits (embedded), fashion-mnist, mnist, or a PATH: a folder of IDX files, an .npz, a .csv.
    #[arg(long, default_value = "digits")]
    pub data: String,
    /// The label column of a CSV: an index or a header name (default: the last column).
    #[arg(long)]
    pub label_column: Option<String>,
    /// The loss: a Keras name or alias.
    #[arg(long, default_value = "sparse_categorical_crossentropy")]
    pub loss: String,
    /// Keras constructor keys of the loss, as JSON: '{"label_smoothing": 0.1}'.
    #[arg(long)]
    pub loss_config: Option<String>,
    /// sgd, adam, adamw, rmsprop, adagrad, adamax, lion, lamb, ftrl, adadelta, nadam or adafactor.
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,
    /// Learning rate (default: the optimizer's Keras default, 0.01 for SGD, 0.001 for Adam).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Epochs.
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// The fraction of the (shuffled) training samples held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub validation_split: f64,
    /// "balanced" (n / (classes · count)) or a JSON map {"class": weight}.
    #[arg(long)]
    pub class_weight: Option<String>,
    /// Clip each gradient to this L2 norm.
    #[arg(long)]
    pub clipnorm: Option<f64>,
    /// A Keras 3 model file: `model.to_json()` output or a `.keras` archive (a Sequential of
    /// InputLayer, Flatten, Reshape, Rescaling, Dense, Dropout, Activation). Its compile_config (loss, optimizer,
    /// learning rate, metrics, loss weights) is used unless --loss, --optimizer, --lr,
    /// --clipnorm or --metrics are given; --hidden, --layers and --dropout do not apply.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// With a trained `.keras` archive as --model: draw fresh weights from --seed (and start
    /// the optimizer afresh) instead of continuing from the archive's weights and optimizer
    /// state.
    #[arg(long)]
    #[serde(default)]
    pub reinit: bool,
    /// Units of the hidden Dense layer.
    #[arg(long, default_value_t = 512)]
    pub hidden: usize,
    /// Several hidden Dense layers (relu, each followed by the dropout): `--layers 512,256`.
    /// Overrides --hidden.
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// Metrics to log, comma-separated Keras names (`accuracy`, `mae`, ...).
    #[arg(long, value_delimiter = ',', default_value = "accuracy")]
    pub metrics: Vec<String>,
    /// Stop when --monitor has not improved for this many epochs, restoring the best weights
    /// (Keras' EarlyStopping(patience=..., restore_best_weights=True)).
    #[arg(long, value_name = "PATIENCE")]
    pub early_stopping: Option<usize>,
    /// Divide the learning rate by 10 when --monitor has not improved for this many epochs
    /// (Keras' ReduceLROnPlateau(patience=...)).
    #[arg(long, value_name = "PATIENCE")]
    pub reduce_lr_on_plateau: Option<usize>,
    /// The quantity --early-stopping and --reduce-lr-on-plateau watch.
    #[arg(long, default_value = "val_loss")]
    pub monitor: String,
    /// Dropout rate after the hidden layer.
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f64,
    /// Seed of the weights, the dropout, the data shuffle and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The run folder (default runs/<timestamp>). A folder that holds a run already is refused
    /// unless --overwrite (or --resume to continue it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the run in --out (its files are removed once this command's flags, data and
    /// model have been checked), as Keras' `overwrite=True`.
    #[arg(long)]
    #[serde(default, skip)]
    pub overwrite: bool,
    /// Do not draw curves.png / curves.svg.
    #[arg(long)]
    pub no_plots: bool,
    /// 0 silent, 1 progress bar, 2 one line per epoch.
    #[arg(long, default_value_t = 1)]
    pub verbose: u8,
    /// Continue the run in RUN_DIR (killed or stopped) from its last backup, with the flags it
    /// was started with (read from RUN_DIR/run.json); only --epochs and --verbose may be given
    /// again.
    #[arg(long, value_name = "RUN_DIR")]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
}

/// `losskit evaluate` arguments.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// The run folder written by `losskit fit`, or a `.keras` archive (trained and compiled:
    /// its loss and metrics are used; give --data).
    #[arg(long)]
    pub model: PathBuf,
    /// Another dataset than the run's (same forms as `fit --data`; needed for a `.keras`
    /// archive, whose inputs are scaled as `fit` scales that data).
    #[arg(long)]
    pub data: Option<String>,
}

/// `losskit predict` arguments.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// The run folder written by `losskit fit`, or a `.keras` archive.
    #[arg(long)]
    pub model: PathBuf,
    /// Inputs (.npy), shaped like the training inputs (N, ...): for a run folder raw
    /// (unscaled) values, which the run's scale brings to what the model trained on; for a
    /// `.keras` archive the values the model takes, as Keras' `model.predict`.
    #[arg(long)]
    pub input: PathBuf,
    /// Writes the model's outputs (N, classes) here as .npy: class probabilities, or logits for
    /// a model whose loss takes logits (`from_logits`); without it the predicted classes are
    /// printed as JSON.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Predict even when the inputs look already scaled (all within [0, 1] for a model that
    /// scales raw inputs itself), which is refused otherwise.
    #[arg(long)]
    pub force: bool,
}

/// `losskit plot` arguments.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// A history.csv (an `epoch` column, one column per metric).
    pub history: PathBuf,
    /// The image to write: .png or .svg.
    #[arg(short, long, default_value = "curves.png")]
    pub output: PathBuf,
}

/// `losskit bench` arguments.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// One JSON object per workload instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Timed runs per workload (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Only the workloads whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Skip the composed tensor-op path (slow on the big shapes).
    #[arg(long)]
    pub no_composed: bool,
    /// Time the losses that go through the tape instead (custom closures, Dice, Tversky,
    /// SmoothL1Loss, CrossEntropyLoss), with the minor page faults per call.
    #[arg(long)]
    pub composed: bool,
}

/// `losskit compute` arguments.
#[derive(clap::Args)]
pub struct ComputeArgs {
    /// A Keras class name or alias: MeanSquaredError, mse, huber, ...
    loss: String,
    /// Targets (.npy of float32, float64, int32, int64 or uint8).
    #[arg(long)]
    y_true: PathBuf,
    /// Predictions (.npy of float32, float64, int32, int64 or uint8; integers are read as float32).
    #[arg(long)]
    y_pred: PathBuf,
    /// Per-sample weights (.npy), broadcast as Keras does.
    #[arg(long)]
    sample_weight: Option<PathBuf>,
    /// A JSON object of Keras constructor keys, e.g. '{"delta": 0.5}'.
    #[arg(long)]
    config: Option<String>,
    /// The reduction, overriding the config's: Keras names (none, sum, sum_over_batch_size, mean,
    /// mean_with_sample_weight) or, for the PyTorch losses, PyTorch's (none, mean, sum).
    #[arg(long)]
    reduction: Option<String>,
    /// Writes d(sum of the output)/d(y_pred) here as .npy, in y_pred's dtype.
    #[arg(long)]
    grad_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The main thread does its share of every parallel region instead of waiting for the
    // pool's threads to wake (~15% of a batch-32 epoch of the seed's model on Fashion-MNIST,
    // on two cores; the results are the same bits).
    if let Err(e) = losskit_train::use_calling_thread(None) {
        eprintln!("losskit: error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Fit(args) => run::fit(&args, &given_flags("fit", &matches)),
        Command::Evaluate(args) => run::evaluate(&args),
        Command::Predict(args) => run::predict(&args),
        Command::Plot(args) => run::plot(&args),
        Command::Bench(args) if args.composed => bench_composed::bench_composed(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::List => {
            list();
            Ok(())
        }
        Command::Compute(args) => compute::compute(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("losskit: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The flags of subcommand `name` given on the command line (not defaulted), as `--flag-name`.
fn given_flags(name: &str, matches: &clap::ArgMatches) -> Vec<String> {
    let (Some(command), Some(m)) = (Cli::command().find_subcommand(name).cloned(), matches.subcommand_matches(name))
    else {
        return Vec::new();
    };
    command
        .get_arguments()
        .filter(|a| m.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

fn list() {
    let mut family = None;
    for info in losskit::list() {
        if family != Some(info.family) {
            println!("{}{}:", if family.is_some() { "\n" } else { "" }, info.family);
            family = Some(info.family);
        }
        println!("  {:<36} {:<54} {}", info.class_name, info.aliases.join(", "), info.description);
    }
}
