//! Gradients of the classification, hinge, segmentation, metric-learning and sequence losses:
//! fused kernels against the same maths composed from tensor ops, and every loss against
//! central finite differences (f64), for every reduction, with and without sample weights.

use losskit::{Loss, Reduction, Result, Tensor};
use serde_json::{json, Value};

const EPS: f64 = 1e-7;
const HI: f64 = 1.0 - 1e-7;

fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The composed reference for a kernel-backed loss (Keras' formulas, tensor ops).
fn composed(class: &str, cfg: &Value, t: &Tensor, p: &Tensor) -> Result<Tensor> {
    let logits = cfg["from_logits"] == true;
    let ls = cfg["label_smoothing"].as_f64().unwrap_or(0.0);
    let one = |x: &Tensor| x.neg().add_scalar(1.0);
    match class {
        "BinaryCrossentropy" => {
            let y = if ls > 0.0 { t.mul_scalar(1.0 - ls)?.add_scalar(0.5 * ls)? } else { t.clone() };
            if logits {
                y.mul(&p.neg().softplus())?.add(&one(&y)?.mul(&p.softplus())?)?.mean(&[-1], false)
            } else {
                let q = p.clip(EPS, HI)?;
                y.mul(&q.log())?.add(&one(&y)?.mul(&one(&q)?.log())?)?.neg().mean(&[-1], false)
            }
        }
        "BinaryFocalCrossentropy" => {
            let (gamma, alpha) = (cfg["gamma"].as_f64().unwrap_or(2.0), cfg["alpha"].as_f64().unwrap_or(0.25));
            let s = if logits { p.sigmoid() } else { p.clone() };
            let q = s.clip(EPS, HI)?;
            let bce = t.mul(&q.log())?.add(&one(t)?.mul(&one(&q)?.log())?)?.neg();
            let pt = t.mul(&s)?.add(&one(t)?.mul(&one(&s)?)?)?;
            let mut f = one(&pt)?.powf(gamma)?.mul(&bce)?;
            if cfg["apply_class_balancing"] == true {
                f = t.mul_scalar(alpha)?.add(&one(t)?.mul_scalar(1.0 - alpha)?)?.mul(&f)?;
            }
            f.mean(&[-1], false)
        }
        "CategoricalCrossentropy" | "SparseCategoricalCrossentropy" => {
            let y = if class == "SparseCategoricalCrossentropy" {
                Tensor::one_hot(t, p.shape()[p.rank() - 1], p.dtype())?
            } else {
                t.clone()
            };
            let lp = if logits { p.log_softmax(-1)? } else { p.div(&p.sum(&[-1], true)?)?.clip(EPS, HI)?.log() };
            y.mul(&lp)?.sum(&[-1], false)?.neg().mul_scalar(1.0)
        }
        "CategoricalFocalCrossentropy" => {
            let gamma = cfg["gamma"].as_f64().unwrap_or(2.0);
            let s = if logits { p.softmax(-1)? } else { p.clone() };
            let o = s.div(&s.sum(&[-1], true)?)?.clip(EPS, HI)?;
            let alpha = match &cfg["alpha"] {
                Value::Array(a) => Tensor::from_vec(a.iter().map(|v| v.as_f64().unwrap()).collect(), &[a.len()])?,
                v => Tensor::scalar(v.as_f64().unwrap_or(0.25)),
            };
            one(&o)?.powf(gamma)?.mul(&alpha)?.mul(&t.mul(&o.log())?.neg())?.sum(&[-1], false)
        }
        "Hinge" | "SquaredHinge" => {
            let m = one(&t.mul_scalar(2.0)?.add_scalar(-1.0)?.mul(p)?)?.maximum_scalar(0.0)?;
            let m = if class == "SquaredHinge" { m.square() } else { m };
            m.mean(&[-1], false)
        }
        "CategoricalHinge" => {
            let pos = t.mul(p)?.sum(&[-1], false)?;
            let neg = one(t)?.mul(p)?.max(&[-1], false)?;
            neg.sub(&pos)?.add_scalar(1.0)?.maximum_scalar(0.0)
        }
        other => panic!("no reference for {other}"),
    }
}

struct Case {
    class: &'static str,
    config: Value,
    shape: Vec<usize>,
    /// "probs", "logits", "binary" (0/1 targets), "onehot", "sparse", "ctc", "circle"
    targets: &'static str,
    has_kernel_reference: bool,
}

fn case(class: &'static str, config: Value, shape: &[usize], targets: &'static str, reference: bool) -> Case {
    Case { class, config, shape: shape.to_vec(), targets, has_kernel_reference: reference }
}

fn cases() -> Vec<Case> {
    vec![
        case("BinaryCrossentropy", json!({}), &[3, 4], "probs", true),
        case("BinaryCrossentropy", json!({"from_logits": true}), &[3, 4], "probs", true),
        case("BinaryCrossentropy", json!({"label_smoothing": 0.2}), &[2, 3, 2], "binary", true),
        case("BinaryFocalCrossentropy", json!({}), &[3, 4], "binary", true),
        case(
            "BinaryFocalCrossentropy",
            json!({"from_logits": true, "gamma": 3.0, "apply_class_balancing": true}),
            &[3, 4],
            "probs",
            true,
        ),
        case("CategoricalCrossentropy", json!({}), &[3, 4], "onehot", true),
        case("CategoricalCrossentropy", json!({"from_logits": true}), &[3, 4], "probs", true),
        case("CategoricalCrossentropy", json!({"from_logits": true, "axis": 0}), &[3, 4], "probs", false),
        case("CategoricalFocalCrossentropy", json!({}), &[3, 4], "onehot", true),
        case(
            "CategoricalFocalCrossentropy",
            json!({"from_logits": true, "alpha": [0.1, 0.2, 0.3, 0.4], "gamma": 1.5}),
            &[3, 4],
            "probs",
            true,
        ),
        case("SparseCategoricalCrossentropy", json!({}), &[4, 3], "sparse", true),
        case("SparseCategoricalCrossentropy", json!({"from_logits": true}), &[2, 2, 3], "sparse", true),
        case(
            "SparseCategoricalCrossentropy",
            json!({"from_logits": true, "ignore_class": 1}),
            &[4, 3],
            "sparse",
            false,
        ),
        case(
            "SparseCategoricalCrossentropy",
            json!({"from_logits": true, "class_weights": [1.0, 2.0, 0.5]}),
            &[4, 3],
            "sparse",
            false,
        ),
        case("CategoricalGeneralizedCrossEntropy", json!({"q": 0.7}), &[4, 3], "sparse", false),
        case("Hinge", json!({}), &[3, 4], "binary", true),
        case("SquaredHinge", json!({}), &[3, 4], "binary", true),
        case("CategoricalHinge", json!({}), &[3, 4], "onehot", true),
        case("Dice", json!({}), &[3, 4], "binary", false),
        case("Dice", json!({"axis": [1]}), &[3, 4], "binary", false),
        case("Tversky", json!({"alpha": 0.3, "beta": 0.7, "axis": [1]}), &[3, 4], "binary", false),
        case("Circle", json!({"gamma": 2.0}), &[5, 3], "circle", false),
        case("CTC", json!({}), &[3, 4, 3], "ctc", false),
    ]
}

/// (y_true values and shape, y_pred values) for a case.
fn data(c: &Case, seed: u64) -> (Vec<f64>, Vec<usize>, Vec<f64>) {
    let mut r = lcg(seed);
    let n: usize = c.shape.iter().product();
    let logits = c.config["from_logits"] == true;
    let mut pred: Vec<f64> = (0..n).map(|_| if logits { 4.0 * r() - 2.0 } else { 0.05 + 0.9 * r() }).collect();
    let last = *c.shape.last().unwrap();
    let rows = n / last;
    let (t, ts) = match c.targets {
        "probs" => ((0..n).map(|_| r()).collect(), c.shape.clone()),
        "binary" => {
            ((0..n).map(|i| f64::from(u8::from((i * 7 + seed as usize).is_multiple_of(3)))).collect(), c.shape.clone())
        }
        "onehot" => ((0..n).map(|i| f64::from(u8::from(i % last == (i / last + 1) % last))).collect(), c.shape.clone()),
        "sparse" => {
            ((0..rows).map(|i| ((i + seed as usize) % last) as f64).collect(), c.shape[..c.shape.len() - 1].to_vec())
        }
        "circle" => {
            // Unit-norm embeddings, labels with positives and negatives.
            for row in pred.chunks_mut(last) {
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                row.iter_mut().for_each(|v| *v /= norm);
            }
            (vec![0.0, 1.0, 0.0, 1.0, 2.0], vec![5])
        }
        "ctc" => {
            pred = (0..n).map(|_| 4.0 * r() - 2.0).collect();
            (vec![1.0, 2.0, 2.0, 1.0, 0.0, 0.0, 2.0, 1.0, 0.0], vec![3, 3])
        }
        other => panic!("{other}"),
    };
    (t, ts, pred)
}

fn build(c: &Case, r: Reduction) -> Box<dyn Loss> {
    let mut cfg = c.config.clone();
    cfg["reduction"] = json!(r.keras_name());
    losskit::build(c.class, &cfg).unwrap()
}

fn value_and_grad(loss: &dyn Loss, t: &Tensor, p: &[f64], shape: &[usize], w: Option<&Tensor>) -> (Vec<f64>, Vec<f64>) {
    let pt = Tensor::from_vec(p.to_vec(), shape).unwrap().requires_grad();
    let out = loss.call(t, &pt, w).unwrap();
    let g = out.sum_all().backward().unwrap();
    (out.to_vec::<f64>(), g.get(&pt).map(|g| g.to_vec::<f64>()).unwrap_or_else(|| vec![0.0; p.len()]))
}

#[test]
fn every_loss_matches_finite_differences_and_its_composed_reference() {
    for (k, c) in cases().iter().enumerate() {
        let (tv, ts, pv) = data(c, 3 + k as u64);
        let t = Tensor::from_vec(tv, &ts).unwrap();
        // Weights per leading entry of the per-sample values; (B, T) values take (B, 1) weights
        // (a (B,) weight would align with T, as in Keras).
        let per_sample =
            build(c, Reduction::None).call(&t, &Tensor::from_vec(pv.clone(), &c.shape).unwrap(), None).unwrap();
        let batch = per_sample.shape().first().copied().unwrap_or(c.shape[0]);
        let wshape: Vec<usize> = if per_sample.rank() == 2 { vec![batch, 1] } else { vec![batch] };
        let weights = Tensor::from_vec((0..batch).map(|i| 0.5 + i as f64).collect(), &wshape).unwrap();
        for r in Reduction::ALL {
            let loss = build(c, r);
            for w in [None, Some(&weights)] {
                // Dice/Tversky with axis=None give a scalar; a (B,) weight is fine there too.
                let ctx = format!("{} {} {r} weights {}", c.class, c.config, w.is_some());
                let (v, g) = value_and_grad(loss.as_ref(), &t, &pv, &c.shape, w);
                assert!(v.iter().all(|x| x.is_finite()), "{ctx}: {v:?}");
                if c.has_kernel_reference {
                    let cfg = c.config.clone();
                    let class = c.class;
                    let reference = losskit::CustomLoss::new("reference", move |t: &Tensor, p: &Tensor| {
                        composed(class, &cfg, t, p)
                    })
                    .with_reduction(r);
                    let (v2, g2) = value_and_grad(&reference, &t, &pv, &c.shape, w);
                    for (a, b) in v.iter().zip(&v2) {
                        assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{ctx}: value {a} vs composed {b}");
                    }
                    for (a, b) in g.iter().zip(&g2) {
                        assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{ctx}: grad {a} vs composed {b}");
                    }
                }
                let h = 1e-6;
                for j in 0..pv.len() {
                    let f = |d: f64| {
                        let mut p2 = pv.clone();
                        p2[j] += d;
                        let p = Tensor::from_vec(p2, &c.shape).unwrap();
                        loss.call(&t, &p, w).unwrap().sum_all().to_scalar().unwrap()
                    };
                    let fd = (f(h) - f(-h)) / (2.0 * h);
                    assert!(
                        (fd - g[j]).abs() <= 2e-5 * (1.0 + fd.abs()),
                        "{ctx} element {j}: fd {fd} vs autodiff {}",
                        g[j]
                    );
                }
            }
        }
    }
}
