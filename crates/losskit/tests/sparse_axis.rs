//! SparseCategoricalCrossentropy with the class axis not last (Keras on torch's `axis`):
//! values and gradients against Keras on torch, which takes `axis` (conformance/gen_axis_vectors.py).

use losskit::{Loss, SparseCategoricalCrossentropy, Tensor};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

#[test]
fn the_class_axis_can_be_another_than_the_last() {
    let cases: Value = serde_json::from_str(include_str!("../../../conformance/axis_vectors.json")).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 + 1e-5 * b.abs();
    for (i, c) in cases.as_array().unwrap().iter().enumerate() {
        let loss = SparseCategoricalCrossentropy::new()
            .with_from_logits(c["from_logits"].as_bool().unwrap())
            .with_axis(c["axis"].as_i64().unwrap() as isize);
        let y_true = Tensor::from_vec(floats(&c["y_true"]), &dims(&c["y_true_shape"])).unwrap();
        let y_pred = Tensor::from_vec(floats(&c["y_pred"]), &dims(&c["y_pred_shape"])).unwrap().requires_grad();
        let value = loss.call(&y_true, &y_pred, None).unwrap();
        let want = c["loss"].as_f64().unwrap();
        assert!(close(value.to_scalar().unwrap(), want), "case {i}: {} vs Keras {want}", value.to_scalar().unwrap());
        let grad = value.backward().unwrap().get(&y_pred).unwrap().to_vec::<f64>();
        for (g, k) in grad.iter().zip(floats(&c["grad"])) {
            assert!(close(*g, f64::from(k)), "case {i}: gradient {g} vs Keras {k}");
        }
    }
    // The batch axis cannot be the class axis; an axis out of range is an error.
    let p = Tensor::from_vec(vec![0.5f32; 6], &[2, 3]).unwrap();
    let y = Tensor::from_vec(vec![0.0f32, 1.0], &[2]).unwrap();
    let e = SparseCategoricalCrossentropy::new().with_axis(0).call(&y, &p, None).unwrap_err().to_string();
    assert!(e.contains("batch axis"), "{e}");
    let e = SparseCategoricalCrossentropy::new().with_axis(4).call(&y, &p, None).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    // The config keeps the axis.
    let config = SparseCategoricalCrossentropy::new().with_axis(1).config();
    assert_eq!(config["axis"], 1);
    let back =
        losskit::from_config(&serde_json::json!({"class_name": "SparseCategoricalCrossentropy", "config": config}))
            .unwrap();
    assert_eq!(back.config()["axis"], 1);
}
