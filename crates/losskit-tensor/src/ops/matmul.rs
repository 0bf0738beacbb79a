//! Matrix product through `matrixmultiply` (large products split into blocks run in parallel
//! with rayon), with strided operands so `Aᵀ·B` needs no copy.

use super::{op, with_pair};
use crate::storage::Element;
use crate::{Error, Result, Tensor};
use ndarray::{Array2, ArrayView2, CowArray, Ix2};
use rayon::prelude::*;

/// General matrix multiply for one element type: `C ← α·A·B + β·C` on strided buffers.
pub trait Gemm: Sized {
    /// Computes `a · b` for 2-D views of any strides into a new standard-layout array.
    fn gemm(a: ArrayView2<'_, Self>, b: ArrayView2<'_, Self>) -> Array2<Self>;
}

/// Products of at least this many multiply-adds are split into blocks run in parallel (rayon);
/// smaller ones run on the calling thread (at the main job's batch-32 shapes, threads cost more
/// than they give: `losskit fit` 1.67 s with two threads per product, 1.35–1.5 s with one).
const PARALLEL_MACS: usize = 1 << 22;
/// Output rows (or columns) per parallel block: fixed, so the blocks do not depend on the
/// number of threads. Each output element is one dot product over `k` whichever block it is in,
/// so the values do not depend on the blocking either.
const BLOCK_ROWS: usize = 64;
const BLOCK_COLS: usize = 128;

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

// SAFETY: the blocks of one product write disjoint elements of the output (see `impl_gemm!`).
unsafe impl<T> Send for OutPtr<T> {}
// SAFETY: as above; the pointer is only offset and written through, never read concurrently.
unsafe impl<T> Sync for OutPtr<T> {}

macro_rules! impl_gemm {
    ($t:ty, $f:path) => {
        impl Gemm for $t {
            fn gemm(a: ArrayView2<'_, $t>, b: ArrayView2<'_, $t>) -> Array2<$t> {
                let (m, k) = a.dim();
                let n = b.dim().1;
                if m == 0 || n == 0 || k == 0 {
                    return Array2::<$t>::zeros((m, n));
                }
                let a = if a.strides().iter().any(|&s| s < 0) {
                    CowArray::from(a.as_standard_layout().into_owned())
                } else {
                    CowArray::from(a)
                };
                let b = if b.strides().iter().any(|&s| s < 0) {
                    CowArray::from(b.as_standard_layout().into_owned())
                } else {
                    CowArray::from(b)
                };
                let (sa, sb) = (a.strides(), b.strides());
                // A pooled buffer (a parameter's gradient is freed every step and comes back here),
                // written in full below (β = 0: its old values are never read).
                let mut c = Array2::from_shape_vec((m, n), crate::pool::take::<$t>(m * n)).expect("m·n values");
                let out = OutPtr(c.as_mut_ptr());
                // One block: rows r0..r1 and columns c0..c1 of the output.
                let block = |r0: usize, r1: usize, c0: usize, c1: usize| {
                    // SAFETY: the offsets stay inside `a` (m × k), `b` (k × n) and `c` (m × n,
                    // row-major); blocks write disjoint parts of `c`.
                    unsafe {
                        $f(
                            r1 - r0,
                            k,
                            c1 - c0,
                            1.0,
                            a.as_ptr().offset(r0 as isize * sa[0]),
                            sa[0],
                            sa[1],
                            b.as_ptr().offset(c0 as isize * sb[1]),
                            sb[0],
                            sb[1],
                            0.0,
                            out.at(r0 * n + c0),
                            n as isize,
                            1,
                        )
                    }
                };
                if m * n * k < PARALLEL_MACS {
                    block(0, m, 0, n);
                } else if m >= n {
                    (0..m.div_ceil(BLOCK_ROWS))
                        .into_par_iter()
                        .for_each(|i| block(i * BLOCK_ROWS, ((i + 1) * BLOCK_ROWS).min(m), 0, n));
                } else {
                    (0..n.div_ceil(BLOCK_COLS))
                        .into_par_iter()
                        .for_each(|j| block(0, m, j * BLOCK_COLS, ((j + 1) * BLOCK_COLS).min(n)));
                }
                c
            }
        }
    };
}
impl_gemm!(f32, matrixmultiply::sgemm);
impl_gemm!(f64, matrixmultiply::dgemm);

impl Tensor {
    /// The matrix product of `(m, k)` and `(k, n)` tensors, `(m, n)`.
    /// Gradients: `∂A = G·Bᵀ`, `∂B = Aᵀ·G`.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        let (sa, sb) = (self.shape(), other.shape());
        if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[0] {
            return Err(Error::shape("matmul", format!("needs (m, k) and (k, n), got {sa:?} and {sb:?}")));
        }
        let storage = with_pair!("matmul", self, other, (a, b) => {
            let a2 = a.view().into_dimensionality::<Ix2>().expect("rank 2");
            let b2 = b.view().into_dimensionality::<Ix2>().expect("rank 2");
            T::wrap(T::gemm(a2, b2).into_dyn())
        });
        Ok(Tensor::from_op(
            storage,
            vec![self.clone(), other.clone()],
            op("matmul", |inputs, _out, g| {
                let (x, y) = (&inputs[0], &inputs[1]);
                let grads = with_pair!("matmul", x, y, (a, b) => {
                    let gv = T::view(g.storage()).expect("dtype").view().into_dimensionality::<Ix2>().expect("rank 2");
                    let a2 = a.view().into_dimensionality::<Ix2>().expect("rank 2");
                    let b2 = b.view().into_dimensionality::<Ix2>().expect("rank 2");
                    let ga = x.is_tracked().then(|| Tensor::from_array(T::gemm(gv, b2.t()).into_dyn()));
                    let gb = y.is_tracked().then(|| Tensor::from_array(T::gemm(a2.t(), gv).into_dyn()));
                    vec![ga, gb]
                });
                Ok(grads)
            }),
        ))
    }
}
