//! The fused kernels on burn's cube backend through wgpu (Vulkan; Mesa's lavapipe on a machine
//! without a GPU): values and gradients equal the CPU kernels' (burn's Flex device, losskit's
//! kernels) to `rtol 1e-5`, on odd shapes and the edge vectors; the kernel's gradient equals
//! burn's autodiff of the composed loss on the same device; losses without a device kernel run
//! on the host and agree too.
//!
//! A machine without a wgpu adapter skips these tests with a printed reason; with
//! `LOSSKIT_REQUIRE_GPU=1` (set by `.ci/run`) a missing adapter fails them instead.

#![cfg(feature = "wgpu")]

#[path = "common/digits.rs"]
mod digits;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use losskit_burn::BurnLoss;
use serde_json::json;

/// The wgpu device, or `None` (printed) when the machine has no adapter.
fn gpu() -> Option<Device> {
    let probe = std::panic::catch_unwind(|| {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let t = Tensor::<1>::from_floats([1.0, 2.0], &device);
        let back: Vec<f32> = t.into_data().iter::<f32>().collect();
        assert_eq!(back, [1.0, 2.0]);
        device
    });
    match probe {
        Ok(device) => Some(device),
        Err(_) if std::env::var("LOSSKIT_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("LOSSKIT_REQUIRE_GPU=1 and no wgpu adapter could run a kernel")
        }
        Err(_) => {
            eprintln!("skipped: no wgpu adapter (install mesa-vulkan-drivers libvulkan1 for lavapipe)");
            None
        }
    }
}

fn wave(n: usize, seed: f64, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|i| (lo + (hi - lo) * (0.5 + 0.5 * ((i as f64 + seed) * 1.37).sin())) as f32).collect()
}

/// A loss' targets: class indices (`Int`, `[rows]`) or a dense `[rows, cols]` tensor.
#[derive(Clone)]
enum Target {
    Labels(Vec<i64>),
    Dense(Vec<f32>),
}

/// The loss (and its gradient when `grad`) on `device`: `(values, gradient)`.
fn run(
    loss: &BurnLoss,
    device: &Device,
    logits: &[f32],
    shape: [usize; 2],
    target: &Target,
    weights: Option<&[f32]>,
    grad: bool,
) -> (Vec<f32>, Vec<f32>) {
    let device = if grad { device.clone().autodiff() } else { device.clone() };
    let x = Tensor::<2>::from_data(TensorData::new(logits.to_vec(), shape), &device);
    let x = if grad { x.require_grad() } else { x };
    let w = weights.map(|w| Tensor::<1>::from_data(TensorData::new(w.to_vec(), [w.len()]), &device));
    let out = match (target, w) {
        (Target::Labels(l), None) => loss.forward(x.clone(), Tensor::<1, Int>::from_ints(l.as_slice(), &device)),
        (Target::Labels(l), Some(w)) => {
            loss.forward_weighted(x.clone(), Tensor::<1, Int>::from_ints(l.as_slice(), &device), w)
        }
        (Target::Dense(t), None) => {
            loss.forward(x.clone(), Tensor::<2>::from_data(TensorData::new(t.clone(), shape), &device))
        }
        (Target::Dense(t), Some(w)) => {
            loss.forward_weighted(x.clone(), Tensor::<2>::from_data(TensorData::new(t.clone(), shape), &device), w)
        }
    }
    .expect("the loss runs");
    let values: Vec<f32> = out.clone().into_data().iter::<f32>().collect();
    if !grad {
        return (values, vec![]);
    }
    // Σ out·(1, 2, ...): a non-unit upstream for the `none` reduction.
    let n = values.len();
    let up = Tensor::<1>::from_data(TensorData::new((1..=n).map(|i| i as f32).collect::<Vec<_>>(), [n]), &device);
    let grads = if n == 1 { out.backward() } else { (out * up).sum().backward() };
    let g = x.grad(&grads).expect("a gradient for the logits");
    (values, g.into_data().iter::<f32>().collect())
}

/// `a` and `b` agree to `rtol 1e-5, atol 1e-5`, NaN where the other has NaN.
fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-5 + 1e-5 * y.abs();
        assert!(ok, "{what}[{i}]: gpu {x} vs cpu {y}");
    }
}

/// The loss on the GPU and on the CPU (Flex, losskit's kernels), values and gradients, with
/// and without sample weights, tracked and untracked.
fn agree(gpu: &Device, loss: &BurnLoss, logits: &[f32], shape: [usize; 2], target: &Target, what: &str) {
    agree_on(gpu, loss, logits, shape, target, what, true)
}

/// [`agree`], checking that the GPU run launched a device kernel (`fused`) or ran on the host.
fn agree_on(
    gpu: &Device,
    loss: &BurnLoss,
    logits: &[f32],
    shape: [usize; 2],
    target: &Target,
    what: &str,
    fused: bool,
) {
    let cpu = Device::flex();
    let before = losskit_burn::device_launches();
    let weights: Vec<f32> = (0..shape[0]).map(|i| 0.25 + (i % 4) as f32 * 0.5).collect();
    for w in [None, Some(weights.as_slice())] {
        let on_gpu = run(loss, gpu, logits, shape, target, w, true);
        let on_cpu = run(loss, &cpu, logits, shape, target, w, true);
        close(&on_gpu.0, &on_cpu.0, &format!("{what} value (weights {})", w.is_some()));
        close(&on_gpu.1, &on_cpu.1, &format!("{what} gradient (weights {})", w.is_some()));
        let value_only = run(loss, gpu, logits, shape, target, w, false);
        close(&value_only.0, &on_cpu.0, &format!("{what} untracked value"));
    }
    let launched = losskit_burn::device_launches() - before;
    assert_eq!(launched, if fused { 4 } else { 0 }, "{what}: device launches");
}

fn labels(rows: usize, cols: usize) -> Vec<i64> {
    (0..rows).map(|i| ((i * 7 + 3) % cols) as i64).collect()
}

fn one_hot(rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for (r, &k) in labels(rows, cols).iter().enumerate() {
        t[r * cols + k as usize] = 1.0;
    }
    t
}

/// The registered loss `name` with the config fields of `extra` set.
fn loss_with(name: &str, extra: serde_json::Value) -> BurnLoss {
    let mut loss = losskit_burn::get(name).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        loss = loss.with(k, v.clone()).unwrap();
    }
    loss
}

fn sparse_ce(mut extra: serde_json::Value) -> BurnLoss {
    extra["from_logits"] = json!(true);
    loss_with("sparse_categorical_crossentropy", extra)
}

fn dense_ce(mut extra: serde_json::Value) -> BurnLoss {
    extra["from_logits"] = json!(true);
    loss_with("categorical_crossentropy", extra)
}

/// Rows not a multiple of anything, 1 row, 1 class, a row longer than the workgroup, 100 000
/// classes, and each workgroup size (256 units per row below 64 rows, 128 below 512, 32 above).
const SHAPES: [[usize; 2]; 7] = [[1, 1], [1, 7], [37, 300], [300, 10], [5, 1000], [3, 100_000], [600, 70]];

#[test]
fn sparse_cross_entropy_equals_the_cpu_kernels() {
    let Some(gpu) = gpu() else { return };
    for [rows, cols] in SHAPES {
        let x = wave(rows * cols, 0.3, -4.0, 4.0);
        let t = Target::Labels(labels(rows, cols));
        let what = format!("sparse ({rows}, {cols})");
        for reduction in ["sum_over_batch_size", "sum", "none"] {
            agree(
                &gpu,
                &sparse_ce(json!({"reduction": reduction})),
                &x,
                [rows, cols],
                &t,
                &format!("{what} {reduction}"),
            );
        }
        let w: Vec<f64> = (0..cols).map(|c| 0.5 + (c % 3) as f64 * 0.25).collect();
        agree(&gpu, &sparse_ce(json!({"class_weights": w})), &x, [rows, cols], &t, &format!("{what} class weights"));
    }
}

#[test]
fn sparse_cross_entropy_with_ignore_class_equals_the_cpu_path() {
    let Some(gpu) = gpu() else { return };
    for from_logits in [true, false] {
        for [rows, cols] in [[37, 300], [8, 5], [1, 7]] {
            let x = if from_logits { wave(rows * cols, 0.3, -4.0, 4.0) } else { probabilities(rows, cols) };
            let t = Target::Labels(labels(rows, cols));
            for reduction in ["sum_over_batch_size", "sum", "none", "mean_with_sample_weight"] {
                let loss = loss_with(
                    "sparse_categorical_crossentropy",
                    json!({"from_logits": from_logits, "ignore_class": 3, "reduction": reduction}),
                );
                agree(&gpu, &loss, &x, [rows, cols], &t, &format!("ignore_class ({rows}, {cols}) {reduction}"));
            }
        }
    }
    // Every row ignored: the mean is 0, not NaN.
    let loss = loss_with("sparse_categorical_crossentropy", json!({"from_logits": true, "ignore_class": 1}));
    agree(&gpu, &loss, &wave(8, 0.2, -1.0, 1.0), [4, 2], &Target::Labels(vec![1; 4]), "all ignored");
}

#[test]
fn one_hot_cross_entropy_equals_the_cpu_kernels() {
    let Some(gpu) = gpu() else { return };
    for [rows, cols] in SHAPES {
        let x = wave(rows * cols, 1.1, -4.0, 4.0);
        let t = Target::Dense(one_hot(rows, cols));
        for ls in [0.0, 0.1] {
            for reduction in ["sum_over_batch_size", "none"] {
                let loss = dense_ce(json!({"label_smoothing": ls, "reduction": reduction}));
                agree(&gpu, &loss, &x, [rows, cols], &t, &format!("one-hot ({rows}, {cols}) ls {ls} {reduction}"));
            }
        }
        // Soft targets.
        let soft = wave(rows * cols, 0.9, 0.0, 1.0);
        agree(&gpu, &dense_ce(json!({})), &x, [rows, cols], &Target::Dense(soft), "soft targets");
    }
}

#[test]
fn the_edge_vectors_give_the_cpu_kernels_nan_inf_and_values() {
    let Some(gpu) = gpu() else { return };
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    // Per row: a NaN logit, a +inf logit, a -inf logit off the label, a -inf logit on it,
    // ±1e4 logits, a row all -inf, an ordinary row.
    let rows: [[f32; 4]; 8] = [
        [1.0, nan, 0.5, 0.0],
        [1.0, inf, 0.5, 0.0],
        [1.0, -inf, 0.5, 0.0],
        [-inf, 1.0, 0.5, 0.0],
        [1e4, -1e4, 0.0, 1e4],
        [-1e4, -1e4, 1e4, -1e4],
        [-inf, -inf, -inf, -inf],
        [0.1, 0.2, 0.3, 0.4],
    ];
    let x: Vec<f32> = rows.iter().flatten().copied().collect();
    let labels = vec![0, 0, 0, 0, 1, 2, 1, 3];
    agree(&gpu, &sparse_ce(json!({})), &x, [8, 4], &Target::Labels(labels.clone()), "sparse edges");
    let mut hot = vec![0.0; 32];
    labels.iter().enumerate().for_each(|(r, &k)| hot[r * 4 + k as usize] = 1.0);
    agree(&gpu, &dense_ce(json!({})), &x, [8, 4], &Target::Dense(hot), "one-hot edges");
}

#[test]
fn the_kernels_gradient_equals_burns_autodiff_of_the_composed_loss() {
    let Some(gpu) = gpu() else { return };
    let device = gpu.autodiff();
    let (rows, cols) = (64, 513);
    let x = wave(rows * cols, 0.7, -6.0, 6.0);
    let l = labels(rows, cols);
    let grad_of = |fused: bool| -> Vec<f32> {
        let logits = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), &device).require_grad();
        let targets = Tensor::<1, Int>::from_ints(l.as_slice(), &device);
        let loss = if fused {
            sparse_ce(json!({})).forward(logits.clone(), targets).unwrap()
        } else {
            let picked = log_softmax(logits.clone(), 1).gather(1, targets.reshape([rows, 1]));
            picked.mean().neg().reshape([1])
        };
        let grads = loss.backward();
        logits.grad(&grads).unwrap().into_data().iter::<f32>().collect()
    };
    close(&grad_of(true), &grad_of(false), "fused vs composed gradient");
}

#[test]
fn a_loss_without_a_device_kernel_runs_on_the_host() {
    let Some(gpu) = gpu() else { return };
    let (rows, cols) = (6, 5);
    let x = wave(rows * cols, 0.2, 0.05, 0.95);
    let t = Target::Dense(wave(rows * cols, 1.7, 0.0, 1.0));
    for name in ["mean_squared_error", "categorical_hinge", "kl_divergence", "tversky"] {
        agree_on(&gpu, &losskit_burn::get(name).unwrap(), &x, [rows, cols], &t, name, false);
    }
}

#[test]
fn a_label_out_of_range_is_an_error_on_the_device_too() {
    let Some(gpu) = gpu() else { return };
    let x = Tensor::<2>::from_data(TensorData::new(wave(6, 0.1, -1.0, 1.0), [2, 3]), &gpu);
    let err = sparse_ce(json!({})).forward(x, Tensor::<1, Int>::from_ints([0, 3], &gpu)).unwrap_err();
    assert!(err.to_string().contains('3'), "{err}");
}

/// Probabilities: positive rows (not normalised), a zero, values at and beyond the clip range.
fn probabilities(rows: usize, cols: usize) -> Vec<f32> {
    let mut p = wave(rows * cols, 0.4, 0.0, 1.0);
    p.iter_mut().step_by(5).for_each(|v| *v = 0.0);
    p
}

#[test]
fn cross_entropy_from_probabilities_equals_the_cpu_kernels() {
    let Some(gpu) = gpu() else { return };
    for [rows, cols] in SHAPES {
        let p = probabilities(rows, cols);
        let what = format!("({rows}, {cols})");
        let sparse = Target::Labels(labels(rows, cols));
        agree(&gpu, &loss_with("sparse_categorical_crossentropy", json!({})), &p, [rows, cols], &sparse, &what);
        let w: Vec<f64> = (0..cols).map(|c| 0.5 + (c % 3) as f64 * 0.25).collect();
        let weighted = loss_with("sparse_categorical_crossentropy", json!({"class_weights": w}));
        agree(&gpu, &weighted, &p, [rows, cols], &sparse, &format!("{what} class weights"));
        for ls in [0.0, 0.2] {
            let loss = loss_with("categorical_crossentropy", json!({"label_smoothing": ls}));
            agree(&gpu, &loss, &p, [rows, cols], &Target::Dense(one_hot(rows, cols)), &format!("{what} one-hot {ls}"));
        }
    }
    // A row that sums to 0, one with a NaN, one with +inf, one that clips at both ends.
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let p = [0.0, 0.0, 0.0, 0.2, nan, 0.3, 0.2, inf, 0.3, 1.0, 0.0, 1e-9];
    let hot = Target::Dense(one_hot(4, 3));
    agree(&gpu, &loss_with("categorical_crossentropy", json!({})), &p, [4, 3], &hot, "edges");
    let labels = Target::Labels(labels(4, 3));
    agree(&gpu, &loss_with("sparse_categorical_crossentropy", json!({})), &p, [4, 3], &labels, "sparse edges");
}

#[test]
fn binary_and_focal_losses_equal_the_cpu_kernels() {
    let Some(gpu) = gpu() else { return };
    for [rows, cols] in [[1, 1], [37, 300], [3, 100_000]] {
        let logits = wave(rows * cols, 0.5, -6.0, 6.0);
        let probs = probabilities(rows, cols);
        let t = Target::Dense(wave(rows * cols, 2.3, 0.0, 1.0).iter().map(|v| v.round()).collect());
        let w: Vec<f64> = (0..cols).map(|c| 0.5 + (c % 3) as f64 * 0.25).collect();
        let what = format!("({rows}, {cols})");
        for (from_logits, x) in [(true, &logits), (false, &probs)] {
            let bce = |extra| loss_with("binary_crossentropy", extra);
            agree(&gpu, &bce(json!({"from_logits": from_logits})), x, [rows, cols], &t, &format!("bce {what}"));
            let smoothed = bce(json!({"from_logits": from_logits, "label_smoothing": 0.1, "class_weights": w}));
            agree(&gpu, &smoothed, x, [rows, cols], &t, &format!("bce {what} smoothing, weights"));
            for (gamma, balanced) in [(2.0, false), (0.0, true), (1.0, false), (0.5, true)] {
                let focal = loss_with(
                    "binary_focal_crossentropy",
                    json!({"from_logits": from_logits, "gamma": gamma, "apply_class_balancing": balanced,
                           "alpha": 0.3, "label_smoothing": 0.05}),
                );
                agree(&gpu, &focal, x, [rows, cols], &t, &format!("focal {what} γ {gamma} {balanced} {from_logits}"));
            }
        }
    }
    // Logits: ±1e4, ±inf, NaN. Probabilities: 0, 1, NaN, inside and just beyond the clip range.
    // (Probabilities far outside [0, 1] are left out: there the focal factor (1 - p_t)^γ
    // multiplies `ln(1 - q)` by ~1e4, and a shader compiler may evaluate `ln(1 - q)` at
    // q = 1e-7 as -1e-7 instead of f32's -1.19e-7.)
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let logits = [1e4, -1e4, inf, -inf, nan, 0.0, 1.0, 0.5];
    let probs = [0.0, 1.0, nan, 1e-9, 1.0 - 1e-9, 0.5, 1.5, -0.5];
    let t = Target::Dense(vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
    for (from_logits, x) in [(true, logits), (false, probs)] {
        let bce = loss_with("binary_crossentropy", json!({"from_logits": from_logits}));
        agree(&gpu, &bce, &x, [2, 4], &t, &format!("bce edges {from_logits}"));
        let focal = loss_with("binary_focal_crossentropy", json!({"from_logits": from_logits}));
        agree(&gpu, &focal, &x, [2, 4], &t, &format!("focal edges {from_logits}"));
    }
}

#[test]
fn row_sums_keep_addends_below_half_an_ulp_of_the_running_sum() {
    let Some(gpu) = gpu() else { return };
    // Unit 0 of the row's cube reads 1.0, then 390 values of 5e-8 (each below half an ulp of
    // 1): a plain running sum loses all of them (a relative 2e-5 of the row's sum).
    let cols = 100_000;
    let mut p = vec![0.0_f32; cols];
    for j in (0..cols).step_by(256) {
        p[j] = 5e-8;
    }
    p[0] = 1.0;
    let mut hot = vec![0.0; cols];
    hot[0] = 1.0;
    agree(&gpu, &loss_with("categorical_crossentropy", json!({})), &p, [1, cols], &Target::Dense(hot), "tiny addends");
}

#[test]
fn categorical_focal_loss_equals_the_cpu_kernels() {
    let Some(gpu) = gpu() else { return };
    for [rows, cols] in SHAPES {
        let logits = wave(rows * cols, 0.8, -5.0, 5.0);
        let probs = probabilities(rows, cols);
        let t = Target::Dense(one_hot(rows, cols));
        let alphas: Vec<f64> = (0..cols).map(|c| 0.2 + (c % 4) as f64 * 0.1).collect();
        for (from_logits, x) in [(true, &logits), (false, &probs)] {
            for (gamma, alpha) in [(2.0, json!(0.25)), (0.0, json!(alphas)), (0.5, json!(1.0))] {
                let loss = loss_with(
                    "categorical_focal_crossentropy",
                    json!({"from_logits": from_logits, "gamma": gamma, "alpha": alpha, "label_smoothing": 0.1}),
                );
                let what = format!("focal ({rows}, {cols}) logits {from_logits} γ {gamma}");
                agree(&gpu, &loss, x, [rows, cols], &t, &what);
            }
        }
    }
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let logits = [1e4, -1e4, 0.0, nan, 1.0, 2.0, inf, 0.0, 1.0, -inf, 0.5, 0.0];
    let probs = [0.0, 0.0, 0.0, 0.2, nan, 0.3, 1.0, 0.0, 1e-9, 0.5, 0.5, 0.0];
    for (from_logits, x) in [(true, logits), (false, probs)] {
        let loss = loss_with("categorical_focal_crossentropy", json!({"from_logits": from_logits}));
        agree(&gpu, &loss, &x, [4, 3], &Target::Dense(one_hot(4, 3)), &format!("focal edges {from_logits}"));
    }
}

#[test]
fn a_burn_mlp_learns_the_digits_on_the_gpu_as_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let ce = sparse_ce(json!({}));
    let before = losskit_burn::device_launches();
    let on_gpu = digits::accuracy(&gpu, &ce, false, 12);
    assert!(losskit_burn::device_launches() - before >= 12 * 45, "the loss ran on the device every step");
    let on_cpu = digits::accuracy(&Device::flex(), &ce, false, 12);
    eprintln!("validation accuracy: GPU {on_gpu:.4}, CPU {on_cpu:.4}");
    assert!(on_gpu >= 0.95, "validation accuracy on the GPU {on_gpu}");
    assert!((on_gpu - on_cpu).abs() <= 0.01, "GPU {on_gpu} vs CPU {on_cpu}");
}

/// The loss of `(batch, seq, classes)` logits on `device` (values, gradient): labels
/// `(batch, seq)` or dense targets of the logits' shape.
fn run_3d(loss: &BurnLoss, device: &Device, x: &[f32], shape: [usize; 3], target: &Target) -> (Vec<f32>, Vec<f32>) {
    let device = device.clone().autodiff();
    let logits = Tensor::<3>::from_data(TensorData::new(x.to_vec(), shape), &device).require_grad();
    let out = match target {
        Target::Labels(l) => {
            let labels = Tensor::<2, Int>::from_data(TensorData::new(l.clone(), [shape[0], shape[1]]), &device);
            loss.forward(logits.clone(), labels)
        }
        Target::Dense(t) => {
            loss.forward(logits.clone(), Tensor::<3>::from_data(TensorData::new(t.clone(), shape), &device))
        }
    }
    .unwrap();
    let values: Vec<f32> = out.clone().into_data().iter::<f32>().collect();
    // Σ out·(1, 2, ...): a non-unit upstream for the `none` reduction.
    let n = values.len();
    let up = Tensor::<1>::from_data(TensorData::new((1..=n).map(|i| i as f32).collect::<Vec<_>>(), [n]), &device);
    let g = logits.grad(&(out * up).sum().backward()).unwrap();
    assert_eq!(g.dims(), shape, "the gradient has the logits' shape");
    (values, g.into_data().iter::<f32>().collect())
}

#[test]
fn sequences_of_rows_run_on_the_device_flattened() {
    let Some(gpu) = gpu() else { return };
    let [b, t, c] = [3, 5, 7];
    let x = wave(b * t * c, 0.6, -3.0, 3.0);
    let cases = [
        (sparse_ce(json!({})), Target::Labels(labels(b * t, c))),
        (sparse_ce(json!({"reduction": "none"})), Target::Labels(labels(b * t, c))),
        (dense_ce(json!({"label_smoothing": 0.1})), Target::Dense(one_hot(b * t, c))),
        (loss_with("binary_crossentropy", json!({"from_logits": true})), Target::Dense(wave(b * t * c, 0.1, 0.0, 1.0))),
    ];
    for (loss, target) in &cases {
        let before = losskit_burn::device_launches();
        let on_gpu = run_3d(loss, &gpu, &x, [b, t, c], target);
        assert_eq!(losskit_burn::device_launches() - before, 1, "{loss:?} ran on the device");
        let on_cpu = run_3d(loss, &Device::flex(), &x, [b, t, c], target);
        close(&on_gpu.0, &on_cpu.0, &format!("{loss:?} value"));
        close(&on_gpu.1, &on_cpu.1, &format!("{loss:?} gradient"));
    }
}

#[test]
fn half_precision_logits_are_computed_in_f32_on_the_device() {
    use burn::tensor::{DType, TensorCreationOptions};
    let Some(gpu) = gpu() else { return };
    let (rows, cols) = (37, 300);
    let x = wave(rows * cols, 0.3, -4.0, 4.0);
    let l = labels(rows, cols);
    let on = |device: &Device| -> (Vec<f32>, Vec<f32>, DType) {
        let device = device.clone().autodiff();
        let options = TensorCreationOptions::new(device.clone()).with_dtype(DType::F16);
        let logits = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), options).require_grad();
        let out = sparse_ce(json!({})).forward(logits.clone(), Tensor::<1, Int>::from_ints(l.as_slice(), &device));
        let out = out.unwrap();
        let g = logits.grad(&out.clone().backward()).unwrap();
        let dtype = g.dtype();
        (out.into_data().iter::<f32>().collect(), g.into_data().iter::<f32>().collect(), dtype)
    };
    let before = losskit_burn::device_launches();
    let (v, g, dtype) = on(&gpu);
    assert_eq!(losskit_burn::device_launches() - before, 1, "ran on the device");
    assert_eq!(dtype, DType::F16, "the gradient in the input's dtype");
    let (v_cpu, g_cpu, _) = on(&Device::flex());
    // The same f32 computation rounded to f16 on both sides (one f16 ulp apart at most).
    for (a, b) in v.iter().chain(&g).zip(v_cpu.iter().chain(&g_cpu)) {
        assert!((a - b).abs() <= 1e-3 * b.abs() + 1e-7, "{a} vs {b}");
    }
}
