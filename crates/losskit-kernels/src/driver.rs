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
    if let Some(g) = grad.as_deref() {
        check(K::NAME, "grad", g.len(), len)?;
    }
    // Rows in chunks: one task each when parallel, one chunk when small.
    let parallel = len >= PARALLEL_MIN_VALUES && rows > 1;
    let chunk_rows = if parallel { rows.div_ceil(rayon::current_num_threads() * 4).max(1) } else { rows };
    let job = |c: usize, values: &mut [T], grad: Option<&mut [T]>| {
        let r0 = c * chunk_rows;
        let r1 = r0 + values.len();
        let chunk = Chunk {
            y_true: &y_true[r0 * tc..r1 * tc],
            y_pred: &y_pred[r0 * cols..r1 * cols],
            upstream: upstream.map(|u| &u[r0..r1]),
            cols,
            tc,
        };
        process_dispatch(kernel, &chunk, values, grad);
    };
    match grad {
        Some(grad) if parallel => values
            .par_chunks_mut(chunk_rows)
            .zip(grad.par_chunks_mut(chunk_rows * cols))
            .enumerate()
            .for_each(|(c, (v, g))| job(c, v, Some(g))),
        None if parallel => values.par_chunks_mut(chunk_rows).enumerate().for_each(|(c, v)| job(c, v, None)),
        grad => job(0, values, grad),
    }
    Ok(())
}

/// A block of consecutive rows.
struct Chunk<'a, T> {
    y_true: &'a [T],
    y_pred: &'a [T],
    upstream: Option<&'a [T]>,
    cols: usize,
    tc: usize,
}

#[inline(always)]
fn process<T: Float, K: RowKernel<T>>(kernel: &K, c: &Chunk<'_, T>, values: &mut [T], grad: Option<&mut [T]>) {
    let (cols, tc) = (c.cols, c.tc);
    match grad {
        Some(g) => {
            for (r, (v, gr)) in values.iter_mut().zip(g.chunks_mut(cols)).enumerate() {
                let scale = c.upstream.map_or(T::one(), |u| u[r]);
                *v = kernel.row(&c.y_true[r * tc..(r + 1) * tc], &c.y_pred[r * cols..(r + 1) * cols], scale, Some(gr));
            }
        }
        None => {
            for (r, v) in values.iter_mut().enumerate() {
                *v = kernel.row(&c.y_true[r * tc..(r + 1) * tc], &c.y_pred[r * cols..(r + 1) * cols], T::one(), None);
            }
        }
    }
}

/// Defines `$dispatch`, which runs `$body` (a generic function) compiled for AVX-512 or AVX2 +
/// FMA when the CPU has them (checked once by std), else the baseline build. The element
/// loops and the polynomial `exp`/`ln` vectorise 16 or 8 lanes wide in those builds; the
/// arithmetic is the same IEEE operations in the same order (nothing is contracted into an
/// FMA unless the body asks), so the values do not depend on the build.
///
/// `isa_dispatch!(name, body, <T: Float>, (a: &[T], b: &mut [T]) -> f64)` (the return type is
/// optional). Used by the other losskit crates for their own element loops.
#[macro_export]
macro_rules! isa_dispatch {
    ($vis:vis $dispatch:ident, $body:ident, <$($g:ident: $b:path),*>, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[inline]
        $vis fn $dispatch<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
            /// The body compiled for AVX2 + FMA (8 lanes).
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            /// The body compiled for AVX-512 (16 lanes).
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            unsafe fn avx512<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU supports these AVX-512 subsets (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use isa_dispatch;

isa_dispatch!(process_dispatch, process, <T: Float, K: RowKernel<T>>, (kernel: &K, c: &Chunk<'_, T>, values: &mut [T], grad: Option<&mut [T]>));

/// An element-wise loss: the value and `∂value/∂y_pred` of one `(y_true, y_pred)` pair (the
/// loss is not reduced over an axis, as PyTorch's element-wise losses with `reduction="none"`).
pub trait ElementKernel<T: Float>: Sync {
    /// The kernel's name, used in error messages.
    const NAME: &'static str;
    /// `(value, ∂value/∂p)` at `(t, p)`.
    fn element(&self, t: T, p: T) -> (T, T);
}

/// Runs an element-wise `kernel` over `y_true`/`y_pred` (same length): `values[i]` and, when
/// asked, `grad[i] = ∂values[i]/∂y_pred[i]`, in one pass, in parallel over chunks.
pub fn run_elements<T: Float, K: ElementKernel<T>>(
    kernel: &K,
    y_true: &[T],
    y_pred: &[T],
    values: &mut [T],
    grad: Option<&mut [T]>,
) -> Result<(), KernelError> {
    let n = y_pred.len();
    check(K::NAME, "y_true", y_true.len(), n)?;
    check(K::NAME, "values", values.len(), n)?;
    if let Some(g) = grad.as_deref() {
        check(K::NAME, "grad", g.len(), n)?;
    }
    let chunk = if n >= PARALLEL_MIN_VALUES { n.div_ceil(rayon::current_num_threads() * 4).max(1) } else { n.max(1) };
    match grad {
        Some(g) => values.par_chunks_mut(chunk).zip(g.par_chunks_mut(chunk)).enumerate().for_each(|(c, (v, g))| {
            let r = c * chunk..c * chunk + v.len();
            elements_dispatch(kernel, &y_true[r.clone()], &y_pred[r], v, Some(g));
        }),
        None => values.par_chunks_mut(chunk).enumerate().for_each(|(c, v)| {
            let r = c * chunk..c * chunk + v.len();
            elements_dispatch(kernel, &y_true[r.clone()], &y_pred[r], v, None);
        }),
    }
    Ok(())
}

#[inline(always)]
fn elements<T: Float, K: ElementKernel<T>>(kernel: &K, t: &[T], p: &[T], values: &mut [T], grad: Option<&mut [T]>) {
    match grad {
        Some(g) => {
            for (((v, g), &t), &p) in values.iter_mut().zip(g.iter_mut()).zip(t).zip(p) {
                (*v, *g) = kernel.element(t, p);
            }
        }
        None => {
            for ((v, &t), &p) in values.iter_mut().zip(t).zip(p) {
                *v = kernel.element(t, p).0;
            }
        }
    }
}

isa_dispatch!(elements_dispatch, elements, <T: Float, K: ElementKernel<T>>, (kernel: &K, t: &[T], p: &[T], values: &mut [T], grad: Option<&mut [T]>));
