//! candle-nn's loss functions under their own names, argument order `(inp, target)` and
//! defaults, computed by losskit: a drop-in for `candle_nn::loss::*`.
//!
//! Each is the mean over the batch, as candle-nn's: `cross_entropy(logits (N, C), labels (N,))`,
//! `nll(log_probs (N, C), labels (N,))`, `mse(inp, target)` (mean of the squared differences),
//! `binary_cross_entropy_with_logit(logits, targets)` and `huber(inp, target, delta)` (means
//! over every element). Gradients flow to `inp` through candle's autodiff; a `target` that
//! candle tracks while `inp` is not is refused (the arguments are almost surely swapped).

use crate::{CandleLoss, Result};
use candle_core::Tensor;
use serde_json::json;
use std::sync::OnceLock;

/// The loss a Keras config describes, built once.
fn cached(cell: &'static OnceLock<CandleLoss>, config: fn() -> serde_json::Value) -> Result<&'static CandleLoss> {
    if let Some(loss) = cell.get() {
        return Ok(loss);
    }
    let loss = crate::from_config(&config())?;
    Ok(cell.get_or_init(|| loss))
}

/// candle-nn's `cross_entropy`: softmax cross-entropy of `inp` logits `(N, C)` against class
/// indices `target (N,)` (any integer dtype), the mean over the batch. Keras'
/// `SparseCategoricalCrossentropy(from_logits=True)`.
pub fn cross_entropy(inp: &Tensor, target: &Tensor) -> Result<Tensor> {
    static LOSS: OnceLock<CandleLoss> = OnceLock::new();
    cached(&LOSS, || json!({"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}}))?
        .forward(target, inp, None)
}

/// candle-nn's `nll`: `-mean(inp[i, target[i]])` for log-probabilities `inp (N, C)` and class
/// indices `target (N,)`. PyTorch's `NLLLoss`.
pub fn nll(inp: &Tensor, target: &Tensor) -> Result<Tensor> {
    static LOSS: OnceLock<CandleLoss> = OnceLock::new();
    cached(&LOSS, || json!({"class_name": "NLLLoss", "config": {}}))?.forward(target, inp, None)
}

/// candle-nn's `mse`: `mean((inp - target)²)` over every element. Keras' `MeanSquaredError`.
pub fn mse(inp: &Tensor, target: &Tensor) -> Result<Tensor> {
    static LOSS: OnceLock<CandleLoss> = OnceLock::new();
    cached(&LOSS, || json!({"class_name": "MeanSquaredError", "config": {}}))?.forward(target, inp, None)
}

/// candle-nn's `binary_cross_entropy_with_logit`: the mean binary cross-entropy of `sigmoid(inp)`
/// against `target` in [0, 1] over every element. Keras' `BinaryCrossentropy(from_logits=True)`.
pub fn binary_cross_entropy_with_logit(inp: &Tensor, target: &Tensor) -> Result<Tensor> {
    static LOSS: OnceLock<CandleLoss> = OnceLock::new();
    cached(&LOSS, || json!({"class_name": "BinaryCrossentropy", "config": {"from_logits": true}}))?
        .forward(target, inp, None)
}

/// candle-nn's `huber`: per element `½d²` for `|d| < delta`, else `delta·(|d| − ½delta)`, with
/// `d = inp − target`, the mean over every element. Keras' `Huber(delta)`.
pub fn huber(inp: &Tensor, target: &Tensor, delta: f64) -> Result<Tensor> {
    crate::from_config(&json!({"class_name": "Huber", "config": {"delta": delta}}))?.forward(target, inp, None)
}
