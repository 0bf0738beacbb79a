//! Each cause of a NaN loss from the seed's list, provoked on purpose: the data check or the
//! guard's diagnosis names it, nothing panics, and the weights stay at the last good step.

use losskit::Tensor;
use losskit_train::*;

fn grid(n: usize, d: usize, scale: f32) -> Tensor {
    let v: Vec<f32> = (0..n * d).map(|i| scale * (((i * 7919) % 101) as f32 / 101.0 - 0.5)).collect();
    Tensor::from_vec(v, &[n, d]).unwrap()
}

fn targets(x: &Tensor) -> Tensor {
    let n = x.shape()[0];
    let d = x.shape()[1];
    let v = x.to_vec::<f32>();
    let y: Vec<f32> =
        (0..n).map(|i| v[i * d..(i + 1) * d].iter().enumerate().map(|(j, a)| a * (j as f32 + 1.0)).sum()).collect();
    Tensor::from_vec(y, &[n, 1]).unwrap()
}

fn regression(opt: Optimizer) -> Model {
    let mut m = Sequential::new().seed(5).add(Dense::new(8).activation("tanh").unwrap()).add(Dense::new(1));
    m.compile(Compile::new().optimizer(opt).loss("mse")).unwrap();
    m
}

fn weights(m: &Model) -> Vec<Vec<f32>> {
    m.get_weights().iter().map(|(_, t)| t.to_vec::<f32>()).collect()
}

/// Records the weights at the end of every training batch.
#[derive(Default)]
struct LastGood(Option<Vec<Vec<f32>>>);

impl Callback for LastGood {
    fn on_train_batch_end(&mut self, _: usize, _: &Logs, m: &mut Model) -> losskit::Result<()> {
        self.0 = Some(weights(m));
        Ok(())
    }
}

#[test]
fn nan_or_inf_in_the_data_is_named_before_training() {
    let x = grid(32, 3, 2.0);
    let y = targets(&x);
    let mut vals = x.to_vec::<f32>();
    vals[3 * 3 + 1] = f32::NAN;
    vals[20 * 3] = f32::NAN;
    let bad_x = Tensor::from_vec(vals, &[32, 3]).unwrap();
    let mut m = regression(Optimizer::sgd(0.01).unwrap());
    m.build(&[3]).unwrap();
    let before = weights(&m);
    let err = m.fit(&bad_x, &y, Fit::new().verbose(0)).unwrap_err().to_string();
    assert!(err.contains("x contains 2 non-finite values (first: NaN at row 3, column 1)"), "{err}");
    assert_eq!(weights(&m), before);

    let mut yv = y.to_vec::<f32>();
    yv[7] = f32::INFINITY;
    let err = m.fit(&x, Tensor::from_vec(yv, &[32, 1]).unwrap(), Fit::new().verbose(0)).unwrap_err().to_string();
    assert!(err.contains("y contains 1 non-finite value (first: inf at row 7, column 0)"), "{err}");

    let mut w = vec![1.0f32; 32];
    w[2] = f32::NAN;
    let err = m
        .fit(&x, &y, Fit::new().verbose(0).sample_weight(Tensor::from_vec(w, &[32]).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sample_weight contains 1 non-finite value"), "{err}");

    let mut c = Sequential::new().add(Dense::new(1).activation("sigmoid").unwrap());
    c.compile(Compile::new().loss("binary_crossentropy")).unwrap();
    let labels: Vec<f32> = (0..32).map(|i| if i == 9 { 1.5 } else { (i % 2) as f32 }).collect();
    let err = c.fit(&x, Tensor::from_vec(labels, &[32, 1]).unwrap(), Fit::new().verbose(0)).unwrap_err().to_string();
    assert!(
        err.contains("y has 1 value outside [0, 1] (first: 1.5 at row 9, column 0)")
            && err.contains("binary_crossentropy"),
        "{err}"
    );
    let err = c
        .fit(
            &x,
            Tensor::from_vec((0..32).map(|i| (i % 2) as f32).collect(), &[32, 1]).unwrap(),
            Fit::new().verbose(0).class_weight([(0, f64::NAN)].into()),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("class_weight of class 0 is NaN"), "{err}");

    // With the checks off, the guard still stops at the first batch and names the input.
    let err = m
        .fit(&bad_x, &y, Fit::new().verbose(0).check_data(false).shuffle(false).batch_size(8))
        .unwrap_err()
        .to_string();
    let d = m.last_diagnosis().unwrap();
    assert_eq!(d.first, Stage::Input);
    assert_eq!(d.cause, Cause::NonFiniteData);
    assert_eq!((d.epoch, d.batch), (0, 0));
    assert!(err.contains("NaN or Inf in the input data"), "{err}");
    assert_eq!(weights(&m), before, "no step was applied");
}

#[test]
fn unscaled_inputs_with_a_large_learning_rate() {
    let x = grid(64, 3, 2e4);
    let y = targets(&x);
    let mut m = Sequential::new().seed(5).add(Dense::new(1));
    m.compile(Compile::new().optimizer(Optimizer::sgd(0.01).unwrap()).loss("mse")).unwrap();
    let mut last = LastGood::default();
    let err = m.fit(&x, &y, Fit::new().epochs(50).batch_size(16).verbose(0).callback(&mut last)).unwrap_err();
    assert!(m.warnings().iter().any(|w| w.contains("largest |value|") && w.contains("scale")), "{:?}", m.warnings());
    let d = m.last_diagnosis().unwrap();
    assert!(matches!(d.cause, Cause::UnscaledInputs { .. }), "{d}");
    assert!(
        err.to_string().contains("unscaled input features") && err.to_string().contains("scale the inputs"),
        "{err}"
    );
    if let Some(good) = last.0 {
        assert_eq!(weights(&m), good, "weights are those after the last good step");
    }
}

#[test]
fn huge_l2_with_a_learning_rate_above_one() {
    let x = grid(64, 3, 2.0);
    let y = targets(&x);
    let mut m = Sequential::new()
        .seed(5)
        .add(Dense::new(8).activation("tanh").unwrap().kernel_regularizer(Regularizer::L2(100.0)))
        .add(Dense::new(1));
    m.compile(Compile::new().optimizer(Optimizer::sgd(2.0).unwrap()).loss("mse")).unwrap();
    let mut last = LastGood::default();
    let err = m.fit(&x, &y, Fit::new().epochs(50).batch_size(16).verbose(0).callback(&mut last)).unwrap_err();
    let d = m.last_diagnosis().unwrap();
    assert!(matches!(&d.cause, Cause::LargeRegularization { regularizers } if regularizers.contains("L2(100)")), "{d}");
    assert!(err.to_string().contains("lower the L2/L1 factor and the learning rate (2 > 1)"), "{err}");
    assert_eq!(weights(&m), last.0.unwrap());
}

fn exploding(opt: Optimizer) -> (Model, losskit::Result<History>) {
    let x = grid(64, 4, 2.0);
    let y = targets(&x);
    let mut m = Sequential::new().seed(5).add(Dense::new(16)).add(Dense::new(16)).add(Dense::new(1));
    m.compile(Compile::new().optimizer(opt).loss("mse")).unwrap();
    let h = m.fit(&x, &y, Fit::new().epochs(100).batch_size(16).verbose(0));
    (m, h)
}

#[test]
fn exploding_gradients_and_clipnorm_fixes_them() {
    let (m, h) = exploding(Optimizer::sgd(0.3).unwrap());
    let err = h.unwrap_err().to_string();
    let d = m.last_diagnosis().unwrap();
    assert_eq!(d.cause, Cause::ExplodingGradients, "{d}");
    assert!(err.contains("exploding gradients") && err.contains("clipnorm"), "{err}");
    // The report shows the growth: the norms of the last batches, per layer.
    assert!(err.contains("gradient norms per layer") && err.contains("dense_2"), "{err}");
    let totals: Vec<f64> = d.grad_norms.iter().map(|b| b.iter().map(|(_, n)| n * n).sum::<f64>().sqrt()).collect();
    assert!(
        totals.len() >= 2 && totals[totals.len() - 2] > 10.0 * totals[0],
        "the norms grew before the failure: {totals:?}"
    );
    // The same run with clipnorm trains.
    let (_, h) = exploding(Optimizer::sgd(0.3).unwrap().clipnorm(1.0).unwrap());
    let h = h.unwrap();
    let loss = h.get("loss").unwrap();
    let tail = loss[90..].iter().sum::<f64>() / 10.0;
    assert!(loss.iter().all(|l| l.is_finite()) && tail < loss[0] / 3.0, "{:?}", (loss[0], tail));
}

#[test]
fn a_loss_undefined_for_its_predictions() {
    // -ln(p) on a relu output that is exactly 0 for some samples: the loss is infinite while the
    // predictions are finite.
    let x = grid(16, 2, 2.0);
    let y = Tensor::ones(&[16, 1], losskit::DType::F32);
    let mut m = Sequential::new().seed(1).add(Dense::new(1).activation("relu").unwrap());
    m.compile(
        Compile::new()
            .optimizer("sgd")
            .loss_fn("neg_log", |t: &Tensor, p: &Tensor| t.mul(&p.log())?.neg().mean(&[-1], false)),
    )
    .unwrap();
    let err = m.fit(&x, &y, Fit::new().batch_size(16).verbose(0)).unwrap_err().to_string();
    let d = m.last_diagnosis().unwrap();
    assert_eq!(d.first, Stage::Loss, "{d}");
    assert_eq!(d.cause, Cause::LossFunction);
    assert!(err.contains("from_logits=True"), "{err}");
}

#[test]
fn a_finite_loss_with_a_nan_gradient_applies_nothing() {
    // √|p - y| is finite at p = y, its gradient is not (∞·0): the zero-initialised Dense
    // predicts 0, and half the targets are 0.
    let x = grid(16, 3, 2.0);
    let y = Tensor::from_vec((0..16).map(|i| if i % 2 == 0 { 0.0f32 } else { 1.0 }).collect(), &[16, 1]).unwrap();
    for opt in
        [Optimizer::sgd(0.1).unwrap(), Optimizer::sgd_momentum(0.1, 0.9, true).unwrap(), Optimizer::adam(0.01).unwrap()]
    {
        let rule = format!("{:?}", opt.rule());
        let dense = Dense::new(1).kernel_initializer("zeros").unwrap();
        let mut m = Sequential::new().seed(5).add(dense);
        m.compile(Compile::new().optimizer(opt).loss_fn("sqrt_abs", |t, p| p.sub(t)?.abs().sqrt().mean(&[-1], false)))
            .unwrap();
        let err = m.fit(&x, &y, Fit::new().verbose(0).shuffle(false).batch_size(16)).unwrap_err();
        let d = m.last_diagnosis().unwrap();
        assert!(d.loss.is_finite(), "{rule}: the loss is finite, {}", d.loss);
        assert!(matches!(d.first, Stage::Gradient(_)), "{rule}: {d}");
        assert!(err.to_string().contains("NaN") || err.to_string().contains("non-finite"), "{rule}: {err}");
        assert_eq!(weights(&m), [vec![0.0; 3], vec![0.0]], "{rule}: the rejected first step changed nothing");
    }
}

/// A finite loss whose gradient is infinite: `sqrt(p − y)` at `p = y` is 0, its derivative
/// `1 / (2·sqrt(p − y))` is +inf. The guard must judge the gradient, not only the loss (and
/// not only NaN): the step is refused and the weights stay as they were.
#[test]
fn a_finite_loss_with_an_infinite_gradient_is_stopped_with_the_weights_unchanged() {
    let x = grid(16, 3, 1.0).abs().add_scalar(0.5).unwrap();
    let y = Tensor::from_vec(vec![0.0f32; 16], &[16, 1]).unwrap();
    let sqrt_gap = losskit::CustomLoss::new("sqrt_gap", |t: &Tensor, p: &Tensor| p.sub(t)?.sqrt().mean(&[-1], false));
    for planned in [None, Some(false)] {
        let dense = Dense::new(1).with_kernel_initializer(Initializer::Zeros);
        let mut m = Sequential::new().add(dense);
        m.compile(Compile::new().optimizer("sgd").loss(sqrt_gap.clone()).planned_step(planned)).unwrap();
        m.build(&[3]).unwrap();
        let before = weights(&m);
        let err = m.fit(&x, &y, Fit::new().verbose(0).shuffle(false)).unwrap_err();
        assert!(matches!(err, losskit::Error::NonFinite { .. }), "{err}");
        let d = m.last_diagnosis().expect("a diagnosis");
        assert_eq!((d.epoch, d.batch), (0, 0), "{d}");
        assert!(d.loss.is_finite(), "the loss was finite: {}", d.loss);
        assert_eq!(weights(&m), before, "the refused step changed the weights");
    }
}
