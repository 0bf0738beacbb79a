//! Every TFA vector (conformance/tfa_vectors.json), the blog's focal example, triplet mining
//! (the semi-hard negative and the fallback), torchvision's DIoU/CIoU, and gradients against
//! finite differences.
//!
//! Where the TFA vectors come from: TensorFlow-Addons cannot run here (no TensorFlow), so
//! `conformance/gen_tfa_vectors.py` is a float32 NumPy port of TFA 0.23's loss code. The port is
//! checked against every number TFA itself publishes (docstrings and unit tests); 8 of the 24
//! vectors are those published cases (noted "TFA docstring" / "TFA unit test" / "blog"), the
//! other 16 are the port's own numbers. The DIoU/CIoU/GIoU vectors (`box_vectors.json`) come
//! from running torchvision (`conformance/gen_box_vectors.py`).

mod common;

use common::{close, nested, tensor};
use losskit::{DType, Loss, Tensor};
use serde_json::{json, Value};

fn vectors() -> Vec<Value> {
    serde_json::from_str::<Value>(include_str!("../../../conformance/tfa_vectors.json"))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn every_tfa_vector_passes() {
    let mut failures = Vec::new();
    let all = vectors();
    assert_eq!(all.len(), 24);
    // Each vector says where its numbers come from: TFA's own published cases, or the port.
    let published = all.iter().filter(|v| v["source"] == "tfa_published").count();
    let ported = all.iter().filter(|v| v["source"] == "numpy_port").count();
    assert_eq!((published, ported), (8, 16));
    for (i, v) in all.iter().enumerate() {
        let class = v["loss"].as_str().unwrap();
        for dtype in [DType::F32, DType::F64] {
            // The blog case hits the f32 clip bound 1 - 1e-7 = 0.99999988: an f32-only value.
            if dtype == DType::F64 && v["note"].as_str().is_some_and(|n| n.contains("clip")) {
                continue;
            }
            let loss = losskit::build(class, &v["config"]).unwrap();
            let yt = tensor(&v["y_true"], dtype);
            let yp = tensor(&v["y_pred"], dtype);
            let w = v.get("sample_weight").map(|w| tensor(w, dtype));
            // The per-sample values, then the reduced result.
            let per = loss.as_ref().clone_with_reduction_none().call(&yt, &yp, None);
            let out = loss.call(&yt, &yp, w.as_ref());
            match (per, out) {
                (Ok(per), Ok(out)) => {
                    let (_, ep) = nested(&v["per_sample"]);
                    let (_, ee) = nested(&v["expected"]);
                    let (per, out) = (per.to_vec::<f64>(), out.to_vec::<f64>());
                    if per.len() != ep.len() || out.len() != ee.len() {
                        failures.push(format!(
                            "#{i} {class} {dtype}: {} per-sample and {} reduced values, expected {} and {}",
                            per.len(),
                            out.len(),
                            ep.len(),
                            ee.len()
                        ));
                        continue;
                    }
                    for (g, e) in per.iter().zip(&ep).chain(out.iter().zip(&ee)) {
                        if !close(*g, *e) {
                            failures.push(format!("#{i} {class} {} {dtype}: got {g}, expected {e}", v["config"]));
                        }
                    }
                }
                (a, b) => failures.push(format!("#{i} {class}: {:?} {:?}", a.err(), b.err())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A copy of a loss with `reduction: none` (fixed-reduction losses already are).
trait NoneReduction {
    fn clone_with_reduction_none(&self) -> Box<dyn Loss>;
}

impl NoneReduction for dyn Loss {
    fn clone_with_reduction_none(&self) -> Box<dyn Loss> {
        let mut cfg = self.config();
        if cfg.get("reduction").is_some() {
            cfg["reduction"] = json!("none");
        }
        losskit::build(self.class_name(), &cfg).unwrap()
    }
}

#[test]
fn the_blog_focal_example() {
    let y = Tensor::from_vec(vec![0.97f32, 0.91, 0.03], &[3, 1]).unwrap();
    let p = Tensor::from_vec(vec![1.0f32, 1.0, 0.0], &[3, 1]).unwrap();
    let v = losskit::get("SigmoidFocalCrossEntropy").unwrap().call(&y, &p, None).unwrap().to_vec::<f32>();
    let expected = [0.00010971f32, 0.00329749, 0.00030611];
    for (a, b) in v.iter().zip(expected) {
        assert!((a - b).abs() <= 1e-5 * b.abs() + 1e-8, "{v:?}");
    }
}

fn semihard(labels: Vec<f64>, emb: Vec<f64>, d: usize) -> f64 {
    let n = labels.len();
    let l = Tensor::from_vec(labels, &[n]).unwrap();
    let e = Tensor::from_vec(emb, &[n, d]).unwrap();
    losskit::TripletSemiHardLoss::new().call(&l, &e, None).unwrap().to_scalar().unwrap()
}

#[test]
fn triplet_semihard_takes_the_semihard_negative_or_falls_back() {
    // 1-D embeddings: anchor 0 and positive 1 at distance 1; negatives at 1.5 and 3 from the anchor.
    // Semi-hard: the closest negative farther than the positive is at 1.5 → max(1 + 1 - 1.5, 0) = 0.5
    // for (a=0, p=1); for (a=1, p=0): negatives at 0.5 and 2 from x=1 → 2 → max(1 + 1 - 2, 0) = 0.
    let v = semihard(vec![0.0, 0.0, 1.0, 1.0], vec![0.0, 1.0, 1.5, 3.0], 1);
    // Pairs: (0,1) 0.5, (1,0) 0, (2,3) anchor 1.5 pos 3 (d 1.5): negatives from 1.5 at 1.5 and 0.5,
    // none farther than 1.5 → fallback to the farthest (1.5): 1 + 1.5 - 1.5 = 1; (3,2) anchor 3,
    // pos 1.5 (d 1.5): negatives at 3 and 2 → closest farther = 2 → 1 + 1.5 - 2 = 0.5.
    assert!((v - (0.5 + 0.0 + 1.0 + 0.5) / 4.0).abs() < 1e-12, "{v}");
    // The docstring's example: labels [0, 0], one positive pair each way, no negative at all.
    let v = semihard(vec![0.0, 0.0], vec![0.0, 1.0, 1.0, 0.0], 2);
    assert!((v - 2.4142137).abs() < 1e-6, "{v}");
}

/// (class, config, y_true, its shape, y_pred, its shape)
type Case = (&'static str, Value, Vec<f64>, Vec<usize>, Vec<f64>, Vec<usize>);

#[test]
fn tfa_losses_match_finite_differences() {
    let cases: Vec<Case> = vec![
        (
            "SigmoidFocalCrossEntropy",
            json!({"from_logits": true}),
            vec![1.0, 0.0, 0.0, 1.0],
            vec![2, 2],
            vec![0.3, -0.2, 1.1, 0.4],
            vec![2, 2],
        ),
        (
            "GIoULoss",
            json!({}),
            vec![4.0, 3.0, 7.0, 5.0, 5.0, 6.0, 10.0, 7.0],
            vec![2, 4],
            vec![3.0, 4.0, 6.0, 8.0, 4.5, 5.5, 9.0, 8.0],
            vec![2, 4],
        ),
        (
            "GIoULoss",
            json!({"mode": "ciou"}),
            vec![4.0, 3.0, 7.0, 5.0, 5.0, 6.0, 10.0, 7.0],
            vec![2, 4],
            vec![3.0, 4.0, 6.0, 8.0, 4.5, 5.5, 9.0, 8.0],
            vec![2, 4],
        ),
        (
            "TripletSemiHardLoss",
            json!({}),
            vec![0.0, 0.0, 1.0, 1.0, 2.0],
            vec![5],
            vec![0.266, 0.796, 0.818, -0.59, -0.477, -0.01, -0.695, 0.603, 0.656, -0.794],
            vec![5, 2],
        ),
        (
            "GIoULoss",
            json!({"mode": "iou"}),
            vec![4.0, 3.0, 7.0, 5.0, 5.0, 6.0, 10.0, 7.0],
            vec![2, 4],
            vec![3.0, 4.0, 6.0, 8.0, 4.5, 5.5, 9.0, 8.0],
            vec![2, 4],
        ),
        (
            "GIoULoss",
            json!({"mode": "diou"}),
            vec![4.0, 3.0, 7.0, 5.0, 5.0, 6.0, 10.0, 7.0],
            vec![2, 4],
            vec![3.0, 4.0, 6.0, 8.0, 4.5, 5.5, 9.0, 8.0],
            vec![2, 4],
        ),
        (
            "TripletSemiHardLoss",
            json!({"distance_metric": "angular"}),
            vec![0.0, 0.0, 1.0, 1.0, 2.0],
            vec![5],
            vec![0.266, 0.796, 0.818, -0.59, -0.477, -0.01, -0.695, 0.603, 0.656, -0.794],
            vec![5, 2],
        ),
        (
            "TripletSemiHardLoss",
            json!({"distance_metric": "squared-L2"}),
            vec![0.0, 0.0, 1.0, 1.0, 2.0],
            vec![5],
            vec![0.266, 0.796, 0.818, -0.59, -0.477, -0.01, -0.695, 0.603, 0.656, -0.794],
            vec![5, 2],
        ),
        (
            "TripletHardLoss",
            json!({}),
            vec![0.0, 0.0, 1.0, 1.0, 2.0],
            vec![5],
            vec![0.266, 0.796, 0.818, -0.59, -0.477, -0.01, -0.695, 0.603, 0.656, -0.794],
            vec![5, 2],
        ),
        (
            "NpairsMultilabelLoss",
            json!({}),
            vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0],
            vec![3, 3],
            vec![0.5, 0.1, 0.2, -0.3, 0.8, 0.4, 0.2, 0.6, -0.1],
            vec![3, 3],
        ),
        (
            "TripletHardLoss",
            json!({"soft": true}),
            vec![0.0, 0.0, 1.0, 1.0, 2.0],
            vec![5],
            vec![0.266, 0.796, 0.818, -0.59, -0.477, -0.01, -0.695, 0.603, 0.656, -0.794],
            vec![5, 2],
        ),
        ("ContrastiveLoss", json!({}), vec![1.0, 0.0, 0.0, 1.0], vec![4], vec![0.3, 0.4, 1.4, 0.9], vec![4]),
        (
            "NpairsLoss",
            json!({}),
            vec![0.0, 1.0, 0.0],
            vec![3],
            vec![0.5, 0.1, 0.2, -0.3, 0.8, 0.4, 0.2, 0.6, -0.1],
            vec![3, 3],
        ),
        (
            "LiftedStructLoss",
            json!({}),
            vec![0.0, 0.0, 1.0, 1.0],
            vec![4],
            vec![0.1, 0.9, 0.3, 0.7, 0.8, 0.2, 0.6, 0.5],
            vec![4, 2],
        ),
        (
            "PinballLoss",
            json!({"tau": [0.2, 0.7]}),
            vec![1.0, 2.0, 3.0, 4.0],
            vec![2, 2],
            vec![1.5, 1.7, 2.2, 4.9],
            vec![2, 2],
        ),
        (
            "WeightedKappaLoss",
            json!({"num_classes": 3}),
            vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0],
            vec![3, 3],
            vec![0.7, 0.2, 0.1, 0.1, 0.3, 0.6, 0.2, 0.5, 0.3],
            vec![3, 3],
        ),
        (
            "SparsemaxLoss",
            json!({}),
            vec![0.0, 1.0, 0.0, 0.5, 0.5, 0.0],
            vec![2, 3],
            vec![0.3, 0.9, -0.4, 0.2, 0.25, 1.6],
            vec![2, 3],
        ),
    ];
    for (class, cfg, t, ts, p, ps) in cases {
        let loss = losskit::build(class, &cfg).unwrap();
        let t = Tensor::from_vec(t, &ts).unwrap();
        let x = Tensor::from_vec(p.clone(), &ps).unwrap().requires_grad();
        let out = loss.call(&t, &x, None).unwrap();
        let g = out.sum_all().backward().unwrap().get(&x).unwrap().to_vec::<f64>();
        let h = 1e-6;
        for j in 0..p.len() {
            let f = |d: f64| {
                let mut q = p.clone();
                q[j] += d;
                loss.call(&t, &Tensor::from_vec(q, &ps).unwrap(), None).unwrap().sum_all().to_scalar().unwrap()
            };
            let fd = (f(h) - f(-h)) / (2.0 * h);
            assert!((fd - g[j]).abs() <= 1e-5 * (1.0 + fd.abs()), "{class} {cfg} element {j}: fd {fd} vs {}", g[j]);
        }
    }
}

/// torchvision's `generalized_box_iou_loss`, `distance_box_iou_loss` and `complete_box_iou_loss`
/// (`conformance/box_vectors.json`): per-box values, and gradients for GIoU and DIoU. CIoU's
/// gradient differs on purpose: torchvision treats `α = v/(1 - IoU + v)` as a constant, losskit
/// differentiates through it (its CIoU gradient is checked against finite differences above).
#[test]
fn giou_diou_ciou_match_torchvision() {
    let all: Vec<Value> = serde_json::from_str(include_str!("../../../conformance/box_vectors.json")).unwrap();
    assert_eq!(all.len(), 3);
    for v in &all {
        let mode = v["mode"].as_str().unwrap();
        let loss = losskit::build("GIoULoss", &json!({"mode": mode, "reduction": "none"})).unwrap();
        let (shape, t) = nested(&v["y_true"]);
        let (_, p) = nested(&v["y_pred"]);
        let x = Tensor::from_vec(p, &shape).unwrap().requires_grad();
        let out = loss.call(&Tensor::from_vec(t, &shape).unwrap(), &x, None).unwrap();
        let (_, expected) = nested(&v["expected"]);
        let got = out.to_vec::<f64>();
        assert_eq!(got.len(), expected.len(), "{mode}");
        // torchvision's CIoU calls its DIoU part with its default eps = 1e-7 whatever eps it is
        // given (1e-7 added to the union and the enclosing diagonal): ~1e-8 apart from exact.
        let rtol = if mode == "ciou" { 1e-6 } else { 1e-10 };
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= rtol * (1.0 + e.abs()), "{mode}: {got:?} vs {expected:?}");
        }
        if let Some(grad) = v.get("grad") {
            let (_, eg) = nested(grad);
            let g = out.sum_all().backward().unwrap().get(&x).unwrap().to_vec::<f64>();
            assert_eq!(g.len(), eg.len(), "{mode}");
            for (a, b) in g.iter().zip(&eg) {
                assert!((a - b).abs() <= 1e-10 * (1.0 + b.abs()), "{mode} gradient: {g:?} vs {eg:?}");
            }
        }
    }
}
