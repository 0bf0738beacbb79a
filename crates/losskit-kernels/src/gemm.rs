//! Matrix products on strided slices: `C ← α·A·B + β·C` through [`Float::gemm_raw`] (this
//! crate's kernel, which keeps its packing buffers per thread, where the CPU has AVX2 + FMA, in
//! AVX-512 registers where it has those; otherwise `matrixmultiply`; see [`set_kernel`]), large ones split into blocks
//! of output rows (or columns) run in parallel with rayon.
//!
//! Each output element is one dot product over `k`, computed by the same micro-kernel steps
//! whichever block it falls in: the result is the same bits however the output is cut, so on
//! any thread count.

use crate::Float;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};

/// Products of at least this many multiply-adds are split into blocks run in parallel; smaller
/// ones run on the calling thread (at batch-32 training shapes, threads cost more than they give).
pub const PARALLEL_MACS: usize = 1 << 22;
/// Blocks per thread of a parallel product (two, so a core slowed by another process does not
/// hold the other back for long).
const BLOCKS_PER_THREAD: usize = 2;
/// Block sizes are multiples of this many rows or columns (whole micro-kernel tiles).
const BLOCK_ALIGN: usize = 16;

/// Which kernel runs the products of [`gemm`] and [`gemm_transposed_out`]. At `α = 1` all
/// give the same bits, so the choice changes only the time and the allocations:
/// `matrixmultiply` allocates its packing buffers on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// losskit's kernel (packing buffers kept per thread) where the CPU has AVX2 and FMA, with
    /// 6 × 32 f32 (6 × 16 f64) tiles in AVX-512 registers where it has AVX-512F and 6 × 16
    /// (6 × 8) tiles in AVX2 registers otherwise; `matrixmultiply` elsewhere. The default.
    Auto,
    /// losskit's kernel in AVX2 registers even where the CPU has AVX-512 (for comparisons).
    Avx2,
    /// Always `matrixmultiply`'s `sgemm`/`dgemm` (for comparisons and as a fallback).
    Matrixmultiply,
}

/// The kernel chosen by [`set_kernel`], as its index in [`Kernel`] (process-wide).
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Chooses the kernel of every later product in this process.
pub fn set_kernel(kernel: Kernel) {
    CHOSEN.store(kernel as u8, Ordering::Relaxed);
}

/// The kernel chosen by [`set_kernel`] ([`Kernel::Auto`] unless changed).
pub fn kernel() -> Kernel {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Kernel::Avx2,
        2 => Kernel::Matrixmultiply,
        _ => Kernel::Auto,
    }
}

/// A read-only strided matrix: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    /// The values (every addressed element must lie inside).
    pub data: &'a [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between rows, in elements.
    pub row_stride: usize,
    /// Distance between columns, in elements.
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose (no copy: the strides swap).
    pub fn t(self) -> Self {
        MatRef { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Whether every element `(i, j)` with `i < rows`, `j < cols` lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b))
            .is_some_and(|last| last < self.data.len())
    }
}

/// The shapes of a product do not fit: `A` is `m × k`, `B` must be `k × n` and `C` hold `m·n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gemm: A is {a_rows}×{a_cols}, B is {b_rows}×{b_cols}, C has {c_len} values (needs A's columns = B's rows, C = rows·columns, strides inside the slices)")]
pub struct GemmShapeError {
    /// Rows of A.
    pub a_rows: usize,
    /// Columns of A.
    pub a_cols: usize,
    /// Rows of B.
    pub b_rows: usize,
    /// Columns of B.
    pub b_cols: usize,
    /// Length of C.
    pub c_len: usize,
}

/// The output pointer shared by the blocks of one product; each block writes a disjoint set of
/// elements.
#[derive(Clone, Copy)]
struct OutPtr<T>(*mut T);

impl<T> OutPtr<T> {
    /// The element `offset` values in (a method, so closures capture the whole `OutPtr`).
    ///
    /// # Safety
    /// `offset` must be inside the output.
    unsafe fn at(self, offset: usize) -> *mut T {
        // SAFETY: the caller keeps `offset` inside the output.
        unsafe { self.0.add(offset) }
    }
}

// SAFETY: the blocks of one product write disjoint elements of the output (see `gemm`), and
// the elements themselves may move between threads (`T: Send`).
unsafe impl<T: Send> Send for OutPtr<T> {}
// SAFETY: as above; the pointer is only offset and written through, never read concurrently
// by two blocks.
unsafe impl<T: Send> Sync for OutPtr<T> {}

/// `C ← α·A·B + β·C` for `A: m × k`, `B: k × n` (any non-negative strides) and `C` row-major
/// `m × n`. With `β = 0`, `C`'s old values are never read (they may be anything, even NaN).
/// Products of ≥ [`PARALLEL_MACS`] multiply-adds run in parallel, in two blocks per thread along
/// the output's longer side; the result does not depend on the number of threads.
pub fn gemm<T: Float>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut [T],
) -> Result<(), GemmShapeError> {
    gemm_into(alpha, a, b, beta, c, Orient::RowMajor)
}

/// `C ← α·A·B + β·C` as [`gemm`], with `C` stored transposed: `c` is `n × m` row-major and holds
/// `(A·B)ᵀ` (element `(i, j)` of the product at `c[j·m + i]`). Computing `Zᵀ = W·Hᵀ` this way
/// packs `W` as the product's left operand, once, where `Z = H·Wᵀ` with few rows of `H` packs
/// `H` again for every block of `W`'s columns. The values are the same bits as [`gemm`]'s for
/// `Bᵀ·Aᵀ` (each element is the same sum over `k`).
pub fn gemm_transposed_out<T: Float>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut [T],
) -> Result<(), GemmShapeError> {
    gemm_into(alpha, a, b, beta, c, Orient::Transposed)
}

/// How the output of [`gemm_into`] is laid out.
#[derive(Clone, Copy)]
enum Orient {
    /// `m × n` row-major.
    RowMajor,
    /// `n × m` row-major (the product's transpose).
    Transposed,
}

/// The product of [`gemm`] and [`gemm_transposed_out`], with `C` laid out as `orient` says.
fn gemm_into<T: Float>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut [T],
    orient: Orient,
) -> Result<(), GemmShapeError> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.len() != m * n || !a.in_bounds() || !b.in_bounds() {
        return Err(GemmShapeError { a_rows: m, a_cols: k, b_rows: b.rows, b_cols: n, c_len: c.len() });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // An empty sum: C ← β·C (β = 0 overwrites).
        for v in c.iter_mut() {
            *v = if beta == T::zero() { T::zero() } else { *v * beta };
        }
        return Ok(());
    }
    let out = OutPtr(c.as_mut_ptr());
    // Strides of C's rows and columns.
    let (rsc, csc) = match orient {
        Orient::RowMajor => (n, 1),
        Orient::Transposed => (1, m),
    };
    // One block: rows r0..r1 and columns c0..c1 of the output.
    let block = |r0: usize, r1: usize, c0: usize, c1: usize| {
        // SAFETY: `in_bounds` checked that every element of `a` and `b` lies inside its slice;
        // the block's offsets stay inside `a` (m × k), `b` (k × n) and `c` (m × n, row-major),
        // and blocks write disjoint parts of `c`.
        unsafe {
            T::gemm_raw(
                r1 - r0,
                k,
                c1 - c0,
                alpha,
                a.data.as_ptr().add(r0 * a.row_stride),
                a.row_stride as isize,
                a.col_stride as isize,
                b.data.as_ptr().add(c0 * b.col_stride),
                b.row_stride as isize,
                b.col_stride as isize,
                beta,
                out.at(r0 * rsc + c0 * csc),
                rsc as isize,
                csc as isize,
            )
        }
    };
    if m * n * k < PARALLEL_MACS {
        block(0, m, 0, n);
        return Ok(());
    }
    // Each block packs the whole of the other operand again, so the output is cut along its
    // longer side into as few blocks as keep every thread busy: a tall `∂W = xᵀ·G` (784 × 512
    // from k = 32) ran at 77 GFLOP/s in 13 row blocks, 94–102 in 2–4. The values do not depend
    // on the cut (each element is the same micro-kernel sum over k whichever block holds it),
    // so the cut may follow the thread count.
    let parts = BLOCKS_PER_THREAD * rayon::current_num_threads();
    if m >= n {
        let rows = m.div_ceil(parts).next_multiple_of(BLOCK_ALIGN);
        (0..m.div_ceil(rows)).into_par_iter().for_each(|i| block(i * rows, ((i + 1) * rows).min(m), 0, n));
    } else {
        let cols = n.div_ceil(parts).next_multiple_of(BLOCK_ALIGN);
        (0..n.div_ceil(cols)).into_par_iter().for_each(|j| block(0, m, j * cols, ((j + 1) * cols).min(n)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Vec<f64> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols)
                    .map(|p| a.data[i * a.row_stride + p * a.col_stride] * b.data[p * b.row_stride + j * b.col_stride])
                    .sum();
            }
        }
        c
    }

    #[test]
    fn strided_products_with_beta_match_the_naive_sum() {
        let a: Vec<f64> = (0..6 * 5).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..5 * 4).map(|i| (i as f64 * 0.11).cos()).collect();
        // Aᵀ (5 × 6)ᵀ = 6 × 5 read column-major from a 5 × 6 buffer.
        let at = MatRef::row_major(&a, 5, 6).t();
        let bm = MatRef::row_major(&b, 5, 4);
        let want = naive(at, bm);
        let mut c = vec![1.0; 6 * 4];
        gemm(2.0, at, bm, 0.5, &mut c).unwrap();
        for (g, w) in c.iter().zip(&want) {
            assert!((g - (2.0 * w + 0.5)).abs() < 1e-12, "{g} vs {}", 2.0 * w + 0.5);
        }
    }

    #[test]
    fn parallel_products_are_the_same_bits_however_many_threads_cut_them() {
        // Tall (row blocks) and wide (column blocks) outputs, sizes no multiple of a block,
        // above the parallel threshold; 1, 2, 3 and 7 threads cut them into 2 to 14 blocks.
        for (m, k, n) in [(301, 97, 211), (53, 129, 1001)] {
            assert!(m * k * n >= PARALLEL_MACS);
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.03).collect();
            let run = |threads: usize| {
                let mut c = vec![f32::NAN; m * n];
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| gemm(1.0, MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n), 0.0, &mut c))
                    .unwrap();
                c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let one = run(1);
            for threads in [2, 3, 7] {
                assert_eq!(run(threads), one, "({m}, {k}, {n}) at {threads} threads");
            }
            let (i, j) = (m - 1, n / 2);
            let want: f64 = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j])).sum();
            assert!((f64::from(f32::from_bits(one[i * n + j])) - want).abs() < 1e-3, "a value of the product");
        }
    }

    #[test]
    fn a_transposed_output_is_the_same_bits_as_the_product_of_the_transposes() {
        // (A·B)ᵀ written by `gemm_transposed_out` against `Bᵀ·Aᵀ` from `gemm`, below and above
        // the parallel threshold, tall and wide, with β = 0 over NaN and with β = 1.
        for (m, k, n) in [(7, 5, 3), (301, 97, 211), (53, 129, 1001), (1000, 300, 24)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.031).collect();
            let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let start: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
            for beta in [0.0, 1.0] {
                let mut t = if beta == 0.0 { vec![f32::NAN; m * n] } else { start.clone() };
                gemm_transposed_out(1.5, am, bm, beta, &mut t).unwrap();
                let mut want = start.clone();
                gemm(1.5, bm.t(), am.t(), beta, &mut want).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&t), bits(&want), "({m}, {k}, {n}), beta {beta}");
            }
            // One element against a plain sum: element (i, j) of A·B sits at t[j·m + i].
            let mut t = vec![0.0f32; m * n];
            gemm_transposed_out(1.0, am, bm, 0.0, &mut t).unwrap();
            let (i, j) = (m - 1, n / 2);
            let sum: f64 = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j])).sum();
            assert!((f64::from(t[j * m + i]) - sum).abs() < 1e-3, "({m}, {k}, {n}): {} vs {sum}", t[j * m + i]);
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_the_output_and_bad_shapes_are_errors() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let mut c = [f32::NAN; 4];
        gemm(1.0, MatRef::row_major(&a, 2, 2), MatRef::row_major(&a, 2, 2), 0.0, &mut c).unwrap();
        assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
        let err = gemm(1.0, MatRef::row_major(&a, 2, 2), MatRef::row_major(&a, 1, 4), 0.0, &mut c).unwrap_err();
        assert_eq!(err.b_rows, 1);
        let short = MatRef { data: &a[..3], rows: 2, cols: 2, row_stride: 2, col_stride: 1 };
        assert!(gemm(1.0, short, MatRef::row_major(&a, 2, 2), 0.0, &mut c).is_err());
    }
}
