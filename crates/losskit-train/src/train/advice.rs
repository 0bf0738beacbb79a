//! The "cannot learn" warning: an epoch whose loss or accuracy shows the learning rate is too
//! high.

use crate::callbacks::Logs;
use crate::model::Model;
use crate::nan;

/// Keeps (in [`Model::warnings`]) and prints (when verbose) [`Model::cannot_learn`]'s
/// warning, once per `fit`.
pub(crate) fn warn_if_cannot_learn(model: &mut Model, logs: &Logs, verbose: u8) {
    const TAG: &str = "is probably too high";
    if model.warnings.iter().any(|w| w.contains(TAG)) {
        return;
    }
    if let Some(w) = cannot_learn(model, logs) {
        if verbose > 0 {
            eprintln!("warning: {w}");
        }
        model.warnings.push(w);
    }
}

/// A warning when the epoch shows a run that cannot learn: the loss at a clipped
/// cross-entropy's ceiling (`-ln 1e-7 ≈ 16.1`: probability ~0 for the true class) or the
/// accuracy at chance level, while the learning rate is above the optimizer's usual range
/// (SGD > 1, adaptive optimizers > 0.1).
pub(crate) fn cannot_learn(model: &Model, logs: &Logs) -> Option<String> {
    let compiled = model.compiled.as_ref()?;
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
    let classes = model.output_shapes().first().and_then(|s| s.last().copied()).unwrap_or(0);
    let chance = if classes > 1 { 1.0 / classes as f64 } else { 0.5 };
    if logs.get("accuracy").is_some_and(|&a| a <= 1.5 * chance) {
        return Some(format!(
            "the accuracy stayed at chance level ({:.3} for {classes} classes): the learning rate {rate} is probably too high",
            logs["accuracy"]
        ));
    }
    None
}
