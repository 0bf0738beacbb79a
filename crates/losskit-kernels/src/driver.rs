//! The row driver: splits a `rows × cols` problem over threads and applies the upstream gradient.

use crate::{Float, KernelError};
use rayon::prelude::*;

/// Below this many values a kernel runs on the calling thread: spawning costs more than it saves.
const PARALLEL_MIN_VALUES: usize = 1 << 15;

/// One per-sample loss: the value of one row and, optionally, its gradient w.r.t. `y_pred`.
pub trait RowKernel<T: Float>: Sync {
    /// The kernel's name, used in error messages.
    const NAME: &'static str;

    /// How many `y_true` values go with a row of `cols` predictions: `cols` for dense targets
    /// (the default), 1 for a class index.
    fn true_cols(&self, cols: usize) -> usize {
        cols
    }

    /// Returns the loss of one row. When `grad` is `Some`, also writes
    /// `scale · ∂value/∂y_pred[j]` into `grad[j]` for every `j` of the row, in the same pass.
    ///
    /// `y_pred` and `grad` have the row's length `cols`; `y_true` has `true_cols(cols)` values.
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T;
}

fn check(name: &'static str, what: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length { kernel: name, what, got, expected })
    }
}

/// Runs `kernel` over every row of a `rows × cols` problem.
///
/// * `y_pred`: `rows · cols` values, row-major; `y_true`: `rows · kernel.true_cols(cols)`.
/// * `values`: `rows` outputs, one per-sample loss each.
/// * `upstream`: optional per-row upstream gradient `∂L/∂value[r]` (1 when absent).
/// * `grad`: optional `rows · cols` output, `upstream[r] · ∂value[r]/∂y_pred[r, j]`.
pub fn run_rows<T: Float, K: RowKernel<T>>(
    kernel: &K,
    y_true: &[T],
    y_pred: &[T],
    cols: usize,
    upstream: Option<&[T]>,
    values: &mut [T],
    grad: Option<&mut [T]>,
) -> Result<(), KernelError> {
    let len = y_pred.len();
    if cols == 0 {
        if len != 0 {
            return Err(KernelError::Layout { kernel: K::NAME, len, cols });
        }
        // Zero-length rows: the kernel still defines a value (e.g. a mean of nothing).
        for v in values.iter_mut() {
            *v = kernel.row(&[], &[], T::one(), None);
        }
        return Ok(());
    }
    if !len.is_multiple_of(cols) {
        return Err(KernelError::Layout { kernel: K::NAME, len, cols });
    }
    let rows = len / cols;
    let tc = kernel.true_cols(cols);
    check(K::NAME, "y_true", y_true.len(), rows * tc)?;
    check(K::NAME, "values", values.len(), rows)?;
    if let Some(u) = upstream {
        check(K::NAME, "upstream", u.len(), rows)?;
    }
    let scale = |r: usize| upstream.map_or(T::one(), |u| u[r]);
    let parallel = len >= PARALLEL_MIN_VALUES && rows > 1;
    match grad {
        Some(grad) => {
            check(K::NAME, "grad", grad.len(), len)?;
            if parallel {
                values.par_iter_mut().zip(grad.par_chunks_mut(cols)).enumerate().for_each(|(r, (v, g))| {
                    *v =
                        kernel.row(&y_true[r * tc..(r + 1) * tc], &y_pred[r * cols..(r + 1) * cols], scale(r), Some(g));
                });
            } else {
                for (r, (v, g)) in values.iter_mut().zip(grad.chunks_mut(cols)).enumerate() {
                    *v =
                        kernel.row(&y_true[r * tc..(r + 1) * tc], &y_pred[r * cols..(r + 1) * cols], scale(r), Some(g));
                }
            }
        }
        None => {
            let one = |r: usize, v: &mut T| {
                *v = kernel.row(&y_true[r * tc..(r + 1) * tc], &y_pred[r * cols..(r + 1) * cols], T::one(), None);
            };
            if parallel {
                values.par_iter_mut().enumerate().for_each(|(r, v)| one(r, v));
            } else {
                values.iter_mut().enumerate().for_each(|(r, v)| one(r, v));
            }
        }
    }
    Ok(())
}
