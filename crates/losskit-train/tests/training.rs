//! Training end to end: the seed's model on the embedded digits, multi-output loss weights,
//! class weights, custom losses, optimizers, weights files, summary, and bad input.

use losskit::{Loss, Reduction, Tensor};
use losskit_train::{datasets, Compile, Dense, Dropout, Ema, Fit, Flatten, Optimizer, Param, Rule, Sequential, Stack};
use std::collections::BTreeMap;

fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

fn seed_model() -> losskit_train::Model {
    Sequential::new()
        .add(Flatten::new())
        .add(Dense::new(512).activation("relu").unwrap())
        .add(Dropout::new(0.2).unwrap())
        .add(Dense::new(10).activation("softmax").unwrap())
}

#[test]
fn the_seed_model_learns_the_digits() {
    // The file's last 20% is a harder group of writers (Keras itself reaches ~87.5% there),
    // so the set is shuffled once before `validation_split` takes the last 20%.
    let data = datasets::digits().unwrap().shuffled(0).unwrap();
    let x = data.x.mul_scalar(1.0 / 16.0).unwrap();
    let mut model = seed_model();
    model
        .compile(Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]))
        .unwrap();
    let history = model.fit(&x, &data.y, Fit::new().epochs(100).validation_split(0.2).verbose(0)).unwrap();
    let val = history.last("val_accuracy").unwrap();
    assert!(val >= 0.95, "val_accuracy {val}");
    let losses = history.get("loss").unwrap();
    assert!(losses[99] < losses[0] / 5.0, "{losses:?}");
    assert_eq!(history.epochs.len(), 100);
    assert_eq!(history.history.keys().collect::<Vec<_>>(), ["accuracy", "loss", "val_accuracy", "val_loss"]);
}

fn set(model: &mut losskit_train::Model, weights: Vec<Tensor>) {
    model.set_weights(&weights).unwrap();
}

/// Two heads on the raw inputs: a = x·[1, 1], b = x·[1, -1] + 0.5.
fn two_heads() -> losskit_train::Model {
    let mut m = Sequential::new().head("a", Stack::new().add(Dense::new(1))).head("b", Stack::new().add(Dense::new(1)));
    m.build(&[2]).unwrap();
    set(&mut m, vec![t(vec![1.0, 1.0], &[2, 1]), t(vec![0.0], &[1]), t(vec![1.0, -1.0], &[2, 1]), t(vec![0.5], &[1])]);
    m
}

#[test]
fn multi_output_loss_weights_by_hand() {
    let x = t(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let ya = t(vec![2.0, 9.0], &[2, 1]);
    let yb = t(vec![0.0, 1.0], &[2, 1]);
    let mut m = two_heads();
    // a_pred = [3, 7]: MSE = ((3-2)² + (7-9)²)/2 = 2.5;  b_pred = [-0.5, -0.5]: MAE = (0.5 + 1.5)/2 = 1.
    let compile = Compile::new().optimizer(Optimizer::sgd(0.1).unwrap()).loss_for("a", "mse").loss_for("b", "mae");
    m.compile(compile.clone().loss_weight("a", 2.0).loss_weight("b", 0.5)).unwrap();
    let logs = m.evaluate(&x, vec![("a", ya.clone()), ("b", yb.clone())], 32, None).unwrap();
    assert!((logs["a_loss"] - 2.5).abs() < 1e-6 && (logs["b_loss"] - 1.0).abs() < 1e-6, "{logs:?}");
    assert!((logs["loss"] - 5.5).abs() < 1e-6, "{logs:?}");
    // Positional weights give the same total.
    let mut m2 = two_heads();
    m2.compile(compile.loss_weights(&[2.0, 0.5])).unwrap();
    assert!(
        (m2.evaluate(&x, vec![("a", ya.clone()), ("b", yb.clone())], 32, None).unwrap()["loss"] - 5.5).abs() < 1e-6
    );
    // One SGD step: ∂La/∂Wa = Σ xᵢ(aᵢ - yᵢ) = [1·1 + 3·(-2), 2·1 + 4·(-2)] = [-5, -6], ×2 (loss weight), ×0.1 (lr).
    let h = m.fit(&x, vec![("a", ya), ("b", yb)], Fit::new().batch_size(2).shuffle(false).verbose(0)).unwrap();
    assert!((h.last("loss").unwrap() - 5.5).abs() < 1e-6);
    let w = m.get_weights();
    assert_eq!(w[0].0, "dense/kernel");
    let wa = w[0].1.to_vec::<f32>();
    assert!((wa[0] - 2.0).abs() < 1e-6 && (wa[1] - 2.2).abs() < 1e-6, "{wa:?}");
    assert!((w[1].1.to_vec::<f32>()[0] - 0.2).abs() < 1e-6);
}

#[test]
fn class_weight_weights_samples_and_divides_by_n() {
    // pred = [1, 2, 3] against y = [1, 0, 1]: squared errors [0, 4, 4].
    let x = t(vec![1.0, 2.0, 3.0], &[3, 1]);
    let y = t(vec![1.0, 0.0, 1.0], &[3, 1]);
    let mut m = Sequential::new().add(Dense::new(1));
    m.build(&[1]).unwrap();
    set(&mut m, vec![t(vec![1.0], &[1, 1]), t(vec![0.0], &[1])]);
    m.compile(Compile::new().optimizer(Optimizer::sgd(0.0).unwrap()).loss("mse")).unwrap();
    let cw: BTreeMap<i64, f64> = [(0, 3.0), (1, 0.5)].into();
    let h = m.fit(&x, &y, Fit::new().batch_size(3).verbose(0).class_weight(cw.clone())).unwrap();
    // Keras: Σ w·l / N = (0.5·0 + 3·4 + 0.5·4) / 3, not / Σw.
    assert!((h.last("loss").unwrap() - 14.0 / 3.0).abs() < 1e-5, "{h:?}");
    // The same through explicit sample weights.
    let h2 = m.fit(&x, &y, Fit::new().batch_size(3).verbose(0).sample_weight(t(vec![0.5, 3.0, 0.5], &[3]))).unwrap();
    assert!((h2.last("loss").unwrap() - 14.0 / 3.0).abs() < 1e-5);
    // Both at once is an error.
    let err = m.fit(&x, &y, Fit::new().verbose(0).class_weight(cw).sample_weight(t(vec![1.0; 3], &[3]))).unwrap_err();
    assert!(err.to_string().contains("cannot be combined"), "{err}");
}

#[test]
fn class_weight_on_one_hot_targets_uses_the_argmax() {
    let x = t(vec![0.0, 0.0], &[2, 1]);
    let y = t(vec![0.0, 1.0, 1.0, 0.0], &[2, 2]);
    let mut m = Sequential::new().add(Dense::new(2).activation("softmax").unwrap());
    m.build(&[1]).unwrap();
    set(&mut m, vec![t(vec![0.0, 0.0], &[1, 2]), t(vec![0.0, 0.0], &[2])]);
    m.compile(Compile::new().optimizer(Optimizer::sgd(0.0).unwrap()).loss("categorical_crossentropy")).unwrap();
    // Uniform predictions: each sample costs ln 2; classes are [1, 0] → weights [4, 1].
    let h = m.fit(&x, &y, Fit::new().verbose(0).class_weight([(1, 4.0)].into())).unwrap();
    assert!((h.last("loss").unwrap() - 5.0 * std::f64::consts::LN_2 / 2.0).abs() < 1e-5);
}

#[test]
fn a_custom_closure_loss_trains_a_model() {
    // y = 2x + 1
    let xs: Vec<f32> = (0..32).map(|i| i as f32 / 16.0 - 1.0).collect();
    let ys: Vec<f32> = xs.iter().map(|x| 2.0 * x + 1.0).collect();
    let (x, y) = (t(xs, &[32, 1]), t(ys, &[32, 1]));
    let mut m = Sequential::new().seed(3).add(Dense::new(1));
    m.compile(
        Compile::new()
            .optimizer(Optimizer::sgd(0.1).unwrap())
            .loss_fn("my_mse", |t: &Tensor, p: &Tensor| p.sub(t)?.square().mean(&[-1], false))
            .metrics(&["mae"]),
    )
    .unwrap();
    let h = m.fit(&x, &y, Fit::new().epochs(200).batch_size(8).verbose(0)).unwrap();
    assert!(h.last("loss").unwrap() < 1e-4, "{:?}", h.last("loss"));
    assert!(h.last("mae").unwrap() < 1e-2);
    let w = m.get_weights();
    assert!((w[0].1.to_vec::<f32>()[0] - 2.0).abs() < 1e-2 && (w[1].1.to_vec::<f32>()[0] - 1.0).abs() < 1e-2);
}

fn one_step(opt: Optimizer, w: Vec<f64>, g: Vec<f64>) -> Vec<f64> {
    let mut opt = opt;
    let n = w.len();
    let mut p = Param { name: "w".into(), value: Tensor::from_vec(w, &[n]).unwrap().requires_grad() };
    opt.apply(&mut [&mut p], &[Tensor::from_vec(g, &[n]).unwrap()]).unwrap();
    p.value.to_vec::<f64>()
}

#[test]
fn a_checked_step_with_a_nan_gradient_changes_nothing() {
    let w0 = vec![1.0f32, -2.0, 0.5];
    let (g1, g2) = (vec![0.5f32, -1.0, 0.25], vec![-0.3f32, 0.7, 0.1]);
    let bad = vec![0.5f32, f32::NAN, 0.25];
    let rules = [
        Optimizer::sgd(0.1).unwrap(),
        Optimizer::sgd_momentum(0.1, 0.9, false).unwrap(),
        Optimizer::sgd_momentum(0.1, 0.9, true).unwrap().clipvalue(0.6).unwrap(),
        Optimizer::adam(0.01).unwrap(),
        Optimizer::adamw(0.01, 0.004).unwrap().clipnorm(1.0).unwrap(),
        Optimizer::rmsprop(0.01).unwrap(),
    ];
    let grad = |g: &[f32]| Tensor::from_vec(g.to_vec(), &[3]).unwrap();
    for opt in rules {
        let what = format!("{:?} {:?}", opt.rule(), opt.clip());
        let (mut checked, mut plain) = (opt.clone(), opt);
        let mut p = Param { name: "w".into(), value: Tensor::from_vec(w0.clone(), &[3]).unwrap().requires_grad() };
        let mut q = p.clone();
        checked.apply(&mut [&mut p], &[grad(&g1)]).unwrap();
        let after_one = p.value.to_vec::<f32>();
        let check = checked.apply_checked(&mut [&mut p], &[grad(&bad)], true).unwrap();
        assert!(!check.applied && !check.finite && check.sum_squares[0].is_nan(), "{what}: {check:?}");
        assert_eq!(p.value.to_vec::<f32>(), after_one, "{what}: weights unchanged");
        assert_eq!(checked.iterations(), 1, "{what}");
        let check = checked.apply_checked(&mut [&mut p], &[grad(&g2)], true).unwrap();
        let want: f64 = g2.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!(check.applied && (check.sum_squares[0] - want).abs() < 1e-6, "{what}: {check:?}");
        // Slots untouched by the rejected step: the same weights as two plain steps.
        plain.apply(&mut [&mut q], &[grad(&g1)]).unwrap();
        plain.apply(&mut [&mut q], &[grad(&g2)]).unwrap();
        assert_eq!(p.value.to_vec::<f32>(), q.value.to_vec::<f32>(), "{what}");
        assert_eq!(checked.state().slots.len(), plain.state().slots.len());
        // Without require_finite the NaN goes through, as Keras would apply it.
        let check = checked.apply_checked(&mut [&mut p], &[grad(&bad)], false).unwrap();
        assert!(check.applied && !check.finite && p.value.to_vec::<f32>()[1].is_nan(), "{what}");
    }
}

#[test]
fn strided_weights_and_gradients_update_as_contiguous_ones() {
    // A weight and a gradient stored column-major (a transposed ndarray, not contiguous in
    // row-major order) take the same step as their row-major copies, for every rule.
    let values = |v: f32| (0..6).map(|i| v + 0.1 * i as f32).collect::<Vec<f32>>();
    let strided = |v: f32| {
        let a = ndarray::Array2::from_shape_vec((3, 2), values(v)).unwrap().reversed_axes();
        Tensor::from_storage(losskit_tensor::Storage::F32(a.into_dyn().into_shared()))
    };
    let contiguous = |v: f32| strided(v).to_vec::<f32>();
    let contiguous = |v: f32| Tensor::from_vec(contiguous(v), &[2, 3]).unwrap();
    assert!(match strided(1.0).storage() {
        losskit_tensor::Storage::F32(a) => !a.is_standard_layout(),
        losskit_tensor::Storage::F64(_) => false,
    });
    let rules = [
        Optimizer::sgd_momentum(0.1, 0.9, true).unwrap(),
        Optimizer::adamw(0.01, 0.004).unwrap().clipvalue(0.3).unwrap(),
        Optimizer::rmsprop(0.01).unwrap(),
    ];
    for opt in rules {
        let what = format!("{:?}", opt.rule());
        let (mut a, mut b) = (opt.clone(), opt);
        let mut p = Param { name: "w".into(), value: strided(0.5).requires_grad() };
        let mut q = Param { name: "w".into(), value: contiguous(0.5).requires_grad() };
        for _ in 0..2 {
            a.apply(&mut [&mut p], &[strided(-0.7)]).unwrap();
            b.apply(&mut [&mut q], &[contiguous(-0.7)]).unwrap();
        }
        assert_eq!(p.value.shape(), &[2, 3], "{what}");
        assert_eq!(p.value.to_vec::<f32>(), q.value.to_vec::<f32>(), "{what}");
        assert!(q.value.to_vec::<f32>()[0] > 0.5, "{what}: the step moved the weight");
    }
}

#[test]
fn optimizer_steps_by_hand() {
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    // RMSprop: v = 0.1·g², step = lr·g/√(v + ε) ≈ lr·√10·sign(g).
    let r = one_step(Optimizer::rmsprop(0.1).unwrap(), vec![1.0, -2.0], vec![0.5, -1.0]);
    assert!(close(&r, &[1.0 - 0.1 * 10f64.sqrt(), -2.0 + 0.1 * 10f64.sqrt()]), "{r:?}");
    // AdamW: decay w·wd·lr first, then the first Adam step ≈ lr·sign(g).
    let a = one_step(Optimizer::adamw(0.1, 0.004).unwrap(), vec![1.0], vec![2.0]);
    assert!(close(&a, &[1.0 - 0.0004 - 0.1]), "{a:?}");
    // Adam's first step is lr·sign(g) whatever |g|.
    assert!(close(&one_step(Optimizer::adam(0.01).unwrap(), vec![0.0], vec![-7.0]), &[0.01]));
    // Clipping: by value, by norm (per tensor), by global norm.
    let s = one_step(Optimizer::sgd(1.0).unwrap().clipvalue(0.3).unwrap(), vec![1.0, -2.0], vec![0.5, -1.0]);
    assert!(close(&s, &[0.7, -1.7]), "{s:?}");
    // A NaN gradient is not clipped into a number (Keras' clip keeps NaN).
    let s = one_step(Optimizer::sgd(1.0).unwrap().clipvalue(0.3).unwrap(), vec![1.0, -2.0], vec![f64::NAN, -1.0]);
    assert!(s[0].is_nan() && close(&s[1..], &[-1.7]), "{s:?}");
    let a = one_step(Optimizer::adam(0.1).unwrap().clipvalue(0.3).unwrap(), vec![1.0, -2.0], vec![f64::NAN, -1.0]);
    assert!(a[0].is_nan() && a[1].is_finite(), "{a:?}");
    let s = one_step(Optimizer::sgd(1.0).unwrap().clipnorm(1.0).unwrap(), vec![0.0, 0.0], vec![3.0, 4.0]);
    assert!(close(&s, &[-0.6, -0.8]), "{s:?}");
    let s = one_step(Optimizer::sgd(1.0).unwrap().global_clipnorm(10.0).unwrap(), vec![0.0, 0.0], vec![3.0, 4.0]);
    assert!(close(&s, &[-3.0, -4.0]), "{s:?}");
    // Momentum: two steps with the same gradient: m = -0.1, then m = -0.1·0.9 - 0.1 = -0.19.
    let mut opt = Optimizer::sgd_momentum(0.1, 0.9, false).unwrap();
    let mut p = Param { name: "w".into(), value: Tensor::from_vec(vec![0.0f64], &[1]).unwrap().requires_grad() };
    for _ in 0..2 {
        opt.apply(&mut [&mut p], &[Tensor::from_vec(vec![1.0f64], &[1]).unwrap()]).unwrap();
    }
    assert!((p.value.to_vec::<f64>()[0] + 0.29).abs() < 1e-12);
    assert_eq!(opt.iterations(), 2);
    // Centered RMSprop with momentum, two steps of g = 2 from w = 1 (ρ 0.9, μ 0.5, lr 0.1):
    // v = 0.4, a = 0.2, i = 0.2/√(v − a² + ε) ≈ 1/3, m = i; then v = 0.76, a = 0.38, m = m/2 + i.
    let rule = losskit_train::Rule::RmsProp { rho: 0.9, momentum: 0.5, epsilon: 1e-7, centered: true };
    let mut opt = Optimizer::new(rule, 0.1).unwrap();
    let mut p = Param { name: "w".into(), value: Tensor::from_vec(vec![1.0f64], &[1]).unwrap().requires_grad() };
    for _ in 0..2 {
        opt.apply(&mut [&mut p], &[Tensor::from_vec(vec![2.0f64], &[1]).unwrap()]).unwrap();
    }
    let w = p.value.to_vec::<f64>()[0];
    assert!((w - 0.2450937191810329).abs() < 1e-12, "{w}");
    // Names resolve with Keras' defaults; bad values are errors.
    assert_eq!(Optimizer::parse("sgd").unwrap().learning_rate(), 0.01);
    assert_eq!(Optimizer::parse("Adam").unwrap().learning_rate(), 0.001);
    assert!(Optimizer::parse("muon").unwrap_err().to_string().contains("unknown optimizer"));
    assert_eq!(Optimizer::parse("adafactor").unwrap().rule(), Rule::ADAFACTOR_DEFAULTS);
    // Keras' use_ema: its range checks, and its serialized form read back.
    let ema = |momentum, overwrite_frequency| Some(Ema { momentum, overwrite_frequency });
    assert!(Optimizer::adam(0.01).unwrap().with_ema(ema(1.5, None)).is_err());
    assert!(Optimizer::adam(0.01).unwrap().with_ema(ema(0.9, Some(0))).is_err());
    let keras = serde_json::json!({"class_name": "Adafactor", "config": {
        "learning_rate": 0.05, "use_ema": true, "ema_momentum": 0.9, "ema_overwrite_frequency": 4,
        "clip_threshold": 0.5}});
    let o = Optimizer::from_keras(&keras).unwrap();
    assert_eq!(o.ema(), ema(0.9, Some(4)));
    assert!(
        matches!(o.rule(), Rule::Adafactor { clip_threshold, beta_2_decay, .. } if clip_threshold == 0.5 && beta_2_decay == -0.8)
    );
    let bad =
        serde_json::json!({"class_name": "Adam", "config": {"use_ema": true, "ema_overwrite_frequency": "often"}});
    assert!(Optimizer::from_keras(&bad).unwrap_err().to_string().contains("ema_overwrite_frequency"));
    assert!(Optimizer::sgd(-1.0).is_err());
    assert!(Optimizer::sgd(0.1).unwrap().clipnorm(0.0).is_err());
}

#[test]
fn weights_round_trip_through_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut a = seed_model().seed(1);
    a.build(&[8, 8]).unwrap();
    a.save_weights(&path).unwrap();
    let mut b = seed_model().seed(2);
    b.build(&[8, 8]).unwrap();
    assert_ne!(a.get_weights()[0].1.to_vec::<f32>(), b.get_weights()[0].1.to_vec::<f32>());
    b.load_weights(&path).unwrap();
    for (wa, wb) in a.get_weights().iter().zip(b.get_weights()) {
        assert_eq!(wa.0, wb.0);
        assert_eq!(wa.1.to_vec::<f32>(), wb.1.to_vec::<f32>());
    }
    let x = datasets::digits().unwrap().x.gather(0, &[0, 1, 2]).unwrap();
    assert_eq!(a.predict(&x, 2).unwrap()[0].to_vec::<f32>(), b.predict(&x, 2).unwrap()[0].to_vec::<f32>());
    // A model of another shape refuses the file; a broken file is an error, not a panic.
    let mut c = Sequential::new().add(Flatten::new()).add(Dense::new(3));
    c.build(&[8, 8]).unwrap();
    assert!(c.load_weights(&path).unwrap_err().to_string().contains("dense/kernel"));
    std::fs::write(dir.path().join("bad.safetensors"), b"junk").unwrap();
    assert!(b.load_weights(dir.path().join("bad.safetensors")).is_err());
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 2, "no temporary files left behind");
}

#[test]
fn summary_lists_layers_shapes_and_params() {
    let mut m = seed_model();
    m.build(&[8, 8]).unwrap();
    let s = m.summary();
    for needle in [
        "flatten (Flatten)",
        "(None, 64)",
        "dense (Dense)",
        "(None, 512)",
        "33,280",
        "dropout (Dropout)",
        "dense_1 (Dense)",
        "5,130",
        "Total params: 38,410",
    ] {
        assert!(s.contains(needle), "{needle} missing:\n{s}");
    }
    assert_eq!(m.count_params(), 38_410);
}

#[test]
fn dropout_only_in_training() {
    let mut m = Sequential::new().add(Dropout::new(0.5).unwrap());
    let x = Tensor::ones(&[4, 8], losskit::DType::F32);
    assert_eq!(m.predict(&x, 4).unwrap()[0].to_vec::<f32>(), vec![1.0; 32]);
    let y = m.forward(&x, true).unwrap()[0].to_vec::<f32>();
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0) && y.contains(&0.0) && y.contains(&2.0), "{y:?}");
}

#[test]
fn activations_match_keras_values() {
    let x = t(vec![-1.0, 0.0, 1.0], &[1, 3]);
    let check = |name: &str, expected: [f32; 3]| {
        let v = losskit_train::Activation::parse(name).unwrap().apply(&x).unwrap().to_vec::<f32>();
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{name}: {v:?} vs {expected:?}");
        }
    };
    check("relu", [0.0, 0.0, 1.0]);
    check("gelu", [-0.158_655_25, 0.0, 0.841_344_7]);
    check("elu", [-0.632_120_56, 0.0, 1.0]);
    check("selu", [-1.111_330_7, 0.0, 1.050_701]);
    check("softplus", [0.313_261_7, std::f32::consts::LN_2, 1.313_261_7]);
    check("tanh", [-0.761_594_2, 0.0, 0.761_594_2]);
    check("sigmoid", [0.268_941_4, 0.5, 0.731_058_6]);
    check("softmax", [0.090_030_57, 0.244_728_48, 0.665_240_9]);
    check("log_softmax", [-2.407_606, -1.407_606, -0.407_606]);
    check("linear", [-1.0, 0.0, 1.0]);
    assert!(losskit_train::Activation::parse("swishy").is_err());
}

#[test]
fn bad_input_is_reported_before_training() {
    let data = datasets::digits().unwrap();
    let x = data.x.gather(0, &(0..20).collect::<Vec<_>>()).unwrap();
    let y = data.y.gather(0, &(0..20).collect::<Vec<_>>()).unwrap();
    let compiled = || {
        let mut m = seed_model();
        m.compile(Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]))
            .unwrap();
        m
    };
    // x / y length mismatch.
    let err = compiled().fit(&x, y.gather(0, &[0, 1, 2]).unwrap(), Fit::new().verbose(0)).unwrap_err();
    assert!(err.to_string().contains("x has 20 samples but y"), "{err}");
    // A label outside the model's classes; the weights stay untouched.
    let mut bad = y.to_vec::<f32>();
    bad[7] = 10.0;
    let mut m = compiled();
    m.build(&[8, 8]).unwrap();
    let before = m.get_weights()[0].1.to_vec::<f32>();
    let err = m.fit(&x, t(bad, &[20]), Fit::new().verbose(0)).unwrap_err();
    assert!(err.to_string().contains("label 10 at position 7") && err.to_string().contains("10 classes"), "{err}");
    assert_eq!(m.get_weights()[0].1.to_vec::<f32>(), before);
    // Unknown names.
    let mut m = seed_model();
    assert!(m
        .compile(Compile::new().optimizer("sgdd").loss("mse"))
        .unwrap_err()
        .to_string()
        .contains("unknown optimizer"));
    assert!(m.compile(Compile::new().loss("msee")).unwrap_err().to_string().contains("unknown loss"));
    assert!(m
        .compile(Compile::new().loss("mse").metrics(&["acuracy"]))
        .unwrap_err()
        .to_string()
        .contains("unknown metric"));
    // A loss that does not fit the output: one-hot CE on sparse labels.
    let mut m = seed_model();
    m.compile(Compile::new().loss("categorical_crossentropy")).unwrap();
    let err = m.fit(&x, &y, Fit::new().verbose(0)).unwrap_err();
    assert!(err.to_string().contains("same shape"), "{err}");
    // Fit before compile.
    assert!(seed_model().fit(&x, &y, Fit::new()).unwrap_err().to_string().contains("compiled"));
    // A loss with reduction none cannot train.
    let mut m = seed_model();
    m.compile(Compile::new().loss_obj(losskit::SparseCategoricalCrossentropy::new().with_reduction(Reduction::None)))
        .unwrap();
    assert!(m.fit(&x, &y, Fit::new().verbose(0)).unwrap_err().to_string().contains("reduction"));
}

#[test]
fn evaluate_and_predict_in_batches() {
    let data = datasets::digits().unwrap();
    let idx: Vec<usize> = (0..50).collect();
    let (x, y) = (data.x.gather(0, &idx).unwrap().mul_scalar(1.0 / 16.0).unwrap(), data.y.gather(0, &idx).unwrap());
    let mut m = seed_model();
    m.compile(
        Compile::new().loss("sparse_categorical_crossentropy").metrics(&["accuracy", "sparse_categorical_accuracy"]),
    )
    .unwrap();
    let a = m.evaluate(&x, &y, 7, None).unwrap();
    let b = m.evaluate(&x, &y, 50, None).unwrap();
    assert!((a["loss"] - b["loss"]).abs() < 1e-5 && a["accuracy"] == b["accuracy"]);
    assert_eq!(a["accuracy"], a["sparse_categorical_accuracy"]);
    let p = m.predict(&x, 7).unwrap();
    assert_eq!(p[0].shape(), &[50, 10]);
    // The loss from the predictions agrees with evaluate.
    let direct = losskit::SparseCategoricalCrossentropy::new().call(&y, &p[0], None).unwrap().to_scalar().unwrap();
    assert!((direct - b["loss"]).abs() < 1e-5);
}

#[test]
fn digits_and_split() {
    let d = datasets::digits().unwrap();
    assert_eq!(d.x.shape(), &[1797, 8, 8]);
    assert_eq!(d.y.shape(), &[1797]);
    let y = d.y.to_vec::<f32>();
    assert!(y.iter().all(|&v| (0.0..=9.0).contains(&v) && v.fract() == 0.0));
    assert!(d.x.to_vec::<f32>().iter().all(|&v| (0.0..=16.0).contains(&v)));
    let (tr, te) = datasets::train_test_split(&d, 0.25, 7).unwrap();
    assert_eq!((tr.len(), te.len()), (1348, 449));
    let (tr2, _) = datasets::train_test_split(&d, 0.25, 7).unwrap();
    assert_eq!(tr.y.to_vec::<f32>(), tr2.y.to_vec::<f32>());
}

#[test]
fn validation_data_is_evaluated_each_epoch() {
    let data = datasets::digits().unwrap().shuffled(1).unwrap();
    let idx: Vec<usize> = (0..200).collect();
    let vidx: Vec<usize> = (200..300).collect();
    let x = data.x.gather(0, &idx).unwrap().mul_scalar(1.0 / 16.0).unwrap();
    let y = data.y.gather(0, &idx).unwrap();
    let vx = data.x.gather(0, &vidx).unwrap().mul_scalar(1.0 / 16.0).unwrap();
    let vy = data.y.gather(0, &vidx).unwrap();
    let mut m = seed_model();
    m.compile(Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy").metrics(&["accuracy"])).unwrap();
    let h = m.fit(&x, &y, Fit::new().epochs(3).verbose(0).validation_data(vx.clone(), vy.clone())).unwrap();
    assert_eq!(h.get("val_loss").unwrap().len(), 3);
    // The last val_loss is evaluate() on the same data with the final weights.
    let logs = m.evaluate(&vx, &vy, 32, None).unwrap();
    assert!((logs["loss"] - h.last("val_loss").unwrap()).abs() < 1e-6);
    assert!((logs["accuracy"] - h.last("val_accuracy").unwrap()).abs() < 1e-9);
}

/// The Keras model-file fixtures (conformance/gen_model_json.py).
fn keras_models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/keras_models")
}

/// What a layer's Keras config says of `key` (units, activation), as Keras' facts list it.
fn layer_fact(layer: &dyn losskit_train::Layer, key: &str) -> serde_json::Value {
    let any: &dyn std::any::Any = layer;
    match (key, any.downcast_ref::<Dense>(), any.downcast_ref::<losskit_train::ActivationLayer>()) {
        ("units", Some(d), _) => serde_json::json!(d.units()),
        ("activation", Some(d), _) => serde_json::json!(d.activation_fn().name()),
        ("activation", _, Some(a)) => serde_json::json!(a.activation().name()),
        _ => serde_json::Value::Null,
    }
}

#[test]
fn keras_model_files_load_train_and_round_trip() {
    let dir = keras_models_dir();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let data = datasets::digits().unwrap();
    let idx: Vec<usize> = (0..40).collect();
    let x = data.x.gather(0, &idx).unwrap().mul_scalar(1.0 / 16.0).unwrap();
    let y = data.y.gather(0, &idx).unwrap();
    for (file, facts) in expected.as_object().unwrap() {
        let keras = losskit_train::load_keras_model(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let model = &keras.model;
        let kinds: Vec<&str> = model.layers().map(|l| l.kind()).collect();
        assert_eq!(serde_json::json!(kinds), facts["layers"], "{file}");
        for (i, layer) in model.layers().enumerate() {
            assert_eq!(layer_fact(layer, "units"), facts["units"][i], "{file} layer {i}");
            let activation = layer_fact(layer, "activation");
            if !activation.is_null() {
                assert_eq!(activation, facts["activations"][i], "{file} layer {i}");
            }
        }
        assert_eq!(model.count_params() as u64, facts["count_params"].as_u64().unwrap(), "{file}");
        assert_eq!(serde_json::json!(keras.input_shape), facts["input_shape"], "{file}");
        let Some(compile) = &keras.compile else {
            assert!(facts.get("optimizer").is_none(), "{file} lost its compile_config");
            continue;
        };
        let opt = compile.optimizer.as_ref().unwrap();
        let class = match opt.rule() {
            losskit_train::Rule::Sgd { .. } => "SGD",
            losskit_train::Rule::Adam { .. } => "Adam",
            losskit_train::Rule::AdamW { .. } => "AdamW",
            losskit_train::Rule::RmsProp { .. } => "RMSprop",
            _ => "another",
        };
        assert_eq!(class, facts["optimizer"], "{file}");
        assert_eq!(opt.learning_rate() as f32, facts["learning_rate"].as_f64().unwrap() as f32, "{file}");
        let loss = compile.loss.as_ref().unwrap();
        let want = facts["loss"].as_str().unwrap();
        assert!(loss.class_name() == want || loss.name() == want, "{file}: {} vs {want}", loss.class_name());
        if let Some(config) = facts["loss_config"].as_object() {
            for key in ["from_logits", "label_smoothing"] {
                if let Some(v) = config.get(key) {
                    assert_eq!(&loss.config()[key], v, "{file} {key}");
                }
            }
        }
        assert_eq!(
            serde_json::json!(compile.metrics),
            facts["metrics"].clone().as_array().cloned().map_or(serde_json::json!([]), serde_json::Value::Array),
            "{file}"
        );
        assert_eq!(serde_json::json!(compile.loss_weights), facts["loss_weights"], "{file}");
        // Compiled as the file says, it trains; written back, it reads back the same.
        let mut model = losskit_train::load_keras_model(dir.join(file)).unwrap().model;
        model.compile(compile.to_compile()).unwrap();
        let targets = if loss.class_name().starts_with("Sparse") {
            y.clone()
        } else {
            Tensor::one_hot(&y.to_dtype(losskit::DType::F64), 10, losskit::DType::F32).unwrap()
        };
        let xs =
            if keras.input_shape.as_deref() == Some(&[64][..]) { x.reshape(&[40, 64]).unwrap() } else { x.clone() };
        let h = model.fit(&xs, &targets, Fit::new().epochs(2).batch_size(8).verbose(0)).unwrap();
        assert!(h.last("loss").unwrap().is_finite(), "{file}");
        let written = model.to_json().unwrap();
        let again = losskit_train::model_from_json(&written).unwrap();
        let mut rebuilt = again.model;
        rebuilt.compile(again.compile.expect("compile_config written").to_compile()).unwrap();
        assert_eq!(rebuilt.to_json().unwrap(), written, "{file}: writing is not stable");
    }
}

#[test]
fn written_models_are_the_committed_golden_files() {
    // Keras reads these back (conformance/gen_model_json.py checks it with model_from_json).
    let mut seed = seed_model();
    seed.build(&[8, 8]).unwrap();
    seed.compile(Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]))
        .unwrap();
    let mut adam = Sequential::new()
        .add(Flatten::new())
        .add(
            Dense::new(16)
                .activation("relu")
                .unwrap()
                .kernel_initializer("he_normal")
                .unwrap()
                .kernel_initializer_seed(Some(3))
                .kernel_regularizer(losskit_train::Regularizer::L2(0.01))
                .bias_regularizer(losskit_train::Regularizer::L1(0.001)),
        )
        .add(Dense::new(10));
    adam.build(&[8, 8]).unwrap();
    let loss = losskit::get("sparse_categorical_crossentropy").unwrap();
    let logits = losskit::build("SparseCategoricalCrossentropy", &serde_json::json!({"from_logits": true})).unwrap();
    drop(loss);
    adam.compile(
        Compile::new()
            .optimizer(Optimizer::adam(0.002).unwrap().clipnorm(1.0).unwrap())
            .loss(logits)
            .loss_weights(&[0.5]),
    )
    .unwrap();
    let dir = keras_models_dir().join("written");
    for (name, model) in [("losskit_seed.json", &seed), ("losskit_adam.json", &adam)] {
        let text = model.to_json().unwrap();
        let path = dir.join(name);
        if std::env::var_os("LOSSKIT_BLESS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (LOSSKIT_BLESS=1 writes it)", path.display()));
        assert_eq!(text, golden, "{name} changed: if on purpose, LOSSKIT_BLESS=1 and check it with gen_model_json.py");
    }
}

#[test]
fn unsupported_keras_layers_and_options_are_errors_naming_them() {
    let dir = keras_models_dir();
    let e = losskit_train::load_keras_model(dir.join("unsupported_conv.json")).err().unwrap().to_string();
    assert!(
        e.contains("Conv2D") && e.contains("InputLayer, Flatten, Reshape, Rescaling, Dense, Dropout, Activation"),
        "{e}"
    );
    assert!(e.contains("unsupported_conv.json"), "{e}");
    let seed = std::fs::read_to_string(dir.join("seed_sgd.json")).unwrap();
    for (from, to, wants) in [
        ("\"seed\": null,\n     \"noise_shape\"", "\"seed\": 7,\n     \"noise_shape\"", "seed 7 is not supported"),
        (
            "\"class_name\": \"SGD\"",
            "\"class_name\": \"Muon\"",
            "\"Muon\" is not supported; supported: SGD, Adam, AdamW, RMSprop, Adagrad, Adamax, Lion, Lamb, Ftrl, Adadelta, Nadam, Adafactor",
        ),
        ("\"class_name\": \"GlorotUniform\"", "\"class_name\": \"Orthogonal\"", "\"Orthogonal\" is not supported"),
        ("\"kernel_constraint\": null", "\"kernel_constraint\": {\"class_name\": \"NonNeg\"}", "kernel_constraint"),
        ("\"class_name\": \"Sequential\"", "\"class_name\": \"Functional\"", "only Sequential"),
    ] {
        assert!(seed.contains(from), "{from}");
        let text = seed.replacen(from, to, 1);
        let e = losskit_train::model_from_json(&text).err().unwrap_or_else(|| panic!("{to} loaded")).to_string();
        assert!(e.contains(wants), "{e:?} lacks {wants:?}");
    }
}

#[test]
fn a_seeded_initializer_ignores_the_model_seed() {
    let kernel = |model_seed: u64, init_seed: Option<u64>| {
        let mut m = Sequential::new()
            .seed(model_seed)
            .add(Dense::new(4).kernel_initializer("he_normal").unwrap().kernel_initializer_seed(init_seed));
        m.build(&[3]).unwrap();
        m.get_weights()[0].1.to_vec::<f32>()
    };
    assert_eq!(kernel(1, Some(3)), kernel(2, Some(3)));
    assert_ne!(kernel(1, None), kernel(2, None));
    assert_ne!(kernel(1, Some(3)), kernel(1, Some(4)));
}

#[test]
fn every_loss_and_optimizer_config_round_trips_through_a_model_file() {
    use losskit_train::{Clip, Rule};
    let model = || {
        let mut m = Sequential::new().add(Flatten::new()).add(Dense::new(3).activation("softmax").unwrap());
        m.build(&[2, 2]).unwrap();
        m
    };
    let read_back = |m: &losskit_train::Model| losskit_train::model_from_json(&m.to_json().unwrap()).unwrap();
    for info in losskit::list() {
        let loss = losskit::get(&info.class_name).unwrap();
        let mut m = model();
        m.compile(Compile::new().optimizer("sgd").loss(losskit::get(&info.class_name).unwrap())).unwrap();
        let back = read_back(&m).compile.unwrap().loss.unwrap();
        assert_eq!(back.class_name(), info.class_name);
        assert_eq!(back.config(), loss.config(), "{}", info.class_name);
    }
    let rules = [
        Rule::Sgd { momentum: 0.0, nesterov: false },
        Rule::Sgd { momentum: 0.9, nesterov: true },
        Rule::Adam { beta_1: 0.8, beta_2: 0.99, epsilon: 1e-6 },
        Rule::AdamW { weight_decay: 0.01, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 },
        Rule::RmsProp { rho: 0.8, momentum: 0.5, epsilon: 1e-7, centered: true },
    ];
    let clips = [Clip::None, Clip::Norm(1.0), Clip::GlobalNorm(2.5), Clip::Value(0.5)];
    for rule in rules {
        for clip in clips {
            let opt = Optimizer::new(rule, 0.03).unwrap().with_clip(clip).unwrap();
            let mut m = model();
            m.compile(Compile::new().optimizer(opt).loss("categorical_crossentropy").metrics(&["accuracy"])).unwrap();
            let back = read_back(&m).compile.unwrap();
            let o = back.optimizer.unwrap();
            assert_eq!((o.rule(), o.clip(), o.learning_rate()), (rule, clip, 0.03), "{rule:?} {clip:?}");
            assert_eq!(back.metrics, vec!["accuracy".to_string()]);
        }
    }
}

#[test]
fn an_epoch_is_bitwise_reproducible_whatever_the_thread_count() {
    // Dropout, Adam (its large-weight update runs on all cores) and the products: the same
    // seed gives the same bits with 1, 2 or 3 threads.
    let data = datasets::digits().unwrap();
    let x = data.x.mul_scalar(1.0 / 16.0).unwrap();
    let epoch = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut m = seed_model().seed(7);
            m.compile(Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy")).unwrap();
            m.fit(&x, &data.y, Fit::new().batch_size(64).verbose(0).seed(3)).unwrap();
            m.get_weights()
                .iter()
                .map(|(_, t)| t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect())
                .collect::<Vec<Vec<u32>>>()
        })
    };
    let one = epoch(1);
    assert_eq!(one, epoch(2));
    assert_eq!(one, epoch(3));
    let mut again = seed_model().seed(7);
    again.compile(Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy")).unwrap();
    assert_ne!(one, epoch_of(&mut again, 4), "another shuffle seed gives other weights");
}

fn epoch_of(m: &mut losskit_train::Model, seed: u64) -> Vec<Vec<u32>> {
    let data = datasets::digits().unwrap();
    let x = data.x.mul_scalar(1.0 / 16.0).unwrap();
    m.fit(&x, &data.y, Fit::new().batch_size(64).verbose(0).seed(seed)).unwrap();
    m.get_weights().iter().map(|(_, t)| t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect()).collect()
}

/// How a data-parallel comparison run is set up.
#[derive(Clone, Copy)]
struct Parallel {
    reduction: &'static str,
    sample_weights: bool,
    class_weights: bool,
    regularized: bool,
    batch: usize,
    samples: usize,
}

impl Default for Parallel {
    fn default() -> Self {
        Parallel {
            reduction: "sum_over_batch_size",
            sample_weights: false,
            class_weights: false,
            regularized: false,
            batch: 64,
            samples: 300,
        }
    }
}

type Trained = (Vec<Vec<f32>>, losskit_train::History);

/// Two epochs of a small MLP (no dropout) on the first digits, with `workers` workers of a
/// [`losskit_train::ThreadGroup`] (each thread its own model and `fit`); rank 0's result.
fn parallel_fit(workers: usize, p: Parallel) -> Trained {
    let data = datasets::digits().unwrap();
    let idx: Vec<usize> = (0..p.samples).collect();
    let x = data.x.gather(0, &idx).unwrap().mul_scalar(1.0 / 16.0).unwrap();
    let y = data.y.gather(0, &idx).unwrap();
    let sw = Tensor::from_vec((0..p.samples).map(|i| 0.25 + (i % 7) as f32 * 0.3).collect::<Vec<f32>>(), &[p.samples])
        .unwrap();
    let run = |group: Option<&losskit_train::ThreadGroup>| -> Trained {
        let mut dense = Dense::new(16).activation("relu").unwrap();
        if p.regularized {
            dense = dense.kernel_regularizer(losskit_train::Regularizer::L2(0.01));
        }
        let mut m =
            Sequential::new().seed(2).add(Flatten::new()).add(dense).add(Dense::new(10).activation("softmax").unwrap());
        let loss =
            losskit::build("sparse_categorical_crossentropy", &serde_json::json!({"reduction": p.reduction})).unwrap();
        m.compile(Compile::new().optimizer(Optimizer::sgd(0.3).unwrap()).loss(loss).metrics(&["accuracy"])).unwrap();
        let mut fit = Fit::new().epochs(2).batch_size(p.batch).validation_split(0.2).seed(5).verbose(0);
        if p.sample_weights {
            fit = fit.sample_weight(sw.clone());
        }
        if p.class_weights {
            fit = fit.class_weight((0..10).map(|c| (c, 0.5 + c as f64 * 0.1)).collect());
        }
        if let Some(g) = group {
            fit = fit.distribute(g);
        }
        let h = m.fit(&x, &y, fit).unwrap();
        (m.get_weights().iter().map(|(_, t)| t.to_vec::<f32>()).collect(), h)
    };
    if workers == 1 {
        return run(None);
    }
    let groups = losskit_train::ThreadGroup::new(workers).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = groups.iter().map(|g| s.spawn(move || run(Some(g)))).collect();
        let results: Vec<Trained> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for r in &results[1..] {
            assert_eq!(r.0, results[0].0, "workers end on different weights");
            assert_eq!(r.1, results[0].1, "workers log different histories");
        }
        results.into_iter().next().unwrap()
    })
}

fn assert_close(a: &Trained, b: &Trained, what: &str) {
    for (wa, wb) in a.0.iter().zip(&b.0) {
        for (x, y) in wa.iter().zip(wb) {
            assert!((x - y).abs() <= 1e-5 + 1e-5 * y.abs(), "{what}: weight {x} vs {y}");
        }
    }
    assert_eq!(a.1.epochs, b.1.epochs);
    for (k, va) in &a.1.history {
        for (x, y) in va.iter().zip(&b.1.history[k]) {
            assert!((x - y).abs() <= 1e-5 + 1e-5 * y.abs(), "{what}: {k} {x} vs {y}");
        }
    }
}

#[test]
fn data_parallel_training_equals_one_process_with_the_global_batch() {
    let cases = [
        ("plain", Parallel::default()),
        ("sample weights", Parallel { sample_weights: true, ..Default::default() }),
        ("class weights", Parallel { class_weights: true, ..Default::default() }),
        ("sum", Parallel { reduction: "sum", sample_weights: true, ..Default::default() }),
        (
            "mean_with_sample_weight",
            Parallel { reduction: "mean_with_sample_weight", sample_weights: true, ..Default::default() },
        ),
        ("regularized", Parallel { regularized: true, ..Default::default() }),
        // 240 training rows in batches of 7: an uneven last batch (2 rows) over 3 workers.
        ("uneven", Parallel { batch: 7, ..Default::default() }),
    ];
    for (what, p) in cases {
        let one = parallel_fit(1, p);
        for workers in [2, 3] {
            assert_close(&parallel_fit(workers, p), &one, &format!("{what}, {workers} workers"));
        }
    }
}

#[test]
fn a_failing_worker_stops_the_others_with_its_error() {
    let data = datasets::digits().unwrap();
    let x = data.x.mul_scalar(1.0 / 16.0).unwrap();
    let groups = losskit_train::ThreadGroup::new(2).unwrap();
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| {
                let (x, y) = (&x, &data.y);
                s.spawn(move || {
                    let mut m =
                        Sequential::new().add(Flatten::new()).add(Dense::new(10).activation("softmax").unwrap());
                    m.compile(Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy")).unwrap();
                    let rank = losskit_train::Collective::rank(g);
                    let mut crash = losskit_train::LambdaCallback::new().on_batch_end(move |b, _| {
                        if rank == 1 && b == 3 {
                            Err(losskit::Error::Config("disk full".into()))
                        } else {
                            Ok(())
                        }
                    });
                    let fit = Fit::new().epochs(3).verbose(0).distribute(g).callback(&mut crash);
                    m.fit(x, y, fit).err().map(|e| e.to_string()).unwrap_or_default()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errors[1].contains("disk full"), "{errors:?}");
    assert!(errors[0].contains("worker 1 of 2 failed") && errors[0].contains("disk full"), "{errors:?}");
}

/// Runs `work(rank's group)` on `workers` threads of a ThreadGroup; each thread's result.
fn on_workers<T: Send>(workers: usize, work: impl Fn(&losskit_train::ThreadGroup) -> T + Sync) -> Vec<T> {
    let groups = losskit_train::ThreadGroup::new(workers).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = groups.iter().map(|g| s.spawn(|| work(g))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn small_model() -> losskit_train::Model {
    let mut m = Sequential::new().seed(4).add(Flatten::new()).add(Dense::new(10).activation("softmax").unwrap());
    m.compile(Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy").metrics(&["accuracy"])).unwrap();
    m
}

#[test]
fn distributed_evaluate_and_predict_equal_one_process() {
    let data = datasets::digits().unwrap();
    let idx: Vec<usize> = (0..103).collect();
    let x = data.x.gather(0, &idx).unwrap().mul_scalar(1.0 / 16.0).unwrap();
    let y = data.y.gather(0, &idx).unwrap();
    let sw = Tensor::from_vec((0..103).map(|i| (i % 5) as f32 * 0.5).collect::<Vec<f32>>(), &[103]).unwrap();
    let one_logs = small_model().evaluate(&x, &y, 16, Some(&sw)).unwrap();
    let one_pred = small_model().predict(&x, 16).unwrap()[0].to_vec::<f32>();
    for workers in [2, 3] {
        let results = on_workers(workers, |g| {
            let mut m = small_model();
            let logs = m.evaluate_distributed(&x, &y, 16, Some(&sw), g).unwrap();
            (logs, m.predict_distributed(&x, 16, g).unwrap()[0].to_vec::<f32>())
        });
        for (logs, pred) in results {
            assert_eq!(pred, one_pred, "{workers} workers");
            for (k, v) in &one_logs {
                assert!((logs[k] - v).abs() < 1e-6, "{workers} workers: {k} {} vs {v}", logs[k]);
            }
        }
    }
}

#[test]
fn a_nan_in_a_data_parallel_run_is_diagnosed_on_every_worker() {
    let data = datasets::digits().unwrap();
    let x = data.x.mul_scalar(1.0 / 16.0).unwrap();
    let errors = on_workers(2, |g| {
        let mut m = Sequential::new()
            .seed(4)
            .add(Flatten::new())
            .add(Dense::new(32).activation("relu").unwrap())
            .add(Dense::new(10).activation("softmax").unwrap());
        m.compile(Compile::new().optimizer(Optimizer::sgd(1e30).unwrap()).loss("sparse_categorical_crossentropy"))
            .unwrap();
        let e = m.fit(&x, &data.y, Fit::new().epochs(2).verbose(0).distribute(g)).expect_err("diverges").to_string();
        (e, m.last_diagnosis().map(|d| (d.epoch, d.batch)))
    });
    for (e, at) in &errors {
        assert!(e.contains("non-finite") || e.contains("NaN") || e.contains("inf"), "{e}");
        assert_eq!(*at, errors[0].1, "the workers disagree on where it happened");
        assert!(at.is_some(), "{e}");
    }
}
