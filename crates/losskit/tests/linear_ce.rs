//! LinearCrossEntropy: the fused path equals the naive one (matmul, then cross-entropy from
//! logits) in values and in the gradients of hidden, weight and bias, for every option.

use losskit::{DType, LinearCrossEntropy, Loss, Reduction, Tensor};
use serde_json::json;

/// A deterministic problem: `n` tokens of `d` features, `v` classes; every 5th token ignored.
struct Problem {
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor,
    labels: Tensor,
}

fn problem(n: usize, d: usize, v: usize, dtype: DType) -> Problem {
    let t = |len: usize, f: &dyn Fn(usize) -> f64, shape: &[usize]| {
        Tensor::from_vec((0..len).map(f).collect::<Vec<f64>>(), shape).unwrap().to_dtype(dtype).requires_grad()
    };
    let labels: Vec<f64> = (0..n).map(|i| if i % 5 == 2 { -100.0 } else { ((i * 7 + 1) % v) as f64 }).collect();
    Problem {
        hidden: t(n * d, &|i| ((i * 13 + 5) as f64 * 0.71).sin(), &[n, d]),
        weight: t(v * d, &|i| ((i * 3 + 2) as f64 * 0.29).cos() * 0.6, &[v, d]),
        bias: t(v, &|i| (i as f64 * 0.4).sin() * 0.3, &[v]),
        labels: Tensor::from_vec(labels, &[n]).unwrap(),
    }
}

/// Value and the gradients of (hidden, weight, bias) of `out` reduced with `upstream` weights.
fn value_and_grads(out: &Tensor, p: &Problem, upstream: Option<&Tensor>) -> (Vec<f64>, [Vec<f64>; 3]) {
    let total = match upstream {
        Some(u) => out.mul(u).unwrap().sum_all(),
        None => out.sum_all(),
    };
    let g = total.backward().unwrap();
    let grad = |t: &Tensor| g.get(t).map(|x| x.to_vec::<f64>()).unwrap_or_default();
    (out.to_vec::<f64>(), [grad(&p.hidden), grad(&p.weight), grad(&p.bias)])
}

fn logits(p: &Problem) -> Tensor {
    p.hidden.matmul(&p.weight.transpose(None).unwrap()).unwrap().add(&p.bias).unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

fn assert_same(fused: &(Vec<f64>, [Vec<f64>; 3]), naive: &(Vec<f64>, [Vec<f64>; 3]), tol: f64, case: &str) {
    assert_close(&fused.0, &naive.0, tol, &format!("{case}: value"));
    for (k, name) in ["d hidden", "d weight", "d bias"].iter().enumerate() {
        assert!(!naive.1[k].is_empty(), "{case}: {name} missing");
        assert_close(&fused.1[k], &naive.1[k], tol, &format!("{case}: {name}"));
    }
}

#[test]
fn fused_equals_matmul_then_sparse_categorical_crossentropy_from_logits() {
    let sparse =
        losskit::build("SparseCategoricalCrossentropy", &json!({"from_logits": true, "ignore_class": -100})).unwrap();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        // 19 tokens, 6 features, 11 classes: nothing divides anything.
        let p = problem(19, 6, 11, dtype);
        let fused = LinearCrossEntropy::new().with_reduction(Reduction::SumOverBatchSize);
        let out = fused.forward(&p.hidden, &p.weight, Some(&p.bias), &p.labels).unwrap();
        let got = value_and_grads(&out, &p, None);
        let want = value_and_grads(&sparse.call(&p.labels, &logits(&p), None).unwrap(), &p, None);
        assert_same(&got, &want, tol, &format!("{dtype:?}"));
    }
}

#[test]
fn fused_equals_pytorch_cross_entropy_with_weights_smoothing_and_ignored_tokens() {
    let weights: Vec<f64> = (0..11).map(|c| 0.5 + (c % 3) as f64 * 0.5).collect();
    for reduction in ["mean", "sum", "none"] {
        let config = json!({"weight": weights, "ignore_index": -100, "label_smoothing": 0.15, "reduction": reduction});
        let torch = losskit::build("CrossEntropyLoss", &config).unwrap();
        let fused = LinearCrossEntropy::from_config(&config).unwrap();
        let p = problem(23, 5, 11, DType::F32);
        let upstream =
            Tensor::from_vec((0..23).map(|i| 0.5 + i as f64 / 23.0).collect(), &[23]).unwrap().to_dtype(DType::F32);
        let up = (reduction == "none").then_some(&upstream);
        let got = value_and_grads(&fused.forward(&p.hidden, &p.weight, Some(&p.bias), &p.labels).unwrap(), &p, up);
        let want = value_and_grads(&torch.call(&p.labels, &logits(&p), None).unwrap(), &p, up);
        assert_same(&got, &want, 1e-5, reduction);
        // The Loss form on logits is the same loss.
        let on_logits = value_and_grads(&fused.call(&p.labels, &logits(&p), None).unwrap(), &p, up);
        assert_same(&on_logits, &want, 1e-5, &format!("{reduction} on logits"));
    }
}

#[test]
fn soft_cap_and_z_loss_equal_their_formulas_on_tensor_ops() {
    let (cap, lambda) = (2.5, 1e-3);
    let fused = LinearCrossEntropy::new()
        .with_ignore_index(None)
        .with_softcap(Some(cap))
        .unwrap()
        .with_z_loss(lambda)
        .unwrap()
        .with_reduction(Reduction::Sum);
    let mut p = problem(13, 4, 9, DType::F64);
    p.labels = Tensor::from_vec((0..13).map(|i| (i % 9) as f64).collect(), &[13]).unwrap();
    let got = value_and_grads(&fused.forward(&p.hidden, &p.weight, Some(&p.bias), &p.labels).unwrap(), &p, None);
    // cap·tanh(z/cap), then Σ_i (lse_i - z_{i,y}) + λ·lse_i².
    let z = logits(&p).mul_scalar(1.0 / cap).unwrap().tanh().mul_scalar(cap).unwrap();
    let lse = z.logsumexp(&[1], false).unwrap();
    let picked = z.take_along_last(&p.labels).unwrap();
    let naive = lse.sub(&picked).unwrap().add(&lse.square().mul_scalar(lambda).unwrap()).unwrap().sum_all();
    let want = value_and_grads(&naive, &p, None);
    assert_same(&got, &want, 1e-9, "cap + z-loss");
}

#[test]
fn without_bias_leading_axes_and_sample_weights() {
    let p = problem(12, 3, 7, DType::F64);
    let hidden = p.hidden.reshape(&[3, 4, 3]).unwrap();
    let labels = p.labels.reshape(&[3, 4]).unwrap();
    let sw = Tensor::from_vec(vec![1.0, 0.5, 2.0], &[3, 1]).unwrap();
    let loss = LinearCrossEntropy::new().with_reduction(Reduction::Mean);
    let fused = loss.forward_weighted(&hidden, &p.weight, None, &labels, Some(&sw)).unwrap();
    let flat = hidden.reshape(&[12, 3]).unwrap().matmul(&p.weight.transpose(None).unwrap()).unwrap();
    let logits = flat.reshape(&[3, 4, 7]).unwrap();
    let naive = loss.call(&labels, &logits, Some(&sw)).unwrap();
    assert_eq!(fused.shape(), &[] as &[usize]);
    let (g1, g2) = (fused.backward().unwrap(), naive.backward().unwrap());
    assert_close(&fused.to_vec::<f64>(), &naive.to_vec::<f64>(), 1e-12, "value");
    for t in [&p.hidden, &p.weight] {
        assert_close(&g1.get(t).unwrap().to_vec::<f64>(), &g2.get(t).unwrap().to_vec::<f64>(), 1e-12, "grad");
    }
    assert!(g1.get(&p.bias).is_none(), "no bias, no bias gradient");
}

#[test]
fn the_result_does_not_depend_on_the_number_of_threads() {
    // Products above the parallel threshold (64·256·300 multiply-adds), split into blocks.
    let p = problem(64, 256, 300, DType::F32);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let out = LinearCrossEntropy::new().forward(&p.hidden, &p.weight, Some(&p.bias), &p.labels).unwrap();
            value_and_grads(&out, &p, None)
        })
    };
    let (one, four) = (run(1), run(4));
    assert_eq!(one.0, four.0);
    assert_eq!(one.1, four.1);
}

#[test]
fn bad_input_is_a_clear_error() {
    let p = problem(6, 3, 5, DType::F32);
    let loss = LinearCrossEntropy::new();
    let bad_labels = Tensor::from_vec(vec![0.0, 1.0, 5.0, 2.0, 3.0, 4.0], &[6]).unwrap();
    let e = loss.forward(&p.hidden, &p.weight, Some(&p.bias), &bad_labels).unwrap_err().to_string();
    assert!(e.contains("label 5") && e.contains("0..5"), "{e}");
    let e = loss.forward(&p.hidden, &p.weight.reshape(&[3, 5]).unwrap(), None, &p.labels).unwrap_err().to_string();
    assert!(e.contains("weight of shape [3, 5]"), "{e}");
    let short = Tensor::from_vec(vec![0.0; 4], &[4]).unwrap();
    let e = loss.forward(&p.hidden, &p.weight, None, &short).unwrap_err().to_string();
    assert!(e.contains("labels of shape [4]"), "{e}");
    let empty = Tensor::zeros(&[0, 3], DType::F32);
    let e = loss.forward(&empty, &p.weight, None, &Tensor::zeros(&[0], DType::F32)).unwrap_err().to_string();
    assert!(e.contains("no tokens"), "{e}");
    let e = LinearCrossEntropy::new().with_label_smoothing(1.5).unwrap_err().to_string();
    assert!(e.contains("label_smoothing"), "{e}");
}

#[test]
fn config_round_trips_through_the_registry() {
    let loss = LinearCrossEntropy::new()
        .with_label_smoothing(0.1)
        .unwrap()
        .with_softcap(Some(30.0))
        .unwrap()
        .with_z_loss(1e-4)
        .unwrap()
        .with_class_weights(vec![1.0, 2.0])
        .unwrap()
        .with_ignore_index(None)
        .with_reduction(Reduction::Sum);
    let again = losskit::from_config(&losskit::serialize(&loss)).unwrap();
    assert_eq!(again.config(), loss.config());
    assert_eq!(again.class_name(), "LinearCrossEntropy");
    assert_eq!(losskit::get("linear_cross_entropy").unwrap().config()["ignore_index"], json!(-100));
    assert!(losskit::list().iter().any(|i| i.class_name == "LinearCrossEntropy"));
}
