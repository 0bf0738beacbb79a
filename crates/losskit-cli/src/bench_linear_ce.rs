//! `losskit bench --only linear_ce`: the loss of a language-model head `hidden · Wᵀ + b` and its
//! three gradients, fused (the logits never exist) and naive (the logits and their gradient
//! materialised, then the same products), with each workload's time and peak memory growth.

use crate::timing::{fill, time};
use crate::BenchArgs;
use losskit::{Error, Result};
use losskit_kernels as k;
use losskit_kernels::gemm::{gemm, MatRef};
use serde_json::json;

/// Tokens, hidden size and vocabulary of the benchmark.
const N: usize = 4096;
const D: usize = 2048;
const V: usize = 32000;

/// The inputs and the (pre-faulted) gradient buffers shared by both workloads.
struct Head {
    hidden: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    labels: Vec<i64>,
    dh: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

impl Head {
    fn new() -> Head {
        let labels = fill(N, 14, 0.0, V as f32).into_iter().map(|x| x as i64).collect();
        // Written once so their pages are resident before the memory baseline.
        let touched = |n: usize| vec![1.0f32; n];
        Head {
            hidden: fill(N * D, 11, -1.0, 1.0),
            weight: fill(V * D, 12, -0.05, 0.05),
            bias: fill(V, 13, -0.1, 0.1),
            labels,
            dh: touched(N * D),
            dw: touched(V * D),
            db: touched(V),
        }
    }

    /// Mean loss and its gradients, fused.
    fn fused(&mut self) {
        let scale = vec![1.0 / N as f32; N];
        let mut losses = vec![0.0f32; N];
        let x = k::LinearInputs {
            hidden: &self.hidden,
            weight: &self.weight,
            layout: k::WeightLayout::ClassesByFeatures,
            bias: Some(&self.bias),
            labels: &self.labels,
            tokens: N,
            dim: D,
            vocab: V,
        };
        let grads = k::LinearGrads { hidden: &mut self.dh, weight: &mut self.dw, bias: Some(&mut self.db) };
        k::LinearCrossEntropy::default().forward_backward(&x, &scale, &mut losses, grads).expect("sized buffers");
        std::hint::black_box(&losses);
    }

    /// Mean loss and its gradients, naive: logits `(N, V)`, the sparse cross-entropy kernel's
    /// gradient `(N, V)`, then `∂h = G·W`, `∂W = Gᵀ·h`, `∂b = Σ_rows G`.
    fn naive(&mut self) {
        let (h, w) = (MatRef::row_major(&self.hidden, N, D), MatRef::row_major(&self.weight, V, D));
        let mut z = vec![0.0f32; N * V];
        gemm(1.0, h, w.t(), 0.0, &mut z).expect("shapes");
        for row in z.chunks_mut(V) {
            for (z, &b) in row.iter_mut().zip(&self.bias) {
                *z += b;
            }
        }
        let labels: Vec<f32> = self.labels.iter().map(|&l| l as f32).collect();
        let upstream = vec![1.0 / N as f32; N];
        let (mut values, mut g) = (vec![0.0f32; N], vec![0.0f32; N * V]);
        let kernel = k::SparseCategoricalCrossentropy { from_logits: true, class_weights: None, label_smoothing: 0.0 };
        k::run_rows(&kernel, &labels, &z, V, Some(&upstream), &mut values, Some(&mut g)).expect("sized buffers");
        drop(z);
        let gm = MatRef::row_major(&g, N, V);
        gemm(1.0, gm, w, 0.0, &mut self.dh).expect("shapes");
        gemm(1.0, gm.t(), h, 0.0, &mut self.dw).expect("shapes");
        self.db.iter_mut().for_each(|b| *b = 0.0);
        for row in g.chunks(V) {
            for (b, &v) in self.db.iter_mut().zip(row) {
                *b += v;
            }
        }
        std::hint::black_box(&values);
    }
}

/// The process' peak resident memory in MB since the last [`reset_peak`] (Linux `VmHWM`).
fn peak_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak resident memory to the current one (`echo 5 > /proc/self/clear_refs`).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The rate of a 2048³ f32 product on all threads (the best of three), GFLOP/s.
fn gemm_rate() -> f64 {
    let n = 2048;
    let a = fill(n * n, 21, -1.0, 1.0);
    let mut c = vec![0.0f32; n * n];
    let m = MatRef::row_major(&a, n, n);
    let best = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            gemm(1.0, m, m, 0.0, &mut c).expect("square");
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Runs both workloads (those matching `--only`), printing a table or JSON lines.
pub fn bench(args: &BenchArgs) -> Result<()> {
    let names = [format!("linear_ce_{N}x{D}x{V}"), format!("linear_ce_naive_{N}x{D}x{V}")];
    let chosen: Vec<bool> = names.iter().map(|n| args.only.as_deref().is_none_or(|o| n.contains(o))).collect();
    if !chosen.iter().any(|&c| c) {
        return Ok(());
    }
    let rate = gemm_rate();
    let mut head = Head::new();
    let flops = 3.0 * 2.0 * (N * D * V) as f64;
    let floor_mb = ((2 * N * D + 2 * V * D + 2 * V) * 4) as f64 / (1 << 20) as f64;
    if !args.json {
        println!(
            "\nlinear + cross-entropy, N={N} D={D} V={V}, f32, loss + 3 gradients (inputs and gradients: {floor_mb:.0} MB); large GEMM {rate:.0} GFLOP/s"
        );
        println!("{:<34} {:>10} {:>9} {:>8} {:>13}", "workload", "ms", "GFLOP/s", "% GEMM", "peak MB (+)");
    }
    let repeats = args.repeats.clamp(1, 3);
    for (i, name) in names.iter().enumerate().filter(|(i, _)| chosen[*i]) {
        let measured = reset_peak();
        let base = peak_mb();
        let secs = time(repeats, || if i == 0 { head.fused() } else { head.naive() });
        let growth = match (measured, base, peak_mb()) {
            (true, Some(b), Some(p)) => Some(p - b),
            _ => None,
        };
        let gflops = flops / secs / 1e9;
        if args.json {
            println!(
                "{}",
                json!({"workload": name, "dtype": "float32", "threads": rayon::current_num_threads(), "median_ms": secs * 1e3,
                       "peak_mb": growth, "gflops": gflops, "gemm_gflops": rate, "floor_mb": floor_mb})
            );
        } else {
            let peak = growth.map_or("-".into(), |g| format!("{g:.0}"));
            println!("{name:<34} {:>10.0} {gflops:>9.1} {:>7.0}% {peak:>13}", secs * 1e3, 100.0 * gflops / rate);
        }
    }
    if head.dh.iter().any(|v| v.is_nan()) {
        return Err(Error::Value { op: "bench linear_ce".into(), msg: "NaN in the hidden gradient".into() });
    }
    Ok(())
}
