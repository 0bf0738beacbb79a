//! The differentiable operations on [`Tensor`], grouped by kind.

mod elementwise;
mod index;
mod matmul;
mod reduce;
mod shape;

pub use elementwise::broadcast_shapes;
pub use matmul::Gemm;

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
