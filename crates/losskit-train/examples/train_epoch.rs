//! One benchmark run for bench/compare_training.py: the seed's model on Fashion-MNIST,
//! `--epochs` epochs, printing one JSON line with each epoch's seconds and the test accuracy.
//!
//! `cargo run --release --example train_epoch -- sgd 32 3` (the seed's model; the optimizer is a
//! Keras name, optionally with `_clipnorm`: `rmsprop`, `sgd_clipnorm`), or
//! `cargo run --release --example train_epoch -- adam 256 3 wide`: the GEMM-bound model Flatten →
//! Dense 2048 relu → Dense 2048 relu → Dense 10 softmax, which also reports the FLOPs of one
//! step and the rate of a large matrix product timed in the same process (`gemm_gflops`).
//!
//! The main thread is rayon's worker 0 ([`losskit_train::use_calling_thread`]), as in the
//! `losskit` binary; with `TRAIN_EPOCH_DEFAULT_POOL=1` it stays outside rayon's default pool.
//! `fit` trains through its planned step (no tape); `TRAIN_EPOCH_TAPE=1` trains through the
//! tape instead ([`Compile::planned_step`]`(Some(false))`), for comparison;
//! `TRAIN_EPOCH_CLASS_WEIGHT=1` weighs class `c` by `0.5 + c/10` (Keras' `class_weight`).
//! `TRAIN_EPOCH_LOSS=mse` trains the seed's model with the built-in `MeanSquaredError` on one-hot
//! targets, `TRAIN_EPOCH_LOSS=custom_mse` with the same loss as a `CustomLoss` closure over
//! tensor ops (what a user writes): the cost of a custom loss in training.
//!
//! `cargo run --release --example train_epoch -- model bench/models/a.json 32 3` trains a Keras
//! model file instead (`model.to_json()` with its compile config: the four user models that
//! `bench/gen_user_models.py` writes), on one-hot targets when its loss is not a sparse one;
//! the JSON line then also names the step path `fit` took.

use losskit::Tensor;
use losskit_train::{datasets, Compile, Dense, Dropout, Fit, Flatten, LambdaCallback, Optimizer, Sequential};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

fn main() -> Result<(), losskit::Error> {
    let args: Vec<String> = std::env::args().collect();
    // As `losskit fit` does; TRAIN_EPOCH_DEFAULT_POOL=1 keeps rayon's own pool, for comparison.
    if std::env::var_os("TRAIN_EPOCH_DEFAULT_POOL").is_none() {
        losskit_train::use_calling_thread(None)
            .map_err(|e| losskit::Error::Value { op: "train_epoch".into(), msg: e.to_string() })?;
    }
    if args.get(1).is_some_and(|a| a == "model") {
        return model_file_run(&args[2..]);
    }
    let opt = args.get(1).map_or("sgd", String::as_str).to_string();
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let epochs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let wide = args.get(4).is_some_and(|s| s == "wide");
    let data = datasets::fashion_mnist(None)?;
    let test = data.test.expect("Fashion-MNIST has a test set");
    let x = data.train.x.mul_scalar(1.0 / 255.0)?;
    let tx = test.x.mul_scalar(1.0 / 255.0)?;
    let mut model = if wide {
        Sequential::new()
            .add(Flatten::new())
            .add(Dense::new(WIDE).activation("relu")?)
            .add(Dense::new(WIDE).activation("relu")?)
            .add(Dense::new(10).activation("softmax")?)
    } else {
        Sequential::new()
            .add(Flatten::new())
            .add(Dense::new(512).activation("relu")?)
            .add(Dropout::new(0.2)?)
            .add(Dense::new(10).activation("softmax")?)
    };
    let planned = std::env::var_os("TRAIN_EPOCH_TAPE").is_none();
    let mse = std::env::var("TRAIN_EPOCH_LOSS").ok().and_then(|name| mse_loss(&name));
    let one_hot = mse.is_some();
    let loss = mse.unwrap_or_else(|| "sparse_categorical_crossentropy".into());
    model.compile(Compile::new().optimizer(optimizer(&opt)?).loss(loss).metrics(&["accuracy"]).planned_step(
        // MSE has no planned form: it takes the tape (its reason in `step_path`).
        if one_hot && planned { None } else { Some(planned) },
    ))?;
    let targets = |y: &Tensor| if one_hot { Tensor::one_hot(y, 10, losskit::DType::F32) } else { Ok(y.clone()) };
    let (y, ty) = (targets(&data.train.y)?, targets(&test.y)?);
    let (times, mut timer) = epoch_timer();
    let mut fit = Fit::new().epochs(epochs).batch_size(batch).verbose(0).callback(&mut timer);
    if std::env::var_os("TRAIN_EPOCH_CLASS_WEIGHT").is_some() {
        // Class c weighs 0.5 + c/10: a weighted loss, as with Keras' `class_weight`.
        fit = fit.class_weight((0..10).map(|c| (c, 0.5 + c as f64 / 10.0)).collect());
    }
    model.fit(&x, &y, fit)?;
    let acc = model.evaluate(&tx, &ty, 1024, None)?["accuracy"];
    let extra = if wide {
        format!(", \"step_flops\": {}, \"gemm_gflops\": {}", wide_step_flops(batch), gemm_gflops()?)
    } else {
        String::new()
    };
    println!(
        "{{\"framework\": \"losskit\", \"epoch_seconds\": {:?}, \"test_accuracy\": {acc}{extra}}}",
        times.borrow()
    );
    Ok(())
}

/// The MSE `TRAIN_EPOCH_LOSS` names: `mse`, the built-in one, or `custom_mse`, the same loss
/// as a closure, `mean((p - y)², axis=-1)`; `None` for any other name (the seed's sparse
/// cross-entropy).
fn mse_loss(name: &str) -> Option<losskit_train::LossArg> {
    match name {
        "mse" => Some("mean_squared_error".into()),
        "custom_mse" => Some(
            losskit::CustomLoss::new("custom_mse", |y: &Tensor, p: &Tensor| p.sub(y)?.square().mean(&[-1], false))
                .into(),
        ),
        _ => None,
    }
}

/// Each epoch's seconds (filled as the epochs end) and the callback that times them.
fn epoch_timer() -> (Rc<RefCell<Vec<f64>>>, LambdaCallback) {
    let times = Rc::new(RefCell::new(Vec::new()));
    let start = Rc::new(RefCell::new(Instant::now()));
    let (t1, s1, s2) = (times.clone(), start.clone(), start.clone());
    let timer = LambdaCallback::new()
        .on_epoch_begin(move |_, _| {
            *s1.borrow_mut() = Instant::now();
            Ok(())
        })
        .on_epoch_end(move |_, _| {
            t1.borrow_mut().push(s2.borrow().elapsed().as_secs_f64());
            Ok(())
        });
    (times, timer)
}

/// `model FILE BATCH EPOCHS`: the Keras model file on Fashion-MNIST (pixels / 255), compiled
/// as the file says, with a 0.2 validation split as `losskit fit`.
fn model_file_run(args: &[String]) -> Result<(), losskit::Error> {
    let file = args.first().ok_or_else(|| losskit::Error::Config("train_epoch model FILE BATCH EPOCHS".into()))?;
    let batch: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let epochs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let keras = losskit_train::load_keras_model(file)?;
    let compile = keras.compile.ok_or_else(|| losskit::Error::Config(format!("{file}: not compiled")))?;
    let sparse = compile.loss.as_ref().is_some_and(|l| l.class_name().starts_with("Sparse"));
    let mut model = keras.model;
    model.compile(compile.to_compile())?;
    let data = datasets::fashion_mnist(None)?;
    let test = data.test.expect("Fashion-MNIST has a test set");
    let targets = |y: &Tensor| if sparse { Ok(y.clone()) } else { Tensor::one_hot(y, 10, losskit::DType::F32) };
    let (y, ty) = (targets(&data.train.y)?, targets(&test.y)?);
    let x = data.train.x.mul_scalar(1.0 / 255.0)?;
    let tx = test.x.mul_scalar(1.0 / 255.0)?;
    let (times, mut timer) = epoch_timer();
    let fit = Fit::new().epochs(epochs).batch_size(batch).verbose(0).validation_split(0.2).callback(&mut timer);
    model.fit(&x, &y, fit)?;
    let acc = model.evaluate(&tx, &ty, 1024, None)?["accuracy"];
    let path = model.step_path().map(ToString::to_string).unwrap_or_default();
    println!(
        "{{\"framework\": \"losskit\", \"epoch_seconds\": {:?}, \"test_accuracy\": {acc}, \"step_path\": {:?}}}",
        times.borrow(),
        path
    );
    Ok(())
}

/// The optimizer by the benchmark's name: a Keras name with its defaults (`sgd`, `adam`,
/// `rmsprop`, ...), optionally with `_clipnorm` (each gradient clipped to norm 1).
fn optimizer(name: &str) -> Result<Optimizer, losskit::Error> {
    match name.strip_suffix("_clipnorm") {
        Some(base) => Optimizer::parse(base)?.clipnorm(1.0),
        None => Optimizer::parse(name),
    }
}

/// The hidden width of the GEMM-bound model.
const WIDE: usize = 2048;

/// FLOPs of one training step of the wide model at `batch` rows: the forward products
/// `2·B·Σ in·out`, the same again for the kernels' gradients `xᵀ·g`, and the inputs' gradients
/// `g·Wᵀ` of every layer but the first (its input is the data).
fn wide_step_flops(batch: usize) -> f64 {
    let layers = [(784, WIDE), (WIDE, WIDE), (WIDE, 10)];
    let macs: usize = layers.iter().map(|(i, o)| i * o).sum();
    let input_grads: usize = layers[1..].iter().map(|(i, o)| i * o).sum();
    2.0 * batch as f64 * (2 * macs + input_grads) as f64
}

/// The rate of a large product (2048 × 2048 · 2048 × 2048, f32, through `Tensor::matmul`), the
/// best of five, in GFLOP/s: the machine's GEMM rate for the "fraction reached" of the wide model.
fn gemm_gflops() -> Result<f64, losskit::Error> {
    let a = Tensor::full(&[WIDE, WIDE], 0.5, losskit::DType::F32);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.matmul(&a)?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(2.0 * (WIDE as f64).powi(3) / best / 1e9)
}
