//! Every registered loss through candle equals losskit's own call (values and gradients, f32 and
//! f64, with and without sample weights, each reduction); candle-nn's losses agree with
//! losskit's; a candle training run ends on the same weights with either.

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Optimizer;
use losskit_candle::CandleLoss;
use serde_json::json;

const DEV: Device = Device::Cpu;

#[path = "../../losskit/tests/adapters/patterns.rs"]
mod patterns;
use patterns::{direct, patterns, same, wave, Pattern};

fn candle_tensor(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &DEV).unwrap().to_dtype(dtype).unwrap()
}

/// The same through candle: `Σ loss` backpropagated by candle.
fn through_candle(loss: &CandleLoss, p: &Pattern, w: Option<&[f64]>, f64_: bool) -> (Vec<f64>, Vec<f64>) {
    let dt = if f64_ { DType::F64 } else { DType::F32 };
    let yt = candle_tensor(&p.0, &p.1, dt);
    let yp = Var::from_tensor(&candle_tensor(&p.2, &p.3, dt)).unwrap();
    let sw = w.map(|w| candle_tensor(w, &[w.len()], dt));
    let out = loss.forward(&yt, &yp, sw.as_ref()).unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    let grad = grads.get(&yp).expect("a gradient for y_pred");
    let flat = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    (flat(&out), flat(grad))
}

#[test]
fn every_registered_loss_gives_losskits_values_and_gradients_through_candle() {
    let mut untested = Vec::new();
    for info in losskit::list() {
        let mut compared = 0;
        for reduction in [None, Some("sum"), Some("none")] {
            let config = reduction.map_or(json!({}), |r| json!({"reduction": r}));
            let Ok(loss) = losskit::build(&info.class_name, &config) else { continue };
            let wrapped =
                CandleLoss::from_arc(std::sync::Arc::from(losskit::build(&info.class_name, &config).unwrap()));
            for p in patterns() {
                let weights: Vec<f64> = (0..p.3[0]).map(|i| 0.5 + i as f64 * 0.25).collect();
                for w in [None, Some(weights.as_slice())] {
                    for f64_ in [false, true] {
                        let Some(want) = direct(loss.as_ref(), &p, w, f64_) else { continue };
                        let got = through_candle(&wrapped, &p, w, f64_);
                        // Untracked (evaluation): the value-only path, on candle's buffer where it can.
                        let dt = if f64_ { DType::F64 } else { DType::F32 };
                        let sw = w.map(|w| candle_tensor(w, &[w.len()], dt));
                        let plain = wrapped
                            .forward(&candle_tensor(&p.0, &p.1, dt), &candle_tensor(&p.2, &p.3, dt), sw.as_ref())
                            .unwrap();
                        let plain =
                            plain.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                        let what =
                            format!("{} {config} {:?}->{:?} w={} f64={f64_}", info.class_name, p.1, p.3, w.is_some());
                        same(&got.0, &want.0, &format!("{what}: value"));
                        same(&plain, &want.0, &format!("{what}: untracked value"));
                        same(&got.1, &want.1, &format!("{what}: gradient"));
                        compared += 1;
                    }
                }
            }
        }
        if compared == 0 {
            untested.push(info.class_name);
        }
    }
    assert!(untested.is_empty(), "losses never compared (add a pattern for their inputs): {untested:?}");
}

#[test]
fn candle_nn_losses_agree_with_losskits() {
    let logits = candle_tensor(&wave(15, 0.2, -3.0, 3.0), &[5, 3], DType::F32);
    let labels = Tensor::new(&[2u32, 0, 1, 1, 2], &DEV).unwrap();
    let target = candle_tensor(&wave(15, 1.3, 0.0, 1.0), &[5, 3], DType::F32);
    let binary = candle_tensor(
        &[1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0],
        &[5, 3],
        DType::F32,
    );
    let log_probs = candle_nn::ops::log_softmax(&logits, 1).unwrap();
    type CandleFn = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
    let cases: Vec<(&str, CandleLoss, CandleFn, &Tensor, &Tensor)> = vec![
        (
            "cross_entropy",
            losskit_candle::from_config(
                &json!({"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}}),
            )
            .unwrap(),
            candle_nn::loss::cross_entropy,
            &logits,
            &labels,
        ),
        ("mse", losskit_candle::get("mse").unwrap(), candle_nn::loss::mse, &logits, &target),
        (
            "binary_cross_entropy_with_logit",
            losskit_candle::from_config(&json!({"class_name": "BinaryCrossentropy", "config": {"from_logits": true}}))
                .unwrap(),
            candle_nn::loss::binary_cross_entropy_with_logit,
            &logits,
            &binary,
        ),
        ("nll", losskit_candle::get("NLLLoss").unwrap(), candle_nn::loss::nll, &log_probs, &labels),
    ];
    for (name, ours, theirs, input, target) in cases {
        let x = Var::from_tensor(input).unwrap();
        let a = ours.forward(target, &x, None).unwrap();
        let b = theirs(&x, target).unwrap();
        let (va, vb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!((va - vb).abs() < 1e-5, "{name}: losskit {va} vs candle-nn {vb}");
        let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
        let flat = |g: &Tensor| g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (ga, gb) = (flat(ga.get(&x).unwrap()), flat(gb.get(&x).unwrap()));
        for (i, (p, q)) in ga.iter().zip(&gb).enumerate() {
            assert!((p - q).abs() < 1e-5, "{name} gradient[{i}]: losskit {p} vs candle-nn {q}");
        }
    }
}

/// A two-layer candle-nn model trained 30 SGD steps with `loss`; its final weights.
fn train(loss: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>) -> Vec<Vec<f32>> {
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &DEV);
    let l1 = candle_nn::linear(6, 8, vb.pp("l1")).unwrap();
    let l2 = candle_nn::linear(8, 4, vb.pp("l2")).unwrap();
    // The same starting point for every run (candle's initialisers are not seeded).
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    for (k, name) in names.iter().enumerate() {
        let var = varmap.data().lock().unwrap()[name].clone();
        let n = var.elem_count();
        var.set(&candle_tensor(&wave(n, k as f64, -0.5, 0.5), var.dims(), DType::F32)).unwrap();
    }
    let x = candle_tensor(&wave(60, 0.4, -1.0, 1.0), &[10, 6], DType::F32);
    let y = Tensor::new(&[0u32, 1, 2, 3, 0, 1, 2, 3, 0, 1], &DEV).unwrap();
    let mut sgd = candle_nn::SGD::new(varmap.all_vars(), 0.5).unwrap();
    for _ in 0..30 {
        let logits = l2.forward(&l1.forward(&x).unwrap().relu().unwrap()).unwrap();
        sgd.backward_step(&loss(&logits, &y).unwrap()).unwrap();
    }
    let data = varmap.data().lock().unwrap();
    names.iter().map(|n| data[n].flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

#[test]
fn a_candle_training_run_ends_on_candle_nns_weights() {
    let scce = losskit_candle::from_config(
        &json!({"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}}),
    )
    .unwrap();
    let ours = train(|logits, y| scce.forward(y, logits, None));
    let theirs = train(candle_nn::loss::cross_entropy);
    for (a, b) in ours.iter().zip(&theirs) {
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }
}

#[test]
fn targets_of_every_layout_and_dtype_give_the_same_loss() {
    // One pass converts y_true from candle's storage: a strided view, another float dtype, an
    // integer dtype and a half-precision one (through candle's own conversion) must all read
    // the same values as a contiguous f32 target.
    let scalar = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let mse = losskit_candle::get("mean_squared_error").unwrap();
    let pred = candle_tensor(&wave(12, 0.3, -2.0, 2.0), &[3, 4], DType::F32);
    let target: Vec<f64> = (0..12).map(|i| f64::from(i % 5) - 2.0).collect();
    let want = scalar(&mse.forward(&candle_tensor(&target, &[3, 4], DType::F32), &pred, None).unwrap());
    let transposed =
        candle_tensor(&(0..12).map(|i| target[(i % 3) * 4 + i / 3]).collect::<Vec<_>>(), &[4, 3], DType::F32);
    let strided = transposed.t().unwrap();
    assert!(!strided.is_contiguous());
    for y_true in [
        strided,
        candle_tensor(&target, &[3, 4], DType::F64),
        candle_tensor(&target, &[3, 4], DType::F32).to_dtype(DType::BF16).unwrap(),
        Tensor::from_vec(target.iter().map(|&v| v as i64).collect::<Vec<_>>(), (3, 4), &DEV).unwrap(),
    ] {
        let dtype = y_true.dtype();
        let got = scalar(&mse.forward(&y_true, &pred, None).unwrap());
        assert!((got - want).abs() < 1e-6, "{dtype:?}: {got} vs {want}");
    }
    // Labels of every integer dtype pick the same classes.
    let sparse = losskit_candle::get("sparse_categorical_crossentropy").unwrap();
    let probs = candle_tensor(&[0.2, 0.5, 0.3, 0.6, 0.1, 0.3], &[2, 3], DType::F32);
    let want = scalar(&sparse.forward(&Tensor::new(&[1u32, 2], &DEV).unwrap(), &probs, None).unwrap());
    assert!((want - -(0.5f64.ln() + 0.3f64.ln()) / 2.0).abs() < 1e-6, "{want}");
    for labels in [
        Tensor::new(&[1u8, 2], &DEV).unwrap(),
        Tensor::new(&[1i64, 2], &DEV).unwrap(),
        Tensor::new(&[1.0f64, 2.0], &DEV).unwrap(),
    ] {
        let dtype = labels.dtype();
        let got = scalar(&sparse.forward(&labels, &probs, None).unwrap());
        assert!((got - want).abs() < 1e-6, "{dtype:?}: {got} vs {want}");
    }
}

#[test]
fn bad_input_is_a_candle_error_not_a_panic() {
    let loss = losskit_candle::get("sparse_categorical_crossentropy").unwrap();
    let probs = candle_tensor(&wave(6, 0.0, 0.1, 0.9), &[2, 3], DType::F32);
    let out_of_range = Tensor::new(&[0u32, 7], &DEV).unwrap();
    let e = loss.forward(&out_of_range, &probs, None).unwrap_err().to_string();
    assert!(e.contains("label 7"), "{e}");
    let wrong_rows = Tensor::new(&[0u32, 1, 2], &DEV).unwrap();
    assert!(loss.forward(&wrong_rows, &probs, None).is_err());
    let ints = Tensor::new(&[[1u32, 2, 3], [4, 5, 6]], &DEV).unwrap();
    let e = loss.forward(&out_of_range, &ints, None).unwrap_err().to_string();
    assert!(e.contains("f32 or f64"), "{e}");
    assert!(losskit_candle::get("no_such_loss").unwrap_err().to_string().contains("no_such_loss"));
    // Labels as i64 and u8 work like u32.
    for labels in [Tensor::new(&[2i64, 0], &DEV).unwrap(), Tensor::new(&[2u8, 0], &DEV).unwrap()] {
        assert!(loss.forward(&labels, &probs, None).is_ok());
    }
}

#[test]
fn fused_linear_cross_entropy_equals_candle_nns_matmul_and_cross_entropy() {
    let (n, d, v) = (9, 5, 13);
    let hidden = Var::from_tensor(&candle_tensor(&wave(n * d, 0.1, -1.0, 1.0), &[n, d], DType::F32)).unwrap();
    let weight = Var::from_tensor(&candle_tensor(&wave(v * d, 0.7, -0.5, 0.5), &[v, d], DType::F32)).unwrap();
    let bias = Var::from_tensor(&candle_tensor(&wave(v, 0.3, -0.2, 0.2), &[v], DType::F32)).unwrap();
    let labels = Tensor::new(&[3u32, 0, 12, 5, 5, 7, 1, 9, 2], &DEV).unwrap();
    let fused = losskit_candle::linear_cross_entropy(
        &losskit::LinearCrossEntropy::new(),
        &hidden,
        &weight,
        Some(&bias),
        &labels,
    )
    .unwrap();
    let logits = hidden.matmul(&weight.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
    let naive = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let (a, b) = (fused.to_scalar::<f32>().unwrap(), naive.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    let (ga, gb) = (fused.backward().unwrap(), naive.backward().unwrap());
    for var in [&hidden, &weight, &bias] {
        let flat =
            |g: &candle_core::backprop::GradStore| g.get(var).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (p, q) in flat(&ga).iter().zip(flat(&gb)) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }
}

#[test]
fn a_second_backward_gives_the_same_gradients() {
    // The first backward uses up losskit's graph (its gradient buffer moves into candle); a
    // second one recomputes the forward. On 300 × 256 inputs the loss folds its reduction into
    // the kernel's gradient; it must still equal losskit's own call.
    let (rows, cols) = (300, 256);
    let pred = Var::from_tensor(&candle_tensor(&wave(rows * cols, 0.2, -3.0, 3.0), &[rows, cols], DType::F32)).unwrap();
    let labels: Vec<u32> = (0..rows as u32).map(|r| (r * 7) % cols as u32).collect();
    let y_true = Tensor::new(labels.as_slice(), &DEV).unwrap();
    let weights = candle_tensor(&wave(rows, 0.9, 0.0, 2.0), &[rows], DType::F32);
    let config = json!({"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}});
    let loss = losskit_candle::from_config(&config).unwrap();
    let out = loss.forward(&y_true, &pred, Some(&weights)).unwrap();
    let flat =
        |g: &candle_core::backprop::GradStore| g.get(&pred).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (first, second) = (flat(&out.backward().unwrap()), flat(&out.backward().unwrap()));
    assert_eq!(first, second);
    // losskit's own call on the same data.
    let own = losskit::from_config(&config).unwrap();
    let p = losskit::Tensor::from_vec(pred.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &[rows, cols])
        .unwrap()
        .requires_grad();
    let t = losskit::Tensor::from_vec(labels.iter().map(|&l| l as f32).collect::<Vec<_>>(), &[rows]).unwrap();
    let w = losskit::Tensor::from_vec(weights.to_vec1::<f32>().unwrap(), &[rows]).unwrap();
    let value = own.call(&t, &p, Some(&w)).unwrap();
    let want = value.backward().unwrap().get(&p).unwrap().to_vec::<f32>();
    assert_eq!(out.to_scalar::<f32>().unwrap(), value.to_scalar().unwrap() as f32);
    assert_eq!(first, want);

    // The fused linear cross-entropy (three inputs) likewise.
    let (n, d, v) = (9, 5, 13);
    let hidden = Var::from_tensor(&candle_tensor(&wave(n * d, 0.1, -1.0, 1.0), &[n, d], DType::F32)).unwrap();
    let weight = Var::from_tensor(&candle_tensor(&wave(v * d, 0.7, -0.5, 0.5), &[v, d], DType::F32)).unwrap();
    let bias = Var::from_tensor(&candle_tensor(&wave(v, 0.3, -0.2, 0.2), &[v], DType::F32)).unwrap();
    let labels = Tensor::new(&[3u32, 0, 12, 5, 5, 7, 1, 9, 2], &DEV).unwrap();
    let lce = losskit::LinearCrossEntropy::new();
    let out = losskit_candle::linear_cross_entropy(&lce, &hidden, &weight, Some(&bias), &labels).unwrap();
    let (a, b) = (out.backward().unwrap(), out.backward().unwrap());
    for var in [&hidden, &weight, &bias] {
        let flat =
            |g: &candle_core::backprop::GradStore| g.get(var).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&a), flat(&b));
    }
}

#[test]
fn candle_nn_names_and_order_give_candle_nns_values_and_gradients() {
    let logits = candle_tensor(&wave(15, 0.2, -3.0, 3.0), &[5, 3], DType::F32);
    let labels = Tensor::new(&[2u32, 0, 1, 1, 2], &DEV).unwrap();
    let target = candle_tensor(&wave(15, 1.3, 0.0, 1.0), &[5, 3], DType::F32);
    let log_probs = candle_nn::ops::log_softmax(&logits, 1).unwrap();
    type Pair = (&'static str, Box<dyn Fn(&Tensor) -> Tensor>, Box<dyn Fn(&Tensor) -> Tensor>);
    let (l, t) = (labels.clone(), target.clone());
    let cases: Vec<Pair> = vec![
        (
            "cross_entropy",
            Box::new({
                let l = l.clone();
                move |x| losskit_candle::nn::cross_entropy(x, &l).unwrap()
            }),
            Box::new({
                let l = l.clone();
                move |x| candle_nn::loss::cross_entropy(x, &l).unwrap()
            }),
        ),
        (
            "mse",
            Box::new({
                let t = t.clone();
                move |x| losskit_candle::nn::mse(x, &t).unwrap()
            }),
            Box::new({
                let t = t.clone();
                move |x| candle_nn::loss::mse(x, &t).unwrap()
            }),
        ),
        (
            "binary_cross_entropy_with_logit",
            Box::new({
                let t = t.clone();
                move |x| losskit_candle::nn::binary_cross_entropy_with_logit(x, &t).unwrap()
            }),
            Box::new({
                let t = t.clone();
                move |x| candle_nn::loss::binary_cross_entropy_with_logit(x, &t).unwrap()
            }),
        ),
        (
            "huber 0.5",
            Box::new({
                let t = t.clone();
                move |x| losskit_candle::nn::huber(x, &t, 0.5).unwrap()
            }),
            Box::new({
                let t = t.clone();
                move |x| candle_nn::loss::huber(x, &t, 0.5).unwrap()
            }),
        ),
    ];
    for (name, ours, theirs) in &cases {
        let x = Var::from_tensor(&logits).unwrap();
        let (a, b) = (ours(x.as_tensor()), theirs(x.as_tensor()));
        let (va, vb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!((va - vb).abs() < 1e-5, "{name}: losskit {va} vs candle-nn {vb}");
        let flat = |g: &Tensor| g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (ga, gb) = (flat(a.backward().unwrap().get(&x).unwrap()), flat(b.backward().unwrap().get(&x).unwrap()));
        for (i, (p, q)) in ga.iter().zip(&gb).enumerate() {
            assert!((p - q).abs() < 1e-5, "{name} gradient[{i}]: losskit {p} vs candle-nn {q}");
        }
    }
    // nll on log-probabilities.
    let x = Var::from_tensor(&log_probs).unwrap();
    let (a, b) = (losskit_candle::nn::nll(&x, &labels).unwrap(), candle_nn::loss::nll(&x, &labels).unwrap());
    assert!((a.to_scalar::<f32>().unwrap() - b.to_scalar::<f32>().unwrap()).abs() < 1e-6);
}

#[test]
fn swapped_arguments_are_an_error_not_a_silent_no_op() {
    let output = Var::from_tensor(&candle_tensor(&wave(6, 0.1, 0.0, 1.0), &[2, 3], DType::F32)).unwrap();
    let target = candle_tensor(&wave(6, 0.9, 0.0, 1.0), &[2, 3], DType::F32);
    let mse = losskit_candle::get("mse").unwrap();
    // candle-nn's order given to the Keras-ordered forward: the model's output as y_true.
    let err = mse.forward(output.as_tensor(), &target, None).unwrap_err().to_string();
    assert!(err.contains("losskit_candle::nn") && err.contains("(y_true, y_pred)"), "{err}");
    // Both right orders work and agree.
    let a = mse.forward(&target, output.as_tensor(), None).unwrap().to_scalar::<f32>().unwrap();
    let b = losskit_candle::nn::mse(output.as_tensor(), &target).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(a, b);
}

#[test]
fn half_precision_is_computed_in_f32_and_answered_in_its_dtype() {
    let values = wave(12, 0.3, 0.05, 0.95);
    let labels = Tensor::new(&[2u32, 0, 1, 1], &DEV).unwrap();
    let ce = losskit_candle::get("sparse_categorical_crossentropy").unwrap();
    let x32 = Var::from_tensor(&candle_tensor(&values, &[4, 3], DType::F32)).unwrap();
    let want = ce.forward(&labels, &x32, None).unwrap();
    let want_grad = want.backward().unwrap().get(&x32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let x = Var::from_tensor(&candle_tensor(&values, &[4, 3], dtype)).unwrap();
        let out = ce.forward(&labels, &x, None).unwrap();
        assert_eq!(out.dtype(), dtype);
        let grad = out.backward().unwrap().get(&x).unwrap().clone();
        assert_eq!(grad.dtype(), dtype);
        let v = out.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - want.to_scalar::<f32>().unwrap()).abs() < 1e-2, "{dtype:?}: {v}");
        let g = grad.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (p, q) in g.iter().zip(&want_grad) {
            assert!((p - q).abs() < 1e-2, "{dtype:?} gradient {p} vs {q}");
        }
    }
}

#[test]
fn losskits_error_comes_wrapped_with_its_message() {
    let x = Var::from_tensor(&candle_tensor(&wave(6, 0.1, 0.0, 1.0), &[2, 3], DType::F32)).unwrap();
    let err = losskit_candle::nn::cross_entropy(&x, &Tensor::new(&[0u32, 7], &DEV).unwrap()).unwrap_err();
    // `Error::wrap` (inside a `WithBacktrace` when RUST_BACKTRACE is set).
    let wrapped = match &err {
        candle_core::Error::WithBacktrace { inner, .. } => matches!(**inner, candle_core::Error::Wrapped(_)),
        e => matches!(e, candle_core::Error::Wrapped(_)),
    };
    assert!(wrapped, "{err:?}");
    assert!(err.to_string().contains('7'), "{err}");
}
