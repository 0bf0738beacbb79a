//! The parallel element-wise paths (outputs of 2¹⁵ values and more) equal the plain path bit
//! for bit, and do not depend on the number of threads: values and gradients of a chain of
//! unary and broadcasting binary ops, on an odd shape that is no multiple of any chunk size,
//! in f32 and f64.

use losskit_tensor::{DType, Result, Tensor};

const ROWS: usize = 37;
const COLS: usize = 1009; // 37 × 1009 = 37 333 values: above the parallel threshold; a row is below

fn inputs(dtype: DType) -> (Tensor, Tensor) {
    let x: Vec<f64> = (0..ROWS * COLS).map(|i| ((i * 7919) % 2003) as f64 / 1001.0 - 1.0).collect();
    let b: Vec<f64> = (0..COLS).map(|j| 0.5 + (j % 13) as f64 / 7.0).collect();
    (Tensor::from_vec(x, &[ROWS, COLS]).unwrap().to_dtype(dtype), Tensor::from_vec(b, &[COLS]).unwrap().to_dtype(dtype))
}

/// A chain through every parallel op kind: unary (exp, log1p, sigmoid, tanh, relu, clip),
/// binary with a broadcast operand (mul, div, maximum, pow) and their backward passes.
fn chain(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let u = x.exp().mul(b)?.log1p().sigmoid().add(&x.tanh())?;
    let v = u.div(b)?.maximum(&x.relu())?.clip(0.1, 0.9)?;
    v.pow(&b.mul_scalar(0.5)?)?.mean(&[-1], false)
}

/// Values and gradient (w.r.t. x) of the chain on the whole tensor.
fn whole(x: &Tensor, b: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let x = x.clone().requires_grad();
    let y = chain(&x, b).unwrap();
    let g = y.sum_all().backward().unwrap();
    (y.to_vec::<f64>(), g.get(&x).unwrap().to_vec::<f64>())
}

/// The same, one row at a time (each row is below the parallel threshold: the plain path).
fn by_rows(x: &Tensor, b: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let (mut values, mut grads) = (Vec::new(), Vec::new());
    for r in 0..ROWS {
        let row = x.gather(0, &[r]).unwrap().detach().requires_grad();
        let y = chain(&row, b).unwrap();
        let g = y.sum_all().backward().unwrap();
        values.extend(y.to_vec::<f64>());
        grads.extend(g.get(&row).unwrap().to_vec::<f64>());
    }
    (values, grads)
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

#[test]
fn parallel_equals_plain_and_thread_count_does_not_matter() {
    for dtype in [DType::F32, DType::F64] {
        let (x, b) = inputs(dtype);
        let plain = by_rows(&x, &b);
        let one = in_pool(1, || whole(&x, &b));
        let four = in_pool(4, || whole(&x, &b));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(plain.0.len(), ROWS);
        assert_eq!(plain.1.len(), ROWS * COLS);
        assert!(plain.1.iter().any(|&g| g != 0.0), "{dtype}: the chain has a gradient");
        assert_eq!(bits(&one.0), bits(&plain.0), "{dtype} values: 1 thread vs plain");
        assert_eq!(bits(&one.1), bits(&plain.1), "{dtype} gradients: 1 thread vs plain");
        assert_eq!(bits(&four.0), bits(&one.0), "{dtype} values: 4 threads vs 1");
        assert_eq!(bits(&four.1), bits(&one.1), "{dtype} gradients: 4 threads vs 1");
    }
}

/// Large products are split into fixed blocks run in parallel: the same bits with 1 and 4
/// threads, for both split directions (tall and wide outputs) and the transposed operands of
/// the backward pass, and the right values.
#[test]
fn matmul_blocks_do_not_depend_on_threads() {
    // Tall (row blocks of 64, then of 192: a tall output has at most 16) and wide outputs.
    for (m, k, n) in [(300, 170, 130), (2100, 40, 60), (40, 330, 700)] {
        let a = Tensor::from_vec((0..m * k).map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5).collect(), &[m, k]).unwrap();
        let b = Tensor::from_vec((0..k * n).map(|i| ((i * 17) % 89) as f32 / 89.0 - 0.5).collect(), &[k, n]).unwrap();
        let run = || {
            let (x, w) = (a.clone().requires_grad(), b.clone().requires_grad());
            let y = x.matmul(&w).unwrap();
            let g = y.square().sum_all().backward().unwrap();
            [y.to_vec::<f32>(), g.get(&x).unwrap().to_vec::<f32>(), g.get(&w).unwrap().to_vec::<f32>()]
        };
        let (one, four) = (in_pool(1, run), in_pool(4, run));
        assert_eq!(one, four, "({m}, {k}) x ({k}, {n})");
        let (av, bv) = (a.to_vec::<f32>(), b.to_vec::<f32>());
        for &(i, j) in &[(0, 0), (m - 1, n - 1), (m / 2, n / 3)] {
            let exact: f64 = (0..k).map(|p| av[i * k + p] as f64 * bv[p * n + j] as f64).sum();
            assert!((one[0][i * n + j] as f64 - exact).abs() < 1e-4, "({i}, {j})");
        }
    }
}
