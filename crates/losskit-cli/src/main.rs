//! `losskit`: list the losses, and compute a loss and its gradient from `.npy` files.

use clap::{Parser, Subcommand};
use losskit::{DType, Loss, Tensor};
use losskit_tensor::npy::{read_npy, write_npy, NpyDType};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "losskit", version, about = "Keras 3 losses in Rust: list them, compute them and their gradients")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists every loss with its class name, aliases and a one-line description.
    List,
    /// Computes a loss (and optionally its gradient) from .npy files; prints {"loss": V}.
    Compute(ComputeArgs),
}

#[derive(clap::Args)]
struct ComputeArgs {
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
    /// none, sum, sum_over_batch_size, mean or mean_with_sample_weight (overrides the config's).
    #[arg(long)]
    reduction: Option<String>,
    /// Writes d(sum of the output)/d(y_pred) here as .npy, in y_pred's dtype.
    #[arg(long)]
    grad_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => {
            list();
            Ok(())
        }
        Command::Compute(args) => compute(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("losskit: error: {e}");
            ExitCode::from(2)
        }
    }
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

/// A JSON number for one value: f32 values print as their shortest f32 decimal
/// (`0.058333334`, not `0.05833333358168602`); non-finite values as `"NaN"`/`"Infinity"`.
fn json_number(v: f64, dtype: DType) -> Value {
    if v.is_nan() {
        return json!("NaN");
    }
    if v.is_infinite() {
        return json!(if v > 0.0 { "Infinity" } else { "-Infinity" });
    }
    let v = match dtype {
        DType::F32 => (v as f32).to_string().parse::<f64>().unwrap_or(v),
        DType::F64 => v,
    };
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn tensor_json(t: &Tensor) -> Value {
    fn nest(values: &[f64], shape: &[usize], dtype: DType) -> Value {
        match shape.split_first() {
            None => json_number(values[0], dtype),
            Some((&n, rest)) => {
                let step: usize = rest.iter().product();
                Value::Array((0..n).map(|i| nest(&values[i * step..(i + 1) * step], rest, dtype)).collect())
            }
        }
    }
    nest(&t.to_vec::<f64>(), t.shape(), t.dtype())
}

fn compute(args: &ComputeArgs) -> losskit::Result<()> {
    let mut config = match &args.config {
        None => json!({}),
        Some(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| losskit::Error::Config(format!("--config is not valid JSON: {e}")))?,
    };
    if !config.is_object() {
        return Err(losskit::Error::Config(format!("--config must be a JSON object, got {config}")));
    }
    if let Some(r) = &args.reduction {
        losskit::Reduction::parse(r)?;
        config["reduction"] = json!(r);
    }
    let loss: Box<dyn Loss> = losskit::build(&args.loss, &config)?;
    let (y_pred, pred_dtype) = read_npy(&args.y_pred)?;
    let y_pred = match pred_dtype {
        NpyDType::I32 | NpyDType::I64 | NpyDType::U8 => y_pred.to_dtype(DType::F32),
        NpyDType::F32 | NpyDType::F64 => y_pred,
    };
    let dtype = y_pred.dtype();
    let (y_true, _) = read_npy(&args.y_true)?;
    let weight = match &args.sample_weight {
        Some(p) => Some(read_npy(p)?.0.to_dtype(dtype)),
        None => None,
    };
    let y_pred = if args.grad_out.is_some() { y_pred.requires_grad() } else { y_pred };
    let out = loss.call(&y_true.to_dtype(dtype), &y_pred, weight.as_ref())?;
    if let Some(path) = &args.grad_out {
        let grads = out.sum_all().backward()?;
        let g = grads.get(&y_pred).cloned().unwrap_or_else(|| y_pred.zeros_like());
        write_npy(path, &g)?;
    }
    println!("{}", json!({ "loss": tensor_json(&out) }));
    Ok(())
}
