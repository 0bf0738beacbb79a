//! A fully connected layer as one node of the tape: `y = act(x·W + b)`.
//!
//! Forward: the product into a pooled buffer, then one in-place pass that adds the bias and
//! applies the activation. Backward: one pass `G' = G·act'(y)` (the derivative from the output
//! alone), then `∂b = Σ_rows G'`, `∂W = xᵀ·G'` and `∂x = G'·Wᵀ` (only when `x` needs a
//! gradient: never for a model's input). Each value is computed by the same per-element
//! functions, reductions and products as `x.matmul(W).add(b)` followed by the activation, so the
//! two paths give the same bits.

use super::Gemm;
use super::{op, sum_to_shape, Binary, Unary};
use crate::fusion::with_avx2;
use crate::storage::{Element, Storage};
use crate::{Error, Result, Tensor};
use ndarray::{ArcArray, ArrayD, Ix2, IxDyn, Zip};
use rayon::prelude::*;

/// The activations a fused [`Tensor::dense`] applies in place: those whose derivative is a
/// function of their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseActivation {
    /// `y = z` (`act' = 1`).
    Linear,
    /// `y = max(z, 0)` (`act' = [y > 0]`, 0 at 0 as TensorFlow; NaN kept).
    Relu,
    /// `y = 1 / (1 + e⁻ᶻ)` (`act' = y·(1 - y)`).
    Sigmoid,
    /// `y = tanh z` (`act' = 1 - y²`).
    Tanh,
}

impl DenseActivation {
    /// The element-wise op, or `None` for the identity.
    fn unary(self) -> Option<Unary> {
        match self {
            DenseActivation::Linear => None,
            DenseActivation::Relu => Some(Unary::Relu),
            DenseActivation::Sigmoid => Some(Unary::Sigmoid),
            DenseActivation::Tanh => Some(Unary::Tanh),
        }
    }
}

/// Rows of the output per parallel piece of the bias-and-activation pass (above
/// [`super::PARALLEL_MIN`] values).
const ROWS_PER_PIECE: usize = 16;

/// `act(x·W + b)` for `x: (m, k)`, `W: (k, n)`, `b: (n,)`.
fn forward<T: Element>(
    x: &ArcArray<T, IxDyn>,
    w: &ArcArray<T, IxDyn>,
    b: Option<&ArcArray<T, IxDyn>>,
    act: DenseActivation,
) -> ArrayD<T> {
    let x2 = x.view().into_dimensionality::<Ix2>().expect("checked rank 2");
    let w2 = w.view().into_dimensionality::<Ix2>().expect("checked rank 2");
    let mut out = T::gemm(x2, w2);
    let n = out.ncols();
    let bias = b.map(|b| b.as_slice_memory_order().expect("a 1-D array is contiguous"));
    finish(out.as_slice_mut().expect("gemm writes standard layout"), n, bias, act);
    out.into_dyn()
}

/// Adds the bias to each row of `n` values and applies the activation, in place (in parallel
/// over pieces of rows when large: element-wise, so the values do not depend on threads).
pub(crate) fn finish<T: Element>(values: &mut [T], n: usize, bias: Option<&[T]>, act: DenseActivation) {
    let act = act.unary();
    if values.len() >= super::PARALLEL_MIN {
        values.par_chunks_mut(n * ROWS_PER_PIECE).for_each(|rows| finish_rows(rows, n, bias, act));
    } else {
        finish_rows(values, n, bias, act);
    }
}

/// Adds the bias to each row of `n` values and applies the activation, in place.
#[inline(always)]
fn finish_rows_body<T: Element>(rows: &mut [T], n: usize, bias: Option<&[T]>, act: Option<Unary>) {
    for row in rows.chunks_exact_mut(n) {
        if let Some(bias) = bias {
            for (v, &c) in row.iter_mut().zip(bias) {
                *v = Binary::Add.apply(*v, c);
            }
        }
        if let Some(u) = act {
            super::per_unary!(u, u => row.iter_mut().for_each(|v| *v = u.apply(*v)));
        }
    }
}
// Compiled for AVX2 when the CPU has it, as the fused element-wise programs are (the same IEEE
// operations per element, so the same values).
with_avx2!(finish_rows => finish_rows_body, (rows: &mut [T], n: usize, bias: Option<&[T]>, act: Option<Unary>));

/// `G' = G·act'(y)` (a shared handle on `G` for the identity).
fn pre_activation_grad(y: &Tensor, g: &Tensor, act: DenseActivation) -> Result<Tensor> {
    let Some(u) = act.unary() else { return Ok(g.clone()) };
    let storage = match (y.storage(), g.storage()) {
        (Storage::F32(y), Storage::F32(g)) => f32::wrap(activation_backward(y, g, u)),
        (Storage::F64(y), Storage::F64(g)) => f64::wrap(activation_backward(y, g, u)),
        _ => return Err(Error::value("dense", "mixed dtypes in backward")),
    };
    Ok(Tensor::from_storage(storage))
}

/// `g·act'(y)` element by element; the derivative reads the output in place of the input
/// (for relu `[y > 0] = [z > 0]`, NaN included; sigmoid and tanh use only `y`).
fn activation_backward<T: Element>(y: &ArcArray<T, IxDyn>, g: &ArcArray<T, IxDyn>, u: Unary) -> ArrayD<T> {
    match (y.as_slice(), g.as_slice()) {
        // The usual case (both in standard layout): a loop over slices the compiler vectorises,
        // one per activation.
        (Some(ys), Some(gs)) => {
            let mut out = crate::pool::take::<T>(ys.len());
            let rows = |(o, (y, g)): (&mut [T], (&[T], &[T]))| derivative_times(o, y, g, u);
            if ys.len() >= super::PARALLEL_MIN {
                let piece = 1 << 14;
                out.par_chunks_mut(piece).zip(ys.par_chunks(piece).zip(gs.par_chunks(piece))).for_each(rows);
            } else {
                rows((&mut out, (ys, gs)));
            }
            ArrayD::from_shape_vec(y.raw_dim(), out).expect("same length")
        }
        _ => super::per_unary!(u, u => collect!(y.raw_dim(), Zip::from(y).and(g), |&y, &g| g * u.deriv(y, y))),
    }
}

/// `o = g·act'(y)` element by element.
#[inline(always)]
fn derivative_times_body<T: Element>(o: &mut [T], y: &[T], g: &[T], u: Unary) {
    super::per_unary!(u, u => for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
        *o = g * u.deriv(y, y);
    })
}
with_avx2!(derivative_times => derivative_times_body, (o: &mut [T], y: &[T], g: &[T], u: Unary));

/// `g ← g·act'(y)` in place: the values of [`activation_backward`] without a new buffer.
pub(crate) fn activation_backward_in_place<T: Element>(y: &[T], g: &mut [T], act: DenseActivation) {
    let Some(u) = act.unary() else { return };
    if y.len() >= super::PARALLEL_MIN {
        let piece = 1 << 14;
        g.par_chunks_mut(piece).zip(y.par_chunks(piece)).for_each(|(g, y)| derivative_in_place(g, y, u));
    } else {
        derivative_in_place(g, y, u);
    }
}

/// `g = g·act'(y)` element by element.
#[inline(always)]
fn derivative_in_place_body<T: Element>(g: &mut [T], y: &[T], u: Unary) {
    super::per_unary!(u, u => for (g, &y) in g.iter_mut().zip(y) {
        *g = *g * u.deriv(y, y);
    })
}
with_avx2!(derivative_in_place => derivative_in_place_body, (g: &mut [T], y: &[T], u: Unary));

/// The gradients of `x`, `W` and (when present) `b` from `G = ∂L/∂y`.
fn backward(inputs: &[Tensor], out: &Tensor, g: &Tensor, act: DenseActivation) -> Result<Vec<Option<Tensor>>> {
    let (x, w) = (&inputs[0], &inputs[1]);
    let gp = pre_activation_grad(out, g, act)?;
    let gb = inputs.get(2).filter(|b| b.is_tracked()).map(|b| sum_to_shape(&gp, b.shape()));
    let (gx, gw) = match (x.storage(), w.storage(), gp.storage()) {
        (Storage::F32(xa), Storage::F32(wa), Storage::F32(ga)) => weight_grads(x, w, xa, wa, ga),
        (Storage::F64(xa), Storage::F64(wa), Storage::F64(ga)) => weight_grads(x, w, xa, wa, ga),
        _ => return Err(Error::value("dense", "mixed dtypes in backward")),
    };
    Ok([Some(gx), Some(gw), Some(gb)].into_iter().take(inputs.len()).map(Option::flatten).collect())
}

/// `(∂x, ∂W) = (G'·Wᵀ, xᵀ·G')`, each only for an input that is tracked.
fn weight_grads<T: Element>(
    x: &Tensor,
    w: &Tensor,
    xa: &ArcArray<T, IxDyn>,
    wa: &ArcArray<T, IxDyn>,
    ga: &ArcArray<T, IxDyn>,
) -> (Option<Tensor>, Option<Tensor>) {
    let x2 = xa.view().into_dimensionality::<Ix2>().expect("rank 2");
    let w2 = wa.view().into_dimensionality::<Ix2>().expect("rank 2");
    let g2 = ga.view().into_dimensionality::<Ix2>().expect("rank 2");
    let gx = x.is_tracked().then(|| Tensor::from_array(T::gemm(g2, w2.t()).into_dyn()));
    let gw = w.is_tracked().then(|| Tensor::from_array(T::gemm(x2.t(), g2).into_dyn()));
    (gx, gw)
}

impl Tensor {
    /// A fully connected layer as one differentiable node: `act(x·W + b)` for `x: (m, k)`,
    /// `W: (k, n)` and `b: (n,)`, giving `(m, n)`.
    ///
    /// Gradients: `G' = G·act'(y)`, `∂x = G'·Wᵀ`, `∂W = xᵀ·G'`, `∂b = Σ_rows G'`. The same
    /// bits as `x.matmul(W)?.add(b)?` followed by the activation, with one output buffer
    /// instead of three and one node instead of three.
    pub fn dense(&self, kernel: &Tensor, bias: Option<&Tensor>, activation: DenseActivation) -> Result<Tensor> {
        let (sx, sw) = (self.shape(), kernel.shape());
        if sx.len() != 2 || sw.len() != 2 || sx[1] != sw[0] {
            return Err(Error::shape("dense", format!("needs x (m, k) and W (k, n), got {sx:?} and {sw:?}")));
        }
        if let Some(b) = bias {
            if b.shape() != [sw[1]] {
                return Err(Error::shape("dense", format!("needs a bias of shape [{}], got {:?}", sw[1], b.shape())));
            }
        }
        let storage = match (self.storage(), kernel.storage(), bias.map(Tensor::storage)) {
            (Storage::F32(x), Storage::F32(w), None) => f32::wrap(forward(x, w, None, activation)),
            (Storage::F32(x), Storage::F32(w), Some(Storage::F32(b))) => f32::wrap(forward(x, w, Some(b), activation)),
            (Storage::F64(x), Storage::F64(w), None) => f64::wrap(forward(x, w, None, activation)),
            (Storage::F64(x), Storage::F64(w), Some(Storage::F64(b))) => f64::wrap(forward(x, w, Some(b), activation)),
            _ => return Err(Error::value("dense", "x, the kernel and the bias must have the same dtype")),
        };
        let inputs = [self, kernel].into_iter().chain(bias).cloned().collect();
        Ok(Tensor::from_op(storage, inputs, op("dense", move |inputs, out, g| backward(inputs, out, g, activation))))
    }
}
