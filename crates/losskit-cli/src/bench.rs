//! `losskit bench`: each fused loss kernel (value + gradient, f32) on large shapes, timed
//! against the same loss composed from tensor ops through the tape, and against a STREAM triad
//! measuring the machine's memory bandwidth, all in the same run; then the fused linear +
//! cross-entropy head against its naive path (`bench_linear_ce`).

use crate::timing::{fill, time};
use crate::BenchArgs;
use losskit::{Result, Tensor};
use losskit_kernels as k;
use losskit_kernels::{run_rows, RowKernel};
use rayon::prelude::*;
use serde_json::json;

/// STREAM triad `a = b + s·c` over 3 × 256 MiB, both cores; bytes counted as STREAM does (3 arrays).
fn triad(repeats: usize) -> f64 {
    let n = 64 << 20;
    let (b, c) = (fill(n, 1, 0.0, 1.0), fill(n, 2, 0.0, 1.0));
    let mut a = vec![0.0f32; n];
    let s = 1.5f32;
    let secs = time(repeats, || {
        a.par_chunks_mut(1 << 16).zip(b.par_chunks(1 << 16)).zip(c.par_chunks(1 << 16)).for_each(|((a, b), c)| {
            for ((x, &y), &z) in a.iter_mut().zip(b).zip(c) {
                *x = y + s * z;
            }
        });
    });
    std::hint::black_box(&a);
    (3 * n * 4) as f64 / secs / 1e9
}

struct Workload {
    name: &'static str,
    rows: usize,
    cols: usize,
    /// "sparse" (class index per row), "onehot", "binary" (0 or 1), or "real" values.
    targets: &'static str,
    /// Predictions are logits (wide range) rather than probabilities.
    logits: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload { name: "cce_sparse_8192x1000", rows: 8192, cols: 1000, targets: "sparse", logits: true },
    Workload { name: "cce_onehot_8192x1000", rows: 8192, cols: 1000, targets: "onehot", logits: true },
    Workload { name: "cce_sparse_4096x32000", rows: 4096, cols: 32000, targets: "sparse", logits: true },
    Workload { name: "cce_onehot_4096x32000", rows: 4096, cols: 32000, targets: "onehot", logits: true },
    Workload { name: "bce_probs_8192x4096", rows: 8192, cols: 4096, targets: "binary", logits: false },
    Workload { name: "bce_logits_8192x4096", rows: 8192, cols: 4096, targets: "binary", logits: true },
    Workload { name: "mse_8192x4096", rows: 8192, cols: 4096, targets: "real", logits: true },
    Workload { name: "huber_8192x4096", rows: 8192, cols: 4096, targets: "real", logits: true },
    Workload { name: "logcosh_8192x4096", rows: 8192, cols: 4096, targets: "real", logits: true },
    Workload { name: "cosine_65536x256", rows: 65536, cols: 256, targets: "real", logits: true },
];

fn run_kernel<K: RowKernel<f32>>(kernel: &K, t: &[f32], p: &[f32], cols: usize, values: &mut [f32], grad: &mut [f32]) {
    run_rows(kernel, t, p, cols, None, values, Some(grad)).expect("buffers sized for the workload");
}

/// The same loss composed from tensor ops (the reference path), value + gradient through the tape.
fn composed(w: &Workload, t: &Tensor, p: &Tensor) -> Result<()> {
    let p = p.detach().requires_grad();
    let loss = match w.name.split('_').next().unwrap_or("") {
        "cce" if w.targets == "sparse" => p.log_softmax(-1)?.take_along_last(t)?.neg().mean_all(),
        "cce" => p.log_softmax(-1)?.mul(t)?.sum(&[-1], false)?.neg().mean_all(),
        "bce" if w.logits => t.mul(&p.neg().softplus())?.add(&t.neg().add_scalar(1.0)?.mul(&p.softplus())?)?.mean_all(),
        "bce" => {
            let q = p.clip(1e-7, 1.0 - 1e-7)?;
            t.mul(&q.log())?.add(&t.neg().add_scalar(1.0)?.mul(&q.neg().add_scalar(1.0)?.log())?)?.neg().mean_all()
        }
        "mse" => p.sub(t)?.square().mean_all(),
        "huber" => {
            let e = p.sub(t)?;
            let a = e.abs();
            let small: Vec<f32> = a.to_vec::<f32>().iter().map(|&v| f32::from(u8::from(v <= 1.0))).collect();
            let cond = Tensor::from_vec(small, a.shape())?;
            Tensor::where_cond(&cond, &e.square().mul_scalar(0.5)?, &a.add_scalar(-0.5)?)?.mean_all()
        }
        "logcosh" => {
            let x = p.sub(t)?;
            x.add(&x.mul_scalar(-2.0)?.softplus())?.add_scalar(-std::f64::consts::LN_2)?.mean_all()
        }
        _ => {
            let norm = |x: &Tensor| -> Result<Tensor> {
                x.mul(&x.square().sum(&[-1], true)?.powf(-0.5)?.minimum_scalar(1e7)?)
            };
            norm(t)?.mul(&norm(&p)?)?.sum(&[-1], false)?.neg().mean_all()
        }
    };
    std::hint::black_box(loss.backward()?);
    Ok(())
}

/// `losskit bench`.
pub fn bench(args: &BenchArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    let stream = triad(args.repeats);
    if !args.json {
        println!(
            "losskit bench: loss + gradient, f32, {threads} threads, median of {} runs after a warm-up",
            args.repeats
        );
        println!("STREAM triad: {stream:.1} GB/s\n");
        println!(
            "{:<24} {:>10} {:>8} {:>9} {:>12} {:>9}",
            "workload", "ms", "GB/s", "% triad", "composed ms", "speedup"
        );
    }
    for w in WORKLOADS.iter().filter(|w| args.only.as_deref().is_none_or(|o| w.name.contains(o))) {
        let n = w.rows * w.cols;
        let p = if w.logits { fill(n, 3, -4.0, 4.0) } else { fill(n, 3, 1e-4, 1.0 - 1e-4) };
        let t: Vec<f32> = match w.targets {
            "sparse" => fill(w.rows, 5, 0.0, w.cols as f32).into_iter().map(f32::floor).collect(),
            "onehot" => {
                let mut v = vec![0.0f32; n];
                for r in 0..w.rows {
                    v[r * w.cols + (r * 7919) % w.cols] = 1.0;
                }
                v
            }
            "binary" => fill(n, 5, 0.0, 1.0).into_iter().map(|x| f32::from(u8::from(x > 0.5))).collect(),
            _ => fill(n, 5, -1.0, 1.0),
        };
        // Output buffers are allocated once and reused: page faults are not part of the loss.
        let mut values = vec![0.0f32; w.rows];
        let mut grad = vec![0.0f32; n];
        let secs = time(args.repeats, || match w.name.split('_').next().unwrap_or("") {
            "cce" if w.targets == "sparse" => run_kernel(
                &k::SparseCategoricalCrossentropy { from_logits: true, class_weights: None, label_smoothing: 0.0 },
                &t,
                &p,
                w.cols,
                &mut values,
                &mut grad,
            ),
            "cce" => run_kernel(
                &k::CategoricalCrossentropy { from_logits: true, label_smoothing: 0.0, smoothing_share: 0.0 },
                &t,
                &p,
                w.cols,
                &mut values,
                &mut grad,
            ),
            "bce" => run_kernel(
                &k::BinaryCrossentropy { from_logits: w.logits, label_smoothing: 0.0, class_weights: None },
                &t,
                &p,
                w.cols,
                &mut values,
                &mut grad,
            ),
            "mse" => run_kernel(&k::MeanSquaredError, &t, &p, w.cols, &mut values, &mut grad),
            "huber" => run_kernel(&k::Huber { delta: 1.0 }, &t, &p, w.cols, &mut values, &mut grad),
            "logcosh" => run_kernel(&k::LogCosh, &t, &p, w.cols, &mut values, &mut grad),
            _ => run_kernel(&k::CosineSimilarity, &t, &p, w.cols, &mut values, &mut grad),
        });
        let bytes = (n * 4 + t.len() * 4 + n * 4) as f64;
        let gbps = bytes / secs / 1e9;
        let composed_ms = if args.no_composed {
            None
        } else {
            let tt = Tensor::from_vec(
                t.clone(),
                if w.targets == "sparse" { vec![w.rows] } else { vec![w.rows, w.cols] }.as_slice(),
            )?;
            let pt = Tensor::from_vec(p.clone(), &[w.rows, w.cols])?;
            let mut err = None;
            let s = time(1.max(args.repeats / 4), || {
                if let Err(e) = composed(w, &tt, &pt) {
                    err = Some(e);
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            Some(s * 1e3)
        };
        if args.json {
            println!(
                "{}",
                json!({"workload": w.name, "dtype": "float32", "threads": threads, "median_ms": secs * 1e3, "gbps": gbps,
                       "composed_ms": composed_ms, "stream_triad_gbps": stream})
            );
        } else {
            let c = composed_ms.map_or("-".to_string(), |c| format!("{c:.1}"));
            let speedup = composed_ms.map_or("-".to_string(), |c| format!("{:.1}x", c / (secs * 1e3)));
            println!(
                "{:<24} {:>10.2} {:>8.1} {:>8.0}% {:>12} {:>9}",
                w.name,
                secs * 1e3,
                gbps,
                100.0 * gbps / stream,
                c,
                speedup
            );
        }
        std::hint::black_box((&values, &grad));
    }
    crate::bench_linear_ce::bench(args)
}
