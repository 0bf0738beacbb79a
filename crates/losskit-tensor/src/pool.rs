//! Pools of freed buffers, so that a loss called again and again (every training step, every
//! benchmark run) writes into memory it already has instead of asking the allocator again:
//! the kernel's page faults on freshly allocated outputs were half the time of a kernel-backed
//! loss called through the tape; at training shapes (batch 32) the zero-fill of fresh small
//! outputs was 5% of a profile of `losskit fit`, and a step's buffers are kept across steps.
//!
//! A [`crate::Storage`] whose array is uniquely owned gives its buffer back here when it is
//! dropped; the kernel nodes take their output and gradient buffers, and the tape's ops their
//! outputs, from here. Two pools per dtype:
//! - **large**: buffers of at least [`MIN_POOLED`] values, at most [`MAX_BUFFERS`] of them and
//!   [`MAX_BYTES`] in all;
//! - **small**: buffers of [`MIN_SMALL`] to [`MIN_POOLED`] values (a training step's
//!   activations, their gradients, `∂W` of a small layer), at most [`MAX_SMALL_BUFFERS`]
//!   (16 MiB of `f32` at most).
//!
//! Both drop their oldest buffer first when full; [`clear`] frees them all. Buffers below
//! [`MIN_SMALL`] values are left to the allocator (its own free lists serve them as fast).

use crate::Element;
use std::sync::Mutex;

/// Buffers below this many values go to the small pool (or the allocator).
pub const MIN_POOLED: usize = 1 << 16;
/// How many freed large buffers of each dtype the pool keeps.
pub const MAX_BUFFERS: usize = 8;
/// How many bytes of freed large buffers of each dtype the pool keeps (2 GiB).
pub const MAX_BYTES: usize = 2 << 30;
/// Buffers below this many values are left to the allocator.
pub const MIN_SMALL: usize = 1 << 10;
/// How many freed small buffers of each dtype the pool keeps.
pub const MAX_SMALL_BUFFERS: usize = 64;

/// The pools of one element type.
#[doc(hidden)]
pub struct Buffers<T> {
    large: Mutex<Vec<Vec<T>>>,
    small: Mutex<Vec<Vec<T>>>,
}

impl<T> Buffers<T> {
    const fn new() -> Self {
        Buffers { large: Mutex::new(Vec::new()), small: Mutex::new(Vec::new()) }
    }

    /// Frees every buffer of both pools.
    fn clear(&self) {
        for pool in [&self.large, &self.small] {
            if let Ok(mut p) = pool.lock() {
                p.clear();
            }
        }
    }
}

pub(crate) static F32_BUFFERS: Buffers<f32> = Buffers::new();
pub(crate) static F64_BUFFERS: Buffers<f64> = Buffers::new();

/// Whether a buffer of `n` values is worth keeping.
pub(crate) fn poolable(n: usize) -> bool {
    n >= MIN_SMALL
}

/// Keeps `v` for reuse if it is large enough (dropping the oldest buffer of its pool when that
/// pool is full).
pub(crate) fn give<T: Element>(v: Vec<T>) {
    let cap = v.capacity();
    if !poolable(cap) {
        return;
    }
    if cap < MIN_POOLED {
        if let Ok(mut pool) = T::buffers().small.lock() {
            if pool.len() >= MAX_SMALL_BUFFERS {
                pool.remove(0);
            }
            pool.push(v);
        }
        return;
    }
    let bytes = |v: &Vec<T>| v.capacity() * std::mem::size_of::<T>();
    if bytes(&v) > MAX_BYTES {
        return;
    }
    if let Ok(mut pool) = T::buffers().large.lock() {
        // The oldest go first, until the new one fits both limits.
        while pool.len() >= MAX_BUFFERS || pool.iter().map(bytes).sum::<usize>() + bytes(&v) > MAX_BYTES {
            pool.remove(0);
        }
        pool.push(v);
    }
}

/// The smallest buffer of `pool` that holds `n` values and is at most twice that size.
fn best_fit<T>(pool: &Mutex<Vec<Vec<T>>>, n: usize) -> Option<Vec<T>> {
    let mut pool = pool.lock().ok()?;
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, v)| v.capacity() >= n && v.capacity() <= 2 * n)
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i)?;
    Some(pool.swap_remove(best))
}

/// A buffer of exactly `n` values with **unspecified contents** (a reused buffer keeps its old
/// values): for outputs that are written in full. The smallest pooled buffer that holds `n`
/// values and is at most twice that size, else a fresh one.
pub fn take<T: Element>(n: usize) -> Vec<T> {
    if poolable(n) {
        let pool = if n < MIN_POOLED { &T::buffers().small } else { &T::buffers().large };
        if let Some(mut v) = best_fit(pool, n) {
            v.resize(n, T::zero());
            return v;
        }
    }
    fresh(n)
}

/// Fresh buffers of at least this many bytes ask for transparent huge pages.
const HUGE_PAGE_BYTES: usize = 4 << 20;

/// A fresh zeroed buffer of `n` values. A large one (from the allocator's `mmap`, whose pages
/// the kernel zeroes on first touch) is advised to take transparent huge pages
/// (`MADV_HUGEPAGE`) before anything writes it: one fault per 2 MiB instead of per 4 KiB, for
/// the outputs a framework frees after each call (candle's and burn's gradients), which no
/// pool can keep.
fn fresh<T: Element>(n: usize) -> Vec<T> {
    let v = vec![T::zero(); n];
    if n * std::mem::size_of::<T>() >= HUGE_PAGE_BYTES {
        advise_huge_pages(&v);
    }
    v
}

/// `madvise(MADV_HUGEPAGE)` on the whole 2 MiB pages inside `v` (Linux; a no-op elsewhere and
/// where the kernel has transparent huge pages off). Only a hint: the values are untouched.
#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(v: &[T]) {
    const HUGE: usize = 2 << 20;
    let start = v.as_ptr() as usize;
    let end = start + std::mem::size_of_val(v);
    let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if last > first {
        // SAFETY: [first, last) lies inside `v`'s allocation, which is mapped and lives for the
        // call; MADV_HUGEPAGE only changes how the kernel backs those pages, never their
        // contents or the mapping's validity, and its failure (no THP support) is ignored.
        unsafe {
            libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_: &[T]) {}

/// An array of shape `dim` on a [`take`]n buffer (**unspecified contents**: for outputs that are
/// written in full).
pub(crate) fn array<T: Element>(dim: ndarray::IxDyn) -> ndarray::ArrayD<T> {
    let n = ndarray::Dimension::size(&dim);
    ndarray::ArrayD::from_shape_vec(dim, take(n)).expect("n values for the shape")
}

/// Frees every pooled buffer (for a program that wants its memory back between phases).
pub fn clear() {
    F32_BUFFERS.clear();
    F64_BUFFERS.clear();
}

/// How many large buffers are pooled now, per dtype `(f32, f64)`.
pub fn pooled() -> (usize, usize) {
    (F32_BUFFERS.large.lock().map_or(0, |p| p.len()), F64_BUFFERS.large.lock().map_or(0, |p| p.len()))
}

/// How many small buffers are pooled now, per dtype `(f32, f64)`.
pub fn pooled_small() -> (usize, usize) {
    (F32_BUFFERS.small.lock().map_or(0, |p| p.len()), F64_BUFFERS.small.lock().map_or(0, |p| p.len()))
}
