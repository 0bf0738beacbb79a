//! A built-in loss as one tape node: forward values and the local gradient come from one
//! `losskit-kernels` pass; backward only scales each row's gradient by its upstream value.
//! On large inputs [`fold`] moves that scaling into the kernel's pass: the reduction's per-row
//! weights are known before it runs, so the kernel writes the reduced loss' gradient itself.

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
    // Pooled buffers (reused across calls, no fresh pages): every kernel writes all of them.
    let fresh = |shape: &[usize]| {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), losskit_tensor::pool::take::<T>(n)).expect("n values for the shape")
    };
    let mut values = fresh(out_shape);
    let mut grad = with_grad.then(|| fresh(y_pred.shape()));
    // Read in place (a lent buffer too) when already T and contiguous; converted otherwise.
    y_true.with_values::<T, _>(|t| {
        y_pred.with_values::<T, _>(|p| {
            run(
                t,
                p,
                values.as_slice_mut().expect("fresh array"),
                grad.as_mut().map(|g| g.as_slice_mut().expect("fresh array")),
            )
        })
    })?;
    Ok((values, grad))
}

fn run_typed<T, K>(
    kernel: &K,
    y_true: &Tensor,
    y_pred: &Tensor,
    cols: usize,
    with_grad: bool,
    row_scale: Option<&Tensor>,
) -> Result<(ArrayD<T>, Option<ArrayD<T>>)>
where
    T: losskit_tensor::Element,
    K: RowKernel<T>,
{
    let shape = y_pred.shape();
    let scale = row_scale.map(|s| s.to_dtype(T::DTYPE));
    let scale = scale.as_ref().and_then(|s| T::view(s.storage())).map(|s| s.as_standard_layout());
    let scale = scale.as_ref().map(|s| s.as_slice().expect("standard layout"));
    with_buffers(y_true, y_pred, &shape[..shape.len() - 1], with_grad, |t, p, v, g| {
        run_rows(kernel, t, p, cols, scale, v, g)
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
    run_node(name, kernel, &y_true, &y_pred, Rows::default())
}

/// As [`row_loss`] for a kernel that takes one class index per row: `labels` has the shape of
/// `y_pred` without its last (class) axis. Labels must already be validated.
pub(crate) fn sparse_row_loss<K>(name: &'static str, kernel: K, labels: &Tensor, y_pred: &Tensor) -> Result<Tensor>
where
    K: RowKernel<f32> + RowKernel<f64>,
{
    sparse_row_loss_with(name, kernel, labels, y_pred, Rows::default())
}

/// [`sparse_row_loss`] for a loss that attaches a mask of its own to the values (`ignore_class`)
/// or multiplies them by a constant per-row factor (PyTorch's `CrossEntropyLoss` divides by the
/// label's class weight), both known before the kernel runs: the result is `values · factor`,
/// as the tape's product of the two would give, and a folded reduction (see [`fold`]) weighs
/// the rows as the plain path would.
pub(crate) fn sparse_row_loss_with<K>(
    name: &'static str,
    kernel: K,
    labels: &Tensor,
    y_pred: &Tensor,
    rows: Rows<'_>,
) -> Result<Tensor>
where
    K: RowKernel<f32> + RowKernel<f64>,
{
    check_labels(name, labels, y_pred)?;
    run_node(name, kernel, &labels.detach().to_dtype(y_pred.dtype()), y_pred, rows)
}

/// `labels` must have `y_pred`'s shape without its last axis.
fn check_labels(name: &str, labels: &Tensor, y_pred: &Tensor) -> Result<()> {
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
    Ok(())
}

/// What a loss does with a row kernel's values, for [`run_node`]: the mask it attaches to them
/// and a constant per-row factor it multiplies them by.
#[derive(Clone, Copy, Default)]
pub(crate) struct Rows<'a> {
    pub own_mask: Option<&'a Tensor>,
    pub factor: Option<&'a Tensor>,
}

/// One row kernel over `y_true`/`y_pred` as a tape node, times `rows.factor` (or, when
/// `compute` offers the reduction's scale, as constant values with the scaled gradient handed
/// to [`fold`]).
pub(crate) fn run_node<K>(
    name: &'static str,
    kernel: K,
    y_true: &Tensor,
    y_pred: &Tensor,
    rows: Rows<'_>,
) -> Result<Tensor>
where
    K: RowKernel<f32> + RowKernel<f64>,
{
    let shape = y_pred.shape();
    let cols = shape[shape.len() - 1];
    let with_grad = is_grad_enabled() && y_pred.is_tracked();
    let row_shape = &shape[..shape.len() - 1];
    let offered = if with_grad { fold::scale_for(row_shape, y_pred.dtype(), rows.own_mask)? } else { None };
    // The kernel's rows feed `values · factor`: their share of the reduction's scale carries it.
    let row_scale = match (offered, rows.factor) {
        (Some(s), Some(f)) => Some(s.mul(&f.detach())?),
        (s, _) => s,
    };
    let (values, grad) = match y_pred.dtype() {
        losskit_tensor::DType::F32 => {
            let (v, g) = run_typed::<f32, K>(&kernel, y_true, y_pred, cols, with_grad, row_scale.as_ref())?;
            (Storage::F32(v.into_shared()), g.map(|g| Storage::F32(g.into_shared())))
        }
        losskit_tensor::DType::F64 => {
            let (v, g) = run_typed::<f64, K>(&kernel, y_true, y_pred, cols, with_grad, row_scale.as_ref())?;
            (Storage::F64(v.into_shared()), g.map(|g| Storage::F64(g.into_shared())))
        }
    };
    let times_factor = |v: Tensor| match rows.factor {
        Some(f) => v.mul(f),
        None => Ok(v),
    };
    Ok(match (grad, row_scale) {
        // The reduction's weights are in the gradient: the values leave as constants and the
        // gradient goes to `fold`, which records the reduced loss as the node.
        (Some(scaled_grad), Some(_)) => {
            let values = times_factor(Tensor::from_storage(values))?;
            fold::hand_over(&values, rows.own_mask, y_pred, scaled_grad);
            values
        }
        (Some(local_grad), None) => {
            times_factor(Tensor::from_op(values, vec![y_pred.clone()], RowLossOp { name, local_grad, cols }))?
        }
        (None, _) => times_factor(Tensor::from_storage(values))?,
    })
}

/// The reduction folded into a row kernel's gradient, for [`crate::compute`]: when a loss'
/// per-sample values are one row kernel's output (times a constant per-row factor, with a mask
/// of the loss' own, both told to the kernel before it runs) and the reduction is linear in
/// them (every reduction but `none`, with constant weights and mask), `∂loss/∂value[r]` is a
/// per-row constant `s[r]` (`w[r]/Σw`, `1/N`, `0` for a masked row, ...) known before the
/// kernel runs. The kernel then writes `s[r]·∂value[r]/∂y_pred[r, :]` directly: the gradient
/// of the reduced loss, one pass over the data instead of the kernel's pass plus a scaling
/// pass in backward; a backward seeded with 1 hands that buffer out as it is.
///
/// `compute` offers the scale (a closure of the values' shape and the loss' own mask) for the
/// duration of the loss' `per_sample`; the first row kernel of the thread that runs with a
/// gradient takes it and hands back its constant values and scaled gradient. If the loss'
/// result is not those values with that mask (a second kernel, values changed after the
/// kernel), `compute` drops it and runs `per_sample` again without an offer: nothing scaled
/// ever reaches a graph. An offer no kernel takes changes nothing.
pub(crate) mod fold {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// `s` for values of a shape and dtype with the loss' own mask, if any (the reduction
    /// differentiated at any values).
    pub(crate) type MakeScale = dyn Fn(&[usize], losskit_tensor::DType, Option<&Tensor>) -> Result<Tensor>;

    /// What the kernel hands back: the identity of its values and of the own mask it was told,
    /// the tensor differentiated, the scaled gradient.
    pub(crate) struct Folded {
        pub values_id: u64,
        pub mask_id: Option<u64>,
        pub input: Tensor,
        pub grad: Storage,
    }

    enum State {
        /// Offered, not taken yet: the scale as a function of the values' shape.
        Offered(Rc<MakeScale>),
        /// Taken by a kernel, which handed back its result (or not yet).
        Taken(Option<Folded>),
    }

    thread_local! {
        static OFFER: RefCell<Option<State>> = const { RefCell::new(None) };
    }

    /// What became of an offer.
    pub(crate) enum Outcome {
        /// No row kernel ran with a gradient: `per_sample`'s result is a plain one.
        NotTaken,
        /// A kernel took it, and handed back its values and scaled gradient (`None` if the
        /// kernel failed before handing over).
        Taken(Option<Folded>),
    }

    /// Runs `f` (a loss' `per_sample`) with the scale offered to its first row kernel; returns
    /// `f`'s result and what became of the offer. Nested offers (a loss computing another
    /// inside) each see only their own.
    pub(crate) fn with_offer<R>(make_scale: Rc<MakeScale>, f: impl FnOnce() -> R) -> (R, Outcome) {
        /// Puts the enclosing offer back on every exit, unwinding included.
        struct Restore(Option<State>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                OFFER.with(|o| *o.borrow_mut() = previous);
            }
        }
        let previous = OFFER.with(|o| o.borrow_mut().replace(State::Offered(make_scale)));
        let restore = Restore(previous);
        let out = f();
        let outcome = OFFER.with(|o| match o.borrow_mut().take() {
            Some(State::Taken(folded)) => Outcome::Taken(folded),
            _ => Outcome::NotTaken,
        });
        drop(restore);
        (out, outcome)
    }

    /// The offered scale for values of `shape` (whose loss attaches `own_mask`), taking the
    /// offer (later kernels of the same `per_sample` run plainly, and `compute` sees the
    /// mismatch).
    pub(super) fn scale_for(
        shape: &[usize],
        dtype: losskit_tensor::DType,
        own_mask: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let offered = OFFER.with(|o| {
            let mut o = o.borrow_mut();
            match o.take() {
                Some(State::Offered(make)) => {
                    *o = Some(State::Taken(None));
                    Some(make)
                }
                other => {
                    *o = other;
                    None
                }
            }
        });
        offered.map(|make| make(shape, dtype, own_mask)).transpose()
    }

    /// Hands the taking kernel's result to the offer: the identity of its values and of the
    /// own mask it was told, the tensor differentiated, and the scaled gradient.
    pub(super) fn hand_over(values: &Tensor, own_mask: Option<&Tensor>, input: &Tensor, grad: Storage) {
        OFFER.with(|o| {
            if let Some(State::Taken(slot)) = o.borrow_mut().as_mut() {
                let mask_id = own_mask.map(Tensor::id);
                *slot = Some(Folded { values_id: values.id(), mask_id, input: input.clone(), grad });
            }
        });
    }

    /// The gradient already holds the reduction's weights: backward multiplies by the upstream
    /// scalar (nothing to do for the usual 1).
    struct ReducedRowLossOp {
        name: String,
        grad: Storage,
    }

    impl CustomOp for ReducedRowLossOp {
        fn name(&self) -> &str {
            &self.name
        }

        fn backward(&self, _inputs: &[Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
            let scaled = Tensor::from_storage(self.grad.clone());
            if grad.numel() == 1 && grad.to_scalar()? == 1.0 {
                return Ok(vec![Some(scaled)]);
            }
            Ok(vec![Some(scaled.mul(&grad.to_dtype(scaled.dtype()))?)])
        }
    }

    /// The reduced loss `value` (computed from the kernel's constant values) as the node of
    /// the folded gradient.
    pub(crate) fn reduced_node(name: &str, value: &Tensor, folded: Folded) -> Tensor {
        let op = ReducedRowLossOp { name: format!("{name} (reduced)"), grad: folded.grad };
        Tensor::from_op(value.storage().clone(), vec![folded.input], op)
    }
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
