//! A fully connected layer as one node of the tape: `y = act(x·W + b)`.
//!
//! Forward: the product into a pooled buffer, then one in-place pass that adds the bias and
//! applies the activation. Backward: one pass `G' = G·act'(y)` (the derivative from the output
//! alone), then `∂b = Σ_rows G'`, `∂W = xᵀ·G'` and `∂x = G'·Wᵀ` (only when `x` needs a
//! gradient: never for a model's input). Each value is computed by the same per-element
//! functions, reductions and products as `x.matmul(W).add(b)` followed by the activation, so the
//! two paths give the same bits.

use super::op;
use crate::slices::{self, DenseGrads, DenseShape};
use crate::storage::{Element, Storage};
use crate::{DenseActivation, Error, Result, Tensor};
use ndarray::{ArcArray, ArrayD, IxDyn};

/// `act(x·W + b)` for `x: (m, k)`, `W: (k, n)`, `b: (n,)`: [`slices::dense_forward`] into a
/// pooled buffer (operands not in standard layout are copied to it first).
fn forward<T: Element>(
    x: &ArcArray<T, IxDyn>,
    w: &ArcArray<T, IxDyn>,
    b: Option<&ArcArray<T, IxDyn>>,
    act: DenseActivation,
) -> ArrayD<T> {
    let s = DenseShape { rows: x.shape()[0], inputs: x.shape()[1], units: w.shape()[1] };
    let (xs, ws) = (x.as_standard_layout(), w.as_standard_layout());
    let bias = b.map(|b| b.as_slice_memory_order().expect("a 1-D array is contiguous"));
    let mut out = crate::pool::take::<T>(s.rows * s.units);
    let (xv, wv) = (xs.as_slice().expect("standard layout"), ws.as_slice().expect("standard layout"));
    slices::dense_forward(xv, wv, bias, act, s, &mut out);
    ArrayD::from_shape_vec(IxDyn(&[s.rows, s.units]), out).expect("rows × units values")
}

/// The gradients of `x`, `W` and (when present) `b` from `G = ∂L/∂y`, each only for a tracked
/// input: [`slices::dense_backward_pre`] after `G' = G·act'(y)`.
fn backward(inputs: &[Tensor], out: &Tensor, g: &Tensor, act: DenseActivation) -> Result<Vec<Option<Tensor>>> {
    let tracked = |i: usize| inputs.get(i).is_some_and(Tensor::is_tracked);
    let wanted = (tracked(0), tracked(1), tracked(2));
    let grads = match (inputs[0].storage(), inputs[1].storage(), out.storage(), g.storage()) {
        (Storage::F32(x), Storage::F32(w), Storage::F32(y), Storage::F32(g)) => grads(x, w, y, g, act, wanted),
        (Storage::F64(x), Storage::F64(w), Storage::F64(y), Storage::F64(g)) => grads(x, w, y, g, act, wanted),
        _ => return Err(Error::value("dense", "mixed dtypes in backward")),
    };
    Ok(grads.into_iter().take(inputs.len()).collect())
}

/// `[∂x, ∂W, ∂b]` for the inputs `wanted` says are tracked.
fn grads<T: Element>(
    x: &ArcArray<T, IxDyn>,
    w: &ArcArray<T, IxDyn>,
    y: &ArcArray<T, IxDyn>,
    g: &ArcArray<T, IxDyn>,
    act: DenseActivation,
    (want_x, want_w, want_b): (bool, bool, bool),
) -> [Option<Tensor>; 3] {
    let s = DenseShape { rows: x.shape()[0], inputs: x.shape()[1], units: w.shape()[1] };
    let (xs, ws, ys, gs) =
        (x.as_standard_layout(), w.as_standard_layout(), y.as_standard_layout(), g.as_standard_layout());
    let gv = gs.as_slice().expect("standard layout");
    let pre: Vec<T>;
    let gp: &[T] = if act == DenseActivation::Linear {
        gv
    } else {
        let mut buf = crate::pool::take::<T>(gv.len());
        slices::activation_backward_into(ys.as_slice().expect("standard layout"), gv, act, &mut buf);
        pre = buf;
        &pre
    };
    let mut gx = want_x.then(|| crate::pool::take::<T>(s.rows * s.inputs));
    let mut gw = want_w.then(|| crate::pool::take::<T>(s.inputs * s.units));
    let mut gb = want_b.then(|| crate::pool::take::<T>(s.units));
    let into = DenseGrads { kernel: gw.as_deref_mut(), bias: gb.as_deref_mut(), input: gx.as_deref_mut() };
    slices::dense_backward_pre(
        xs.as_slice().expect("standard layout"),
        ws.as_slice().expect("standard layout"),
        gp,
        s,
        into,
    );
    let tensor =
        |v: Vec<T>, shape: &[usize]| Tensor::from_array(ArrayD::from_shape_vec(IxDyn(shape), v).expect("sized"));
    [
        gx.map(|v| tensor(v, &[s.rows, s.inputs])),
        gw.map(|v| tensor(v, &[s.inputs, s.units])),
        gb.map(|v| tensor(v, &[s.units])),
    ]
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
