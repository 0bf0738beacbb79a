//! The differentiable operations on [`Tensor`], grouped by kind.

/// `zip.map_collect(f)` into an array of shape `dim`; large outputs are computed in parallel
/// into a buffer from the [`crate::pool`] (no fresh pages once the pool holds one). `T` is the
/// element type in scope.
macro_rules! collect {
    ($dim:expr, $zip:expr, $f:expr) => {{
        let zip = $zip;
        if zip.size() >= $crate::ops::PARALLEL_MIN {
            let mut out = crate::pool::array::<T>($dim);
            zip.par_map_assign_into(&mut out, $f);
            out
        } else {
            zip.map_collect($f)
        }
    }};
}

pub(crate) mod activation;
pub(crate) mod dense;
mod elementwise;
pub(crate) mod fused;
mod index;
mod matmul;
mod reduce;
mod shape;

pub(crate) use crate::pointwise::{Binary, Unary, PARALLEL_MIN};
pub use elementwise::broadcast_shapes;
pub(crate) use elementwise::sum_to_shape;

use crate::autodiff::FnOp;
use crate::{Result, Tensor};

/// Shorthand for a closure-backed op.
pub(crate) fn op<F>(name: &'static str, f: F) -> FnOp<F>
where
    F: Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync,
{
    FnOp { name, f }
}

/// Runs `$body` with `$a`, `$b` bound to the typed arrays of two storages of the same dtype
/// (`T` the element type), or returns a dtype error naming `$op`.
macro_rules! with_pair {
    ($op:expr, $x:expr, $y:expr, ($a:ident, $b:ident) => $body:expr) => {
        match ($x.storage(), $y.storage()) {
            ($crate::Storage::F32($a), $crate::Storage::F32($b)) => {
                #[allow(dead_code)]
                type T = f32;
                $body
            }
            ($crate::Storage::F64($a), $crate::Storage::F64($b)) => {
                #[allow(dead_code)]
                type T = f64;
                $body
            }
            _ => return Err($crate::Error::DType { op: $op.to_string(), lhs: $x.dtype(), rhs: $y.dtype() }),
        }
    };
}
pub(crate) use with_pair;

/// Normalises a possibly negative axis against `rank`.
pub(crate) fn norm_axis(op: &str, axis: isize, rank: usize) -> Result<usize> {
    let r = rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(crate::Error::shape(op, format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(a as usize)
}
