//! Sparse cross-entropy from logits through burn, f32, in one run: losskit alone (its kernel
//! node and backward), the same loss through burn (`losskit-burn`, burn's `backward`), and
//! burn-nn's `CrossEntropyLoss`, on burn's Flex and NdArray backends with autodiff; then the
//! evaluation forward (no gradient) through burn against losskit's value-only call; then Dice
//! (a loss without a row kernel: losskit's tape on the backend's buffers, lent for the call)
//! through burn against losskit alone, with float targets.
//!
//! `cargo run --release -p losskit-burn --example burn_bench [-- REPEATS]`
//!
//! Prints milliseconds per call (the median of REPEATS, default 5, after one warm-up) and the
//! ratios.

#![allow(deprecated)] // burn 0.22 deprecates NdArray (for Flex); both are measured.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::time::Instant;

/// The median wall time of `repeats` calls of `f` after one warm-up, in milliseconds.
fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    time_on(repeats, || (), |()| f())
}

/// [`time`] of `f` on a fresh `setup()` each call (made before the clock starts).
fn time_on<I>(repeats: usize, mut setup: impl FnMut() -> I, mut f: impl FnMut(I)) -> f64 {
    f(setup());
    let mut ms: Vec<f64> = (0..repeats)
        .map(|_| {
            let input = setup();
            let t = Instant::now();
            f(input);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Deterministic logits in [-4, 4] and labels for `(rows, cols)`.
fn inputs(rows: usize, cols: usize) -> (Vec<f32>, Vec<i64>) {
    let x = (0..rows * cols).map(|i| ((i.wrapping_mul(2_654_435_761) % 8192) as f32 / 1024.0) - 4.0).collect();
    let y = (0..rows).map(|i| ((i * 7919) % cols) as i64).collect();
    (x, y)
}

struct Row {
    alone: f64,
    through: f64,
    burn_nn: f64,
}

/// Loss + gradient of `(rows, cols)` on `device`: losskit alone, through burn, burn-nn.
fn loss_and_gradient(rows: usize, cols: usize, device: &Device, repeats: usize) -> Row {
    let (x, y) = inputs(rows, cols);
    let ours = losskit_burn::get("sparse_categorical_crossentropy").unwrap().from_logits(true).unwrap();
    let logits = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [rows]), device);
    let through = time(repeats, || {
        let leaf = logits.clone().detach().require_grad();
        let l = ours.forward(leaf.clone(), labels.clone()).unwrap();
        let g = leaf.grad(&l.backward()).unwrap();
        std::hint::black_box(g);
    });
    let ce = CrossEntropyLossConfig::new().init(device);
    let burn_nn = time(repeats, || {
        let leaf = logits.clone().detach().require_grad();
        let l = ce.forward(leaf.clone(), labels.clone());
        let g = leaf.grad(&l.backward()).unwrap();
        std::hint::black_box(g.into_data());
    });
    let loss = losskit::get("sparse_categorical_crossentropy").unwrap();
    let loss = losskit::build(loss.class_name(), &serde_json::json!({"from_logits": true})).unwrap();
    let (lx, ly) = (
        losskit::Tensor::from_vec(x, &[rows, cols]).unwrap(),
        losskit::Tensor::from_vec(y.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &[rows]).unwrap(),
    );
    let alone = time(repeats, || {
        let leaf = lx.clone().requires_grad();
        let l = loss.call(&ly, &leaf, None).unwrap();
        let mut g = l.backward().unwrap();
        std::hint::black_box(g.remove(&leaf));
    });
    Row { alone, through, burn_nn }
}

/// The evaluation forward (no gradient) of `(rows, cols)`: through burn on a tensor that
/// nothing else holds (a model's output handed over), on one that burn shares (a clone kept),
/// and losskit alone.
fn evaluation(rows: usize, cols: usize, device: &Device, repeats: usize) -> (f64, f64, f64) {
    let (x, y) = inputs(rows, cols);
    let ours = losskit_burn::get("sparse_categorical_crossentropy").unwrap().from_logits(true).unwrap();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [rows]), device);
    let fresh = || Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), device);
    let unique = time_on(repeats, fresh, |logits| {
        std::hint::black_box(ours.forward(logits, labels.clone()).unwrap().into_scalar::<f32>());
    });
    let kept = fresh();
    let shared = time(repeats, || {
        std::hint::black_box(ours.forward(kept.clone(), labels.clone()).unwrap().into_scalar::<f32>());
    });
    let (lx, ly) = (
        losskit::Tensor::from_vec(x, &[rows, cols]).unwrap(),
        losskit::Tensor::from_vec(y.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &[rows]).unwrap(),
    );
    let alone = time(repeats, || {
        std::hint::black_box(ours.loss().call(&ly, &lx, None).unwrap().to_scalar().unwrap());
    });
    (unique, shared, alone)
}

fn main() {
    let repeats: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let threads = rayon::current_num_threads();
    println!("sparse CE from logits, f32, loss + gradient, ms (median of {repeats}; {threads} threads)");
    println!(
        "{:<10} {:>14} {:>12} {:>14} {:>10} {:>16} {:>14}",
        "backend", "shape", "alone", "through burn", "burn-nn", "burn-nn/through", "through/alone"
    );
    for (name, device) in [("Flex", Device::flex().autodiff()), ("NdArray", Device::ndarray().autodiff())] {
        for (rows, cols) in [(4096, 32000), (32, 10)] {
            let r = loss_and_gradient(rows, cols, &device, if rows > 32 { repeats } else { repeats * 200 });
            println!(
                "{name:<10} {:>14} {:>12.3} {:>14.3} {:>10.3} {:>16.2} {:>14.2}",
                format!("({rows}, {cols})"),
                r.alone,
                r.through,
                r.burn_nn,
                r.burn_nn / r.through,
                r.through / r.alone
            );
        }
    }
    println!("\nevaluation forward (no gradient), ms: through burn (input unique / shared), losskit value-only");
    for (name, device) in [("Flex", Device::flex()), ("NdArray", Device::ndarray())] {
        for (rows, cols) in [(4096, 32000), (32, 10)] {
            let (unique, shared, alone) =
                evaluation(rows, cols, &device, if rows > 32 { repeats } else { repeats * 200 });
            println!(
                "{name:<10} {:>14}: unique {unique:.3} ({:.2}x), shared {shared:.3} ({:.2}x), alone {alone:.3}",
                format!("({rows}, {cols})"),
                unique / alone,
                shared / alone
            );
        }
    }
    println!("\nDice (on the tape), f32 targets, (8192, 4096), ms: through burn (input shared, targets handed over), losskit alone");
    for (name, device) in [("Flex", Device::flex()), ("NdArray", Device::ndarray())] {
        let (eval, eval_alone, train, train_alone) = tape_loss(8192, 4096, &device, repeats);
        println!(
            "{name:<10} evaluation {eval:.3} / {eval_alone:.3} ({:.2}x); loss + gradient {train:.3} / {train_alone:.3} ({:.2}x)",
            eval / eval_alone,
            train / train_alone
        );
    }
}

/// Dice of `(rows, cols)` with float targets, through burn on `device` and losskit alone: the
/// evaluation forward (input kept by the caller, targets handed over), then loss + gradient
/// (on `device` with autodiff).
fn tape_loss(rows: usize, cols: usize, device: &Device, repeats: usize) -> (f64, f64, f64, f64) {
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 110.0 + 0.02).collect();
    let y: Vec<f32> = (0..rows * cols).map(|i| if (i * 7919) % 3 == 0 { 1.0 } else { 0.0 }).collect();
    let ours = losskit_burn::get("dice").unwrap();
    let targets = |device: &Device| Tensor::<2>::from_data(TensorData::new(y.clone(), [rows, cols]), device);
    let kept = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), device);
    let eval = time_on(
        repeats,
        || targets(device),
        |t| {
            std::hint::black_box(ours.forward(kept.clone(), t).unwrap().into_scalar::<f32>());
        },
    );
    let ad = device.clone().autodiff();
    let logits = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), &ad);
    let train = time_on(
        repeats,
        || targets(&ad),
        |t| {
            let leaf = logits.clone().detach().require_grad();
            let l = ours.forward(leaf.clone(), t).unwrap();
            std::hint::black_box(leaf.grad(&l.backward()).unwrap());
        },
    );
    let (lx, ly) =
        (losskit::Tensor::from_vec(x, &[rows, cols]).unwrap(), losskit::Tensor::from_vec(y, &[rows, cols]).unwrap());
    let eval_alone = time(repeats, || {
        std::hint::black_box(ours.loss().call(&ly, &lx, None).unwrap().to_scalar().unwrap());
    });
    let train_alone = time(repeats, || {
        let leaf = lx.clone().requires_grad();
        let l = ours.loss().call(&ly, &leaf, None).unwrap();
        let mut g = l.backward().unwrap();
        std::hint::black_box(g.remove(&leaf));
    });
    (eval, eval_alone, train, train_alone)
}
