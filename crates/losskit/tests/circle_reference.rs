//! Circle loss against a separate reference set (Keras' `circle(..., ref_labels,
//! ref_embeddings, remove_diagonal)`): per-sample values, the masked mean and its gradient as
//! Keras computes them (conformance/gen_circle_vectors.py).

use losskit::{Circle, Loss, Tensor};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

#[test]
fn circle_against_a_reference_set_matches_keras() {
    let cases: Value = serde_json::from_str(include_str!("../../../conformance/circle_vectors.json")).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 + 1e-5 * b.abs();
    for (i, c) in cases.as_array().unwrap().iter().enumerate() {
        let ref_labels = Tensor::from_vec(floats(&c["ref_labels"]), &[dims(&c["ref_shape"])[0]]).unwrap();
        let ref_embeddings = Tensor::from_vec(floats(&c["ref_embeddings"]), &dims(&c["ref_shape"])).unwrap();
        let loss = Circle::default()
            .with_remove_diagonal(c["remove_diagonal"].as_bool().unwrap())
            .with_reference(&ref_labels, &ref_embeddings)
            .unwrap();
        let labels = floats(&c["y_true"]);
        let y_true = Tensor::from_vec(labels.clone(), &[labels.len()]).unwrap();
        let y_pred = Tensor::from_vec(floats(&c["y_pred"]), &dims(&c["y_pred_shape"])).unwrap().requires_grad();
        let per = loss.per_sample(&y_true, &y_pred).unwrap().values.to_vec::<f64>();
        for (v, k) in per.iter().zip(floats(&c["per_sample"])) {
            assert!(close(*v, f64::from(k)), "case {i}: per-sample {v} vs Keras {k}");
        }
        let value = loss.call(&y_true, &y_pred, None).unwrap();
        let want = c["loss"].as_f64().unwrap();
        assert!(close(value.to_scalar().unwrap(), want), "case {i}: {} vs Keras {want}", value.to_scalar().unwrap());
        let grad = value.backward().unwrap().get(&y_pred).unwrap().to_vec::<f64>();
        for (g, k) in grad.iter().zip(floats(&c["grad"])) {
            assert!(close(*g, f64::from(k)), "case {i}: gradient {g} vs Keras {k}");
        }
    }
    // Reference shapes that do not fit are errors.
    let l = Tensor::from_vec(vec![0.0f32, 1.0], &[2]).unwrap();
    let e = Tensor::from_vec(vec![0.5f32; 6], &[3, 2]).unwrap();
    assert!(Circle::default().with_reference(&l, &e).unwrap_err().to_string().contains("(R,) and embeddings (R, D)"));
}
