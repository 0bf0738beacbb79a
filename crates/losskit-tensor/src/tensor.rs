//! The `Tensor` type: storage, identity, graph node, constructors and conversions.

use crate::autodiff::{self, CustomOp, Gradients};
use crate::fusion::{with_avx2, Expr};
use crate::storage::{with_storage, DType, Element, Storage};
use crate::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Node {
    pub inputs: Vec<Tensor>,
    pub op: Box<dyn CustomOp>,
}

/// A tensor's values: computed, or a lazy element-wise expression computed on first read.
#[derive(Clone)]
enum Value {
    Ready(Storage),
    Lazy(Arc<Expr>),
}

struct Inner {
    id: u64,
    value: Value,
    requires_grad: bool,
    node: Option<Node>,
}

/// A dynamic-rank array of `f32` or `f64` that records the operations applied to it.
///
/// Cloning a `Tensor` is cheap (a reference count); the values are immutable. A tensor
/// *requires gradients* when it was marked with [`Tensor::requires_grad`] or computed from one
/// while recording was on; [`Tensor::backward`] then differentiates through it.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor[{:?}, {}", self.shape(), self.dtype())?;
        if self.0.requires_grad {
            write!(f, ", grad")?;
        }
        with_storage!(self.storage(), a => write!(f, "] {a}"))
    }
}

impl Tensor {
    fn make(value: Value, requires_grad: bool, node: Option<Node>) -> Tensor {
        Tensor(Arc::new(Inner { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), value, requires_grad, node }))
    }

    /// A constant tensor (no gradient) over `storage`.
    pub fn from_storage(storage: Storage) -> Tensor {
        Tensor::make(Value::Ready(storage), false, None)
    }

    /// A constant tensor whose values are the lazy expression `e`.
    pub(crate) fn from_expr(e: Arc<Expr>) -> Tensor {
        Tensor::make(Value::Lazy(e), false, None)
    }

    /// As [`Tensor::from_op`], for a result that is the lazy expression `e`.
    pub(crate) fn from_lazy_op(e: Arc<Expr>, inputs: Vec<Tensor>, op: impl CustomOp + 'static) -> Tensor {
        Tensor::record(Value::Lazy(e), inputs, op)
    }

    /// Whether the values are a lazy expression (computed or not).
    pub(crate) fn is_lazy(&self) -> bool {
        self.lazy_expr().is_some()
    }

    /// The lazy expression behind this tensor, if its values are one.
    pub(crate) fn lazy_expr(&self) -> Option<&Arc<Expr>> {
        match &self.0.value {
            Value::Lazy(e) => Some(e),
            Value::Ready(_) => None,
        }
    }

    /// A constant tensor from an `ndarray` array.
    pub fn from_array<T: Element>(a: ArrayD<T>) -> Tensor {
        Tensor::from_storage(T::wrap(a))
    }

    /// A constant tensor from a flat vector in row-major order and a shape.
    ///
    /// Errors when `data.len()` is not the product of `shape`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "Tensor::from_vec",
                format!("{} values do not fill shape {:?} ({} values)", data.len(), shape, n),
            ));
        }
        let a =
            ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| Error::shape("Tensor::from_vec", e.to_string()))?;
        Ok(Tensor::from_array(a))
    }

    /// A rank-0 tensor holding `v`.
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor::from_array(ArrayD::from_elem(IxDyn(&[]), v))
    }

    /// A tensor of `shape` filled with `v` (rounded to `dtype`).
    pub fn full(shape: &[usize], v: f64, dtype: DType) -> Tensor {
        match dtype {
            DType::F32 => Tensor::from_array(ArrayD::from_elem(IxDyn(shape), v as f32)),
            DType::F64 => Tensor::from_array(ArrayD::from_elem(IxDyn(shape), v)),
        }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 0.0, dtype)
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }

    /// A rank-0 tensor holding `v` in this tensor's dtype.
    pub fn scalar_like(&self, v: f64) -> Tensor {
        Tensor::full(&[], v, self.dtype())
    }

    /// Zeros of this tensor's shape and dtype.
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape(), self.dtype())
    }

    /// Ones of this tensor's shape and dtype.
    pub fn ones_like(&self) -> Tensor {
        Tensor::ones(self.shape(), self.dtype())
    }

    /// The same values as a leaf that requires gradients (a new tensor for autodiff; a leaf
    /// nothing else holds is marked in place).
    pub fn requires_grad(mut self) -> Tensor {
        if let Some(inner) = Arc::get_mut(&mut self.0).filter(|inner| inner.node.is_none()) {
            inner.requires_grad = true;
            return self;
        }
        Tensor::make(self.0.value.clone(), true, None)
    }

    /// The same values, cut from the graph: a constant.
    pub fn detach(&self) -> Tensor {
        Tensor::make(self.0.value.clone(), false, None)
    }

    /// Records the result of a differentiable operation: `storage` computed from `inputs`,
    /// differentiated by `op`. If recording is off or no input requires gradients, the result is
    /// a constant.
    pub fn from_op(storage: Storage, inputs: Vec<Tensor>, op: impl CustomOp + 'static) -> Tensor {
        Tensor::record(Value::Ready(storage), inputs, op)
    }

    fn record(value: Value, inputs: Vec<Tensor>, op: impl CustomOp + 'static) -> Tensor {
        let track = autodiff::is_grad_enabled() && inputs.iter().any(|t| t.0.requires_grad);
        if track {
            Tensor::make(value, true, Some(Node { inputs, op: Box::new(op) }))
        } else {
            Tensor::make(value, false, None)
        }
    }

    /// Differentiates this scalar with respect to every leaf that requires gradients.
    ///
    /// Errors if the tensor has more than one element.
    pub fn backward(&self) -> Result<Gradients> {
        autodiff::backward(self)
    }

    /// A process-unique identity (gradients are keyed by it).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub(crate) fn requires_grad_flag(&self) -> bool {
        self.0.requires_grad
    }

    /// Whether gradients flow into this tensor.
    pub fn is_tracked(&self) -> bool {
        self.0.requires_grad
    }

    pub(crate) fn node(&self) -> Option<&Node> {
        self.0.node.as_ref()
    }

    /// The values (computed here, once, if they are a lazy element-wise expression).
    pub fn storage(&self) -> &Storage {
        match &self.0.value {
            Value::Ready(s) => s,
            Value::Lazy(e) => e.force(),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.0.value {
            Value::Ready(s) => s.dtype(),
            Value::Lazy(e) => e.dtype(),
        }
    }

    /// The shape (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        match &self.0.value {
            Value::Ready(s) => s.shape(),
            Value::Lazy(e) => e.shape(),
        }
    }

    /// The number of axes.
    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// The values as an `ndarray` array of `T` (converted if the dtype differs).
    pub fn to_array<T: Element>(&self) -> ArrayD<T> {
        let s = self.storage().to_dtype(T::DTYPE);
        T::view(&s).map(|a| a.to_owned()).unwrap_or_else(|| ArrayD::zeros(IxDyn(&[])))
    }

    /// The values in row-major order as `T` (converted if the dtype differs).
    pub fn to_vec<E: Element>(&self) -> Vec<E> {
        if let Some(e) = self.lazy_expr() {
            // A lent buffer is read where it is (its leaf keeps no copy).
            if let Some((_loan, v)) = e.lent::<E>() {
                return v.to_vec();
            }
            if let (DType::F64, Some((_loan, v))) = (E::DTYPE, e.lent::<f32>()) {
                return v.iter().map(|&x| <E as losskit_kernels::Float>::c(f64::from(x))).collect();
            }
        }
        let s = self.storage();
        if let Some(a) = E::view(s) {
            return a.iter().copied().collect();
        }
        if E::DTYPE == DType::F64 {
            // Widening is exact: one pass, one buffer.
            return with_storage!(s, a => a.iter().map(|&v| <E as losskit_kernels::Float>::c(wide(v))).collect());
        }
        self.to_array::<E>().into_iter().collect()
    }

    /// `Σ x²` over every element, accumulated in f64 (a reading, not recorded). NaN or ±Inf
    /// anywhere makes it non-finite, so one pass also checks finiteness. Above 64K values,
    /// fixed groups of 64K are summed in parallel and added in order: the same value on any
    /// number of threads.
    pub fn sum_of_squares(&self) -> f64 {
        with_storage!(self.storage(), a => match a.as_slice_memory_order() {
            Some(s) => sum_squares_grouped(s),
            None => a.iter().fold(0.0f64, |s, &v| {
                let v = wide(v);
                s + v * v
            }),
        })
    }

    /// The values, taken out of the tensor without a copy when nothing else holds them (the
    /// graph is dropped); otherwise a cheap shared handle (copy-on-write).
    pub fn into_storage(self) -> Storage {
        match Arc::try_unwrap(self.0) {
            Ok(Inner { value: Value::Ready(s), .. }) => s,
            Ok(Inner { value: Value::Lazy(e), .. }) => e.force().clone(),
            Err(shared) => Tensor(shared).storage().clone(),
        }
    }

    /// The values in row-major order as a `Vec` of the tensor's own type `T`, moved out without
    /// a copy when nothing else holds them and they are in standard layout (how a framework
    /// adapter hands a gradient over); copied otherwise. `None` when `T` is not the dtype.
    pub fn into_vec<T: Element>(self) -> Option<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return None;
        }
        let a = T::take(self.into_storage())?;
        let n = a.len();
        if !a.is_standard_layout() {
            return Some(a.iter().copied().collect());
        }
        // A standard-layout array's elements are the `n` values from its offset in the buffer.
        let (mut v, offset) = a.into_owned().into_raw_vec_and_offset();
        let start = offset.unwrap_or(0);
        v.truncate(start + n);
        v.drain(..start);
        Some(v)
    }

    /// The values in row-major order as `T`: borrowed when [`Tensor::values`] can, else a
    /// converted copy ([`Tensor::to_vec`]).
    pub fn values_or_copy<T: Element>(&self) -> std::borrow::Cow<'_, [T]> {
        match self.values::<T>() {
            Some(v) => std::borrow::Cow::Borrowed(v),
            None => std::borrow::Cow::Owned(self.to_vec::<T>()),
        }
    }

    /// The values as a row-major slice, when they are of type `T` and in standard layout
    /// (a lazy tensor is computed first); `None` otherwise.
    pub fn values<T: Element>(&self) -> Option<&[T]> {
        T::view(self.storage())?.as_slice()
    }

    /// Runs `f` on the values as a row-major slice of `T`, read where they are: the tensor's
    /// own buffer, or a buffer lent to it ([`crate::lend`]) without copying it; a lazy
    /// expression is computed first, and values of another dtype or in a strided layout are
    /// copied (converted) for `f`.
    pub fn with_values<T: Element, R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        if let Some((_loan, values)) = self.lazy_expr().and_then(|e| e.lent::<T>()) {
            return f(values);
        }
        f(&self.values_or_copy::<T>())
    }

    /// The values as a row-major slice to write in place, when this handle alone holds them
    /// (no clone of the tensor, no other array on its buffer), they are computed, of type `T`,
    /// in standard layout, and the tensor is not the result of a recorded operation; `None`
    /// otherwise. A caller that keeps a tensor as its own buffer across steps (losskit-train's
    /// allocation-free training step, an optimizer's update of a weight) writes it this way:
    /// no copy, no allocation.
    pub fn values_mut<T: Element>(&mut self) -> Option<&mut [T]> {
        let inner = Arc::get_mut(&mut self.0).filter(|inner| inner.node.is_none())?;
        let Value::Ready(storage) = &mut inner.value else { return None };
        let a = T::view_mut(storage)?;
        if !(a.is_unique() && a.is_standard_layout()) {
            return None;
        }
        // Unique: `as_slice_mut` writes through without copying.
        a.as_slice_mut()
    }

    /// Whether this handle alone holds its values, computed and in standard layout: then
    /// [`Tensor::into_storage`] hands over a buffer that may be written in place.
    pub(crate) fn owns_buffer(&self) -> bool {
        Arc::strong_count(&self.0) == 1
            && matches!(self.0.value, Value::Ready(_))
            && with_storage!(self.storage(), a => a.is_unique() && a.is_standard_layout())
    }

    /// Whether every element is finite (no NaN, no ±Inf).
    pub fn all_finite(&self) -> bool {
        with_storage!(self.storage(), a => match a.as_slice_memory_order() {
            // Branch-free over blocks (the compiler vectorises it), stopping at a bad block.
            Some(s) => s.chunks(4096).all(|b| b.iter().fold(true, |ok, v| ok & v.is_finite())),
            None => a.iter().all(|v| v.is_finite()),
        })
    }

    /// The largest `|x|` (0 for an empty tensor; NaN if any element is NaN).
    pub fn max_abs(&self) -> f64 {
        let fold = |m: f64, v: f64| if v.is_nan() || m.is_nan() { f64::NAN } else { m.max(v.abs()) };
        with_storage!(self.storage(), a => match a.as_slice_memory_order() {
            // Per block: the largest |x| in T (NaN-ignoring `max`, vectorised) and whether a
            // NaN was seen; the blocks' results folded in f64.
            Some(s) => s.chunks(4096).fold(0.0f64, |m, b| {
                let (big, nan) = block_max_abs(b);
                fold(m, if nan { f64::NAN } else { wide(big) })
            }),
            None => a.iter().fold(0.0f64, |m, &v| fold(m, wide(v))),
        })
    }

    /// The value of a one-element tensor as `f64`.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape("Tensor::to_scalar", format!("needs one element, got shape {:?}", self.shape())));
        }
        Ok(with_storage!(self.storage(), a => a.iter().next().map_or(f64::NAN, |&v| wide(v))))
    }
}

/// The largest `|x|` of a block (NaN-ignoring) and whether it holds a NaN, without branches.
fn block_max_abs<T: Element>(b: &[T]) -> (T, bool) {
    b.iter().fold((T::zero(), false), |(big, nan), &v| (big.max(v.abs()), nan | v.is_nan()))
}

/// An element as `f64` (exact for f32 and f64).
fn wide<T: Element>(v: T) -> f64 {
    v.to_f64().unwrap_or(f64::NAN)
}

/// `Σ x²` in sixteen lanes of `T` per block of 4096 values, blocks summed in f64 (vectorised
/// by the compiler; accurate enough for a norm).
#[inline(always)]
pub(crate) fn sum_squares_body<T: Element>(s: &[T]) -> f64 {
    let mut total = 0.0f64;
    for block in s.chunks(SQUARES_BLOCK) {
        let mut lanes = [T::zero(); 16];
        let chunks = block.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = *l + v * v;
            }
        }
        total += lanes.iter().map(|&v| wide(v)).sum::<f64>() + rest.iter().map(|&v| wide(v) * wide(v)).sum::<f64>();
    }
    total
}

// The NaN guard reads every gradient's `Σ g²` each step: 8 AVX2 lanes instead of the baseline
// build's 4 (the same IEEE operations lane by lane, so the same value).
with_avx2!(sum_squares_lanes => sum_squares_body, (s: &[T]) -> f64);

/// Values per block of [`sum_squares_lanes`] (summed in lanes of `T`, then added in `f64`).
pub(crate) const SQUARES_BLOCK: usize = 4096;
/// Values per group of [`sum_squares_grouped`] (16 blocks).
pub(crate) const SQUARES_GROUP: usize = 1 << 16;
/// Groups summed per parallel round (a stack array: no allocation).
pub(crate) const SQUARES_ROUND: usize = 64;

/// `Σ x²` as [`sum_squares_lanes`] over fixed groups of [`SQUARES_GROUP`] values, the groups in
/// parallel and their sums added in order: the same value whatever the number of threads. One
/// group or less is summed on the calling thread. (`fit` keeps the pool's other worker awake,
/// so a step's `Σ g²` of a large weight is split over both cores instead of waiting on one.)
fn sum_squares_grouped<T: Element>(s: &[T]) -> f64 {
    use rayon::prelude::*;
    if s.len() <= SQUARES_GROUP {
        return sum_squares_lanes(s);
    }
    let mut total = 0.0f64;
    let mut partial = [0.0f64; SQUARES_ROUND];
    for round in s.chunks(SQUARES_GROUP * SQUARES_ROUND) {
        let groups = round.len().div_ceil(SQUARES_GROUP);
        partial[..groups]
            .par_iter_mut()
            .zip(round.par_chunks(SQUARES_GROUP))
            .for_each(|(p, g)| *p = sum_squares_lanes(g));
        total = partial[..groups].iter().fold(total, |t, &p| t + p);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 blocks and a remainder of values in `[-2, 2)`, with `bad` at index `at` when given.
    fn values(at: Option<(usize, f64)>) -> Vec<f64> {
        let mut v: Vec<f64> = (0..3 * 4096 + 17).map(|i| ((i * 37) % 101) as f64 / 25.25 - 2.0).collect();
        if let Some((i, bad)) = at {
            v[i] = bad;
        }
        v
    }

    #[test]
    fn requires_grad_marks_a_lone_leaf_in_place_and_never_a_shared_one() {
        let lone = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let id = lone.id();
        let marked = lone.requires_grad();
        assert!(marked.is_tracked());
        assert_eq!(marked.id(), id, "nothing else held it: the same leaf");
        let shared = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let other = shared.clone();
        let marked = shared.requires_grad();
        assert!(marked.is_tracked() && !other.is_tracked(), "the other handle stays a constant");
        assert_ne!(marked.id(), other.id());
        // A result of an op is cut from its graph: a new leaf.
        let y = marked.mul_scalar(2.0).unwrap();
        let (yid, leaf) = (y.id(), y.requires_grad());
        assert!(leaf.node().is_none() && leaf.id() != yid);
    }

    #[test]
    fn to_vec_and_to_scalar_read_either_dtype() {
        let t = Tensor::from_vec(vec![0.1f32, -3.5, 1e30], &[3]).unwrap();
        assert_eq!(t.to_vec::<f64>(), vec![f64::from(0.1f32), -3.5, f64::from(1e30f32)]);
        assert_eq!(t.to_vec::<f32>(), vec![0.1f32, -3.5, 1e30]);
        let d = Tensor::from_vec(vec![0.1f64, 1e300], &[2]).unwrap();
        assert_eq!(d.to_vec::<f32>(), vec![0.1f32, f32::INFINITY]);
        assert_eq!(Tensor::scalar(0.25f32).to_scalar().unwrap(), 0.25);
        assert!(t.to_scalar().is_err());
    }

    #[test]
    fn sum_of_squares_is_the_same_value_in_the_vector_build_and_the_baseline_one() {
        let v = values(None);
        let want: f64 = v.iter().map(|x| x * x).sum();
        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        // The dispatched build (AVX2 here when the CPU has it) against the body compiled plainly.
        assert_eq!(sum_squares_lanes(&f).to_bits(), sum_squares_body(&f).to_bits());
        assert_eq!(sum_squares_lanes(&v).to_bits(), sum_squares_body(&v).to_bits());
        assert!((sum_squares_lanes(&v) - want).abs() < 1e-9 * want, "{} vs {want}", sum_squares_lanes(&v));
        assert!((sum_squares_lanes(&f) - want).abs() < 1e-5 * want);
        let t = Tensor::from_vec(v.clone(), &[v.len()]).unwrap();
        assert_eq!(t.sum_of_squares().to_bits(), sum_squares_body(&v).to_bits(), "one group: summed as one");
        let mut bad = v;
        bad[4096 + 9] = f64::NAN;
        assert!(sum_squares_lanes(&bad).is_nan());
    }

    #[test]
    fn grouped_sum_of_squares_is_the_same_bits_on_any_thread_count_and_sees_every_group() {
        // 2 rounds of 64 groups and a short last group.
        let n = SQUARES_GROUP * (SQUARES_ROUND + 3) + 1234;
        let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 25.25 - 2.0).collect();
        let want: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| sum_squares_grouped(&v))
        };
        let one = run(1);
        assert!((one - want).abs() < 1e-6 * want, "{one} vs {want}");
        for threads in [2, 3, 8] {
            assert_eq!(run(threads).to_bits(), one.to_bits(), "{threads} threads");
        }
        // By hand: the groups' sums in order.
        let by_hand = v.chunks(SQUARES_GROUP).fold(0.0f64, |t, g| t + sum_squares_lanes(g));
        assert_eq!(one.to_bits(), by_hand.to_bits());
        for at in [0, SQUARES_GROUP * SQUARES_ROUND + 5, n - 1] {
            let mut bad = v.clone();
            bad[at] = f32::INFINITY;
            assert_eq!(sum_squares_grouped(&bad), f64::INFINITY, "an infinity at {at}");
            bad[at] = f32::NAN;
            assert!(sum_squares_grouped(&bad).is_nan(), "a NaN at {at}");
        }
    }

    #[test]
    fn finiteness_and_max_abs_see_every_block_in_both_dtypes() {
        for at in [
            None,
            Some((5, 9.5)),
            Some((4096 * 2 + 3, -7.0)),
            Some((3 * 4096 + 16, f64::NAN)),
            Some((1, f64::INFINITY)),
        ] {
            let v = values(at);
            let want_finite = v.iter().all(|x| x.is_finite());
            let want_max =
                if v.iter().any(|x| x.is_nan()) { f64::NAN } else { v.iter().fold(0.0f64, |m, x| m.max(x.abs())) };
            for dtype in [DType::F32, DType::F64] {
                let t = Tensor::from_vec(v.clone(), &[v.len()]).unwrap().to_dtype(dtype);
                assert_eq!(t.all_finite(), want_finite, "{at:?} {dtype:?}");
                let got = t.max_abs();
                assert!(
                    got == want_max || (got.is_nan() && want_max.is_nan()),
                    "{at:?} {dtype:?}: {got} vs {want_max}"
                );
            }
        }
    }
}
