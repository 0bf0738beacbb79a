//! A language-model-like head trained with the fused linear + cross-entropy node ends on the
//! weights of the plain path (Dense, then the loss on the logits).

use losskit::{LinearCrossEntropy, Tensor};
use losskit_train::{Compile, Dense, Fit, LossArg, Model, Optimizer, Sequential};
use std::sync::Arc;

const TOKENS: usize = 200;
const FEATURES: usize = 12;
const VOCAB: usize = 97;

/// Token features and next-token labels that depend on them (so the head can learn).
fn data() -> (Tensor, Tensor) {
    let x: Vec<f64> = (0..TOKENS * FEATURES).map(|i| ((i * 31 + 7) as f64 * 0.173).sin()).collect();
    let y: Vec<f64> = (0..TOKENS)
        .map(|t| {
            let s: f64 = (0..FEATURES).map(|f| x[t * FEATURES + f] * (f as f64 + 1.0)).sum();
            ((s.abs() * 13.0) as usize % VOCAB) as f64
        })
        .collect();
    (Tensor::from_vec(x, &[TOKENS, FEATURES]).unwrap(), Tensor::from_vec(y, &[TOKENS, 1]).unwrap())
}

fn head() -> Model {
    Sequential::new().add(Dense::new(24).activation("relu").unwrap()).add(Dense::new(VOCAB)).seed(11)
}

/// Trains a fresh head; returns its weights and the epoch losses.
fn train(loss: LossArg, fused: Option<bool>, fit: impl Fn(Fit<'static>) -> Fit<'static>) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (x, y) = data();
    let mut model = head();
    model.compile(Compile::new().optimizer(Optimizer::sgd(0.5).unwrap()).loss(loss).fused_head(fused)).unwrap();
    let history = model.fit(&x, &y, fit(Fit::new().epochs(3).batch_size(32).seed(5).verbose(0))).unwrap();
    let weights = model.get_weights().into_iter().map(|(_, w)| w.to_vec::<f64>()).collect();
    (weights, history.history["loss"].clone())
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

fn assert_same_training(fused: &(Vec<Vec<f64>>, Vec<f64>), plain: &(Vec<Vec<f64>>, Vec<f64>)) {
    assert_close(&fused.1, &plain.1, "epoch loss");
    for (k, (f, p)) in fused.0.iter().zip(&plain.0).enumerate() {
        assert_close(f, p, &format!("weight {k}"));
    }
    assert!(plain.1[2] < plain.1[0], "the head learns: {:?}", plain.1);
}

fn sparse_from_logits(extra: serde_json::Value) -> LossArg {
    let mut config = serde_json::json!({"from_logits": true});
    config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    LossArg::from(losskit::build("SparseCategoricalCrossentropy", &config).unwrap())
}

#[test]
fn sparse_crossentropy_from_logits_fused_and_plain_end_on_the_same_weights() {
    let loss = sparse_from_logits(serde_json::json!({}));
    assert_same_training(&train(loss.clone(), Some(true), |f| f), &train(loss, Some(false), |f| f));
}

#[test]
fn ignored_tokens_and_sample_weights_train_the_same_way() {
    let loss = sparse_from_logits(serde_json::json!({"ignore_class": 3}));
    let w = Tensor::from_vec((0..TOKENS).map(|t| 0.5 + (t % 4) as f64 * 0.25).collect(), &[TOKENS]).unwrap();
    let with_weights = |f: Fit<'static>| f.sample_weight(w.clone());
    assert_same_training(&train(loss.clone(), Some(true), with_weights), &train(loss, Some(false), with_weights));
}

#[test]
fn linear_cross_entropy_with_smoothing_and_z_loss_trains_the_same_as_on_logits() {
    let lce = LinearCrossEntropy::new().with_label_smoothing(0.1).unwrap().with_z_loss(1e-3).unwrap();
    let loss = LossArg::Object(Arc::new(lce));
    assert_same_training(&train(loss.clone(), Some(true), |f| f), &train(loss, Some(false), |f| f));
}

#[test]
fn a_required_fusion_that_cannot_be_done_says_why() {
    let (x, y) = data();
    let mut model = head();
    let compile =
        Compile::new().optimizer("sgd").loss(sparse_from_logits(serde_json::json!({}))).metrics(&["accuracy"]);
    model.compile(compile.fused_head(Some(true))).unwrap();
    let e = model.fit(&x, &y, Fit::new().epochs(1).verbose(0)).unwrap_err().to_string();
    assert!(e.contains("metrics need the logits"), "{e}");
    // Automatic (the default) falls back to the plain path.
    let mut model = head();
    model.compile(Compile::new().optimizer("sgd").loss("mse")).unwrap();
    assert!(model.fit(&x, &y, Fit::new().epochs(1).verbose(0)).is_ok());
}
