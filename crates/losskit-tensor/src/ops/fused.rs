//! The lazy forms of the element-wise ops and of sums over trailing axes, with backward passes
//! that are lazy expressions too. Each returns `None` where the plain path is used instead.

use super::{op, sum_to_shape, Binary, Unary};
use crate::autodiff::CustomOp;
use crate::fusion::{
    classify, full, fuses, operand, programs, sum_rows, with_avx2, Broadcast, Expr, Instr, Side, PIECE,
};
use crate::slices;
use crate::storage::{with_storage, Element};
use crate::{Result, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// `u(x)`, lazily, when `x` is large.
pub(crate) fn unary(x: &Tensor, u: Unary) -> Option<Tensor> {
    if !programs(x.shape()) {
        return None;
    }
    let y = Expr::op(Instr::Unary(u), vec![full(x, x.dtype())]);
    Some(record(
        y,
        vec![x.clone()],
        op(u.name(), move |inputs, out, g| {
            let dtype = out.dtype();
            let xe = full(&inputs[0], dtype);
            let ye = if u.uses_output() { full(out, dtype) } else { xe.clone() };
            let d = Expr::op(Instr::UnaryDeriv(u), vec![xe, ye]);
            Ok(vec![Some(result(Expr::op(Instr::Binary(Binary::Mul), vec![full(g, dtype), d])))])
        }),
    ))
}

/// `clip(x, lo, hi)`, lazily, when `x` is large.
pub(crate) fn clip(x: &Tensor, lo: f64, hi: f64) -> Option<Tensor> {
    if !programs(x.shape()) {
        return None;
    }
    let y = Expr::op(Instr::Clip { lo, hi }, vec![full(x, x.dtype())]);
    Some(record(
        y,
        vec![x.clone()],
        op("clip", move |inputs, out, g| {
            let dtype = out.dtype();
            let pass = Expr::op(Instr::ClipPass { lo, hi }, vec![full(&inputs[0], dtype), full(g, dtype)]);
            Ok(vec![Some(result(pass))])
        }),
    ))
}

/// `x ∘ y` with NumPy broadcasting to `shape`, lazily, when the result is large and each operand
/// is full-shape or broadcast along rows, columns or as a scalar.
pub(crate) fn binary(x: &Tensor, y: &Tensor, b: Binary, shape: &[usize]) -> Option<Tensor> {
    if !programs(shape) || x.dtype() != y.dtype() {
        return None;
    }
    let (cx, cy) = (classify(x.shape(), shape).ok()?, classify(y.shape(), shape).ok()?);
    let out = Expr::op(Instr::Binary(b), vec![operand(x, cx, shape), operand(y, cy, shape)]);
    Some(record(
        out,
        vec![x.clone(), y.clone()],
        op(b.name(), move |inputs, out, g| binary_backward(b, [cx, cy], inputs, out, g)),
    ))
}

fn binary_backward(
    b: Binary,
    classes: [Option<Broadcast>; 2],
    inputs: &[Tensor],
    out: &Tensor,
    g: &Tensor,
) -> Result<Vec<Option<Tensor>>> {
    let (shape, dtype) = (out.shape(), out.dtype());
    let ge = full(g, dtype);
    let xe = operand(&inputs[0], classes[0], shape);
    let ye = operand(&inputs[1], classes[1], shape);
    let grad = |side: Side| -> Arc<Expr> {
        match (b, side) {
            (Binary::Add, _) | (Binary::Sub, Side::Lhs) => ge.clone(),
            (Binary::Sub, Side::Rhs) => Expr::op(Instr::Unary(Unary::Neg), vec![ge.clone()]),
            _ => {
                // Only `pow` reads the output; the others get `x` in its slot (never read).
                let oe = if matches!(b, Binary::Pow) { full(out, dtype) } else { xe.clone() };
                let d = Expr::op(Instr::BinaryDeriv(b, side), vec![xe.clone(), ye.clone(), oe]);
                Expr::op(Instr::Binary(Binary::Mul), vec![ge.clone(), d])
            }
        }
    };
    let mut grads = Vec::with_capacity(2);
    for (k, side) in [Side::Lhs, Side::Rhs].into_iter().enumerate() {
        let input = &inputs[k];
        grads.push(input.is_tracked().then(|| reduce_to(grad(side), classes[k], input.shape())));
    }
    Ok(grads)
}

/// A full-shape gradient summed back to an operand that entered as `class` (fused for rows
/// and scalars: the gradient is never materialised).
fn reduce_to(e: Arc<Expr>, class: Option<Broadcast>, shape: &[usize]) -> Tensor {
    match class {
        None => result(e),
        Some(_) => sum_to_shape(&Tensor::from_expr(e), shape),
    }
}

/// Sum (or mean, `divisor` the count) of `x` over its last `x.rank() - keep` axes, as a tensor
/// of `out_shape`; `None` when `x` is a materialised array that is not in standard layout.
pub(crate) fn sum_trailing(
    x: &Tensor,
    keep: usize,
    divisor: f64,
    out_shape: &[usize],
    name: &'static str,
) -> Option<Tensor> {
    sum_trailing_many(&[x], keep, divisor, out_shape, name)?.pop()
}

/// [`sum_trailing`] of several tensors of one shape and dtype, in one pass over their values.
pub(crate) fn sum_trailing_many(
    xs: &[&Tensor],
    keep: usize,
    divisor: f64,
    out_shape: &[usize],
    name: &'static str,
) -> Option<Vec<Tensor>> {
    let standard = |x: &Tensor| x.is_lazy() || with_storage!(x.storage(), a => a.is_standard_layout());
    if xs.is_empty() || !xs.iter().all(|x| standard(x) && x.shape() == xs[0].shape() && x.dtype() == xs[0].dtype()) {
        return None;
    }
    let period: usize = xs[0].shape()[keep..].iter().product();
    let es: Vec<Arc<Expr>> = xs.iter().map(|x| full(x, x.dtype())).collect();
    let refs: Vec<&Expr> = es.iter().map(|e| &**e).collect();
    let sums = crate::fusion::sum_rows_many(&refs, period, divisor, out_shape);
    Some(xs.iter().zip(sums).map(|(x, s)| record_sum(x, s, period, divisor, name)).collect())
}

/// Records `sums`, the row sums of `x` over runs of `period` values (divided by `divisor`), on
/// the tape: the gradient is `g` broadcast back along the rows (divided by `divisor`), lazily.
fn record_sum(x: &Tensor, sums: Tensor, period: usize, divisor: f64, name: &'static str) -> Tensor {
    Tensor::from_op(
        sums.storage().clone(),
        vec![x.clone()],
        op(name, move |inputs, _out, g| {
            let x = &inputs[0];
            let rows = Expr::broadcast(Broadcast::Rows { period }, g.storage().clone(), x.shape());
            let e = if divisor == 1.0 {
                rows
            } else {
                let d = Expr::scalar(divisor, g.dtype(), x.shape());
                Expr::op(Instr::Binary(Binary::Div), vec![rows, d])
            };
            Ok(vec![Some(result(e))])
        }),
    )
}

/// `ln Σ exp` of each row of `period` values of `a` (standard layout), one value per row; rows
/// in parallel, each by `losskit_kernels::log_sum_exp`.
pub(crate) fn row_log_sum_exp<T: Element>(a: &[T], period: usize) -> Vec<T> {
    let rows = a.len().checked_div(period).unwrap_or(0);
    let mut out = vec![T::zero(); rows];
    if period == 0 {
        out.fill(T::neg_infinity());
        return out;
    }
    let per_task = (PIECE / period).max(1);
    if a.len() < crate::pointwise::PARALLEL_MIN {
        lse_rows(a, period, &mut out);
    } else {
        out.par_chunks_mut(per_task).zip(a.par_chunks(per_task * period)).for_each(|(o, x)| lse_rows(x, period, o));
    }
    out
}

#[inline(always)]
fn lse_rows_body<T: Element>(a: &[T], period: usize, out: &mut [T]) {
    for (o, row) in out.iter_mut().zip(a.chunks_exact(period)) {
        *o = losskit_kernels::log_sum_exp(row);
    }
}
with_avx2!(lse_rows => lse_rows_body, (a: &[T], period: usize, out: &mut [T]));

/// `logsumexp` over the last axis, kept as size 1, for a standard-layout `x`; `None` otherwise.
pub(crate) fn log_sum_exp_last(x: &Storage) -> Option<Storage> {
    with_storage!(x, a => {
        let s = a.as_slice()?;
        let period = *a.shape().last()?;
        let mut kept = a.shape().to_vec();
        *kept.last_mut()? = 1;
        Some(T::wrap(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&kept), row_log_sum_exp(s, period)).ok()?))
    })
}

/// `softmax` or `log_softmax` over the last axis: `y = x - lse(x)` (then `exp` for softmax),
/// lazy when large. The backward pass is lazy as well, with the row sums it needs fused:
/// log-softmax `g - exp(y)·Σg`, softmax `y·(g - Σ g·y)`.
pub(crate) fn softmax_last(x: &Tensor, log: bool) -> Option<Tensor> {
    if !log && !x.is_lazy() && !fuses(x.shape()) {
        if let Some(t) = softmax_rows_now(x) {
            return Some(t);
        }
    }
    let name = if log { "log_softmax" } else { "softmax" };
    let lse = log_sum_exp_last(x.storage())?;
    let shape = x.shape().to_vec();
    let period = *shape.last()?;
    let shifted = Expr::op(
        Instr::Binary(Binary::Sub),
        vec![full(x, x.dtype()), Expr::broadcast(Broadcast::Rows { period }, lse, &shape)],
    );
    let y = if log { shifted } else { Expr::op(Instr::Unary(Unary::Exp), vec![shifted]) };
    let backward = move |_inputs: &[Tensor], out: &Tensor, g: &Tensor| -> Result<Vec<Option<Tensor>>> {
        let dtype = out.dtype();
        let (ye, ge) = (full(out, dtype), full(g, dtype));
        let shape = out.shape();
        let rows = |e: &Arc<Expr>| {
            let s = sum_rows(e, period, 1.0, &[e.numel() / period.max(1)]);
            Expr::broadcast(Broadcast::Rows { period }, s.storage().clone(), shape)
        };
        let grad = if log {
            let soft = Expr::op(Instr::Unary(Unary::Exp), vec![ye]);
            let scaled = Expr::op(Instr::Binary(Binary::Mul), vec![soft, rows(&ge)]);
            Expr::op(Instr::Binary(Binary::Sub), vec![ge, scaled])
        } else {
            let gy = Expr::op(Instr::Binary(Binary::Mul), vec![ge.clone(), ye.clone()]);
            let centred = Expr::op(Instr::Binary(Binary::Sub), vec![ge, rows(&gy)]);
            Expr::op(Instr::Binary(Binary::Mul), vec![ye, centred])
        };
        Ok(vec![Some(result(grad))])
    };
    Some(record(y, vec![x.clone()], op(name, backward)))
}

/// `softmax` over the last axis of a computed tensor too small to fuse: the planned step's row
/// functions ([`slices::softmax_forward`], [`slices::softmax_backward`]), the same bits as the
/// lazy form. `None` when `x` is not in standard layout.
fn softmax_rows_now(x: &Tensor) -> Option<Tensor> {
    let cols = *x.shape().last()?;
    let shape = ndarray::IxDyn(x.shape());
    let storage = with_storage!(x.storage(), a => {
        let values = a.as_slice()?;
        let mut out = crate::pool::take::<T>(values.len());
        slices::softmax_forward(values, cols, &mut out);
        T::wrap(ndarray::ArrayD::from_shape_vec(shape.clone(), out).ok()?)
    });
    let backward = move |_inputs: &[Tensor], out: &Tensor, g: &Tensor| -> Result<Vec<Option<Tensor>>> {
        let grad = with_storage!(g.storage(), ga => {
            let y = T::view(out.storage()).expect("the output's dtype");
            let (y, ga) = (y.as_standard_layout(), ga.as_standard_layout());
            let mut grad = crate::pool::take::<T>(ga.len());
            grad.copy_from_slice(ga.as_slice().expect("standard layout"));
            slices::softmax_backward(y.as_slice().expect("standard layout"), &mut grad, cols);
            T::wrap(ndarray::ArrayD::from_shape_vec(shape.clone(), grad).expect("the output's shape"))
        });
        Ok(vec![Some(Tensor::from_storage(grad))])
    };
    Some(Tensor::from_op(storage, vec![x.clone()], op("softmax", backward)))
}

/// Records the result `e` of an op on the tape: lazy when fusion applies to its size, else
/// computed now.
fn record(e: Arc<Expr>, inputs: Vec<Tensor>, op: impl CustomOp + 'static) -> Tensor {
    if fuses(e.shape()) {
        Tensor::from_lazy_op(e, inputs, op)
    } else {
        Tensor::from_op(e.force().clone(), inputs, op)
    }
}

/// A tensor with the values of `e`: lazy when fusion applies to its size, else computed now.
fn result(e: Arc<Expr>) -> Tensor {
    if fuses(e.shape()) {
        Tensor::from_expr(e)
    } else {
        Tensor::from_storage(e.force().clone())
    }
}
