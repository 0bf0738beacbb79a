//! Gradients of the regression losses, for every reduction, with and without sample weights:
//! the fused kernel node against (a) the same loss composed from tensor ops through the tape
//! and (b) central finite differences, in f64.

use losskit::{Loss, Reduction, Result, Tensor};

const EPS: f64 = 1e-7;

/// The reference: the same maths written with tensor ops (Keras' formulas verbatim).
fn composed(class: &str, t: &Tensor, p: &Tensor) -> Result<Tensor> {
    match class {
        "MeanSquaredError" => p.sub(t)?.square().mean(&[-1], false),
        "MeanAbsoluteError" => p.sub(t)?.abs().mean(&[-1], false),
        "MeanAbsolutePercentageError" => {
            t.sub(p)?.div(&t.abs().maximum_scalar(EPS)?)?.abs().mean(&[-1], false)?.mul_scalar(100.0)
        }
        "MeanSquaredLogarithmicError" => {
            let a = p.maximum_scalar(EPS)?.add_scalar(1.0)?.log();
            let b = t.maximum_scalar(EPS)?.add_scalar(1.0)?.log();
            a.sub(&b)?.square().mean(&[-1], false)
        }
        "Huber" => {
            let delta = 0.7;
            let e = p.sub(t)?;
            let a = e.abs();
            let quad = e.square().mul_scalar(0.5)?;
            let lin = a.mul_scalar(delta)?.add_scalar(-0.5 * delta * delta)?;
            let cond = Tensor::from_vec(
                a.to_vec::<f64>().iter().map(|&v| f64::from(u8::from(v <= delta))).collect(),
                a.shape(),
            )?;
            Tensor::where_cond(&cond, &quad, &lin)?.mean(&[-1], false)
        }
        "LogCosh" => {
            let x = p.sub(t)?;
            x.add(&x.mul_scalar(-2.0)?.softplus())?.add_scalar(-std::f64::consts::LN_2)?.mean(&[-1], false)
        }
        "Poisson" => p.sub(&t.mul(&p.add_scalar(EPS)?.log())?)?.mean(&[-1], false),
        "KLDivergence" => {
            let tc = t.clip(EPS, 1.0)?;
            let qc = p.clip(EPS, 1.0)?;
            tc.mul(&tc.div(&qc)?.log())?.sum(&[-1], false)
        }
        "CosineSimilarity" => {
            let norm = |x: &Tensor| -> Result<Tensor> {
                x.mul(&x.square().sum(&[-1], true)?.powf(-0.5)?.minimum_scalar(1.0 / EPS)?)
            };
            norm(t)?.mul(&norm(p)?)?.sum(&[-1], false)?.neg().mul_scalar(1.0)
        }
        other => panic!("no reference for {other}"),
    }
}

fn builtin(class: &str) -> Box<dyn Loss> {
    if class == "Huber" {
        Box::new(losskit::Huber::new(0.7).unwrap())
    } else {
        losskit::get(class).unwrap()
    }
}

const CLASSES: &[&str] = &[
    "MeanSquaredError",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError",
    "Huber",
    "LogCosh",
    "Poisson",
    "KLDivergence",
    "CosineSimilarity",
];

/// Deterministic inputs in (0.05, 0.95), y_pred kept away from y_true (no kinks).
fn inputs(shape: &[usize], seed: u64) -> (Vec<f64>, Vec<f64>) {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        0.05 + 0.9 * ((s >> 11) as f64 / (1u64 << 53) as f64)
    };
    let t: Vec<f64> = (0..n).map(|_| next()).collect();
    let p: Vec<f64> = t
        .iter()
        .map(|&y| {
            let d = next() - 0.5;
            if d.abs() < 0.05 {
                (y + 0.3).min(0.95)
            } else {
                (y + d).clamp(0.02, 0.98)
            }
        })
        .collect();
    (t, p)
}

fn with_reduction(class: &str, r: Reduction) -> Box<dyn Loss> {
    let mut cfg = builtin(class).config();
    cfg["reduction"] = serde_json::Value::String(r.keras_name().into());
    losskit::build(class, &cfg).unwrap()
}

fn value_and_grad(
    loss: &dyn Loss,
    t: &Tensor,
    p_vals: &[f64],
    shape: &[usize],
    w: Option<&Tensor>,
    fused: bool,
    class: &str,
) -> (Vec<f64>, Vec<f64>) {
    let p = Tensor::from_vec(p_vals.to_vec(), shape).unwrap().requires_grad();
    let out = if fused {
        loss.call(t, &p, w).unwrap()
    } else {
        let reference = losskit::CustomLoss::new("reference", {
            let c = class.to_string();
            move |t: &Tensor, p: &Tensor| composed(&c, t, p)
        })
        .with_reduction(loss.reduction());
        reference.call(t, &p, w).unwrap()
    };
    let values = out.to_vec::<f64>();
    let g = out.sum_all().backward().unwrap();
    (values, g.get(&p).map(|g| g.to_vec::<f64>()).unwrap_or_else(|| vec![0.0; p_vals.len()]))
}

#[test]
fn fused_kernels_match_composed_ops_and_finite_differences() {
    let cases: [(&[usize], Option<Vec<usize>>); 4] =
        [(&[3, 4], None), (&[3, 4], Some(vec![3])), (&[2, 3, 4], Some(vec![2, 1])), (&[5], None)];
    for class in CLASSES {
        for r in Reduction::ALL {
            let loss = with_reduction(class, r);
            for (k, (shape, wshape)) in cases.iter().enumerate() {
                let (t_vals, p_vals) = inputs(shape, 17 + k as u64);
                let t = Tensor::from_vec(t_vals, shape).unwrap();
                let w = wshape.as_ref().map(|ws| {
                    let n: usize = ws.iter().product();
                    Tensor::from_vec((0..n).map(|i| 0.5 + i as f64).collect(), ws).unwrap()
                });
                let (v1, g1) = value_and_grad(loss.as_ref(), &t, &p_vals, shape, w.as_ref(), true, class);
                let (v2, g2) = value_and_grad(loss.as_ref(), &t, &p_vals, shape, w.as_ref(), false, class);
                let ctx = format!("{class} {r} shape {shape:?} weights {wshape:?}");
                assert_eq!(v1.len(), v2.len(), "{ctx}");
                for (a, b) in v1.iter().zip(&v2) {
                    assert!((a - b).abs() <= 1e-10 * (1.0 + b.abs()), "{ctx}: value {a} vs composed {b}");
                }
                for (a, b) in g1.iter().zip(&g2) {
                    assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{ctx}: grad {a} vs composed {b}");
                }
                // Central differences of the sum of the output.
                let h = 1e-6;
                for j in 0..p_vals.len() {
                    let f = |d: f64| {
                        let mut pv = p_vals.clone();
                        pv[j] += d;
                        let p = Tensor::from_vec(pv, shape).unwrap();
                        loss.call(&t, &p, w.as_ref()).unwrap().sum_all().to_scalar().unwrap()
                    };
                    let fd = (f(h) - f(-h)) / (2.0 * h);
                    assert!(
                        (fd - g1[j]).abs() <= 1e-5 * (1.0 + fd.abs()),
                        "{ctx} element {j}: fd {fd} vs kernel {}",
                        g1[j]
                    );
                }
            }
        }
    }
}

#[test]
fn cosine_similarity_on_another_axis_has_gradients() {
    let shape = [3, 4];
    let (t_vals, p_vals) = inputs(&shape, 5);
    let t = Tensor::from_vec(t_vals, &shape).unwrap();
    let loss = losskit::CosineSimilarity::new().with_axis(0).with_reduction(Reduction::None);
    let p = Tensor::from_vec(p_vals.clone(), &shape).unwrap().requires_grad();
    let out = loss.call(&t, &p, None).unwrap();
    assert_eq!(out.shape(), &[4]);
    let g = out.sum_all().backward().unwrap().get(&p).unwrap().to_vec::<f64>();
    // Reference: transpose, then the last-axis loss.
    let pt = Tensor::from_vec(p_vals, &shape).unwrap().requires_grad();
    let reference = composed("CosineSimilarity", &t.transpose(None).unwrap(), &pt.transpose(None).unwrap()).unwrap();
    assert_eq!(reference.shape(), &[4]);
    for (a, b) in out.to_vec::<f64>().iter().zip(reference.to_vec::<f64>()) {
        assert!((a - b).abs() < 1e-12);
    }
    let gr = reference.sum_all().backward().unwrap().get(&pt).unwrap().to_vec::<f64>();
    for (a, b) in g.iter().zip(&gr) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn custom_mse_equals_builtin_values_and_gradients() {
    let custom = losskit::CustomLoss::new("custom_mse", |t: &Tensor, p: &Tensor| p.sub(t)?.square().mean(&[-1], false));
    let builtin = losskit::MeanSquaredError::new();
    let shape = [4, 3];
    let (t_vals, p_vals) = inputs(&shape, 99);
    let t = Tensor::from_vec(t_vals, &shape).unwrap().to_dtype(losskit::DType::F32);
    let w = Tensor::from_vec(vec![1.0f32, 2.0, 0.5, 0.0], &[4]).unwrap();
    for weights in [None, Some(&w)] {
        let p1 = Tensor::from_vec(p_vals.clone(), &shape).unwrap().to_dtype(losskit::DType::F32).requires_grad();
        let p2 = p1.detach().requires_grad();
        let a = custom.call(&t, &p1, weights).unwrap();
        let b = builtin.call(&t, &p2, weights).unwrap();
        assert!((a.to_scalar().unwrap() - b.to_scalar().unwrap()).abs() < 1e-7);
        let ga = a.backward().unwrap().get(&p1).unwrap().to_vec::<f32>();
        let gb = b.backward().unwrap().get(&p2).unwrap().to_vec::<f32>();
        for (x, y) in ga.iter().zip(&gb) {
            assert!((x - y).abs() < 1e-7, "{x} vs {y}");
        }
    }
}
