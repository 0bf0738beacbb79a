//! Keras' element-wise activations: values and gradients at kinks and edges as Keras 3 on JAX
//! computes them (conformance/gen_activation_vectors.py), NaN passed through.

use losskit::Tensor;
use losskit_train::Activation;
use serde_json::Value;

#[test]
fn every_activation_matches_keras_values_and_gradients() {
    let fx: Value = serde_json::from_str(include_str!("../../../conformance/activation_vectors.json")).unwrap();
    let xs: Vec<f32> = fx["x"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let floats = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 + 1e-5 * b.abs();
    let mut seen = 0;
    for (name, want) in fx["activations"].as_object().unwrap() {
        let act = Activation::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = Tensor::from_vec(xs.clone(), &[xs.len()]).unwrap().requires_grad();
        let y = act.apply(&x).unwrap();
        let values = y.to_vec::<f64>();
        let grads = y.sum_all().backward().unwrap().get(&x).unwrap().to_vec::<f64>();
        for (i, (v, k)) in values.iter().zip(floats(&want["value"])).enumerate() {
            assert!(close(*v, k), "{name}({}): {v} vs Keras {k}", xs[i]);
        }
        for (i, (g, k)) in grads.iter().zip(floats(&want["grad"])).enumerate() {
            assert!(close(*g, k), "{name}'({}): {g} vs Keras {k}", xs[i]);
        }
        // NaN in, NaN out.
        let nan = act.apply(&Tensor::from_vec(vec![f32::NAN], &[1]).unwrap()).unwrap().to_vec::<f64>();
        assert!(nan[0].is_nan(), "{name}(NaN) = {}", nan[0]);
        seen += 1;
    }
    assert_eq!(seen, 26);
}
