//! Matrix product through `matrixmultiply` (threaded), with strided operands so `Aᵀ·B` needs no copy.

use super::{op, with_pair};
use crate::storage::Element;
use crate::{Error, Result, Tensor};
use ndarray::{Array2, ArrayView2, CowArray, Ix2};

/// General matrix multiply for one element type: `C ← α·A·B + β·C` on strided buffers.
pub trait Gemm: Sized {
    /// Computes `a · b` for 2-D views of any strides into a new standard-layout array.
    fn gemm(a: ArrayView2<'_, Self>, b: ArrayView2<'_, Self>) -> Array2<Self>;
}

macro_rules! impl_gemm {
    ($t:ty, $f:path) => {
        impl Gemm for $t {
            fn gemm(a: ArrayView2<'_, $t>, b: ArrayView2<'_, $t>) -> Array2<$t> {
                let (m, k) = a.dim();
                let n = b.dim().1;
                if m == 0 || n == 0 || k == 0 {
                    return Array2::<$t>::zeros((m, n));
                }
                // Negative strides cannot be passed to matrixmultiply: copy those operands.
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
                let mut c = Array2::<$t>::uninit((m, n));
                // SAFETY: `a` is m×k, `b` is k×n, `c` is a fresh m×n standard-layout array; the
                // pointers and strides come from those arrays, so every index is in bounds. With
                // beta = 0, matrixmultiply writes every element of C without reading it, so C is
                // fully initialised afterwards.
                unsafe {
                    $f(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        sa[0],
                        sa[1],
                        b.as_ptr(),
                        sb[0],
                        sb[1],
                        0.0,
                        c.as_mut_ptr() as *mut $t,
                        n as isize,
                        1,
                    );
                    c.assume_init()
                }
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
