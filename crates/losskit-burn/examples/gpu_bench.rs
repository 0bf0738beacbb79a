//! The fused device kernel against burn-nn's composed `CrossEntropyLoss` on the same cube
//! device (wgpu: Vulkan, Mesa's lavapipe on a machine without a GPU): sparse cross-entropy
//! from logits, f32, loss + gradient through burn's autodiff, and the evaluation forward.
//!
//! `cargo run --release -p losskit-burn --features wgpu --example gpu_bench [-- REPEATS [ROWS COLS]]`
//!
//! Prints the device, milliseconds per call (the median of REPEATS, default 5, after two
//! warm-ups that compile the kernels; each timed call ends by reading the result's first
//! value back, which waits for the device), the ratio, and
//! the bytes each call must move at the least (logits read once, the gradient written once)
//! per second.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use std::time::Instant;

/// The median wall time of `repeats` calls of `f` (each followed by a device sync) after two
/// warm-ups, in milliseconds.
fn time(device: &Device, repeats: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
        device.sync().expect("the device syncs");
    }
    let mut ms: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            device.sync().expect("the device syncs");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Waits for `t`: reads its first element back (the device finishes everything queued before).
fn done<const D: usize>(t: Tensor<D>) {
    let first = t.flatten::<1>(0, D - 1).narrow(0, 0, 1).into_data();
    std::hint::black_box(first);
}

/// Deterministic logits in [-4, 4] and labels for `(rows, cols)`.
fn inputs(rows: usize, cols: usize) -> (Vec<f32>, Vec<i64>) {
    let x = (0..rows * cols).map(|i| ((i.wrapping_mul(2_654_435_761) % 8192) as f32 / 1024.0) - 4.0).collect();
    let y = (0..rows).map(|i| ((i * 7919) % cols) as i64).collect();
    (x, y)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let repeats = args.first().copied().unwrap_or(5).max(1);
    let (rows, cols) = match args[..] {
        [_, r, c, ..] => (r, c),
        _ => (4096, 32000),
    };
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let device = gpu.clone().autodiff();
    println!("device: {:?}; sparse cross-entropy from logits ({rows}, {cols}), f32; median of {repeats}", gpu);

    let (x, y) = inputs(rows, cols);
    let logits = Tensor::<2>::from_data(TensorData::new(x, [rows, cols]), &device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(y, [rows]), &device);
    let ours = losskit_burn::get("sparse_categorical_crossentropy").unwrap().from_logits(true).unwrap();
    let theirs = CrossEntropyLossConfig::new().init(&device);

    let fused = time(&gpu, repeats, || {
        let leaf = logits.clone().detach().require_grad();
        let l = ours.forward(leaf.clone(), labels.clone()).unwrap();
        done(leaf.grad(&l.backward()).unwrap());
    });
    let composed = time(&gpu, repeats, || {
        let leaf = logits.clone().detach().require_grad();
        let l = theirs.forward(leaf.clone(), labels.clone());
        done(leaf.grad(&l.backward()).unwrap());
    });
    let plain = logits.clone().inner();
    let plain_labels = labels.clone().inner();
    let eval_fused = time(&gpu, repeats, || {
        done(ours.forward(plain.clone(), plain_labels.clone()).unwrap());
    });
    let eval_composed = time(&gpu, repeats, || {
        done(theirs.forward(plain.clone(), plain_labels.clone()));
    });

    let bytes = (rows * cols * 4) as f64;
    let rate = |moved: f64, ms: f64| moved / (ms * 1e-3) / 1e9;
    println!("| call | losskit fused (ms) | burn-nn composed (ms) | burn-nn / fused | fused GB/s (minimum traffic) |");
    println!("|---|---|---|---|---|");
    println!(
        "| loss + gradient | {fused:.1} | {composed:.1} | {:.2}x | {:.1} |",
        composed / fused,
        rate(2.0 * bytes, fused)
    );
    println!(
        "| forward only | {eval_fused:.1} | {eval_composed:.1} | {:.2}x | {:.1} |",
        eval_composed / eval_fused,
        rate(bytes, eval_fused)
    );
}
