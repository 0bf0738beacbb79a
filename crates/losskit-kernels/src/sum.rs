//! Row sums that stay exact for long rows and still vectorise.
//!
//! A float32 sum of 10⁵ similar terms in a few running accumulators drifts by ~1e-4 relative
//! (each addition rounds against a growing total, and the roundings of alike terms do not
//! cancel). Here a row is cut into blocks of [`BLOCK`] values: a block is summed in 8 lanes of
//! `T` (32 terms per lane: at most ~2e-6 relative in the worst case, far less in practice), and the block sums
//! are added in `f64`. The inner loop is the plain `T` loop, so the cost is one `f64` addition
//! per block. Lanes and blocks are combined in a fixed order: the result does not depend on the
//! number of threads.

use crate::Float;

/// Values per block: 8 lanes × 32 terms.
pub(crate) const BLOCK: usize = 256;

/// The 8 lanes added in order. (Not pairwise: an add tree over lane pairs leads LLVM's SLP
/// vectoriser to build 2-wide vectors for the whole loop.)
#[inline(always)]
pub(crate) fn fold_lanes<T: Float>(l: [T; 8]) -> T {
    l.iter().fold(T::zero(), |a, &b| a + b)
}

/// `Σ f(a_i)` over one block in 8 lanes of `T` (the loop vectoriser interleaves it 16 wide).
#[inline(always)]
fn block_sum<T: Float>(a: &[T], f: &impl Fn(T) -> T) -> T {
    let mut lanes = [T::zero(); 8];
    let mut chunks = a.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = lanes[l] + f(c[l]);
        }
    }
    let tail = chunks.remainder().iter().fold(T::zero(), |s, &v| s + f(v));
    fold_lanes(lanes) + tail
}

/// `Σ f(a_i, b_i)` over one block in 8 lanes of `T`.
#[inline(always)]
fn block_sum2<T: Float>(a: &[T], b: &[T], f: &impl Fn(T, T) -> T) -> T {
    let mut lanes = [T::zero(); 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            lanes[l] = lanes[l] + f(x[l], y[l]);
        }
    }
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::zero(), |s, (&x, &y)| s + f(x, y));
    fold_lanes(lanes) + tail
}

/// `Σ f(a_i)` over a whole row: blocks in 8 lanes of `T` (vectorises), block sums in `f64`.
#[inline(always)]
pub(crate) fn lane_sum_wide<T: Float>(a: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut total = 0.0;
    // Plain loops, not iterator adaptors with closures: a closure that stays out of line is
    // compiled without the caller's AVX features (see the driver).
    for b in a.chunks(BLOCK) {
        total += block_sum(b, &f).widen();
    }
    total
}

/// Adds `Σ a_i` to `total`, block by block: each block of 256 values (counted from the
/// start of `a`) is summed in 8 lanes of `T` and added to `total` in `f64`.
///
/// Calling it on consecutive pieces of a row whose lengths are multiples of 256 gives the same
/// `total`, bit for bit, as one call on the whole row: the tensor ops' row sums and their fused
/// reductions use it, so a fused reduction equals the plain one.
pub fn accumulate_sum<T: Float>(total: &mut f64, a: &[T]) {
    for b in a.chunks(BLOCK) {
        *total += block_sum(b, &|v| v).widen();
    }
}

/// `Σ f(a_i, b_i)` over a whole row: blocks in 8 lanes of `T` (vectorises), block sums in `f64`.
#[inline(always)]
pub(crate) fn lane_sum2_wide<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> f64 {
    let mut total = 0.0;
    for (x, y) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        total += block_sum2(x, y, &f).widen();
    }
    total
}

/// `Σ f(a_i)` with `f` evaluated in `f64` (so `f` itself cannot overflow `T`), in 8 `f64` lanes.
#[inline(always)]
pub(crate) fn lane_sum_widened<T: Float>(a: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (chunks, rest) = a.as_chunks::<8>();
    for c in chunks {
        for (acc, &v) in lanes.iter_mut().zip(c) {
            *acc += f(v.widen());
        }
    }
    fold_lanes(lanes) + rest.iter().fold(0.0, |s, &v| s + f(v.widen()))
}

/// `Σ f(a_i, b_i)` with `f` evaluated in `f64`, in 8 `f64` lanes.
#[inline(always)]
pub(crate) fn lane_sum2_widened<T: Float>(a: &[T], b: &[T], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for ((acc, &u), &v) in lanes.iter_mut().zip(x).zip(y) {
            *acc += f(u.widen(), v.widen());
        }
    }
    fold_lanes(lanes) + ra.iter().zip(rb).fold(0.0, |s, (&u, &v)| s + f(u.widen(), v.widen()))
}

/// A running `f64` sum for the loops that go element by element anyway (renormalised
/// probabilities, focal terms, weighted elements).
#[derive(Default, Clone, Copy)]
pub(crate) struct WideSum(f64);

impl WideSum {
    /// Adds one term.
    #[inline(always)]
    pub(crate) fn add<T: Float>(&mut self, v: T) {
        self.0 += v.widen();
    }
    /// The sum in `f64`.
    #[inline(always)]
    pub(crate) fn total(self) -> f64 {
        self.0
    }
}
