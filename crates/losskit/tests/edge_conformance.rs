//! The numerical edges against Keras (`conformance/edge_vectors.json`, made by
//! `conformance/gen_edge_vectors.py`): NaN and inf predictions propagate to the value and the
//! gradient, clip bounds pass the gradient (TensorFlow's convention), nothing overflows, and the
//! cross-entropies over 32 000 and 100 000 classes stay within 1e-6 (values) and rtol 1e-5
//! (gradients) of Keras run in float64.

mod common;

use common::{close_tol, edge_vectors, generated, nested, number, tensor, y_true_tensor};
use losskit::{DType, Loss, Tensor};
use serde_json::Value;

/// The loss (default reduction) and its gradient w.r.t. `y_pred`, as f64.
fn value_and_grad(v: &Value, y_true: &Tensor, y_pred: &Tensor) -> Result<(f64, Vec<f64>), String> {
    let loss = losskit::build(v["loss"].as_str().unwrap(), &v["config"]).map_err(|e| e.to_string())?;
    let y_pred = y_pred.clone().requires_grad();
    let out = loss.call(y_true, &y_pred, None).map_err(|e| e.to_string())?;
    let grads = out.backward().map_err(|e| e.to_string())?;
    let g = grads.get(&y_pred).ok_or("no gradient for y_pred")?.to_vec::<f64>();
    Ok((out.to_vec::<f64>()[0], g))
}

/// The inputs of a case: literal, or generated (large vocabularies).
fn inputs(v: &Value, dtype: DType) -> (Tensor, Tensor) {
    if let Some(p) = v.get("y_pred") {
        return (y_true_tensor(&v["y_true"], v["y_true_dtype"].as_str().unwrap(), dtype), tensor(p, dtype));
    }
    let (rows, cols) = (v["rows"].as_u64().unwrap() as usize, v["cols"].as_u64().unwrap() as usize);
    let g = &v["y_pred_gen"];
    let power = g.get("power").and_then(Value::as_u64).unwrap_or(1) as u32;
    let x = generated(rows, cols, g["lo"].as_f64().unwrap(), g["hi"].as_f64().unwrap(), power);
    let labels: Vec<usize> = v["labels"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as usize).collect();
    let y_true = if v["one_hot"].as_bool().unwrap() {
        let mut t = vec![0.0; rows * cols];
        for (r, &k) in labels.iter().enumerate() {
            t[r * cols + k] = 1.0;
        }
        Tensor::from_vec(t, &[rows, cols]).unwrap()
    } else {
        Tensor::from_vec(labels.iter().map(|&k| k as f64).collect(), &[rows]).unwrap()
    };
    (y_true.to_dtype(dtype), Tensor::from_vec(x, &[rows, cols]).unwrap().to_dtype(dtype))
}

/// Compares one case; `Err` says what differs.
fn check(v: &Value, dtype: DType) -> Result<(), String> {
    let (y_true, y_pred) = inputs(v, dtype);
    let (value, grad) = value_and_grad(v, &y_true, &y_pred)?;
    let expected = number(&v["expected"]);
    let referee64 = v["referee"] == "keras-f64";
    // Against the float64 referee: 1e-6 relative for values (the bar); against Keras'
    // own float32: the house tolerance.
    let (rtol, atol) = if referee64 { (1e-6, 0.0) } else { (1e-5, 1e-5) };
    if !close_tol(value, expected, rtol, atol) {
        return Err(format!("value {value}, expected {expected}"));
    }
    let (_, expected_grad) = nested(&v["grad"]);
    let got: Vec<f64> = match v.get("grad_index") {
        Some(index) => index.as_array().unwrap().iter().map(|j| grad[j.as_u64().unwrap() as usize]).collect(),
        None => grad,
    };
    if got.len() != expected_grad.len() {
        return Err(format!("{} gradient values, expected {}", got.len(), expected_grad.len()));
    }
    // Gradients: rtol 1e-5, with an absolute floor a millionth of the largest expected element
    // (so a gradient of size 1e-36 is compared at its own scale, not waved through by 1e-5).
    let scale = expected_grad.iter().filter(|e| e.is_finite()).fold(0.0f64, |m, e| m.max(e.abs()));
    let atol = match v.get("grad_atol") {
        Some(a) => a.as_f64().unwrap(),
        None if referee64 => 1e-6 * scale,
        None => 1e-5,
    };
    for (j, (&g, &e)) in got.iter().zip(&expected_grad).enumerate() {
        if !close_tol(g, e, 1e-5, atol) {
            return Err(format!("gradient [{j}] = {g}, expected {e}"));
        }
    }
    Ok(())
}

/// Cases whose f64 run is not meaningful: the overflow is an f32 one, or the expected value
/// is float32 Keras' own rounding of a clip bound.
fn f32_only(v: &Value) -> bool {
    let name = v["name"].as_str().unwrap();
    name.ends_with("_at_upper_clip")
}

#[test]
fn edge_vectors_match_keras_in_f32_and_f64() {
    let vectors = edge_vectors();
    assert_eq!(vectors.len(), 53, "edge vector count changed");
    let mut failures = Vec::new();
    for v in &vectors {
        for dtype in [DType::F32, DType::F64] {
            if dtype == DType::F64 && f32_only(v) {
                continue;
            }
            if let Err(e) = check(v, dtype) {
                failures.push(format!("{} {dtype}: {e}", v["name"].as_str().unwrap()));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// The issue's own example: `y_pred [[nan, 0.2]]` no longer looks healthy.
#[test]
fn a_nan_prediction_is_not_hidden_by_the_clip() {
    let y_true = Tensor::from_vec(vec![1.0f32, 0.0], &[1, 2]).unwrap();
    let y_pred = Tensor::from_vec(vec![f32::NAN, 0.2], &[1, 2]).unwrap().requires_grad();
    let loss = losskit::BinaryCrossentropy::new().call(&y_true, &y_pred, None).unwrap();
    assert!(loss.to_vec::<f32>()[0].is_nan());
    let g = loss.backward().unwrap().get(&y_pred).unwrap().to_vec::<f32>();
    assert!(g[0].is_nan());
    assert!((g[1] - 0.625).abs() < 1e-6, "{g:?}");
}

/// The sparse and the one-hot cross-entropies give the same row the same value and gradient,
/// whatever is in it.
#[test]
fn sparse_and_categorical_treat_the_same_row_the_same_way() {
    let rows: [[f64; 3]; 6] = [
        [0.5, f64::NAN, 0.2],
        [0.5, f64::INFINITY, 0.2],
        [0.5, f64::NEG_INFINITY, 0.2],
        [f64::NEG_INFINITY, 0.5, 0.2],
        [0.0, 0.0, 0.0],
        [0.5, 0.3, 0.2],
    ];
    for from_logits in [true, false] {
        for row in rows {
            let sparse =
                losskit::build("SparseCategoricalCrossentropy", &serde_json::json!({"from_logits": from_logits}))
                    .unwrap();
            let dense =
                losskit::build("CategoricalCrossentropy", &serde_json::json!({"from_logits": from_logits})).unwrap();
            let pred = Tensor::from_vec(row.to_vec(), &[1, 3]).unwrap();
            let p1 = pred.clone().requires_grad();
            let p2 = pred.clone().requires_grad();
            let a = sparse.call(&Tensor::from_vec(vec![0.0], &[1]).unwrap(), &p1, None).unwrap();
            let b = dense.call(&Tensor::from_vec(vec![1.0, 0.0, 0.0], &[1, 3]).unwrap(), &p2, None).unwrap();
            let (va, vb) = (a.to_vec::<f64>()[0], b.to_vec::<f64>()[0]);
            assert!(close_tol(va, vb, 1e-12, 1e-12), "{row:?} logits={from_logits}: {va} vs {vb}");
            let ga = a.backward().unwrap().get(&p1).unwrap().to_vec::<f64>();
            let gb = b.backward().unwrap().get(&p2).unwrap().to_vec::<f64>();
            for (x, y) in ga.iter().zip(&gb) {
                assert!(close_tol(*x, *y, 1e-12, 1e-12), "{row:?} logits={from_logits}: {ga:?} vs {gb:?}");
            }
        }
    }
}

/// Candidate inputs `(y_true, y_pred)`: a loss takes the first one it accepts with a finite value.
fn candidates() -> Vec<(Tensor, Tensor)> {
    let t = |v: Vec<f64>, s: &[usize]| Tensor::from_vec(v, s).unwrap();
    let probs = vec![0.2, 0.5, 0.3, 0.6, 0.1, 0.3, 0.25, 0.25, 0.5, 0.1, 0.7, 0.2];
    vec![
        // one-hot targets and probabilities (4, 3)
        (t(vec![0., 1., 0., 1., 0., 0., 0., 0., 1., 0., 1., 0.], &[4, 3]), t(probs.clone(), &[4, 3])),
        // class indices (4,) and probabilities (4, 3)
        (t(vec![1., 0., 2., 1.], &[4]), t(probs.clone(), &[4, 3])),
        // labels (4,) and embeddings (4, 3)
        (t(vec![0., 0., 1., 1.], &[4]), t(vec![0.1, 0.9, 0.3, 0.7, 0.8, 0.2, 0.6, 0.5, -0.3, 0.4, 0.2, 0.9], &[4, 3])),
        // boxes (2, 4)
        (t(vec![4., 3., 7., 5., 5., 6., 10., 7.], &[2, 4]), t(vec![3., 4., 6., 8., 4.5, 5.5, 9., 8.], &[2, 4])),
        // pairs stacked on axis 1 (4, 2) with ±1 targets
        (t(vec![1., -1., 1., -1.], &[4]), t(vec![0.3, 0.1, 0.2, 0.6, 0.9, 0.4, 0.5, 0.7], &[4, 2])),
        // CosineEmbedding (2, 2, 3), TripletMargin (2, 3, 3)
        (t(vec![1., -1.], &[2]), t(vec![0.1, 0.9, 0.3, 0.7, 0.8, 0.2, 0.6, 0.5, -0.3, 0.4, 0.2, 0.9], &[2, 2, 3])),
        (t(vec![0., 0.], &[2]), t((0..18).map(|i| ((i * 7) % 11) as f64 / 10.0).collect(), &[2, 3, 3])),
        // multi-label targets as class indices padded with -1 (MultiLabelMargin)
        (t(vec![0., 2., -1., 1., -1., -1., 2., 0., -1., 1., 2., -1.], &[4, 3]), t(probs.clone(), &[4, 3])),
        // CTC: labels (2, 2), logits (2, 4, 3)
        (t(vec![1., 2., 2., 1.], &[2, 2]), t((0..24).map(|i| ((i * 5) % 7) as f64 / 7.0).collect(), &[2, 4, 3])),
        // labels (4, 1) with (4, 3)
        (t(vec![1., 0., 2., 1.], &[4, 1]), t(probs, &[4, 3])),
        // labels (3,) with a (3, 3) similarity matrix (N-pairs)
        (t(vec![0., 1., 2.], &[3]), t(vec![0.9, 0.1, 0.2, 0.3, 0.8, 0.4, 0.2, 0.6, 0.7], &[3, 3])),
        // multi-hot labels (3, 2) with a (3, 3) similarity matrix (N-pairs multi-label)
        (t(vec![1., 0., 0., 1., 1., 1.], &[3, 2]), t(vec![0.9, 0.1, 0.2, 0.3, 0.8, 0.4, 0.2, 0.6, 0.7], &[3, 3])),
        // two classes, one-hot (3, 2) (WeightedKappa's default num_classes = 2)
        (t(vec![1., 0., 0., 1., 1., 0.], &[3, 2]), t(vec![0.7, 0.3, 0.4, 0.6, 0.2, 0.8], &[3, 2])),
    ]
}

/// Every loss in the registry, kernel or composed: a NaN in `y_pred` makes the loss NaN. The NaN
/// goes to position 1, which every candidate's loss reads (for class-index losses it is row 0's
/// target class: a NaN in a class the loss does not select, as in PyTorch's `NLLLoss`, is
/// rightly ignored).
#[test]
fn a_nan_prediction_reaches_every_loss() {
    let mut failures = Vec::new();
    for info in losskit::list() {
        let loss = losskit::get(&info.class_name).unwrap();
        let accepted = candidates()
            .into_iter()
            .find(|(t, p)| loss.call(t, p, None).is_ok_and(|v| v.to_vec::<f64>().iter().all(|x| x.is_finite())));
        let Some((y_true, y_pred)) = accepted else {
            failures.push(format!("{}: no candidate input accepted", info.class_name));
            continue;
        };
        let mut values = y_pred.to_vec::<f64>();
        values[1] = f64::NAN;
        let poisoned = Tensor::from_vec(values, y_pred.shape()).unwrap();
        match loss.call(&y_true, &poisoned, None) {
            Ok(v) if v.to_vec::<f64>().iter().any(|x| x.is_nan()) => {}
            Ok(v) => failures.push(format!("{}: NaN hidden, value {:?}", info.class_name, v.to_vec::<f64>())),
            Err(e) => failures.push(format!("{}: {e}", info.class_name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
