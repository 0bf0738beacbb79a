//! Fusion of element-wise chains: large element-wise results are *lazy expressions*, evaluated
//! when their values are needed, a cache-sized chunk at a time.
//!
//! An element-wise op on an output of at least [`crate::pointwise::PARALLEL_MIN`] values does not
//! compute anything: it returns a tensor whose value is an [`Expr`], a small graph of
//! instructions over *leaves* (materialised full-shape arrays, and arrays broadcast along rows,
//! along columns or as a scalar). When someone reads the values ([`Tensor::storage`]), the
//! graph is compiled into a [`program`] and run over chunks of [`CHUNK`] values, every
//! instruction a plain loop over one chunk, so the intermediates stay in L1/L2 and a chain of
//! n ops makes one pass over memory instead of n (numexpr's scheme, no code generation). A
//! sum or mean over trailing axes of a lazy tensor reduces each chunk as it is produced: the
//! chain is never written out at all. Results of [`PROGRAM_MIN`] values or more that are too
//! small to be lazy run through the same programs, computed at once (vectorised loops).
//!
//! The backward passes of the lazy ops build lazy expressions too (`g · f'(x)` with `x`
//! recomputed from the leaves), so the gradient of a custom loss written as a chain of tensor
//! ops is one pass as well. Each instruction computes exactly what the eager op computes,
//! element by element: values and gradients are the same, bit for bit, as on the plain path.
//! Reductions add chunks in a fixed order (`losskit_kernels::accumulate_sum`), the same order
//! for the fused and the plain sums, whatever the number of threads.
//!
//! An expression stops growing at [`MAX_NODES`] nodes: beyond that, its operands are
//! materialised first (a long chain is cut into pieces of at most that length).

/// Defines `$name`, which runs `$body` compiled for AVX2 + FMA when the CPU has them (8 f32
/// lanes; the per-element maths is the same IEEE arithmetic, so the values do not change).
macro_rules! with_avx2 {
    ($name:ident => $body:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name<T: Element>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: Element>($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
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

pub(crate) use with_avx2;

mod foreign;
mod program;

pub(crate) use foreign::Foreign;

use crate::pointwise::{Binary, Unary, PARALLEL_MIN};
use crate::storage::{with_storage, Element};
use crate::{DType, Storage, Tensor};
use std::cell::Cell;
use std::sync::{Arc, OnceLock};

/// Values per chunk: each instruction runs over this many values at a time (a multiple of the
/// 256-value blocks of `losskit_kernels::accumulate_sum`, so chunked sums equal whole-row sums).
pub(crate) const CHUNK: usize = 1024;
/// Values per parallel task (16 chunks).
pub(crate) const PIECE: usize = 16 * CHUNK;
/// The most nodes one expression holds before its operands are materialised.
pub(crate) const MAX_NODES: usize = 48;

/// How a leaf that is smaller than the expression maps onto it (flat row-major index `i`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Broadcast {
    /// `v[i / period]`: one value per row of `period` values (shape `(.., 1, 1)` against `(.., h, w)`).
    Rows { period: usize },
    /// `v[i % period]`: the same `period` values in every row (shape `(w,)` against `(.., w)`).
    Cols { period: usize },
    /// `v[0]` everywhere.
    Scalar,
}

/// Which operand of a binary op a derivative is taken with respect to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Side {
    Lhs,
    Rhs,
}

/// One instruction: a value per element from one to three operands.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Instr {
    /// `u(x)`.
    Unary(Unary),
    /// `u'(x)` from `(x, u(x))`.
    UnaryDeriv(Unary),
    /// `a ∘ b`.
    Binary(Binary),
    /// `∂(a ∘ b)/∂a` or `/∂b` from `(a, b, a ∘ b)`.
    BinaryDeriv(Binary, Side),
    /// `clip(x, lo, hi)`.
    Clip { lo: f64, hi: f64 },
    /// `g` where `clip` passes the gradient at `x`, else 0: from `(x, g)`.
    ClipPass { lo: f64, hi: f64 },
}

impl Instr {
    fn arity(self) -> usize {
        match self {
            Instr::Unary(_) | Instr::Clip { .. } => 1,
            Instr::UnaryDeriv(_) | Instr::Binary(_) | Instr::ClipPass { .. } => 2,
            Instr::BinaryDeriv(..) => 3,
        }
    }
}

enum Kind {
    /// A materialised full-shape array: the value is set at creation.
    Materialised,
    /// A small array broadcast onto the expression's shape (standard layout).
    Broadcast(Broadcast, Storage),
    /// An instruction over other expressions of the same shape.
    Op(Instr, Vec<Arc<Expr>>),
    /// Values a caller lends for the duration of a [`crate::lend`] call (a framework's
    /// buffer), read in place; the value is set only if the leaf is forced or outlives the loan.
    Foreign(Foreign),
}

/// A lazily evaluated element-wise value of a given shape (see the module docs). Every node has
/// the shape of the whole expression; its value, once computed, is cached.
pub(crate) struct Expr {
    shape: Vec<usize>,
    dtype: DType,
    kind: Kind,
    /// Nodes in the tree below and including this one (an upper bound on the program length).
    size: usize,
    value: OnceLock<Storage>,
}

impl Expr {
    /// A leaf on materialised values (copied to standard layout if they are not in it).
    pub(crate) fn materialised(storage: Storage) -> Arc<Expr> {
        let storage = standard(storage);
        Arc::new(Expr {
            shape: storage.shape().to_vec(),
            dtype: storage.dtype(),
            kind: Kind::Materialised,
            size: 1,
            value: OnceLock::from(storage),
        })
    }

    /// A leaf that broadcasts `storage` onto `shape` as `b` says.
    pub(crate) fn broadcast(b: Broadcast, storage: Storage, shape: &[usize]) -> Arc<Expr> {
        let storage = standard(storage);
        Arc::new(Expr {
            shape: shape.to_vec(),
            dtype: storage.dtype(),
            kind: Kind::Broadcast(b, storage),
            size: 1,
            value: OnceLock::new(),
        })
    }

    /// A leaf on values lent by a caller (see [`Foreign`]), of `shape`.
    pub(crate) fn foreign(foreign: Foreign, dtype: DType, shape: &[usize]) -> Arc<Expr> {
        Arc::new(Expr { shape: shape.to_vec(), dtype, kind: Kind::Foreign(foreign), size: 1, value: OnceLock::new() })
    }

    /// Ends the loan of a [`Kind::Foreign`] leaf that is still held elsewhere: its values are
    /// copied (waiting for programs reading the lent ones to finish), and no program reads the
    /// lender's buffer again.
    pub(crate) fn end_loan(&self) {
        if let Kind::Foreign(f) = &self.kind {
            f.end(&self.shape, || self.value.get().is_none());
        }
    }

    /// The values of a lent leaf that holds no value of its own (see [`foreign::Lent`]); `None`
    /// for any other expression, or when `T` is not its dtype.
    pub(crate) fn lent<T: Element>(&self) -> Option<foreign::Lent<'_, T>> {
        match (&self.kind, self.value.get()) {
            (Kind::Foreign(f), None) if T::DTYPE == self.dtype => f.read::<T>(),
            _ => None,
        }
    }

    /// A scalar leaf holding `v` in `dtype`.
    pub(crate) fn scalar(v: f64, dtype: DType, shape: &[usize]) -> Arc<Expr> {
        Expr::broadcast(Broadcast::Scalar, Tensor::full(&[], v, dtype).storage().clone(), shape)
    }

    /// `instr` applied to `args` (all of the same shape and dtype). When the result would hold
    /// more than [`MAX_NODES`] nodes, the operands are materialised first.
    pub(crate) fn op(instr: Instr, args: Vec<Arc<Expr>>) -> Arc<Expr> {
        debug_assert_eq!(args.len(), instr.arity());
        let mut size = 1 + args.iter().map(|a| a.nodes()).sum::<usize>();
        if size > MAX_NODES {
            // Only instructions are computed; a broadcast leaf stays one (forcing it would
            // write out a full-size copy of a row or a scalar).
            for a in args.iter().filter(|a| matches!(a.kind, Kind::Op(..))) {
                a.force();
            }
            size = 1 + args.iter().map(|a| a.nodes()).sum::<usize>();
        }
        Arc::new(Expr {
            shape: args[0].shape.clone(),
            dtype: args[0].dtype,
            kind: Kind::Op(instr, args),
            size,
            value: OnceLock::new(),
        })
    }

    /// The shape.
    pub(crate) fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The values, computed on first use.
    pub(crate) fn force(&self) -> &Storage {
        self.value.get_or_init(|| program::materialise(self))
    }

    /// Nodes that evaluating this expression would run (1 once it is materialised, and for a leaf).
    fn nodes(&self) -> usize {
        if self.value.get().is_some() {
            1
        } else {
            self.size
        }
    }

    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// `storage` in standard (row-major, contiguous) layout, copied only if it is not.
fn standard(storage: Storage) -> Storage {
    let contiguous = with_storage!(&storage, a => a.is_standard_layout());
    if contiguous {
        storage
    } else {
        with_storage!(&storage, a => T::wrap(a.as_standard_layout().into_owned()))
    }
}

/// How an operand of shape `operand` enters an element-wise result of shape `out`: `None` for a
/// full-shape operand, a [`Broadcast`] for one that is broadcast, or `Err(())` for a broadcast
/// that fusion does not handle (the plain path does it).
pub(crate) fn classify(operand: &[usize], out: &[usize]) -> Result<Option<Broadcast>, ()> {
    if operand == out {
        return Ok(None);
    }
    if operand.iter().product::<usize>() == 1 {
        return Ok(Some(Broadcast::Scalar));
    }
    if operand.len() > out.len() {
        return Err(());
    }
    let mut aligned = vec![1; out.len() - operand.len()];
    aligned.extend_from_slice(operand);
    // Rows: equal on a prefix, ones on the rest. Cols: ones on a prefix, equal on the rest.
    let rows_split = (0..=out.len()).find(|&k| aligned[..k] == out[..k] && aligned[k..].iter().all(|&d| d == 1));
    if let Some(k) = rows_split {
        return Ok(Some(Broadcast::Rows { period: out[k..].iter().product() }));
    }
    let cols_split = (0..=out.len()).find(|&k| aligned[..k].iter().all(|&d| d == 1) && aligned[k..] == out[k..]);
    match cols_split {
        Some(k) => Ok(Some(Broadcast::Cols { period: out[k..].iter().product() })),
        None => Err(()),
    }
}

thread_local! {
    static FUSION: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with fusion switched off on this thread: every element-wise op computes its values
/// at once (the plain path). The results are the same, bit for bit; this is for checking that,
/// and for measuring what fusion gains.
pub fn unfused<R>(f: impl FnOnce() -> R) -> R {
    crate::flags::with_flag(&FUSION, false, f)
}

/// Whether an element-wise result of `shape` is computed lazily.
pub(crate) fn fuses(shape: &[usize]) -> bool {
    shape.iter().product::<usize>() >= PARALLEL_MIN && FUSION.with(|g| g.get())
}

/// Results of at least this many values, too small to be lazy, still run through a compiled
/// program (computed at once): its loops are vectorised, unlike `ndarray`'s `Zip` over dynamic
/// dimensions (7 ns per value for a ReLU backward at batch 32 × 512).
pub(crate) const PROGRAM_MIN: usize = 4096;

/// Whether an element-wise result of `shape` goes through a program (lazy or at once); off
/// inside [`unfused`], where the plain `ndarray` path runs.
pub(crate) fn programs(shape: &[usize]) -> bool {
    shape.iter().product::<usize>() >= PROGRAM_MIN && FUSION.with(|g| g.get())
}

/// A full-shape operand: its expression if it is lazy, else a leaf on its values, in `dtype`.
pub(crate) fn full(t: &Tensor, dtype: DType) -> Arc<Expr> {
    match t.lazy_expr() {
        Some(e) if e.dtype() == dtype => e.clone(),
        _ => Expr::materialised(t.storage().to_dtype(dtype)),
    }
}

/// `total + more` for two tensors of one shape and dtype (gradients being accumulated): written
/// into the buffer of whichever of the two is materialised, contiguous and held by nothing else
/// (a result of an earlier backward step, typically), else a new (lazy or computed) sum. Every
/// way gives the same values (`a + b = b + a` in IEEE arithmetic).
pub(crate) fn accumulate(total: Tensor, more: Tensor) -> crate::Result<Tensor> {
    if total.shape() != more.shape() || total.dtype() != more.dtype() {
        return total.add(&more);
    }
    let total = match add_in_place(total, &more) {
        Ok(sum) => return Ok(sum),
        Err(total) => total,
    };
    match add_in_place(more, &total) {
        Ok(sum) => Ok(sum),
        Err(more) => total.add(&more),
    }
}

/// `target + addend` in `target`'s own buffer, or `target` back when it is lazy, strided or
/// shared.
fn add_in_place(target: Tensor, addend: &Tensor) -> Result<Tensor, Tensor> {
    if !target.owns_buffer() {
        return Err(target);
    }
    let mut storage = target.into_storage();
    let addend = full(addend, storage.dtype());
    with_storage!(&mut storage, a => {
        let values = a.as_slice_mut().expect("standard layout, checked above");
        program::add_into::<T>(values, &addend)
    });
    Ok(Tensor::from_storage(storage))
}

/// An operand of a result of shape `out`, entering as `class` says (from [`classify`]).
pub(crate) fn operand(t: &Tensor, class: Option<Broadcast>, out: &[usize]) -> Arc<Expr> {
    match class {
        None => full(t, t.dtype()),
        Some(b) => Expr::broadcast(b, t.storage().clone(), out),
    }
}

/// Sums of `e`'s values over consecutive runs of `period` values (one per row), divided by
/// `divisor`, as a tensor of `shape` (which holds `numel / period` values).
pub(crate) fn sum_rows(e: &Expr, period: usize, divisor: f64, shape: &[usize]) -> Tensor {
    sum_rows_many(&[e], period, divisor, shape).pop().expect("one expression, one result")
}

/// [`sum_rows`] of several expressions of one shape and dtype, in one pass over their values.
pub(crate) fn sum_rows_many(es: &[&Expr], period: usize, divisor: f64, shape: &[usize]) -> Vec<Tensor> {
    match es[0].dtype {
        DType::F32 => sum_rows_as::<f32>(es, period, divisor, shape),
        DType::F64 => sum_rows_as::<f64>(es, period, divisor, shape),
    }
}

/// [`sum_rows_many`] in `T`: each `f64` row sum rounded to `T`, then divided by `divisor` in `T`.
fn sum_rows_as<T: Element>(es: &[&Expr], period: usize, divisor: f64, shape: &[usize]) -> Vec<Tensor> {
    let rows = es[0].numel().checked_div(period).unwrap_or_else(|| shape.iter().product());
    let d = T::c(divisor);
    program::row_sums::<T>(es, rows, period)
        .into_iter()
        .map(|sums| {
            let values: Vec<T> = sums.into_iter().map(|s| T::c(s) / d).collect();
            Tensor::from_vec(values, shape).expect("one sum per row")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn accumulate_adds_in_place_with_the_bits_of_a_new_sum_and_spares_shared_buffers() {
        // Sizes above and below the lazy threshold and across pieces; the addend lazy or not.
        for n in [5, PROGRAM_MIN + 3, PARALLEL_MIN + 17, 3 * PIECE + 5] {
            let values = |k: usize| (0..n).map(move |i| ((i * k % 97) as f32 - 48.0) * 0.37).collect::<Vec<f32>>();
            let a = Tensor::from_vec(values(7), &[n]).unwrap();
            let b = Tensor::from_vec(values(11), &[n]).unwrap();
            let lazy = a.mul(&b).unwrap().mul_scalar(0.01).unwrap().exp();
            let address = |t: &Tensor| with_storage!(t.storage(), a => a.as_ptr() as usize);
            for more in [&b, &lazy] {
                let want = bits(&a.add(more).unwrap());
                let total = Tensor::from_vec(values(7), &[n]).unwrap();
                let before = address(&total);
                let sum = accumulate(total, more.clone()).unwrap();
                assert_eq!(bits(&sum), want, "n {n}");
                assert_eq!(address(&sum), before, "n {n}: the sum is written into the total's buffer");
                // The shared case: another handle on the buffer keeps its values.
                let total = Tensor::from_vec(values(7), &[n]).unwrap();
                let other = total.clone();
                let sum = accumulate(total, more.clone()).unwrap();
                assert_eq!(bits(&sum), want, "n {n}, shared");
                assert_eq!(other.to_vec::<f32>(), values(7), "n {n}: the other handle is untouched");
            }
            // A lazy (or shared) total and a lone materialised addend: the sum lands in the
            // addend's buffer.
            let want = bits(&lazy.add(&b).unwrap());
            let fresh = Tensor::from_vec(values(11), &[n]).unwrap();
            let before = address(&fresh);
            let sum = accumulate(lazy.clone(), fresh).unwrap();
            assert_eq!(bits(&sum), want, "n {n}, into the addend");
            assert_eq!(address(&sum), before, "n {n}: the sum is written into the addend's buffer");
        }
    }
}
