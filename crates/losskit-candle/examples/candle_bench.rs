//! Loss + gradient on `losskit bench`'s shapes, f32, in one run: losskit's own call (its kernel
//! node and backward), the same loss through candle (`losskit-candle`, candle's `backward`),
//! candle's backward floor (an op that only hands back a gradient it already holds) and, where
//! candle-nn has the loss, candle-nn's own.
//!
//! `cargo run --release -p losskit-candle --example candle_bench [-- REPEATS [NAME]]` (NAME: only
//! the workloads whose name contains it).

use candle_core::{Device, Tensor, Var};
use std::time::Instant;

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

/// Which candle-nn loss computes the same value, if any.
#[derive(Clone, Copy, PartialEq)]
enum CandleNn {
    CrossEntropy,
    Mse,
    BceWithLogits,
    None,
}

/// One shape of `losskit bench` and the loss timed on it.
struct Workload {
    name: &'static str,
    rows: usize,
    cols: usize,
    /// The loss' Keras config.
    config: &'static str,
    /// Integer labels (one per row) instead of a `(rows, cols)` target.
    sparse: bool,
    candle_nn: CandleNn,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "cce_sparse_8192x1000",
        rows: 8192,
        cols: 1000,
        config: r#"{"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}}"#,
        sparse: true,
        candle_nn: CandleNn::CrossEntropy,
    },
    Workload {
        name: "cce_sparse_4096x32000",
        rows: 4096,
        cols: 32000,
        config: r#"{"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}}"#,
        sparse: true,
        candle_nn: CandleNn::CrossEntropy,
    },
    Workload {
        name: "cce_sparse_32x10",
        rows: 32,
        cols: 10,
        config: r#"{"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}}"#,
        sparse: true,
        candle_nn: CandleNn::CrossEntropy,
    },
    Workload {
        name: "bce_logits_8192x4096",
        rows: 8192,
        cols: 4096,
        config: r#"{"class_name": "BinaryCrossentropy", "config": {"from_logits": true}}"#,
        sparse: false,
        candle_nn: CandleNn::BceWithLogits,
    },
    Workload {
        name: "mse_8192x4096",
        rows: 8192,
        cols: 4096,
        config: r#"{"class_name": "MeanSquaredError", "config": {}}"#,
        sparse: false,
        candle_nn: CandleNn::Mse,
    },
    Workload {
        name: "huber_8192x4096",
        rows: 8192,
        cols: 4096,
        config: r#"{"class_name": "Huber", "config": {"delta": 1.0}}"#,
        sparse: false,
        candle_nn: CandleNn::None,
    },
    Workload {
        name: "dice_8192x4096",
        rows: 8192,
        cols: 4096,
        config: r#"{"class_name": "Dice", "config": {}}"#,
        sparse: false,
        candle_nn: CandleNn::None,
    },
    Workload {
        name: "cosine_65536x256",
        rows: 65536,
        cols: 256,
        config: r#"{"class_name": "CosineSimilarity", "config": {}}"#,
        sparse: false,
        candle_nn: CandleNn::None,
    },
];

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

/// The times of one workload, in seconds.
struct Times {
    own: f64,
    through: f64,
    floor: f64,
    candle_nn: Option<f64>,
    /// The evaluation forward (an untracked `y_pred`) through candle, and losskit's value-only
    /// call.
    eval_through: f64,
    eval_own: f64,
}

fn run(w: &Workload, repeats: usize) -> Result<Times, Box<dyn std::error::Error>> {
    let (rows, cols) = (w.rows, w.cols);
    let n = rows * cols;
    let pred: Vec<f32> = (0..n).map(|i| ((i % 9973) as f32 * 0.37).sin() * 4.0).collect();
    let target: Vec<f32> = if w.sparse {
        (0..rows).map(|r| ((r * 7919) % cols) as f32).collect()
    } else {
        (0..n).map(|i| if (i * 7919) % 3 == 0 { 1.0 } else { 0.0 }).collect()
    };
    let target_shape = if w.sparse { vec![rows] } else { vec![rows, cols] };
    let config: serde_json::Value = serde_json::from_str(w.config)?;

    // losskit alone: its kernel node and backward.
    let loss = losskit::from_config(&config)?;
    let yt = losskit::Tensor::from_vec(target.clone(), &target_shape)?;
    let yp = losskit::Tensor::from_vec(pred.clone(), &[rows, cols])?.requires_grad();
    let own = median(repeats, || {
        let l = loss.call(&yt, &yp, None).expect("valid inputs");
        std::hint::black_box(l.backward().expect("scalar"));
    });

    // The same through candle (labels as u32, as a candle user holds them).
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::from_vec(pred, (rows, cols), &dev)?)?;
    let y = if w.sparse {
        Tensor::from_vec(target.iter().map(|&l| l as u32).collect::<Vec<u32>>(), rows, &dev)?
    } else {
        Tensor::from_vec(target, (rows, cols), &dev)?
    };
    let wrapped = losskit_candle::from_config(&config)?;
    let through = median(repeats, || {
        let l = wrapped.forward(&y, &x, None).expect("valid inputs");
        std::hint::black_box(l.backward().expect("scalar"));
    });

    // candle's own floor: an op that does nothing but hand back a gradient it already has
    // (what candle's backward costs any op with a gradient of this size: the GradStore entry
    // starts as zeros and the op's gradient is added to it).
    let ready = Tensor::zeros((rows, cols), candle_core::DType::F32, &dev)?;
    let floor = median(repeats, || {
        let l = x.apply_op1(GivenGrad(ready.clone())).expect("valid inputs");
        std::hint::black_box(l.backward().expect("scalar"));
    });

    let candle_nn = match w.candle_nn {
        CandleNn::None => None,
        kind => Some(median(repeats, || {
            let l = match kind {
                CandleNn::CrossEntropy => candle_nn::loss::cross_entropy(&x, &y),
                CandleNn::Mse => candle_nn::loss::mse(&x, &y),
                _ => candle_nn::loss::binary_cross_entropy_with_logit(&x, &y),
            }
            .expect("valid inputs");
            std::hint::black_box(l.backward().expect("scalar"));
        })),
    };
    let plain = x.as_tensor().detach();
    let eval_through = median(repeats, || {
        std::hint::black_box(wrapped.forward(&y, &plain, None).expect("valid inputs"));
    });
    let yp_plain = yp.detach();
    let eval_own = median(repeats, || {
        std::hint::black_box(loss.call(&yt, &yp_plain, None).expect("valid inputs"));
    });
    Ok(Times { own, through, floor, candle_nn, eval_through, eval_own })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let only = std::env::args().nth(2).unwrap_or_default();
    println!("loss + gradient, f32, median of {repeats} (ms; ratios to losskit alone):");
    println!(
        "{:<24} {:>9} {:>16} {:>16} {:>8} {:>22}",
        "workload", "losskit", "through candle", "candle floor", "(t-f)/own", "candle-nn (t is N× faster)"
    );
    let mut evals = Vec::new();
    for w in WORKLOADS.iter().filter(|w| w.name.contains(&only)) {
        // Small shapes take microseconds: many more repeats.
        let t = run(w, if w.rows * w.cols < 1 << 16 { repeats * 200 } else { repeats })?;
        let nn = t.candle_nn.map_or("-".to_string(), |c| format!("{:.3} ({:.1}×)", c * 1e3, c / t.through));
        evals.push((w.name, t.eval_through, t.eval_own));
        println!(
            "{:<24} {:>9.3} {:>9.3} ({:.2}×) {:>9.3} ({:.2}×) {:>8.2} {:>22}",
            w.name,
            t.own * 1e3,
            t.through * 1e3,
            t.through / t.own,
            t.floor * 1e3,
            t.floor / t.own,
            (t.through - t.floor) / t.own,
            nn
        );
    }
    println!("\nevaluation forward (y_pred not tracked: the value-only path), ms:");
    for (name, through, own) in evals {
        println!(
            "{name:<24} through candle {:.3}, losskit alone {:.3} ({:.2}×)",
            through * 1e3,
            own * 1e3,
            through / own
        );
    }
    Ok(())
}
