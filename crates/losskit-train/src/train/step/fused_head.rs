//! The fused linear + cross-entropy head: the last Dense layer and a sparse cross-entropy
//! from logits in one node, the logits never computed.

use crate::compile::Compiled;
use crate::layers::builtin;
use crate::model::Model;
use losskit::{Error, LinearCrossEntropy, Reduction, Result, Tensor};

/// The fused loss for the last layer, when [`Compile::fused_head`](crate::Compile::fused_head)
/// and the model allow it (`Err` with the reason when it was required and is not possible).
pub(crate) fn fused_head(model: &Model) -> Result<Option<LinearCrossEntropy>> {
    let compiled = model.compiled.as_ref().expect("checked");
    if compiled.fused_head == Some(false) {
        return Ok(None);
    }
    let fused = fusable(model, compiled);
    match (fused, compiled.fused_head) {
        (Ok(l), _) => Ok(Some(l)),
        (Err(why), Some(true)) => Err(Error::Config(format!("compile: fused_head(Some(true)) but {why}"))),
        (Err(_), _) => Ok(None),
    }
}

/// Why the steps do not run through the fused head (`None`: they do).
pub(crate) fn why_not_fused(model: &Model) -> Option<String> {
    let compiled = model.compiled.as_ref().expect("checked");
    if compiled.fused_head == Some(false) {
        return Some("off (Compile::fused_head(Some(false)))".into());
    }
    fusable(model, compiled).err()
}

/// The fused loss equal to the compiled one, or why there is none.
pub(crate) fn fusable(model: &Model, compiled: &Compiled) -> std::result::Result<LinearCrossEntropy, String> {
    if !model.heads.is_empty() || compiled.losses.len() != 1 {
        return Err("the model has several outputs".into());
    }
    if !compiled.metric_names.is_empty() {
        return Err("metrics need the logits".into());
    }
    if model.trunk.last().and_then(|l| builtin(l.as_ref())).and_then(|l| l.linear_head()).is_none() {
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
            Ok(LinearCrossEntropy::new().with_reduction(reduction).with_ignore_index(config["ignore_class"].as_i64()))
        }
        other => Err(format!("the loss is {other}, not a sparse cross-entropy from logits")),
    }
}

/// The loss through the fused last layer: the trunk up to it, then the loss of its kernel
/// and bias against the labels in one node (the outputs are never computed).
pub(crate) fn fused_loss(
    model: &mut Model,
    fused: &LinearCrossEntropy,
    xb: &Tensor,
    yb: &[Tensor],
    wb: Option<&Tensor>,
    training: bool,
) -> Result<Tensor> {
    model.ensure_built(xb)?;
    let mut h = xb.to_dtype(model.dtype);
    let (last, rest) = model.trunk.split_last().expect("fusable: a last layer");
    for layer in rest {
        h = layer.forward(&h, training, &mut model.rng)?;
    }
    let (kernel, bias) = builtin(last.as_ref()).and_then(|l| l.linear_head()).expect("fusable: a linear Dense");
    // Keras' labels may carry a trailing axis of 1: (B, 1) for (B,) tokens.
    let tokens = &h.shape()[..h.rank() - 1];
    let labels = if yb[0].shape() != tokens && yb[0].numel() == tokens.iter().product::<usize>() {
        yb[0].reshape(&tokens.iter().map(|&d| d as isize).collect::<Vec<_>>())?
    } else {
        yb[0].clone()
    };
    fused.forward_dense(&h, kernel, bias, &labels, wb)
}
