//! Loss + gradient of sparse cross-entropy from logits at (4096, 32000), f32: losskit's own call,
//! the same loss through candle (`losskit-candle`), and candle-nn's `cross_entropy`, in one run.
//!
//! `cargo run --release -p losskit-candle --example candle_bench [-- REPEATS]`

use candle_core::{Device, Tensor, Var};
use std::time::Instant;

const ROWS: usize = 4096;

/// A candle op whose value is 0 and whose gradient is the tensor it holds: the cost of candle's
/// backward around any op, with no work of the op's own.
struct GivenGrad(Tensor);

impl candle_core::CustomOp1 for GivenGrad {
    fn name(&self) -> &'static str {
        "given_grad"
    }
    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        Ok((candle_core::CpuStorage::F32(vec![0.0]), candle_core::Shape::from(())))
    }
    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.clone()))
    }
}
const CLASSES: usize = 32000;

/// The median seconds of `f` over `repeats` runs after a warm-up.
fn median(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let logits: Vec<f32> = (0..ROWS * CLASSES).map(|i| ((i % 9973) as f32 * 0.37).sin() * 4.0).collect();
    let labels: Vec<u32> = (0..ROWS).map(|r| ((r * 7919) % CLASSES) as u32).collect();
    let config = serde_json::json!({"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}});

    // losskit alone: its kernel node and backward.
    let loss = losskit::from_config(&config)?;
    let yt = losskit::Tensor::from_vec(labels.iter().map(|&l| l as f32).collect::<Vec<f32>>(), &[ROWS])?;
    let yp = losskit::Tensor::from_vec(logits.clone(), &[ROWS, CLASSES])?.requires_grad();
    let own = median(repeats, || {
        let l = loss.call(&yt, &yp, None).expect("valid inputs");
        std::hint::black_box(l.backward().expect("scalar"));
    });

    // The same through candle.
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::from_vec(logits, (ROWS, CLASSES), &dev)?)?;
    let y = Tensor::from_vec(labels, ROWS, &dev)?;
    let wrapped = losskit_candle::from_config(&config)?;
    let through = median(repeats, || {
        let l = wrapped.forward(&y, &x, None).expect("valid inputs");
        std::hint::black_box(l.backward().expect("scalar"));
    });

    // candle's own floor: an op that does nothing but hand back a gradient it already has
    // (what candle's backward costs any op with a gradient of this size: the GradStore entry
    // starts as zeros and the op's gradient is added to it).
    let ready = Tensor::zeros((ROWS, CLASSES), candle_core::DType::F32, &dev)?;
    let floor = median(repeats, || {
        let l = x.apply_op1(GivenGrad(ready.clone())).expect("valid inputs");
        std::hint::black_box(l.backward().expect("scalar"));
    });

    // candle-nn's own.
    let candle_nn_ce = median(repeats, || {
        let l = candle_nn::loss::cross_entropy(&x, &y).expect("valid inputs");
        std::hint::black_box(l.backward().expect("scalar"));
    });
    println!("sparse cross-entropy from logits ({ROWS}, {CLASSES}), loss + gradient, median of {repeats}:");
    println!("  losskit alone            {:8.1} ms", own * 1e3);
    println!("  losskit through candle   {:8.1} ms  ({:.2}x losskit alone)", through * 1e3, through / own);
    println!(
        "  candle's backward floor  {:8.1} ms  (an op that returns a ready gradient; losskit through candle - floor = {:.2}x losskit alone)",
        floor * 1e3,
        (through - floor) / own
    );
    println!(
        "  candle-nn cross_entropy  {:8.1} ms  (losskit through candle is {:.1}x faster)",
        candle_nn_ce * 1e3,
        candle_nn_ce / through
    );
    Ok(())
}
