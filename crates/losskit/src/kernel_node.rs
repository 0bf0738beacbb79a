//! A built-in loss as one tape node: forward values and the local gradient come from one
//! `losskit-kernels` pass; backward only scales each row's gradient by its upstream value.

use crate::{Error, Result, Tensor};
use losskit_kernels::{run_elements, run_rows, ElementKernel, RowKernel};
use losskit_tensor::{broadcast_shapes, is_grad_enabled, CustomOp, Storage};
use ndarray::{ArrayD, IxDyn};

/// The per-row gradient `∂value[r]/∂y_pred[r, :]` stored by the forward pass.
struct RowLossOp {
    name: &'static str,
    local_grad: Storage,
    cols: usize,
}

impl CustomOp for RowLossOp {
    fn name(&self) -> &str {
        self.name
    }

    fn backward(&self, inputs: &[Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let upstream = grad.to_dtype(self.local_grad.dtype());
        let cols = self.cols.max(1);
        let scaled = match (&self.local_grad, upstream.storage()) {
            (Storage::F32(g), Storage::F32(u)) => scale_rows(g, u, cols, inputs[0].shape()).map(Tensor::from_array),
            (Storage::F64(g), Storage::F64(u)) => scale_rows(g, u, cols, inputs[0].shape()).map(Tensor::from_array),
            _ => None,
        };
        let scaled =
            scaled.ok_or_else(|| Error::Value { op: self.name.into(), msg: "inconsistent gradient buffers".into() })?;
        Ok(vec![Some(scaled)])
    }
}

/// `local[r, :] · upstream[r]` in one pass (read the stored gradient, write the result), in
/// parallel over rows for large inputs (element-wise, so the result does not depend on threads).
fn scale_rows<T: losskit_tensor::Element>(
    local: &ndarray::ArcArray<T, IxDyn>,
    upstream: &ndarray::ArcArray<T, IxDyn>,
    cols: usize,
    shape: &[usize],
) -> Option<ArrayD<T>> {
    use rayon::prelude::*;
    let u = upstream.as_standard_layout();
    let u = u.as_slice()?;
    let local = local.as_slice()?;
    let mut out = losskit_tensor::pool::take::<T>(local.len());
    let rows_per_task = (1usize << 16).div_ceil(cols).max(1);
    out.par_chunks_mut(rows_per_task * cols)
        .zip(local.par_chunks(rows_per_task * cols))
        .zip(u.par_chunks(rows_per_task))
        .for_each(|((o, l), u)| {
            for ((o, l), &s) in o.chunks_mut(cols).zip(l.chunks(cols)).zip(u) {
                for (o, &l) in o.iter_mut().zip(l) {
                    *o = l * s;
                }
            }
        });
    ArrayD::from_shape_vec(IxDyn(shape), out).ok()
}

/// `y_true`/`y_pred` as contiguous slices, fresh `values` (of `out_shape`) and gradient (of
/// `y_pred`'s shape, when asked) buffers, filled by `run`.
fn with_buffers<T: losskit_tensor::Element>(
    y_true: &Tensor,
    y_pred: &Tensor,
    out_shape: &[usize],
    with_grad: bool,
    run: impl FnOnce(&[T], &[T], &mut [T], Option<&mut [T]>) -> std::result::Result<(), losskit_kernels::KernelError>,
) -> Result<(ArrayD<T>, Option<ArrayD<T>>)> {
    // Borrowed views (no copy) when the storage is already T; converted otherwise.
    let (t_conv, p_conv) = (y_true.to_dtype(T::DTYPE), y_pred.to_dtype(T::DTYPE));
    let missing = || Error::Value { op: "kernel".into(), msg: "inputs are not of the kernel's dtype".into() };
    let t = T::view(t_conv.storage()).ok_or_else(missing)?;
    let p = T::view(p_conv.storage()).ok_or_else(missing)?;
    let (t, p) = (t.as_standard_layout(), p.as_standard_layout());
    let (t, p) = (t.as_slice().expect("standard layout"), p.as_slice().expect("standard layout"));
    // Pooled buffers (reused across calls, no fresh pages): every kernel writes all of them.
    let fresh = |shape: &[usize]| {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), losskit_tensor::pool::take::<T>(n)).expect("n values for the shape")
    };
    let mut values = fresh(out_shape);
    let mut grad = with_grad.then(|| fresh(y_pred.shape()));
    run(
        t,
        p,
        values.as_slice_mut().expect("fresh array"),
        grad.as_mut().map(|g| g.as_slice_mut().expect("fresh array")),
    )?;
    Ok((values, grad))
}

fn run_typed<T, K>(
    kernel: &K,
    y_true: &Tensor,
    y_pred: &Tensor,
    cols: usize,
    with_grad: bool,
) -> Result<(ArrayD<T>, Option<ArrayD<T>>)>
where
    T: losskit_tensor::Element,
    K: RowKernel<T>,
{
    let shape = y_pred.shape();
    with_buffers(y_true, y_pred, &shape[..shape.len() - 1], with_grad, |t, p, v, g| {
        run_rows(kernel, t, p, cols, None, v, g)
    })
}

/// `y_true` (as a constant) and `y_pred` broadcast to their common shape.
fn broadcast_pair(name: &str, y_true: &Tensor, y_pred: &Tensor) -> Result<(Tensor, Tensor)> {
    let shape = broadcast_shapes(y_true.shape(), y_pred.shape()).ok_or_else(|| Error::Broadcast {
        op: format!("{name} (y_true vs y_pred)"),
        lhs: y_true.shape().to_vec(),
        rhs: y_pred.shape().to_vec(),
    })?;
    Ok((y_true.detach().broadcast_to(&shape)?, y_pred.broadcast_to(&shape)?))
}

/// Runs a row kernel over the last axis of `y_true`/`y_pred` (broadcast to a common shape) and
/// records the result as one differentiable node with respect to `y_pred`. `y_true` is
/// treated as a constant. The output has the common shape without its last axis.
pub(crate) fn row_loss<K>(name: &'static str, kernel: K, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor>
where
    K: RowKernel<f32> + RowKernel<f64>,
{
    let (y_true, y_pred) = broadcast_pair(name, y_true, y_pred)?;
    if y_pred.shape().is_empty() {
        return Err(Error::Shape {
            op: name.into(),
            msg: "scalar inputs have no axis to reduce; expected y_pred of rank >= 1 (e.g. (batch, features))".into(),
        });
    }
    run_node(name, kernel, &y_true, &y_pred)
}

/// As [`row_loss`] for a kernel that takes one class index per row: `labels` has the shape of
/// `y_pred` without its last (class) axis. Labels must already be validated.
pub(crate) fn sparse_row_loss<K>(name: &'static str, kernel: K, labels: &Tensor, y_pred: &Tensor) -> Result<Tensor>
where
    K: RowKernel<f32> + RowKernel<f64>,
{
    let shape = y_pred.shape();
    if shape.is_empty() || labels.shape() != &shape[..shape.len() - 1] {
        return Err(Error::Shape {
            op: name.into(),
            msg: format!(
                "labels of shape {:?} do not match predictions of shape {:?}; expected labels of shape {:?}",
                labels.shape(),
                shape,
                shape.get(..shape.len().saturating_sub(1)).unwrap_or(&[])
            ),
        });
    }
    run_node(name, kernel, &labels.detach().to_dtype(y_pred.dtype()), y_pred)
}

pub(crate) fn run_node<K>(name: &'static str, kernel: K, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor>
where
    K: RowKernel<f32> + RowKernel<f64>,
{
    let shape = y_pred.shape();
    let cols = shape[shape.len() - 1];
    let with_grad = is_grad_enabled() && y_pred.is_tracked();
    let (values, grad) = match y_pred.dtype() {
        losskit_tensor::DType::F32 => {
            let (v, g) = run_typed::<f32, K>(&kernel, y_true, y_pred, cols, with_grad)?;
            (Storage::F32(v.into_shared()), g.map(|g| Storage::F32(g.into_shared())))
        }
        losskit_tensor::DType::F64 => {
            let (v, g) = run_typed::<f64, K>(&kernel, y_true, y_pred, cols, with_grad)?;
            (Storage::F64(v.into_shared()), g.map(|g| Storage::F64(g.into_shared())))
        }
    };
    Ok(match grad {
        Some(local_grad) => Tensor::from_op(values, vec![y_pred.clone()], RowLossOp { name, local_grad, cols }),
        None => Tensor::from_storage(values),
    })
}

/// The element-wise gradient `∂value[i]/∂y_pred[i]` stored by the forward pass.
struct ElementLossOp {
    name: &'static str,
    local_grad: Storage,
}

impl CustomOp for ElementLossOp {
    fn name(&self) -> &str {
        self.name
    }

    fn backward(&self, _inputs: &[Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let local = Tensor::from_storage(self.local_grad.clone());
        Ok(vec![Some(local.mul(&grad.to_dtype(local.dtype()))?)])
    }
}

/// Runs an element-wise kernel over `y_true`/`y_pred` (broadcast to a common shape) as one
/// differentiable node with respect to `y_pred`; the output has the common shape. `y_true` is a
/// constant.
pub(crate) fn element_loss<K>(name: &'static str, kernel: K, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor>
where
    K: ElementKernel<f32> + ElementKernel<f64>,
{
    let (y_true, y_pred) = broadcast_pair(name, y_true, y_pred)?;
    let with_grad = is_grad_enabled() && y_pred.is_tracked();
    let shape = y_pred.shape();
    let (values, grad) = match y_pred.dtype() {
        losskit_tensor::DType::F32 => {
            let (v, g) = with_buffers::<f32>(&y_true, &y_pred, shape, with_grad, |t, p, v, g| {
                run_elements(&kernel, t, p, v, g)
            })?;
            (Storage::F32(v.into_shared()), g.map(|g| Storage::F32(g.into_shared())))
        }
        losskit_tensor::DType::F64 => {
            let (v, g) = with_buffers::<f64>(&y_true, &y_pred, shape, with_grad, |t, p, v, g| {
                run_elements(&kernel, t, p, v, g)
            })?;
            (Storage::F64(v.into_shared()), g.map(|g| Storage::F64(g.into_shared())))
        }
    };
    Ok(match grad {
        Some(local_grad) => Tensor::from_op(values, vec![y_pred.clone()], ElementLossOp { name, local_grad }),
        None => Tensor::from_storage(values),
    })
}
