//! The f32 product's rate at the shapes losskit trains on, losskit's kernel (as chosen for this
//! CPU, and in AVX2 registers) against `matrixmultiply` in the same run: `cargo run --release
//! -p losskit-kernels --example gemm_rates -- [ROUNDS]`.
//!
//! All run through [`gemm::gemm`] (the same cut into parallel blocks), switched with
//! [`gemm::set_kernel`] and interleaved round by round; each shape prints the median GFLOP/s
//! of each and losskit's ratios to the others (> 1: losskit's chosen kernel is faster). The shapes are the seed
//! model's products at batch 32 and 128, the 2048-wide model's at batch 256, a 2048³ product,
//! the fused linear + cross-entropy head's three products at one 524-token chunk, and a 2048³
//! product in f64.

use losskit_kernels::gemm::{self, Kernel, MatRef};
use losskit_kernels::Float;
use std::time::Instant;

/// One product: `A (m × k) · B (k × n)`, each operand stored transposed when its flag says.
struct Shape {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    a_transposed: bool,
    b_transposed: bool,
    /// In f64 (f32 otherwise).
    f64: bool,
}

const fn shape(name: &'static str, m: usize, k: usize, n: usize, a_transposed: bool, b_transposed: bool) -> Shape {
    Shape { name, m, k, n, a_transposed, b_transposed, f64: false }
}

const SHAPES: [Shape; 13] = [
    shape("x·W1, batch 32", 32, 784, 512, false, false),
    shape("xᵀ·G (∂W1), batch 32", 784, 32, 512, true, false),
    shape("x·W1, batch 128", 128, 784, 512, false, false),
    shape("xᵀ·G (∂W1), batch 128", 784, 128, 512, true, false),
    shape("G·W2ᵀ (∂h), batch 128", 128, 10, 512, false, true),
    shape("wide x·W, batch 256", 256, 2048, 2048, false, false),
    shape("wide xᵀ·G (∂W)", 2048, 256, 2048, true, false),
    shape("wide G·Wᵀ (∂x)", 256, 2048, 2048, false, true),
    shape("2048³", 2048, 2048, 2048, false, false),
    shape("linear-CE W·hᵀ (logits)", 32000, 2048, 524, false, true),
    shape("linear-CE G·W (∂h)", 524, 32000, 2048, false, false),
    shape("linear-CE Gᵀ·h (∂W)", 32000, 524, 2048, true, false),
    Shape { f64: true, ..shape("2048³ in f64", 2048, 2048, 2048, false, false) },
];

/// GFLOP/s of `reps` products after one warm-up.
fn rate<T: Float>(a: MatRef<'_, T>, b: MatRef<'_, T>, c: &mut [T], reps: usize) -> f64 {
    gemm::gemm(T::one(), a, b, T::zero(), c).expect("shapes fit");
    let start = Instant::now();
    for _ in 0..reps {
        gemm::gemm(T::one(), a, b, T::zero(), c).expect("shapes fit");
    }
    2.0 * (a.rows * a.cols * b.cols * reps) as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The kernels compared, in printing order: losskit's as chosen for this CPU, losskit's in
/// AVX2 registers, matrixmultiply.
const KERNELS: [Kernel; 3] = [Kernel::Auto, Kernel::Avx2, Kernel::Matrixmultiply];

/// The median GFLOP/s of each of [`KERNELS`] on one shape, interleaved round by round.
fn rates<T: Float>(s: &Shape, rounds: usize) -> [f64; 3] {
    let a: Vec<T> = (0..s.m * s.k).map(|i| T::c(((i * 7) % 13) as f64 * 0.01)).collect();
    let b: Vec<T> = (0..s.k * s.n).map(|i| T::c(((i * 5) % 11) as f64 * 0.01)).collect();
    let mut c = vec![T::zero(); s.m * s.n];
    let a = if s.a_transposed { MatRef::row_major(&a, s.k, s.m).t() } else { MatRef::row_major(&a, s.m, s.k) };
    let b = if s.b_transposed { MatRef::row_major(&b, s.n, s.k).t() } else { MatRef::row_major(&b, s.k, s.n) };
    // About 4 GFLOP per timing.
    let reps = ((2e9 / (s.m * s.k * s.n) as f64) as usize).clamp(1, 2000);
    let mut seen = [const { Vec::new() }; 3];
    for _ in 0..rounds {
        for (kernel, seen) in KERNELS.iter().zip(&mut seen) {
            gemm::set_kernel(*kernel);
            seen.push(rate(a, b, &mut c, reps));
        }
    }
    gemm::set_kernel(Kernel::Auto);
    seen.map(median)
}

/// Which of losskit's tiles run here by default.
fn chosen() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512 tiles";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "AVX2 tiles";
        }
    }
    "matrixmultiply"
}

fn main() {
    // As the `losskit` binary does: the main thread is rayon's worker 0.
    if let Err(e) = losskit_kernels::threads::use_calling_thread(None) {
        eprintln!("gemm_rates: {e}");
    }
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    println!("losskit's kernel as chosen here: {}", chosen());
    println!(
        "{:<26} {:>9} {:>9} {:>15} {:>10} {:>10}",
        "product", "losskit", "AVX2", "matrixmultiply", "/ AVX2", "/ mm"
    );
    for s in &SHAPES {
        let [o, avx2, mm] = if s.f64 { rates::<f64>(s, rounds) } else { rates::<f32>(s, rounds) };
        println!("{:<26} {:>9.1} {:>9.1} {:>15.1} {:>9.2}× {:>9.2}×", s.name, o, avx2, mm, o / avx2, o / mm);
    }
}
