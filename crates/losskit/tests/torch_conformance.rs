//! Every PyTorch vector (conformance/torch_vectors.json, made by running PyTorch 2.15): values
//! and gradients, in f64 and f32.

mod common;

use common::nested;
use losskit::{DType, Loss, Tensor};
use serde_json::Value;

#[test]
fn every_pytorch_vector_passes_values_and_gradients() {
    let vectors: Vec<Value> = serde_json::from_str(include_str!("../../../conformance/torch_vectors.json")).unwrap();
    assert_eq!(vectors.len(), 43);
    let mut failures = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let class = v["loss"].as_str().unwrap();
        for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-5)] {
            let loss = match losskit::build(class, &v["config"]) {
                Ok(l) => l,
                Err(e) => {
                    failures.push(format!("#{i} {class}: {e}"));
                    continue;
                }
            };
            let (ts, tv) = nested(&v["y_true"]);
            let (ps, pv) = nested(&v["y_pred"]);
            let yt = Tensor::from_vec(tv, &ts).unwrap().to_dtype(dtype);
            let yp = Tensor::from_vec(pv, &ps).unwrap().to_dtype(dtype).requires_grad();
            let out = match loss.call(&yt, &yp, None) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(format!("#{i} {class} {}: {e}", v["config"]));
                    continue;
                }
            };
            let (es, ev) = nested(&v["expected"]);
            if out.shape() != es.as_slice() {
                failures.push(format!("#{i} {class} {}: shape {:?} vs {es:?}", v["config"], out.shape()));
                continue;
            }
            let close = |a: f64, b: f64| (a - b).abs() <= tol * (1.0 + b.abs());
            for (a, b) in out.to_vec::<f64>().iter().zip(&ev) {
                if !close(*a, *b) {
                    failures.push(format!("#{i} {class} {} {dtype}: value {a} vs {b}", v["config"]));
                }
            }
            let g = out.sum_all().backward().unwrap().get(&yp).map(|g| g.to_vec::<f64>()).unwrap_or_default();
            let (_, eg) = nested(&v["grad"]);
            for (j, (a, b)) in g.iter().zip(&eg).enumerate() {
                if !close(*a, *b) {
                    failures.push(format!("#{i} {class} {} {dtype}: grad[{j}] {a} vs {b}", v["config"]));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn pytorch_losses_match_finite_differences() {
    let vectors: Vec<Value> = serde_json::from_str(include_str!("../../../conformance/torch_vectors.json")).unwrap();
    for (i, v) in vectors.iter().enumerate() {
        let class = v["loss"].as_str().unwrap();
        // GaussianNLL clamps var at eps with var's own gradient (PyTorch's no-grad clamp), which
        // is deliberately not the derivative of the clamped function; the PyTorch vectors above
        // check that gradient instead.
        if class == "GaussianNLLLoss" {
            continue;
        }
        let loss = losskit::build(class, &v["config"]).unwrap();
        let (ts, tv) = nested(&v["y_true"]);
        let (ps, pv) = nested(&v["y_pred"]);
        let yt = Tensor::from_vec(tv, &ts).unwrap();
        let x = Tensor::from_vec(pv.clone(), &ps).unwrap().requires_grad();
        let g = loss.call(&yt, &x, None).unwrap().sum_all().backward().unwrap().get(&x).unwrap().to_vec::<f64>();
        let h = 1e-6;
        for j in 0..pv.len() {
            let f = |d: f64| {
                let mut q = pv.clone();
                q[j] += d;
                loss.call(&yt, &Tensor::from_vec(q, &ps).unwrap(), None).unwrap().sum_all().to_scalar().unwrap()
            };
            let fd = (f(h) - f(-h)) / (2.0 * h);
            assert!(
                (fd - g[j]).abs() <= 1e-5 * (1.0 + fd.abs()),
                "#{i} {class} {} element {j}: fd {fd} vs {}",
                v["config"],
                g[j]
            );
        }
    }
}

#[test]
fn gaussian_nll_matches_finite_differences_away_from_the_clamp() {
    let loss = losskit::GaussianNLLLoss::new().with("full", true).unwrap();
    let y = Tensor::from_vec(vec![0.3, -0.2, 1.1, 0.4], &[2, 2]).unwrap();
    let pv = vec![0.1, 0.5, -0.4, 0.2, 0.9, 0.3, 0.2, 1.4];
    let x = Tensor::from_vec(pv.clone(), &[2, 2, 2]).unwrap().requires_grad();
    let g = loss.call(&y, &x, None).unwrap().backward().unwrap().get(&x).unwrap().to_vec::<f64>();
    let h = 1e-6;
    for j in 0..pv.len() {
        let f = |d: f64| {
            let mut q = pv.clone();
            q[j] += d;
            loss.call(&y, &Tensor::from_vec(q, &[2, 2, 2]).unwrap(), None).unwrap().to_scalar().unwrap()
        };
        let fd = (f(h) - f(-h)) / (2.0 * h);
        assert!((fd - g[j]).abs() <= 1e-6 * (1.0 + fd.abs()), "element {j}: fd {fd} vs {}", g[j]);
    }
}
