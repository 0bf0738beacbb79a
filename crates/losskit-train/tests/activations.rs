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
    assert_eq!(Activation::ALL.len(), 29, "every activation a Keras name selects");
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 + 1e-5 * b.abs()
}

/// The two that take arguments (`gelu(approximate=True)`, `threshold(x, 0.5, -2)`): values and
/// gradients as Keras on JAX; neither is written as Keras JSON.
#[test]
fn activations_with_arguments_match_keras() {
    let fx: Value = serde_json::from_str(include_str!("../../../conformance/activation_vectors.json")).unwrap();
    let xs: Vec<f32> = floats(&fx["x"]).into_iter().map(|v| v as f32).collect();
    let with = &fx["with_arguments"];
    let args = &with["threshold"]["args"];
    let cases = [
        ("gelu_approximate", Activation::GeluApproximate),
        (
            "threshold",
            Activation::Threshold {
                threshold: args["threshold"].as_f64().unwrap(),
                default_value: args["default_value"].as_f64().unwrap(),
            },
        ),
    ];
    for (name, act) in cases {
        assert!(!act.has_keras_name() && Activation::parse(name).is_err(), "{name}");
        let x = Tensor::from_vec(xs.clone(), &[xs.len()]).unwrap().requires_grad();
        let y = act.apply(&x).unwrap();
        let grads = y.sum_all().backward().unwrap().get(&x).unwrap().to_vec::<f64>();
        for (i, (v, k)) in y.to_vec::<f64>().iter().zip(floats(&with[name]["value"])).enumerate() {
            assert!(close(*v, k), "{name}({}): {v} vs Keras {k}", xs[i]);
        }
        for (i, (g, k)) in grads.iter().zip(floats(&with[name]["grad"])).enumerate() {
            assert!(close(*g, k), "{name}'({}): {g} vs Keras {k}", xs[i]);
        }
        let nan = act.apply(&Tensor::from_vec(vec![f32::NAN], &[1]).unwrap()).unwrap().to_vec::<f64>();
        assert!(nan[0].is_nan(), "{name}(NaN) = {}", nan[0]);
    }
    // A model using one has no Keras JSON.
    let mut model = losskit_train::Sequential::new()
        .add(losskit_train::Dense::new(4).with_activation(Activation::GeluApproximate))
        .add(losskit_train::Dense::new(2));
    model.build(&[3]).unwrap();
    let e = model.to_json().unwrap_err().to_string();
    assert!(e.contains("gelu_approximate") && e.contains("cannot hold"), "{e}");
}

/// The two over the last axis on rows: sparsemax (the simplex projection, as Keras with the fix
/// of keras#23469) and glu (halves the last axis); values and the gradient of `Σ f(x)·W`.
#[test]
fn sparsemax_and_glu_match_keras_on_rows() {
    let fx: Value = serde_json::from_str(include_str!("../../../conformance/activation_vectors.json")).unwrap();
    let rows = &fx["rows"];
    let shape: Vec<usize> = rows["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let xs: Vec<f32> = floats(&rows["x"]).into_iter().map(|v| v as f32).collect();
    for (name, want) in rows["activations"].as_object().unwrap() {
        let act = Activation::parse(name).unwrap();
        let x = Tensor::from_vec(xs.clone(), &shape).unwrap().requires_grad();
        let y = act.apply(&x).unwrap();
        assert_eq!(y.shape(), act.output_shape(&shape).unwrap().as_slice(), "{name}");
        let w: Vec<f32> = floats(&want["w"]).into_iter().map(|v| v as f32).collect();
        let w = Tensor::from_vec(w, y.shape()).unwrap();
        let grads = y.mul(&w).unwrap().sum_all().backward().unwrap().get(&x).unwrap().to_vec::<f64>();
        for (i, (v, k)) in y.to_vec::<f64>().iter().zip(floats(&want["value"])).enumerate() {
            assert!(close(*v, k), "{name} value {i}: {v} vs Keras {k}");
        }
        for (i, (g, k)) in grads.iter().zip(floats(&want["grad"])).enumerate() {
            assert!(close(*g, k), "{name} gradient {i}: {g} vs Keras {k}");
        }
    }
    // glu needs an even last axis; a Dense layer of 7 units with it is refused at build.
    assert!(Activation::Glu.output_shape(&[2, 7]).is_err());
    let mut model = losskit_train::Sequential::new().add(losskit_train::Dense::new(7).activation("glu").unwrap());
    let e = model.build(&[3]).unwrap_err().to_string();
    assert!(e.contains("even") && e.contains("dense"), "{e}");
    let mut model = losskit_train::Sequential::new().add(losskit_train::Dense::new(8).activation("glu").unwrap());
    model.build(&[3]).unwrap();
    let out = model.predict(&Tensor::from_vec(vec![0.5f32; 6], &[2, 3]).unwrap(), 2).unwrap();
    assert_eq!(out[0].shape(), &[2, 4]);
}
