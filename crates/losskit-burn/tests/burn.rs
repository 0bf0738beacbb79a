//! Every registered loss through burn equals losskit's own call (values and gradients, f32 and
//! f64, with and without sample weights, each reduction) on both CPU backends; burn-nn's losses
//! agree with losskit's; a burn training run ends on the same weights with either; the
//! swapped-argument trap and half-precision inputs.

#![allow(deprecated)] // burn 0.22 deprecates NdArray (for Flex); both are tested.

#[path = "../../losskit/tests/adapters/patterns.rs"]
mod patterns;

#[path = "common/digits.rs"]
mod digits;

use burn::module::Module;
use burn::nn::loss::{
    BinaryCrossEntropyLossConfig, CrossEntropyLossConfig, HuberLossConfig, MseLoss, Reduction as BurnReduction,
};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};
use losskit_burn::{BurnLoss, Targets};
use patterns::{direct, patterns, same, wave, Pattern};
use serde_json::json;

fn options(device: &Device, f64_: bool) -> TensorCreationOptions {
    TensorCreationOptions::new(device.clone()).with_dtype(if f64_ { DType::F64 } else { DType::F32 })
}

fn tensor<const D: usize>(v: &[f64], shape: &[usize], f64_: bool, device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(v.to_vec(), shape.to_vec()), options(device, f64_))
}

/// Values of any rank as targets.
fn targets(v: &[f64], shape: &[usize], f64_: bool, device: &Device) -> Targets {
    match shape.len() {
        1 => tensor::<1>(v, shape, f64_, device).into(),
        2 => tensor::<2>(v, shape, f64_, device).into(),
        3 => tensor::<3>(v, shape, f64_, device).into(),
        r => panic!("targets of rank {r}"),
    }
}

fn flat<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// The same through burn on `device` (an autodiff device): `Σ loss` backpropagated by burn.
fn through_burn(loss: &BurnLoss, p: &Pattern, w: Option<&[f64]>, f64_: bool, device: &Device) -> (Vec<f64>, Vec<f64>) {
    match p.3.len() {
        2 => through_burn_rank::<2>(loss, p, w, f64_, device),
        3 => through_burn_rank::<3>(loss, p, w, f64_, device),
        r => panic!("y_pred of rank {r}"),
    }
}

fn through_burn_rank<const D: usize>(
    loss: &BurnLoss,
    p: &Pattern,
    w: Option<&[f64]>,
    f64_: bool,
    device: &Device,
) -> (Vec<f64>, Vec<f64>) {
    let yp = tensor::<D>(&p.2, &p.3, f64_, device).require_grad();
    let yt = targets(&p.0, &p.1, f64_, device);
    let out = match w {
        Some(w) => loss.forward_weighted(yp.clone(), yt, tensor::<1>(w, &[w.len()], f64_, device)),
        None => loss.forward(yp.clone(), yt),
    }
    .unwrap();
    let grads = out.clone().sum().backward();
    let grad = yp.grad(&grads).expect("a gradient for y_pred");
    assert_eq!(grad.dtype(), yp.dtype());
    (flat(out), flat(grad))
}

/// The value alone through burn on `device` (no autodiff): the value-only path.
fn value_untracked(loss: &BurnLoss, p: &Pattern, w: Option<&[f64]>, f64_: bool, device: &Device) -> Vec<f64> {
    let yt = || targets(&p.0, &p.1, f64_, device);
    let out = match (p.3.len(), w) {
        (2, None) => loss.forward(tensor::<2>(&p.2, &p.3, f64_, device), yt()),
        (3, None) => loss.forward(tensor::<3>(&p.2, &p.3, f64_, device), yt()),
        (2, Some(w)) => {
            loss.forward_weighted(tensor::<2>(&p.2, &p.3, f64_, device), yt(), tensor::<1>(w, &[w.len()], f64_, device))
        }
        (3, Some(w)) => {
            loss.forward_weighted(tensor::<3>(&p.2, &p.3, f64_, device), yt(), tensor::<1>(w, &[w.len()], f64_, device))
        }
        (r, _) => panic!("y_pred of rank {r}"),
    };
    flat(out.unwrap())
}

#[test]
fn every_registered_loss_gives_losskits_values_and_gradients_through_burn() {
    let devices = [Device::flex().autodiff(), Device::ndarray().autodiff()];
    let mut untested = Vec::new();
    for info in losskit::list() {
        let mut compared = 0;
        for reduction in [None, Some("sum"), Some("none")] {
            let config = reduction.map_or(json!({}), |r| json!({"reduction": r}));
            let Ok(loss) = losskit::build(&info.class_name, &config) else { continue };
            let wrapped = BurnLoss::from_arc(std::sync::Arc::from(losskit::build(&info.class_name, &config).unwrap()));
            for (k, p) in patterns().iter().enumerate() {
                let weights: Vec<f64> = (0..p.3[0]).map(|i| 0.5 + i as f64 * 0.25).collect();
                for w in [None, Some(weights.as_slice())] {
                    for f64_ in [false, true] {
                        let Some(want) = direct(loss.as_ref(), p, w, f64_) else { continue };
                        // Both backends on a third of the cases, Flex on the rest.
                        let on = if k % 3 == 0 { &devices[..] } else { &devices[..1] };
                        for device in on {
                            let got = through_burn(&wrapped, p, w, f64_, device);
                            let what = format!(
                                "{} {config} {:?}->{:?} w={} f64={f64_} {device:?}",
                                info.class_name,
                                p.1,
                                p.3,
                                w.is_some()
                            );
                            same(&got.0, &want.0, &format!("{what}: value"));
                            let plain = value_untracked(&wrapped, p, w, f64_, &device.clone().inner());
                            same(&plain, &want.0, &format!("{what}: untracked value"));
                            same(&got.1, &want.1, &format!("{what}: gradient"));
                        }
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

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: losskit {x} vs burn-nn {y}");
    }
}

/// `loss(x)` and its gradient with respect to `x`, from a fresh leaf.
fn value_and_grad(x: &Tensor<2>, loss: impl Fn(Tensor<2>) -> Tensor<1>) -> (Vec<f64>, Vec<f64>) {
    let x = x.clone().detach().require_grad();
    let out = loss(x.clone());
    let grads = out.backward();
    (flat(out), flat(x.grad(&grads).unwrap()))
}

#[test]
fn burn_nn_losses_agree_with_losskits() {
    let device = Device::flex().autodiff();
    let logits = tensor::<2>(&wave(15, 0.2, -3.0, 3.0), &[5, 3], false, &device);
    let labels = Tensor::<1, Int>::from_ints([2, 0, 1, 1, 2], &device);
    let target = tensor::<2>(&wave(15, 1.3, 0.0, 1.0), &[5, 3], false, &device);
    let bits = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0];
    let binary = Tensor::<1, Int>::from_ints(bits, &device).reshape([5, 3]);
    let binary_f = tensor::<2>(&bits.map(f64::from), &[5, 3], false, &device);
    let sparse = |config| {
        losskit_burn::from_config(&json!({"class_name": "SparseCategoricalCrossentropy", "config": config})).unwrap()
    };
    type Case = (&'static str, Box<dyn Fn(Tensor<2>) -> Tensor<1>>, Box<dyn Fn(Tensor<2>) -> Tensor<1>>);
    let (l1, l2, l3, t1, t2, b1, bf) = (
        labels.clone(),
        labels.clone(),
        labels.clone(),
        target.clone(),
        target.clone(),
        binary.clone(),
        binary_f.clone(),
    );
    let cases: Vec<Case> = vec![
        (
            "cross-entropy from logits",
            Box::new(move |x| sparse(json!({"from_logits": true})).forward(x, l1.clone()).unwrap()),
            Box::new(move |x| CrossEntropyLossConfig::new().init(&Device::flex().autodiff()).forward(x, l2.clone())),
        ),
        (
            "cross-entropy with smoothing 0.1",
            // Keras smooths one-hot targets: the categorical loss on burn's smoothed targets.
            Box::new(move |x| {
                let one_hot: Tensor<2> = l3.clone().one_hot::<2>(3).float();
                losskit_burn::from_config(&json!({"class_name": "CategoricalCrossentropy", "config": {"from_logits": true, "label_smoothing": 0.1}}))
                    .unwrap()
                    .forward(x, one_hot)
                    .unwrap()
            }),
            Box::new({
                let l = labels.clone();
                move |x| {
                    CrossEntropyLossConfig::new()
                        .with_smoothing(Some(0.1))
                        .init(&Device::flex().autodiff())
                        .forward(x, l.clone())
                }
            }),
        ),
        (
            "mse",
            Box::new(move |x| losskit_burn::get("mse").unwrap().forward(x, t1.clone()).unwrap()),
            Box::new(move |x| MseLoss::new().forward(x, t2.clone(), BurnReduction::Mean)),
        ),
        (
            "huber (delta 0.5)",
            Box::new({
                let t = target.clone();
                move |x| losskit_burn::get("huber").unwrap().with("delta", 0.5).unwrap().forward(x, t.clone()).unwrap()
            }),
            Box::new({
                let t = target.clone();
                move |x| HuberLossConfig::new(0.5).init().forward(x, t.clone(), BurnReduction::Mean)
            }),
        ),
        (
            "binary cross-entropy from logits",
            Box::new(move |x| {
                losskit_burn::from_config(&json!({"class_name": "BinaryCrossentropy", "config": {"from_logits": true}}))
                    .unwrap()
                    .forward(x, bf.clone())
                    .unwrap()
            }),
            Box::new(move |x| {
                BinaryCrossEntropyLossConfig::new()
                    .with_logits(true)
                    .init(&Device::flex().autodiff())
                    .forward(x, b1.clone())
            }),
        ),
    ];
    for (name, ours, theirs) in &cases {
        let (va, ga) = value_and_grad(&logits, ours);
        let (vb, gb) = value_and_grad(&logits, theirs);
        close(&va, &vb, 1e-5, &format!("{name}: value"));
        close(&ga, &gb, 1e-5, &format!("{name}: gradient"));
    }
}

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(burn::tensor::activation::relu(self.hidden.forward(x)))
    }
}

/// 30 SGD steps of a small MLP on a fixed batch with `loss`, from the same initial weights;
/// the final weights.
fn train(init: &Mlp, loss: impl Fn(Tensor<2>, Tensor<1, Int>) -> Tensor<1>) -> Vec<f64> {
    let device = Device::flex().autodiff();
    let x = tensor::<2>(&wave(64, 0.4, -1.0, 1.0), &[16, 4], false, &device);
    let y = Tensor::<1, Int>::from_ints([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2, 1, 2, 0, 1], &device);
    let mut model = init.clone();
    let mut optim = SgdConfig::new().init();
    for _ in 0..30 {
        let l = loss(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(0.1, model, grads);
    }
    [model.hidden.weight.val(), model.out.weight.val()].into_iter().flat_map(flat).collect()
}

#[test]
fn a_burn_training_run_ends_on_burn_nns_weights() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let init = Mlp { hidden: LinearConfig::new(4, 8).init(&device), out: LinearConfig::new(8, 3).init(&device) };
    let ce = losskit_burn::get("sparse_categorical_crossentropy").unwrap().from_logits(true).unwrap();
    let ours = train(&init, |logits, y| ce.forward(logits, y).unwrap());
    let burn_ce = CrossEntropyLossConfig::new().init(&device);
    let theirs = train(&init, |logits, y| burn_ce.forward(logits, y));
    close(&ours, &theirs, 1e-4, "weights after 30 steps");
    let start: Vec<f64> = [init.hidden.weight.val(), init.out.weight.val()].into_iter().flat_map(flat).collect();
    assert!(ours.iter().zip(&start).any(|(a, b)| (a - b).abs() > 1e-2), "training moved the weights");
}

#[test]
fn swapped_arguments_are_an_error_not_a_silent_no_op() {
    let device = Device::flex().autodiff();
    let model_output = tensor::<2>(&wave(6, 0.1, 0.0, 1.0), &[2, 3], false, &device).require_grad();
    let target = tensor::<2>(&wave(6, 0.9, 0.0, 1.0), &[2, 3], false, &device);
    let mse = losskit_burn::get("mse").unwrap();
    // Keras' order given to burn's forward: the target first.
    let err = mse.forward(target.clone(), model_output.clone()).unwrap_err().to_string();
    assert!(err.contains("forward(input, target)") && err.contains("BurnLoss::call"), "{err}");
    // Keras' order through `call` works, as does burn's through forward.
    let a = flat(mse.call(target.clone(), model_output.clone(), None).unwrap());
    let b = flat(mse.forward(model_output, target).unwrap());
    assert_eq!(a, b);
}

#[test]
fn an_untracked_input_gives_the_value_without_a_graph() {
    let device = Device::flex().autodiff();
    let x = tensor::<2>(&wave(12, 0.5, -2.0, 2.0), &[4, 3], false, &device);
    let labels = Tensor::<1, Int>::from_ints([0, 2, 1, 1], &device);
    let ce = losskit_burn::get("sparse_categorical_crossentropy").unwrap().from_logits(true).unwrap();
    let tracked = ce.forward(x.clone().require_grad(), labels.clone()).unwrap();
    let untracked = ce.forward(x.clone(), labels.clone()).unwrap();
    assert!(tracked.is_tracked() && !untracked.is_tracked());
    assert_eq!(flat(tracked), flat(untracked.clone()));
    // Without autodiff at all (the inner backend).
    let plain = ce.forward(x.inner(), labels.inner()).unwrap();
    assert_eq!(flat(plain), flat(untracked));
}

#[test]
fn half_precision_inputs_compute_in_f32_and_answer_in_their_dtype() {
    let device = Device::flex().autodiff();
    let v = wave(12, 0.3, 0.05, 0.95);
    let y = Tensor::<1, Int>::from_ints([2, 0, 1, 1], &device);
    let ce = losskit_burn::get("sparse_categorical_crossentropy").unwrap();
    let f32_x = tensor::<2>(&v, &[4, 3], false, &device);
    let (want, want_grad) = value_and_grad(&f32_x, |x| ce.forward(x, y.clone()).unwrap());
    for dtype in [DType::F16, DType::BF16] {
        let x = f32_x.clone().cast(dtype).detach().require_grad();
        let out = ce.forward(x.clone(), y.clone()).unwrap();
        assert_eq!(out.dtype(), dtype);
        let grad = x.grad(&out.backward()).unwrap();
        assert_eq!(grad.dtype(), dtype);
        // Rounded to the dtype: within its precision (bf16 has 8 bits of mantissa).
        close(&flat(out), &want, 1e-2, &format!("{dtype:?} value"));
        close(&flat(grad), &want_grad, 1e-2, &format!("{dtype:?} gradient"));
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let device = Device::flex().autodiff();
    let x = tensor::<2>(&wave(6, 0.1, 0.0, 1.0), &[2, 3], false, &device).require_grad();
    let ce = losskit_burn::get("sparse_categorical_crossentropy").unwrap();
    let out_of_range = ce.forward(x.clone(), Tensor::<1, Int>::from_ints([0, 7], &device)).unwrap_err();
    assert!(out_of_range.to_string().contains('7'), "{out_of_range}");
    let wrong_rows = losskit_burn::get("mse").unwrap().forward(x, tensor::<2>(&[0.0; 9], &[3, 3], false, &device));
    assert!(wrong_rows.is_err());
    assert!(losskit_burn::get("no_such_loss").is_err());
}

#[test]
fn a_burn_mlp_learns_the_digits_with_a_losskit_loss() {
    let focal = losskit_burn::get("categorical_focal_crossentropy").unwrap().from_logits(true).unwrap();
    let accuracy = digits::accuracy(&Device::flex(), &focal, true, 8);
    assert!(accuracy >= 0.95, "validation accuracy {accuracy}");
}

#[test]
fn config_structs_build_the_keras_loss_with_its_fields() {
    let device = Device::flex().autodiff();
    let logits = tensor::<2>(&wave(12, 0.4, -2.0, 2.0), &[4, 3], false, &device);
    let one_hot = tensor::<2>(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], &[4, 3], false, &device);
    let typed =
        losskit_burn::CategoricalFocalCrossentropyConfig::new().with_gamma(3.0).with_from_logits(true).init().unwrap();
    let by_name = losskit_burn::LossConfig::new("categorical_focal_crossentropy")
        .with("gamma", 3.0)
        .with("from_logits", true)
        .init()
        .unwrap();
    let by_json = losskit_burn::from_config(
        &json!({"class_name": "CategoricalFocalCrossentropy", "config": {"gamma": 3.0, "from_logits": true}}),
    )
    .unwrap();
    let value = |l: &BurnLoss| flat(l.forward(logits.clone(), one_hot.clone()).unwrap());
    assert_eq!(value(&typed), value(&by_json));
    assert_eq!(value(&by_name), value(&by_json));
    // gamma matters: the default (2) gives another value.
    let default = losskit_burn::CategoricalFocalCrossentropyConfig::new().with_from_logits(true).init().unwrap();
    assert_ne!(value(&default), value(&typed));
    assert!(losskit_burn::LossConfig::new("huber").with("no_such_field", 1).init().is_err());
}
