//! The planned (tape-free, allocation-free) training step against the tape's step: the same
//! weights, History and NaN diagnoses, bit for bit, on the models it runs; the reason in the
//! error when it is required and not possible.

use losskit::{DType, Tensor};
use losskit_train::*;

/// `n` samples of `shape`, values in about [-1, 1].
fn inputs(n: usize, shape: &[usize], dtype: DType) -> Tensor {
    let per: usize = shape.iter().product();
    let v: Vec<f64> = (0..n * per).map(|i| (((i * 7919) % 211) as f64 / 105.0 - 1.0) * 0.9).collect();
    let dims: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
    Tensor::from_vec(v, &dims).unwrap().to_dtype(dtype)
}

/// Class labels `(n,)` from the first feature (learnable), as f32.
fn labels(x: &Tensor, classes: usize) -> Tensor {
    let n = x.shape()[0];
    let per = x.numel() / n;
    let v = x.to_vec::<f64>();
    let y: Vec<f32> =
        (0..n).map(|i| (((v[i * per] + 1.0) * classes as f64 / 2.0) as usize).min(classes - 1) as f32).collect();
    Tensor::from_vec(y, &[n]).unwrap()
}

fn one_hot(y: &Tensor, classes: usize) -> Tensor {
    let l = y.to_vec::<f32>();
    let mut v = vec![0.0f32; l.len() * classes];
    for (i, &c) in l.iter().enumerate() {
        v[i * classes + c as usize] = 1.0;
    }
    Tensor::from_vec(v, &[l.len(), classes]).unwrap()
}

/// A model description, built afresh for each path.
type Build = dyn Fn() -> Model;

/// What a run ends with: the weights (as bits), the History (as bits), the error if any.
type Outcome = (Vec<Vec<u64>>, Vec<(String, Vec<u64>)>, Option<String>);

/// The [`Outcome`] of a `fit` through the planned step or the tape's.
fn run(
    build: &Build,
    compile: &dyn Fn() -> Compile,
    x: &Tensor,
    y: &Tensor,
    fit: &dyn Fn() -> Fit<'static>,
    planned: bool,
) -> Outcome {
    let mut m = build();
    m.compile(compile().planned_step(Some(planned))).unwrap();
    let outcome = m.fit(x, y.clone(), fit());
    outcome_of(&m, outcome)
}

/// The model's weights and the run's History (as bits), or its error.
fn outcome_of(m: &Model, outcome: losskit::Result<History>) -> Outcome {
    let weights =
        m.get_weights().iter().map(|(_, t)| t.to_vec::<f64>().iter().map(|v| v.to_bits()).collect()).collect();
    match outcome {
        Ok(h) => {
            let hist = h.history.iter().map(|(k, v)| (k.clone(), v.iter().map(|v| v.to_bits()).collect())).collect();
            (weights, hist, None)
        }
        Err(e) => (weights, Vec::new(), Some(e.to_string())),
    }
}

fn same_on_both_paths(
    what: &str,
    build: &Build,
    compile: &dyn Fn() -> Compile,
    x: &Tensor,
    y: &Tensor,
    fit: &dyn Fn() -> Fit<'static>,
) {
    let tape = run(build, compile, x, y, fit, false);
    let planned = run(build, compile, x, y, fit, true);
    assert_eq!(planned.2, tape.2, "{what}: the outcome");
    assert_eq!(planned.1, tape.1, "{what}: the History");
    assert_eq!(planned.0, tape.0, "{what}: the weights");
}

fn seed_model(hidden: usize, classes: usize, dtype: DType) -> Model {
    Sequential::new()
        .seed(3)
        .with_dtype(dtype)
        .add(Flatten::new())
        .add(Dense::new(hidden).activation("relu").unwrap())
        .add(Dropout::new(0.2).unwrap())
        .add(Dense::new(classes).activation("softmax").unwrap())
}

#[test]
fn the_seed_model_trains_to_the_same_bits() {
    let x = inputs(100, &[4, 6], DType::F32);
    let y = labels(&x, 10);
    for (opt, batch) in [("sgd", 32), ("adam", 16), ("rmsprop", 100)] {
        let compile =
            move || Compile::new().optimizer(opt).loss("sparse_categorical_crossentropy").metrics(&["accuracy"]);
        // The validation split is evaluated each epoch through the same path.
        let fit = move || Fit::new().epochs(3).batch_size(batch).verbose(0).validation_split(0.2);
        same_on_both_paths(&format!("{opt}/{batch}"), &|| seed_model(32, 10, DType::F32), &compile, &x, &y, &fit);
    }
}

#[test]
fn a_batch_large_enough_for_parallel_gathers_and_masks_gives_the_same_bits_on_any_thread_count() {
    // Batches of 128 × 300 inputs and 128 × 512 dropout masks: both drawn in parallel pieces.
    let x = inputs(256, &[300], DType::F32);
    let y = labels(&x, 10);
    let compile = || Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy");
    let fit = || Fit::new().epochs(2).batch_size(128).verbose(0).seed(5);
    let build = || seed_model(512, 10, DType::F32);
    let on = |threads: usize, planned: bool| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run(&build, &compile, &x, &y, &fit, planned))
    };
    let tape = on(2, false);
    assert_eq!(tape.2, None);
    for threads in [1, 2, 3] {
        assert_eq!(on(threads, true), tape, "{threads} threads");
    }
}

#[test]
fn other_activations_losses_dtypes_and_guard_settings_too() {
    let x = inputs(70, &[12], DType::F64);
    let y = labels(&x, 5);
    // Sigmoid and tanh, no bias, f64, categorical cross-entropy with smoothing, from logits.
    let build = || {
        Sequential::new()
            .seed(9)
            .with_dtype(DType::F64)
            .add(Dense::new(16).activation("tanh").unwrap())
            .add(Dense::new(8).activation("sigmoid").unwrap().use_bias(false))
            .add(Dense::new(5))
    };
    let compile = || {
        Compile::new()
            .optimizer(Optimizer::sgd_momentum(0.1, 0.9, true).unwrap().clipnorm(0.5).unwrap())
            .loss_obj(losskit::CategoricalCrossentropy::new().with_from_logits(true).with_label_smoothing(0.1).unwrap())
            .metrics(&["categorical_accuracy"])
    };
    let fit = || Fit::new().epochs(2).batch_size(32).verbose(0).nan_guard(false);
    same_on_both_paths("f64 CCE from logits", &build, &compile, &x, &one_hot(&y, 5), &fit);
    // f32 data into an f64 model, a sum reduction, labels shaped (n, 1).
    let x32 = x.to_dtype(DType::F32);
    let compile = || {
        Compile::new()
            .optimizer(Optimizer::adam(0.01).unwrap())
            .loss_obj(losskit::SparseCategoricalCrossentropy::new().with_reduction(losskit::Reduction::Sum))
    };
    let build = || seed_model(16, 5, DType::F64);
    let fit = || Fit::new().epochs(2).batch_size(20).verbose(0);
    same_on_both_paths("f64 model, sum", &build, &compile, &x32, &y.reshape(&[70, 1]).unwrap(), &fit);
}

#[test]
fn sample_and_class_weights_weigh_the_loss_as_the_tapes_step_does() {
    let x = inputs(90, &[4, 6], DType::F32);
    let y = labels(&x, 10);
    let build = || seed_model(32, 10, DType::F32);
    let weights: Vec<f32> = (0..90).map(|i| [0.5, 2.0, 1.0, 0.0, 3.25][i % 5]).collect();
    let w = Tensor::from_vec(weights.clone(), &[90]).unwrap();
    // Every reduction (mean_with_sample_weight divides by the batch's weight sum).
    for reduction in
        [losskit::Reduction::SumOverBatchSize, losskit::Reduction::Sum, losskit::Reduction::MeanWithSampleWeight]
    {
        let compile = move || {
            Compile::new()
                .optimizer("adam")
                .loss_obj(losskit::SparseCategoricalCrossentropy::new().with_reduction(reduction))
                .metrics(&["accuracy"])
        };
        let w = w.clone();
        // The validation rows' weights weigh the validation loss (the planned forward pass).
        let fit = move || Fit::new().epochs(2).batch_size(16).verbose(0).sample_weight(w.clone()).validation_split(0.2);
        same_on_both_paths(&format!("sample weights, {reduction:?}"), &build, &compile, &x, &y, &fit);
    }
    // Weights shaped (n, 1), f64 weights into an f32 model; class weights.
    let compile = || Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy");
    let w2 = w.to_dtype(DType::F64).reshape(&[90, 1]).unwrap();
    let fit = move || Fit::new().epochs(2).batch_size(32).verbose(0).sample_weight(w2.clone());
    same_on_both_paths("(n, 1) f64 sample weights", &build, &compile, &x, &y, &fit);
    let classes: std::collections::BTreeMap<i64, f64> = (0..10).map(|c| (c, 0.25 + c as f64 * 0.5)).collect();
    let fit = move || Fit::new().epochs(2).batch_size(32).verbose(0).class_weight(classes.clone());
    same_on_both_paths("class weights", &build, &compile, &x, &y, &fit);
    // A batch whose weights are all 0 under mean_with_sample_weight: a loss of 0, no gradient.
    let zeros =
        Tensor::from_vec((0..90).map(|i| if i < 30 { 0.0f32 } else { 1.0 }).collect::<Vec<_>>(), &[90]).unwrap();
    let compile = || {
        Compile::new().optimizer("sgd").loss_obj(
            losskit::SparseCategoricalCrossentropy::new().with_reduction(losskit::Reduction::MeanWithSampleWeight),
        )
    };
    let fit = move || Fit::new().epochs(1).batch_size(30).verbose(0).shuffle(false).sample_weight(zeros.clone());
    same_on_both_paths("a batch weighing 0", &build, &compile, &x, &y, &fit);
    // A large output: the weighted reduction folded into the kernel's gradient.
    let big = |l: usize| Sequential::new().seed(4).add(Dense::new(l).activation("softmax").unwrap());
    let y1000 = labels(&x, 1000);
    let compile = || Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy");
    let fit = move || Fit::new().epochs(2).batch_size(90).verbose(0).sample_weight(w.clone());
    same_on_both_paths("1000 classes, sample weights", &move || big(1000), &compile, &x, &y1000, &fit);
}

#[test]
fn a_large_output_folds_the_reduction_as_the_tape_does() {
    // 70 × 1000 outputs: the loss' reduction is folded into the kernel's gradient (≥ 2¹⁶).
    let x = inputs(70, &[6], DType::F32);
    let y = labels(&x, 1000);
    let build = || Sequential::new().seed(4).add(Dense::new(1000).activation("softmax").unwrap());
    let compile = || Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy");
    let fit = || Fit::new().epochs(2).batch_size(70).verbose(0);
    same_on_both_paths("1000 classes", &build, &compile, &x, &y, &fit);
}

#[test]
fn the_guard_stops_the_same_step_with_the_same_diagnosis() {
    // A learning rate far too high: the loss overflows after a few steps.
    let x = inputs(64, &[8], DType::F32);
    let y = labels(&x, 4);
    let build = || {
        Sequential::new()
            .seed(2)
            .add(Dense::new(32).activation("relu").unwrap())
            .add(Dense::new(32).activation("relu").unwrap())
            .add(Dense::new(4).activation("softmax").unwrap())
    };
    let compile = || Compile::new().optimizer(Optimizer::sgd(1e35).unwrap()).loss("sparse_categorical_crossentropy");
    let fit = || Fit::new().epochs(20).batch_size(16).verbose(0);
    let tape = run(&build, &compile, &x, &y, &fit, false);
    let err = tape.2.as_deref().unwrap_or_default();
    assert!(err.contains("gradient norms per layer"), "the tape's run must stop with a diagnosis: {err}");
    same_on_both_paths("guard", &build, &compile, &x, &y, &fit);
}

/// The same with L1L2 and L2 regularizers: the penalties measured with the norms, their
/// gradients added for the diagnosis only when the step is refused.
#[test]
fn the_guard_stops_a_regularized_step_with_the_same_diagnosis() {
    let x = inputs(64, &[8], DType::F32);
    let y = labels(&x, 4);
    for lr in [1e35, 1e30] {
        let build = || {
            Sequential::new()
                .seed(2)
                .add(Dense::new(32).activation("relu").unwrap().kernel_regularizer(Regularizer::L2(1e-2)))
                .add(
                    Dense::new(32)
                        .activation("relu")
                        .unwrap()
                        .kernel_regularizer(Regularizer::L1L2 { l1: 1e-3, l2: 1e-3 })
                        .bias_regularizer(Regularizer::L1(1e-2)),
                )
                .add(Dense::new(4).activation("softmax").unwrap())
        };
        let compile =
            move || Compile::new().optimizer(Optimizer::sgd(lr).unwrap()).loss("sparse_categorical_crossentropy");
        let fit = || Fit::new().epochs(20).batch_size(16).verbose(0);
        let tape = run(&build, &compile, &x, &y, &fit, false);
        let err = tape.2.as_deref().unwrap_or_default();
        assert!(err.contains("gradient norms per layer"), "lr {lr}: the tape's run must stop with a diagnosis: {err}");
        same_on_both_paths(&format!("guard, lr {lr}"), &build, &compile, &x, &y, &fit);
    }
}

/// Every rule with its options, and weight decay, `use_ema` and each clipping, on a model whose
/// first kernel (64 × 2100: its update in parallel pieces, its norm in parallel groups) and
/// bias are regularized: the penalties' gradients folded into the update (or, for Lamb and
/// Adafactor, added first) give the tape's bits, on 1, 2 and 3 threads.
#[test]
fn every_rule_folds_the_penalties_into_its_update_to_the_tapes_bits() {
    let x = inputs(48, &[64], DType::F32);
    let y = labels(&x, 4);
    let build = || {
        Sequential::new()
            .seed(9)
            .add(
                Dense::new(2100)
                    .activation("relu")
                    .unwrap()
                    .kernel_regularizer(Regularizer::L1L2 { l1: 1e-5, l2: 1e-4 })
                    .bias_regularizer(Regularizer::L1(1e-3)),
            )
            .add(Dense::new(4).activation("softmax").unwrap().kernel_regularizer(Regularizer::L2(1e-3)))
    };
    let rms = Rule::RmsProp { rho: 0.9, momentum: 0.5, epsilon: 1e-7, centered: true };
    let ema = Ema { momentum: 0.9, overwrite_frequency: Some(2) };
    let optimizers: Vec<(&str, Optimizer)> = vec![
        ("sgd", Optimizer::sgd(0.05).unwrap()),
        ("sgd nesterov + clipvalue", Optimizer::sgd_momentum(0.05, 0.9, true).unwrap().clipvalue(0.01).unwrap()),
        ("adam + clipnorm", Optimizer::adam(1e-3).unwrap().clipnorm(0.5).unwrap()),
        ("adam amsgrad + ema", Optimizer::adam(1e-3).unwrap().with_amsgrad(true).unwrap().with_ema(Some(ema)).unwrap()),
        ("adamw + global_clipnorm", Optimizer::adamw(1e-3, 0.01).unwrap().global_clipnorm(0.5).unwrap()),
        ("rmsprop centered momentum + decay", Optimizer::new(rms, 1e-3).unwrap().with_weight_decay(0.01).unwrap()),
        ("adagrad", Optimizer::parse("adagrad").unwrap()),
        ("adamax", Optimizer::parse("adamax").unwrap()),
        ("lion", Optimizer::parse("lion").unwrap()),
        ("lamb", Optimizer::parse("lamb").unwrap()),
        ("ftrl", Optimizer::parse("ftrl").unwrap()),
        ("adadelta", Optimizer::parse("adadelta").unwrap()),
        ("nadam + ema", Optimizer::parse("nadam").unwrap().with_ema(Some(ema)).unwrap()),
        ("adafactor", Optimizer::parse("adafactor").unwrap()),
    ];
    let fit = || Fit::new().epochs(2).batch_size(16).verbose(0);
    for (what, opt) in optimizers {
        let compile = || Compile::new().optimizer(opt.clone()).loss("sparse_categorical_crossentropy");
        let tape = run(&build, &compile, &x, &y, &fit, false);
        assert_eq!(tape.2, None, "{what}");
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let planned = pool.install(|| run(&build, &compile, &x, &y, &fit, true));
            assert_eq!(planned.1, tape.1, "{what}, {threads} threads: the History");
            assert_eq!(planned.0, tape.0, "{what}, {threads} threads: the weights");
        }
    }
}

#[test]
fn required_but_impossible_names_the_reason() {
    let x = inputs(8, &[3], DType::F32);
    let y = labels(&x, 2);
    let mut m =
        Sequential::new().add(Dense::new(4)).add(Halve::default()).add(Dense::new(2).activation("softmax").unwrap());
    m.compile(Compile::new().loss("sparse_categorical_crossentropy").planned_step(Some(true))).unwrap();
    let err = m.fit(&x, &y, Fit::new().verbose(0)).unwrap_err().to_string();
    assert!(err.contains("planned_step(Some(true))") && err.contains("halve") && err.contains("your own"), "{err}");
}

/// A layer of the user's own: `x/2`, no weights.
#[derive(Default)]
struct Halve {
    name: String,
    output: Option<Vec<usize>>,
}

impl Layer for Halve {
    fn kind(&self) -> &'static str {
        "Halve"
    }
    fn name(&self) -> &str {
        if self.name.is_empty() {
            "halve"
        } else {
            &self.name
        }
    }
    fn set_name(&mut self, name: String) {
        self.name = name;
    }
    fn build(&mut self, input: &[usize], _: DType, _: &mut losskit_tensor::random::Rng) -> losskit::Result<Vec<usize>> {
        self.output = Some(input.to_vec());
        Ok(input.to_vec())
    }
    fn forward(&self, x: &Tensor, _: bool, _: &mut losskit_tensor::random::Rng) -> losskit::Result<Tensor> {
        x.mul_scalar(0.5)
    }
    fn output_shape(&self) -> Option<&[usize]> {
        self.output.as_deref()
    }
}

/// A loss with no row kernel (a custom closure, Dice, TFA's and PyTorch's, sparse cross-entropy with
/// `ignore_class`) keeps the layers planned: only the loss and its gradient with respect to
/// the model's output go through the tape. The same bits as the tape's step, weighted too.
#[test]
fn losses_without_a_row_kernel_keep_the_layers_planned() {
    let x = inputs(60, &[6], DType::F32);
    let y = labels(&x, 4);
    let model = |act: &'static str| {
        move || {
            Sequential::new()
                .seed(5)
                .add(Dense::new(12).activation("relu").unwrap())
                .add(Dropout::new(0.1).unwrap())
                .add(Dense::new(4).activation(act).unwrap())
        }
    };
    let one_hot4 = one_hot(&y, 4);
    let w = Tensor::from_vec((0..60).map(|i| [0.5f32, 2.0, 1.0][i % 3]).collect::<Vec<_>>(), &[60, 1]).unwrap();
    let closure = || {
        Compile::new()
            .optimizer("adam")
            .loss_fn("softmax_mse", |t: &Tensor, p: &Tensor| t.sub(p)?.square().mean(&[-1], false))
    };
    let built = |name: &'static str, config: serde_json::Value| {
        move || {
            let loss: std::sync::Arc<dyn losskit::Loss> = losskit::build(name, &config).unwrap().into();
            Compile::new().optimizer("rmsprop").loss(loss).metrics(&["accuracy"])
        }
    };
    type Case = (&'static str, Box<dyn Fn() -> Compile>, &'static str, Tensor);
    let cases: Vec<Case> = vec![
        ("closure", Box::new(closure), "softmax", one_hot4.clone()),
        ("dice", Box::new(built("dice", serde_json::json!({}))), "sigmoid", one_hot4.clone()),
        ("tfa pinball", Box::new(built("PinballLoss", serde_json::json!({"tau": 0.3}))), "linear", one_hot4.clone()),
        (
            "torch smooth L1",
            Box::new(built("SmoothL1Loss", serde_json::json!({"beta": 0.5}))),
            "linear",
            one_hot4.clone(),
        ),
        (
            "keras generalized CE",
            Box::new(built("CategoricalGeneralizedCrossEntropy", serde_json::json!({}))),
            "softmax",
            y.clone(),
        ),
        (
            "sparse CE ignore_class",
            Box::new(built("sparse_categorical_crossentropy", serde_json::json!({"ignore_class": 2}))),
            "softmax",
            y.clone(),
        ),
    ];
    for (what, compile, act, targets) in &cases {
        let (what, act) = (*what, *act);
        assert_eq!(path_kind(&model(act), &**compile, &x, targets), StepKind::Planned, "{what}");
        let fit = || Fit::new().epochs(2).batch_size(16).verbose(0).validation_split(0.2);
        same_on_both_paths(what, &model(act), &**compile, &x, targets, &fit);
        let w = w.clone();
        let weighted = move || Fit::new().epochs(2).batch_size(16).verbose(0).sample_weight(w.clone());
        same_on_both_paths(&format!("{what}, weighted"), &model(act), &**compile, &x, targets, &weighted);
    }
}

#[test]
fn labels_are_read_as_the_tape_reads_them() {
    // Fractional labels are truncated to their class; a label outside the classes (data checks
    // off, so the step meets it) is the loss' error, at the same step.
    let x = inputs(48, &[5], DType::F32);
    let fractional: Vec<f32> =
        labels(&x, 3).to_vec::<f32>().iter().enumerate().map(|(i, &c)| c + (i % 4) as f32 * 0.3).collect();
    let y = Tensor::from_vec(fractional, &[48]).unwrap();
    let build = || seed_model(8, 3, DType::F32);
    let compile = || Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]);
    let fit = || Fit::new().epochs(2).batch_size(16).verbose(0);
    same_on_both_paths("fractional labels", &build, &compile, &x, &y, &fit);
    let mut bad = labels(&x, 3).to_vec::<f32>();
    bad[40] = 7.0;
    let bad = Tensor::from_vec(bad, &[48]).unwrap();
    let fit = || Fit::new().epochs(2).batch_size(16).verbose(0).check_data(false).shuffle(false);
    let tape = run(&build, &compile, &x, &bad, &fit, false);
    assert!(tape.2.as_deref().is_some_and(|e| e.contains("label 7")), "{:?}", tape.2);
    same_on_both_paths("a label outside the classes", &build, &compile, &x, &bad, &fit);
}

#[test]
fn a_weighted_evaluation_gives_the_tapes_loss() {
    let x = inputs(50, &[7], DType::F32);
    let y = labels(&x, 4);
    let w = Tensor::from_vec((0..50).map(|i| (i % 7) as f32 * 0.5).collect::<Vec<_>>(), &[50]).unwrap();
    for reduction in [losskit::Reduction::SumOverBatchSize, losskit::Reduction::MeanWithSampleWeight] {
        let evaluated = |planned: bool| {
            let mut m = seed_model(8, 4, DType::F32);
            let loss = losskit::SparseCategoricalCrossentropy::new().with_reduction(reduction);
            m.compile(Compile::new().loss_obj(loss).metrics(&["accuracy"]).planned_step(Some(planned))).unwrap();
            let logs = m.evaluate(&x, y.clone(), 16, Some(&w)).unwrap();
            logs.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect::<Vec<_>>()
        };
        assert_eq!(evaluated(true), evaluated(false), "{reduction:?}");
    }
}

#[test]
fn evaluate_and_predict_give_the_tapes_values() {
    let x = inputs(90, &[4, 6], DType::F32);
    let y = labels(&x, 10);
    let trained = |planned: Option<bool>| {
        let mut m = seed_model(32, 10, DType::F32);
        let c = Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]);
        m.compile(c.planned_step(planned)).unwrap();
        m.fit(&x, &y, Fit::new().epochs(1).batch_size(16).verbose(0)).unwrap();
        m
    };
    let (mut planned, mut tape) = (trained(None), trained(Some(false)));
    let bits = |t: &Tensor| t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for batch in [7, 32, 90] {
        let (p, t) = (planned.predict(&x, batch).unwrap(), tape.predict(&x, batch).unwrap());
        assert_eq!(p[0].shape(), t[0].shape());
        assert_eq!(bits(&p[0]), bits(&t[0]), "predict, batch {batch}");
        let (p, t) = (planned.evaluate(&x, &y, batch, None).unwrap(), tape.evaluate(&x, &y, batch, None).unwrap());
        let as_bits = |l: &Logs| l.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect::<Vec<_>>();
        assert_eq!(as_bits(&p), as_bits(&t), "evaluate, batch {batch}");
    }
    // An uncompiled model predicts through the plan too.
    let mut fresh = seed_model(32, 10, DType::F32);
    let p = fresh.predict(&x, 16).unwrap();
    let mut fresh_tape = seed_model(32, 10, DType::F32);
    fresh_tape.compile(Compile::new().loss("mse").planned_step(Some(false))).unwrap();
    assert_eq!(bits(&p[0]), bits(&fresh_tape.predict(&x, 16).unwrap()[0]));
}

/// The path `fit` took, for a model built by `build` and compiled with `compile`, after one
/// epoch on 64 samples of 6 features (4 classes).
fn path_of(build: &Build, compile: Compile) -> StepPath {
    let x = inputs(64, &[6], DType::F32);
    let y = labels(&x, 4);
    let mut m = build();
    m.compile(compile).unwrap();
    m.fit(&x, &y, Fit::new().verbose(0)).unwrap();
    m.step_path().expect("fit records its path").clone()
}

/// `fit` records the path it took and, for each faster path it could not take, why.
#[test]
fn the_step_path_and_the_reasons_for_the_faster_paths_not_taken() {
    let sparse = || Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy");
    let seed: &Build = &|| {
        Sequential::new()
            .add(Dense::new(8).activation("relu").unwrap())
            .add(Dense::new(4).activation("softmax").unwrap())
    };
    let p = path_of(seed, sparse());
    assert_eq!((p.kind, p.not_taken.clone()), (StepKind::Planned, vec![]), "{p}");
    assert_eq!(p.to_string(), "planned step");

    let own: &Build = &|| {
        Sequential::new()
            .add(Dense::new(8).activation("relu").unwrap())
            .add(Halve::default())
            .add(Dense::new(4).activation("softmax").unwrap())
    };
    let p = path_of(own, sparse());
    assert_eq!(p.kind, StepKind::Tape, "{p}");
    let why = "layer 2 `halve` (Halve) is not plannable: a layer of your own trains through the tape";
    assert_eq!(p.not_taken[0], (StepKind::Planned, why.to_string()));
    assert_eq!(p.not_taken[1].0, StepKind::FusedHead);
    assert!(p.not_taken[1].1.contains("not a linear Dense"), "{p}");

    let p = path_of(seed, sparse().planned_step(Some(false)));
    assert_eq!(p.kind, StepKind::Tape, "{p}");
    assert_eq!(p.not_taken[0], (StepKind::Planned, "off (Compile::planned_step(Some(false)))".to_string()));

    let logits: &Build = &|| Sequential::new().add(Dense::new(8).activation("relu").unwrap()).add(Dense::new(4));
    let from_logits = || {
        Compile::new()
            .optimizer("adam")
            .loss(std::sync::Arc::new(losskit::SparseCategoricalCrossentropy::new().with_from_logits(true))
                as std::sync::Arc<dyn losskit::Loss>)
    };
    let p = path_of(logits, from_logits());
    assert_eq!(p.kind, StepKind::FusedHead, "{p}");
    assert_eq!(p.to_string(), "fused head (planned step: the fused linear + cross-entropy head trains the last layer)");
    let p = path_of(logits, from_logits().fused_head(Some(false)));
    assert_eq!(p.kind, StepKind::Planned, "{p}");
}

/// Keras' `Activation` layers (relu, tanh, sigmoid, softmax, linear) after linear Dense layers
/// and Dropout take the planned step and train to the tape's bits, in f32 and f64; the large
/// batch runs the activation in parallel pieces.
#[test]
fn activation_layers_train_to_the_same_bits() {
    let with_layers = |hidden: usize, act: &'static str, dtype: DType| {
        move || {
            Sequential::new()
                .seed(7)
                .with_dtype(dtype)
                .add(Flatten::new())
                .add(Dense::new(hidden))
                .add(ActivationLayer::new(act).unwrap())
                .add(Dropout::new(0.1).unwrap())
                .add(Dense::new(16).activation("tanh").unwrap())
                .add(ActivationLayer::new("linear").unwrap())
                .add(Dense::new(5))
                .add(ActivationLayer::new("softmax").unwrap())
        }
    };
    let compile = || Compile::new().optimizer("rmsprop").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]);
    for (act, dtype, n, hidden) in
        [("relu", DType::F32, 90, 24), ("tanh", DType::F64, 90, 24), ("sigmoid", DType::F32, 256, 300)]
    {
        let x = inputs(n, &[3, 4], dtype);
        let y = labels(&x, 5);
        let fit = || Fit::new().epochs(2).batch_size(128).verbose(0).validation_split(0.1);
        same_on_both_paths(&format!("{act} {dtype}"), &with_layers(hidden, act, dtype), &compile, &x, &y, &fit);
        let mut m = with_layers(hidden, act, dtype)();
        m.compile(compile()).unwrap();
        m.fit(&x, &y, Fit::new().verbose(0)).unwrap();
        assert_eq!(m.step_path().unwrap().kind, StepKind::Planned, "{act}");
    }
}

/// Every element-wise activation (Keras' by name, gelu(approximate=True) and threshold as
/// values), in a `Dense` layer and as an `Activation` layer, takes the planned step and trains
/// to the tape's bits; f64 for a few, and a batch large enough for parallel pieces.
#[test]
fn every_elementwise_activation_trains_to_the_same_bits() {
    let mut activations: Vec<Activation> = Activation::ALL.into_iter().filter(|a| a.elementwise().is_some()).collect();
    activations.extend([Activation::GeluApproximate, Activation::Threshold { threshold: -0.1, default_value: 0.05 }]);
    assert_eq!(activations.len(), 23);
    let compile = || Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]);
    for (i, act) in activations.into_iter().enumerate() {
        let (dtype, n, hidden) = match i % 6 {
            0 => (DType::F64, 60, 12),
            1 => (DType::F32, 300, 300),
            _ => (DType::F32, 60, 12),
        };
        let build = move || {
            Sequential::new()
                .seed(3)
                .with_dtype(dtype)
                .add(Dense::new(hidden).with_activation(act))
                .add(Dense::new(10))
                .add(ActivationLayer::of(act))
                .add(Dense::new(4).activation("softmax").unwrap())
        };
        let x = inputs(n, &[5], dtype);
        let y = labels(&x, 4);
        let fit = || Fit::new().epochs(2).batch_size(128).verbose(0).validation_split(0.2);
        same_on_both_paths(&format!("{act} {dtype}"), &build, &compile, &x, &y, &fit);
        let mut m = build();
        m.compile(compile()).unwrap();
        m.fit(&x, &y, Fit::new().verbose(0)).unwrap();
        assert_eq!(m.step_path().unwrap().kind, StepKind::Planned, "{act}");
    }
}

/// The activations over the last axis: glu (halving the features), sparsemax and log_softmax,
/// in `Dense` layers and as `Activation` layers, hidden and as the output; the tape's bits.
#[test]
fn glu_sparsemax_and_log_softmax_train_to_the_same_bits() {
    let x = inputs(80, &[6], DType::F32);
    let y = labels(&x, 4);
    let one_hot4 = one_hot(&y, 4);
    let hidden = || {
        Sequential::new()
            .seed(8)
            .add(Dense::new(16).activation("glu").unwrap())
            .add(Dense::new(10))
            .add(ActivationLayer::new("sparsemax").unwrap())
            .add(Dense::new(12))
            .add(ActivationLayer::new("glu").unwrap())
            .add(ActivationLayer::new("log_softmax").unwrap())
            .add(Dense::new(4).activation("softmax").unwrap())
    };
    // log_softmax as the output, its values the logits of the loss; a batch large enough for
    // parallel pieces.
    let logits = || {
        Sequential::new()
            .seed(8)
            .add(Dense::new(300).activation("tanh").unwrap())
            .add(Dense::new(300).activation("log_softmax").unwrap())
    };
    let from_logits = || {
        Compile::new()
            .optimizer("sgd")
            .loss(std::sync::Arc::new(losskit::SparseCategoricalCrossentropy::new().with_from_logits(true))
                as std::sync::Arc<dyn losskit::Loss>)
    };
    let big = || Fit::new().epochs(2).batch_size(128).verbose(0);
    let (many, many_y) = (inputs(200, &[6], DType::F32), labels(&inputs(200, &[6], DType::F32), 300));
    same_on_both_paths("a log_softmax output", &logits, &from_logits, &many, &many_y, &big);
    let output = || {
        Sequential::new()
            .seed(8)
            .add(Dense::new(9).activation("tanh").unwrap())
            .add(Dense::new(4).activation("sparsemax").unwrap())
    };
    let sparse = || Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]);
    let mse = || Compile::new().optimizer("adam").loss("mean_squared_error");
    let fit = || Fit::new().epochs(2).batch_size(16).verbose(0).validation_split(0.2);
    same_on_both_paths("hidden glu and sparsemax", &hidden, &sparse, &x, &y, &fit);
    same_on_both_paths("a sparsemax output", &output, &mse, &x, &one_hot4, &fit);
    for build in [&hidden as &Build, &output] {
        let mut m = build();
        m.compile(sparse()).unwrap();
        m.fit(&x, &y, Fit::new().verbose(0)).unwrap();
        assert_eq!(m.step_path().unwrap().kind, StepKind::Planned);
    }
}

/// One output with a loss weight (`Compile::loss_weights(&[w])`): the loss and its gradient
/// times `w` as the tape's `L·w`, for row-kernel losses (small and large outputs, weighted
/// samples, a regularizer) and one through the small tape; the tape's bits.
#[test]
fn a_loss_weight_on_one_output_trains_to_the_same_bits() {
    let compile = |loss: &'static str, w: f64| move || Compile::new().optimizer("adam").loss(loss).loss_weights(&[w]);
    let closure = || {
        Compile::new()
            .optimizer("sgd")
            .loss_fn("softmax_mse", |t: &Tensor, p: &Tensor| t.sub(p)?.square().mean(&[-1], false))
            .loss_weights(&[0.3])
    };
    let x = inputs(90, &[6], DType::F32);
    let y = labels(&x, 7);
    let one_hot7 = one_hot(&y, 7);
    let w = Tensor::from_vec((0..90).map(|i| [0.5f32, 2.0, 1.0][i % 3]).collect::<Vec<_>>(), &[90]).unwrap();
    let small = || {
        Sequential::new()
            .seed(2)
            .add(Dense::new(10).activation("relu").unwrap().kernel_regularizer(Regularizer::L2(1e-3)))
            .add(Dense::new(7).activation("softmax").unwrap())
    };
    let large = || Sequential::new().seed(2).add(Dense::new(3000).activation("softmax").unwrap());
    type Case<'a> = (&'a str, Box<Build>, Box<dyn Fn() -> Compile>, &'a Tensor, bool);
    let cases: Vec<Case> = vec![
        ("sparse CE 0.5", Box::new(small), Box::new(compile("sparse_categorical_crossentropy", 0.5)), &y, false),
        (
            "sparse CE 2.5 weighted",
            Box::new(small),
            Box::new(compile("sparse_categorical_crossentropy", 2.5)),
            &y,
            true,
        ),
        ("mse 0.7", Box::new(small), Box::new(compile("mean_squared_error", 0.7)), &one_hot7, false),
        ("large output 1.5", Box::new(large), Box::new(compile("sparse_categorical_crossentropy", 1.5)), &y, false),
        ("closure 0.3", Box::new(small), Box::new(closure), &one_hot7, false),
    ];
    for (what, build, compile, targets, weighted) in cases {
        let w = w.clone();
        let fit = move || {
            let f = Fit::new().epochs(2).batch_size(32).verbose(0).validation_split(0.2);
            if weighted {
                f.sample_weight(w.clone())
            } else {
                f
            }
        };
        same_on_both_paths(what, &*build, &*compile, &x, targets, &fit);
        let mut m = build();
        m.compile(compile()).unwrap();
        m.fit(&x, targets, Fit::new().verbose(0)).unwrap();
        assert_eq!(m.step_path().unwrap().kind, StepKind::Planned, "{what}");
    }
}

/// Kernel and bias regularizers (L1, L2, L1L2) take the planned step: the penalty in the loss
/// (training, validation and evaluation), its gradient added to the weights', the tape's bits.
#[test]
fn regularized_layers_train_to_the_same_bits() {
    let regularized = |kernel: Regularizer, bias: Option<Regularizer>, dtype: DType| {
        move || {
            let mut first = Dense::new(24).activation("relu").unwrap().kernel_regularizer(kernel);
            if let Some(b) = bias {
                first = first.bias_regularizer(b);
            }
            Sequential::new()
                .seed(11)
                .with_dtype(dtype)
                .add(Flatten::new())
                .add(first)
                .add(Dropout::new(0.3).unwrap())
                .add(Dense::new(12).activation("tanh").unwrap().kernel_regularizer(Regularizer::L2(3e-3)))
                .add(Dense::new(5).activation("softmax").unwrap())
        }
    };
    let x = inputs(90, &[3, 4], DType::F32);
    let y = labels(&x, 5);
    let compile = || {
        Compile::new()
            .optimizer(Optimizer::adam(0.01).unwrap().clipnorm(1.0).unwrap())
            .loss("sparse_categorical_crossentropy")
            .metrics(&["accuracy"])
    };
    let fit = || Fit::new().epochs(3).batch_size(16).verbose(0).validation_split(0.2);
    let cases = [
        ("L2", Regularizer::L2(1e-2), None, DType::F32),
        ("L1 + bias L2", Regularizer::L1(2e-3), Some(Regularizer::L2(5e-2)), DType::F32),
        ("L1L2", Regularizer::L1L2 { l1: 1e-3, l2: 1e-2 }, Some(Regularizer::L1(1e-2)), DType::F32),
        ("L2 f64", Regularizer::L2(1e-2), Some(Regularizer::L1L2 { l1: 1e-3, l2: 1e-3 }), DType::F64),
    ];
    for (what, kernel, bias, dtype) in cases {
        let x = x.to_dtype(dtype);
        let build = regularized(kernel, bias, dtype);
        same_on_both_paths(what, &build, &compile, &x, &y, &fit);
        let mut m = build();
        m.compile(compile()).unwrap();
        m.fit(&x, &y, fit()).unwrap();
        assert_eq!(m.step_path().unwrap().kind, StepKind::Planned, "{what}");
        // evaluate through the planned pass includes the penalty, as the tape's does.
        let planned = m.evaluate(&x, &y, 32, None).unwrap();
        m.compile(compile().planned_step(Some(false))).unwrap();
        let tape = m.evaluate(&x, &y, 32, None).unwrap();
        assert_eq!(planned["loss"].to_bits(), tape["loss"].to_bits(), "{what}: evaluate");
    }
}

/// `CategoricalFocalCrossentropy` (on probabilities and on logits, with per-class alpha and
/// sample weights) takes the planned step, to the tape's bits.
#[test]
fn the_categorical_focal_loss_trains_to_the_same_bits() {
    let focal = |config: serde_json::Value| -> LossArg {
        LossArg::from(losskit::build("CategoricalFocalCrossentropy", &config).unwrap())
    };
    let x = inputs(96, &[3, 4], DType::F32);
    let y = one_hot(&labels(&x, 5), 5);
    let build = |softmax: bool| {
        move || {
            let last = if softmax { Dense::new(5).activation("softmax").unwrap() } else { Dense::new(5) };
            Sequential::new().seed(2).add(Flatten::new()).add(Dense::new(16).activation("relu").unwrap()).add(last)
        }
    };
    let weights = Tensor::from_vec((0..96).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect::<Vec<_>>(), &[96]).unwrap();
    let cases = [
        ("probabilities", serde_json::json!({}), true),
        (
            "logits, alpha per class",
            serde_json::json!({"from_logits": true, "alpha": [0.1, 0.2, 0.3, 0.2, 0.2], "gamma": 1.5}),
            false,
        ),
    ];
    for (what, config, softmax) in cases {
        let compile = || Compile::new().optimizer("adam").loss(focal(config.clone())).metrics(&["accuracy"]);
        let w = weights.clone();
        let fit = move || Fit::new().epochs(2).batch_size(16).verbose(0).sample_weight(w.clone());
        same_on_both_paths(what, &build(softmax), &compile, &x, &y, &fit);
        let mut m = build(softmax)();
        m.compile(compile()).unwrap();
        m.fit(&x, &y, Fit::new().verbose(0)).unwrap();
        assert_eq!(m.step_path().unwrap().kind, StepKind::Planned, "{what}");
    }
    // An `alpha` that is neither one value nor one per class: the loss' error, on both paths.
    let compile = || Compile::new().loss(focal(serde_json::json!({"alpha": [0.2, 0.3, 0.5]})));
    let fit = || Fit::new().epochs(1).verbose(0);
    let tape = run(&build(true), &compile, &x, &y, &fit, false);
    assert!(tape.2.as_deref().is_some_and(|e| e.contains("alpha has 3 entries but there are 5 classes")), "{tape:?}");
    same_on_both_paths("alpha of 3 for 5 classes", &build(true), &compile, &x, &y, &fit);
}

/// Targets in `[0, 1]` per output (`n × cols`), from the inputs: soft or, with `binary`, 0/1.
fn dense_targets(x: &Tensor, cols: usize, binary: bool) -> Tensor {
    let n = x.shape()[0];
    let per = x.numel() / n;
    let v = x.to_vec::<f64>();
    let t: Vec<f32> = (0..n * cols)
        .map(|i| {
            let u = (v[(i / cols) * per + (i % cols) % per] + 1.0) / 2.0;
            if binary {
                (u > 0.5) as u8 as f32
            } else {
                (u * 0.9 + 0.05) as f32
            }
        })
        .collect();
    Tensor::from_vec(t, &[n, cols]).unwrap()
}

/// Every loss with a row kernel, with its options, one-hot / soft / 0-1 / per-sample targets,
/// trains through the planned step to the tape's bits, with sample weights too; a large output
/// folds the reduction into the kernel as the tape does.
#[test]
fn every_row_kernel_loss_trains_to_the_same_bits() {
    let x = inputs(60, &[6], DType::F32);
    let y = labels(&x, 4);
    let w = Tensor::from_vec((0..60).map(|i| [0.5f32, 2.0, 1.0, 0.0][i % 4]).collect::<Vec<_>>(), &[60]).unwrap();
    let model = |cols: usize, act: &'static str| {
        move || {
            Sequential::new()
                .seed(11)
                .add(Dense::new(12).activation("relu").unwrap())
                .add(Dense::new(cols).activation(act).unwrap())
        }
    };
    let (one_hot4, soft, binary) = (one_hot(&y, 4), dense_targets(&x, 4, false), dense_targets(&x, 4, true));
    let cases: Vec<(&str, serde_json::Value, &str, &Tensor)> = vec![
        ("categorical_crossentropy", serde_json::json!({"label_smoothing": 0.2}), "softmax", &one_hot4),
        ("categorical_crossentropy", serde_json::json!({"class_weights": [1.0, 0.5, 2.0, 1.5]}), "softmax", &one_hot4),
        (
            "categorical_crossentropy",
            serde_json::json!({"from_logits": true, "label_smoothing": 0.1, "class_weights": [1.0, 0.5, 2.0, 1.5]}),
            "linear",
            &soft,
        ),
        ("categorical_focal_crossentropy", serde_json::json!({"label_smoothing": 0.1}), "softmax", &one_hot4),
        (
            "categorical_focal_crossentropy",
            serde_json::json!({"alpha": [0.1, 0.2, 0.3, 0.4], "from_logits": true}),
            "linear",
            &one_hot4,
        ),
        ("sparse_categorical_crossentropy", serde_json::json!({"class_weights": [1.0, 0.5, 2.0, 1.5]}), "softmax", &y),
        ("binary_crossentropy", serde_json::json!({}), "sigmoid", &binary),
        ("binary_crossentropy", serde_json::json!({"from_logits": true, "label_smoothing": 0.1}), "linear", &soft),
        ("binary_focal_crossentropy", serde_json::json!({"label_smoothing": 0.2}), "sigmoid", &binary),
        (
            "binary_focal_crossentropy",
            serde_json::json!({"from_logits": true, "apply_class_balancing": true, "gamma": 1.5}),
            "linear",
            &binary,
        ),
        ("hinge", serde_json::json!({}), "tanh", &binary),
        ("squared_hinge", serde_json::json!({}), "tanh", &soft),
        ("categorical_hinge", serde_json::json!({}), "linear", &one_hot4),
        ("mean_squared_error", serde_json::json!({}), "linear", &soft),
        ("mean_absolute_error", serde_json::json!({}), "linear", &soft),
        ("mean_absolute_percentage_error", serde_json::json!({}), "linear", &soft),
        ("mean_squared_logarithmic_error", serde_json::json!({}), "sigmoid", &soft),
        ("huber", serde_json::json!({"delta": 0.3}), "linear", &soft),
        ("log_cosh", serde_json::json!({}), "linear", &soft),
        ("poisson", serde_json::json!({}), "sigmoid", &soft),
        ("kl_divergence", serde_json::json!({}), "softmax", &soft),
        ("cosine_similarity", serde_json::json!({}), "linear", &soft),
    ];
    for (name, config, act, targets) in cases {
        let compile = {
            let config = config.clone();
            move || {
                let loss: std::sync::Arc<dyn losskit::Loss> = losskit::build(name, &config).unwrap().into();
                Compile::new().optimizer("adam").loss(loss)
            }
        };
        let cols = targets.shape().get(1).copied().unwrap_or(4);
        let what = format!("{name} {config}");
        let fit = || Fit::new().epochs(2).batch_size(16).verbose(0);
        assert_eq!(path_kind(&model(cols, act), &compile, &x, targets), StepKind::Planned, "{what}");
        same_on_both_paths(&what, &model(cols, act), &compile, &x, targets, &fit);
        let w = w.clone();
        let weighted = move || Fit::new().epochs(2).batch_size(16).verbose(0).sample_weight(w.clone());
        same_on_both_paths(&format!("{what}, weighted"), &model(cols, act), &compile, &x, targets, &weighted);
    }
    // One output, a target per sample `(n,)` (Keras expands it to `(n, 1)`).
    let scalar = Tensor::from_vec(dense_targets(&x, 1, false).to_vec::<f32>(), &[60]).unwrap();
    let compile = || Compile::new().optimizer("sgd").loss("mse");
    let fit = || Fit::new().epochs(2).batch_size(16).verbose(0);
    assert_eq!(path_kind(&model(1, "linear"), &compile, &x, &scalar), StepKind::Planned);
    same_on_both_paths("mse, (n,) targets", &model(1, "linear"), &compile, &x, &scalar, &fit);
    // 70 × 1000 outputs: the reduction folded into the kernel's gradient (≥ 2¹⁶ values).
    let wide = dense_targets(&inputs(60, &[1000], DType::F32), 1000, true);
    let compile = || Compile::new().optimizer("adam").loss("binary_crossentropy");
    same_on_both_paths("bce, 1000 outputs", &model(1000, "sigmoid"), &compile, &x, &wide, &fit);
}

/// The path `fit` takes for this model, loss and data (one epoch).
fn path_kind(build: &Build, compile: &dyn Fn() -> Compile, x: &Tensor, y: &Tensor) -> StepKind {
    let mut m = build();
    m.compile(compile()).unwrap();
    m.fit(x, y.clone(), Fit::new().verbose(0)).unwrap();
    m.step_path().expect("fit records its path").kind
}

/// Rank 0's [`Outcome`] of a data-parallel `fit` over a [`ThreadGroup`] of `workers`, every
/// worker through the plan or the tape (checked to agree with each other), with the path taken.
fn run_parallel(
    workers: usize,
    build: &(dyn Fn() -> Model + Sync),
    compile: &(dyn Fn() -> Compile + Sync),
    x: &Tensor,
    y: &Tensor,
    fit: &(dyn Fn() -> Fit<'static> + Sync),
    planned: bool,
) -> (Outcome, StepKind) {
    // Leaked: `fit()` gives a `Fit<'static>`, which `distribute` ties to the group.
    let groups: &'static [ThreadGroup] = Box::leak(ThreadGroup::new(workers).unwrap().into_boxed_slice());
    let results: Vec<(Outcome, StepKind)> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| {
                s.spawn(move || {
                    let mut m = build();
                    m.compile(compile().planned_step(Some(planned))).unwrap();
                    let outcome = m.fit(x, y.clone(), fit().distribute(g));
                    let weights = m
                        .get_weights()
                        .iter()
                        .map(|(_, t)| t.to_vec::<f64>().iter().map(|v| v.to_bits()).collect())
                        .collect();
                    let kind = m.step_path().map(|p| p.kind).unwrap_or(StepKind::Tape);
                    let outcome = match outcome {
                        Ok(h) => {
                            let hist = h
                                .history
                                .iter()
                                .map(|(k, v)| (k.clone(), v.iter().map(|v| v.to_bits()).collect()))
                                .collect();
                            (weights, hist, None)
                        }
                        Err(e) => (weights, Vec::new(), Some(e.to_string())),
                    };
                    (outcome, kind)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results[1..] {
        assert_eq!(r, &results[0], "the workers disagree");
    }
    results.into_iter().next().unwrap()
}

/// Data-parallel workers (a `ThreadGroup` of 2 and 3) step through the plan, all-reducing its
/// own gradient buffers, to the data-parallel tape's bits: dropout, regularizers, every
/// reduction, sample weights, a batch with fewer rows than workers, and the NaN guard.
#[test]
fn data_parallel_workers_train_through_the_plan_to_the_tapes_bits() {
    let x = inputs(70, &[6], DType::F32);
    let y = labels(&x, 4);
    let w = Tensor::from_vec((0..70).map(|i| [0.5f32, 2.0, 1.0, 0.0][i % 4]).collect::<Vec<_>>(), &[70]).unwrap();
    let build = || {
        Sequential::new()
            .seed(8)
            .add(
                Dense::new(16).activation("relu").unwrap().kernel_regularizer(Regularizer::L1L2 { l1: 0.01, l2: 0.02 }),
            )
            .add(Dropout::new(0.2).unwrap())
            .add(Dense::new(4).activation("softmax").unwrap().bias_regularizer(Regularizer::L2(0.05)))
    };
    for reduction in
        [losskit::Reduction::SumOverBatchSize, losskit::Reduction::Sum, losskit::Reduction::MeanWithSampleWeight]
    {
        let compile = move || {
            Compile::new()
                .optimizer("adam")
                .loss_obj(losskit::SparseCategoricalCrossentropy::new().with_reduction(reduction))
                .metrics(&["accuracy"])
        };
        for workers in [2, 3] {
            for weighted in [false, true] {
                let w = w.clone();
                // 70 rows in batches of 32: the last batch of 6 rows (2 per worker of 3).
                let fit = move || {
                    let f = Fit::new().epochs(2).batch_size(32).verbose(0).validation_split(0.1);
                    if weighted {
                        f.sample_weight(w.clone())
                    } else {
                        f
                    }
                };
                let what = format!("{reduction:?}, {workers} workers, weighted {weighted}");
                let (tape, kind) = run_parallel(workers, &build, &compile, &x, &y, &fit, false);
                assert_eq!((kind, &tape.2), (StepKind::Distributed, &None), "{what}");
                let (planned, kind) = run_parallel(workers, &build, &compile, &x, &y, &fit, true);
                assert_eq!(kind, StepKind::DistributedPlanned, "{what}");
                assert_eq!(planned, tape, "{what}");
            }
        }
    }
    // A batch of 2 rows over 3 workers: one worker has no rows (only the regularization's
    // share of the gradient); BCE on one-hot targets.
    let compile = || Compile::new().optimizer("sgd").loss("binary_crossentropy");
    let fit = || Fit::new().epochs(1).batch_size(2).verbose(0);
    let hot = one_hot(&y, 4);
    let (tape, _) = run_parallel(3, &build, &compile, &x, &hot, &fit, false);
    let (planned, kind) = run_parallel(3, &build, &compile, &x, &hot, &fit, true);
    assert_eq!(kind, StepKind::DistributedPlanned);
    assert_eq!(planned, tape, "a worker without rows");
    // The guard stops the same step with the same diagnosis.
    let compile = || Compile::new().optimizer(Optimizer::sgd(1e35).unwrap()).loss("sparse_categorical_crossentropy");
    let fit = || Fit::new().epochs(10).batch_size(16).verbose(0);
    let (tape, _) = run_parallel(2, &build, &compile, &x, &y, &fit, false);
    assert!(tape.2.as_deref().is_some_and(|e| e.contains("gradient norms per layer")), "{:?}", tape.2);
    assert_eq!(run_parallel(2, &build, &compile, &x, &y, &fit, true).0, tape, "guard");
}

/// Keras' preprocessing layers inside the model (Rescaling with and without an offset, also
/// between Dense layers, where its gradient flows; Reshape) take the planned step, to the
/// tape's bits.
#[test]
fn rescaling_and_reshape_layers_train_to_the_same_bits() {
    let x = inputs(64, &[24], DType::F32).mul_scalar(255.0).unwrap();
    let y = labels(&x.mul_scalar(1.0 / 255.0).unwrap(), 4);
    let build = || {
        Sequential::new()
            .seed(6)
            .add(Rescaling::new(1.0 / 255.0, 0.0).unwrap())
            .add(Reshape::new(&[4, -1]).unwrap())
            .add(Flatten::new())
            .add(Dense::new(12).activation("tanh").unwrap())
            .add(Rescaling::new(2.0, -0.25).unwrap())
            .add(Dense::new(4).activation("softmax").unwrap())
    };
    let compile = || Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]);
    assert_eq!(path_kind(&build, &compile, &x, &y), StepKind::Planned);
    let fit = || Fit::new().epochs(2).batch_size(16).verbose(0).validation_split(0.25);
    same_on_both_paths("rescaling and reshape", &build, &compile, &x, &y, &fit);
}

/// `mean(|t - p|³)` over the last axis: a loss with no row kernel.
fn cubed(t: &Tensor, p: &Tensor) -> losskit::Result<Tensor> {
    t.sub(p)?.abs().powf(3.0)?.mean(&[-1], false)
}

/// A run of a model with heads on `targets` (one per output) through the planned step or the
/// tape's; with `weighted`, sample weights.
fn run_heads(
    build: &Build,
    compile: &dyn Fn() -> Compile,
    x: &Tensor,
    targets: &[(&str, Tensor)],
    planned: bool,
) -> Outcome {
    let mut m = build();
    m.compile(compile().planned_step(Some(planned))).unwrap();
    let n = x.shape()[0];
    let w = Tensor::from_vec((0..n).map(|i| [0.5f32, 2.0, 1.0, 1.5][i % 4]).collect::<Vec<_>>(), &[n]).unwrap();
    let y: Vec<(&str, Tensor)> = targets.to_vec();
    let fit = Fit::new().epochs(2).batch_size(16).verbose(0).validation_split(0.2).sample_weight(w);
    let outcome = m.fit(x, y, fit);
    assert_eq!(
        m.step_path().unwrap().kind,
        if planned { StepKind::Planned } else { StepKind::Tape },
        "{:?}",
        m.step_path()
    );
    outcome_of(&m, outcome)
}

/// Several outputs (a trunk and named heads) with loss weights, sample weights, dropout in the
/// trunk and a head, a regularized head, element-wise activations, a row-kernel loss per head
/// or one through a small tape: the planned step gives the tape's weights and History (each
/// output's loss and metrics), bit for bit, with 2 and 3 heads; allocation-free
/// (`tests/step_allocations.rs`).
#[test]
fn several_outputs_train_to_the_same_bits() {
    let x = inputs(70, &[6], DType::F32);
    let y = labels(&x, 4);
    let one_hot4 = one_hot(&y, 4);
    let reg: Vec<f32> = x.to_vec::<f32>().chunks(6).map(|r| r[0] * 0.5 + r[1]).collect();
    let reg = Tensor::from_vec(reg, &[70, 1]).unwrap();
    let three = || {
        Sequential::new()
            .seed(11)
            .add(Dense::new(12).activation("relu").unwrap())
            .add(Dropout::new(0.2).unwrap())
            .head(
                "class",
                Stack::new()
                    .add(Dense::new(8).activation("gelu").unwrap())
                    .add(Dropout::new(0.1).unwrap())
                    .add(Dense::new(4).activation("softmax").unwrap()),
            )
            .head("value", Stack::new().add(Dense::new(1).kernel_regularizer(Regularizer::L2(1e-2))))
            .head("probs", Stack::new().add(Dense::new(4)).add(ActivationLayer::new("sigmoid").unwrap()))
    };
    let compile3 = || {
        Compile::new()
            .optimizer("adam")
            .loss_for("class", "sparse_categorical_crossentropy")
            .loss_for("value", "mean_squared_error")
            .loss_for("probs", "binary_crossentropy")
            .loss_weights(&[1.0, 0.25, 2.0])
            .metrics(&["accuracy"])
    };
    let targets3 = [("class", y.clone()), ("value", reg.clone()), ("probs", one_hot4.clone())];
    let two = || {
        Sequential::new()
            .seed(12)
            .add(Dense::new(10).activation("tanh").unwrap())
            .head("a", Stack::new().add(Dense::new(4).activation("softmax").unwrap()))
            .head("b", Stack::new().add(Dense::new(5).activation("mish").unwrap()).add(Dense::new(1)))
    };
    let closure = || {
        Compile::new()
            .optimizer("rmsprop")
            .loss_for("a", "categorical_crossentropy")
            .loss_for("b", LossArg::Object(std::sync::Arc::new(losskit::CustomLoss::new("cubed", cubed))))
            .loss_weight("b", 0.5)
    };
    let targets2 = [("a", one_hot4.clone()), ("b", reg.clone())];
    // A learning rate far too high: the NaN guard stops both at the same step, same diagnosis.
    let exploding = || compile3().optimizer(Optimizer::sgd(1e35).unwrap());
    type Case<'a> = (&'a str, &'a Build, &'a dyn Fn() -> Compile, &'a [(&'a str, Tensor)]);
    let cases: [Case; 3] = [
        ("three heads", &three, &compile3, &targets3),
        ("two heads, a closure loss", &two, &closure, &targets2),
        ("guard", &three, &exploding, &targets3),
    ];
    for (what, build, compile, targets) in cases {
        let tape = run_heads(build, compile, &x, targets, false);
        let planned = run_heads(build, compile, &x, targets, true);
        assert_eq!(planned.2, tape.2, "{what}: the outcome");
        if what == "guard" {
            let err = tape.2.as_deref().unwrap_or_default();
            assert!(err.contains("gradient norms per layer"), "{what}: {err}");
            assert_eq!(planned.0, tape.0, "{what}: the weights");
            continue;
        }
        assert!(tape.1.iter().any(|(k, _)| k.ends_with("_loss") && k != "val_loss"), "{what}: {:?}", tape.1);
        assert_eq!(planned.1, tape.1, "{what}: the History");
        assert_eq!(planned.0, tape.0, "{what}: the weights");
    }
}
