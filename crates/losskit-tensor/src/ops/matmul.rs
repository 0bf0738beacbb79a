//! Matrix product through `losskit_kernels::gemm` (its AVX2 kernel, else matrixmultiply;
//! large products split into fixed blocks run in parallel), with strided operands so `Aᵀ·B`
//! needs no copy.

use super::{op, with_pair};
use crate::storage::Element;
use crate::{Error, Result, Tensor};
use losskit_kernels as kernels;
use ndarray::{Array2, ArrayView2, CowArray, Ix2};

/// General matrix multiply for one element type, on 2-D views of any strides.
pub(crate) trait Gemm: Sized {
    /// Computes `a · b` for 2-D views of any strides into a new standard-layout array.
    fn gemm(a: ArrayView2<'_, Self>, b: ArrayView2<'_, Self>) -> Array2<Self>;
}

/// A view as the kernels' strided matrix: negative strides are copied to standard layout first.
fn strided<T: Element>(v: ArrayView2<'_, T>) -> CowArray<'_, T, Ix2> {
    if v.strides().iter().any(|&s| s < 0) {
        CowArray::from(v.as_standard_layout().into_owned())
    } else {
        CowArray::from(v)
    }
}

/// The whole buffer a non-negatively strided view addresses, as a kernels `MatRef`.
fn mat_ref<'a, T: Element>(v: &'a CowArray<'_, T, Ix2>) -> kernels::gemm::MatRef<'a, T> {
    let (rows, cols) = v.dim();
    let (rs, cs) = (v.strides()[0] as usize, v.strides()[1] as usize);
    let len = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
    // SAFETY: the view's elements all lie in the `len` values from its first element (strides
    // are non-negative after `strided`), which belong to its array.
    let data = unsafe { std::slice::from_raw_parts(v.as_ptr(), len) };
    kernels::gemm::MatRef { data, rows, cols, row_stride: rs, col_stride: cs }
}

impl<T: Element + kernels::Float> Gemm for T {
    fn gemm(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>) -> Array2<T> {
        let (m, n) = (a.dim().0, b.dim().1);
        let (a, b) = (strided(a), strided(b));
        // A pooled buffer (a parameter's gradient is freed every step and comes back here),
        // written in full (β = 0: its old values are never read).
        let mut c = crate::pool::take::<T>(m * n);
        kernels::gemm::gemm(T::one(), mat_ref(&a), mat_ref(&b), T::zero(), &mut c).expect("matmul checked the shapes");
        Array2::from_shape_vec((m, n), c).expect("m·n values")
    }
}

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
