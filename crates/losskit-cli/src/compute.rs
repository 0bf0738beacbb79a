//! `losskit compute`: a loss and its gradient from .npy files.

use crate::ComputeArgs;
use losskit::{DType, Loss, Tensor};
use losskit_tensor::npy::{read_npy, write_npy, NpyDType};
use serde_json::{json, Value};

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

pub(crate) fn tensor_json(t: &Tensor) -> Value {
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

pub(crate) fn compute(args: &ComputeArgs) -> losskit::Result<()> {
    let mut config = match &args.config {
        None => json!({}),
        Some(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| losskit::Error::Config(format!("--config is not valid JSON: {e}")))?,
    };
    if !config.is_object() {
        return Err(losskit::Error::Config(format!("--config must be a JSON object, got {config}")));
    }
    if let Some(r) = &args.reduction {
        // Checked by the loss itself (Keras names, or PyTorch's for the PyTorch losses).
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
