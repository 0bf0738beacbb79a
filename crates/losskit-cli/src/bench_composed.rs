//! `losskit bench --composed`: losses that go through the tape (custom closures written as a user
//! writes them, and built-in losses composed from tensor ops), value + gradient, f32, with the
//! minor page faults per call.

use crate::BenchArgs;
use losskit::{CustomLoss, Loss, Result, Tensor};
use serde_json::json;
use std::time::Instant;

/// One composed workload: its name, shape, target kind and the loss.
struct Workload {
    name: &'static str,
    rows: usize,
    cols: usize,
    /// "sparse" (class index per row), "onehot", or "real" values in [0, 1).
    targets: &'static str,
    loss: fn() -> Result<Box<dyn Loss>>,
}

fn custom_mse() -> Result<Box<dyn Loss>> {
    Ok(Box::new(CustomLoss::new("custom_mse", |t: &Tensor, p: &Tensor| p.sub(t)?.square().mean(&[-1], false))))
}

fn custom_softmax_ce() -> Result<Box<dyn Loss>> {
    Ok(Box::new(CustomLoss::new("custom_softmax_ce", |t: &Tensor, p: &Tensor| {
        Ok(p.log_softmax(-1)?.mul(t)?.sum(&[-1], false)?.neg())
    })))
}

const WORKLOADS: &[Workload] = &[
    Workload { name: "custom_mse_8192x4096", rows: 8192, cols: 4096, targets: "real", loss: custom_mse },
    // The fused MSE kernel through the same call, the yardstick for the custom closure above.
    Workload {
        name: "mse_kernel_8192x4096",
        rows: 8192,
        cols: 4096,
        targets: "real",
        loss: || losskit::get("MeanSquaredError"),
    },
    Workload { name: "dice_8192x4096", rows: 8192, cols: 4096, targets: "real", loss: || losskit::get("Dice") },
    Workload { name: "tversky_8192x4096", rows: 8192, cols: 4096, targets: "real", loss: || losskit::get("Tversky") },
    Workload {
        name: "smooth_l1_8192x4096",
        rows: 8192,
        cols: 4096,
        targets: "real",
        loss: || losskit::get("SmoothL1Loss"),
    },
    Workload {
        name: "torch_cross_entropy_4096x32000",
        rows: 4096,
        cols: 32000,
        targets: "sparse",
        loss: || losskit::get("CrossEntropyLoss"),
    },
    Workload {
        name: "custom_softmax_ce_4096x32000",
        rows: 4096,
        cols: 32000,
        targets: "onehot",
        loss: custom_softmax_ce,
    },
];

/// The process' minor page faults so far (field 10 of `/proc/self/stat`; 0 where unavailable).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after the ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace().nth(7).and_then(|f| f.parse().ok()).unwrap_or(0)
}

fn inputs(w: &Workload) -> Result<(Tensor, Tensor)> {
    let n = w.rows * w.cols;
    let p = crate::timing::fill(n, 3, -2.0, 2.0);
    let t = match w.targets {
        "sparse" => {
            let labels = crate::timing::fill(w.rows, 5, 0.0, w.cols as f32).into_iter().map(f32::floor).collect();
            Tensor::from_vec(labels, &[w.rows])?
        }
        "onehot" => {
            let mut v = vec![0.0f32; n];
            for r in 0..w.rows {
                v[r * w.cols + (r * 7919) % w.cols] = 1.0;
            }
            Tensor::from_vec(v, &[w.rows, w.cols])?
        }
        _ => Tensor::from_vec(crate::timing::fill(n, 5, 0.0, 1.0), &[w.rows, w.cols])?,
    };
    let p = if w.targets == "real" { p.into_iter().map(|x| 0.5 + 0.2 * x).collect() } else { p };
    Ok((t, Tensor::from_vec(p, &[w.rows, w.cols])?))
}

/// One call: the loss and its gradient w.r.t. `y_pred`.
fn step(loss: &dyn Loss, t: &Tensor, p: &Tensor) -> Result<()> {
    let x = p.detach().requires_grad();
    let out = loss.call(t, &x, None)?;
    std::hint::black_box(out.backward()?);
    Ok(())
}

/// `losskit bench --composed`.
pub fn bench_composed(args: &BenchArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    if !args.json {
        println!("losskit bench --composed: loss + gradient through the tape, f32, {threads} threads, median of {} runs after a warm-up", args.repeats);
        println!("{:<32} {:>10} {:>16} {:>14}", "workload", "ms", "minor faults", "output pages");
    }
    for w in WORKLOADS.iter().filter(|w| args.only.as_deref().is_none_or(|o| w.name.contains(o))) {
        let loss = (w.loss)()?;
        let (t, p) = inputs(w)?;
        step(loss.as_ref(), &t, &p)?;
        let mut times = Vec::with_capacity(args.repeats);
        let faults_before = minor_faults();
        for _ in 0..args.repeats.max(1) {
            let start = Instant::now();
            step(loss.as_ref(), &t, &p)?;
            times.push(start.elapsed().as_secs_f64());
        }
        let faults = (minor_faults() - faults_before) as f64 / args.repeats.max(1) as f64;
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2] * 1e3;
        // The call's outputs: the gradient (as large as y_pred) and the scalar loss.
        let output_pages = (w.rows * w.cols * 4).div_ceil(4096);
        if args.json {
            println!(
                "{}",
                json!({"workload": w.name, "dtype": "float32", "threads": threads, "median_ms": ms,
                       "minor_faults_per_call": faults, "output_pages": output_pages})
            );
        } else {
            println!("{:<32} {:>10.1} {:>16.0} {:>14}", w.name, ms, faults, output_pages);
        }
    }
    Ok(())
}
