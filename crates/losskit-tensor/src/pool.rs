//! A pool of freed large buffers, so that a loss called again and again (every training step,
//! every benchmark run) writes into memory it already has instead of faulting in fresh pages:
//! the kernel's page faults on freshly allocated outputs were half the time of a kernel-backed
//! loss called through the tape.
//!
//! A [`crate::Storage`] whose array is uniquely owned and holds at least [`MIN_POOLED`] values
//! gives its buffer back here when it is dropped; the kernel nodes take their output and
//! gradient buffers, and the tape's element-wise ops their large outputs, from here. At most
//! [`MAX_BUFFERS`] buffers and [`MAX_BYTES`] per dtype are kept (the oldest are freed first);
//! [`clear`] frees them all.

use crate::Element;
use std::sync::Mutex;

/// Buffers below this many values are left to the allocator.
pub const MIN_POOLED: usize = 1 << 16;
/// How many freed buffers of each dtype the pool keeps.
pub const MAX_BUFFERS: usize = 8;
/// How many bytes of freed buffers of each dtype the pool keeps (2 GiB).
pub const MAX_BYTES: usize = 2 << 30;

/// The pool of one element type.
pub(crate) type Buffers<T> = Mutex<Vec<Vec<T>>>;

pub(crate) static F32_BUFFERS: Buffers<f32> = Mutex::new(Vec::new());
pub(crate) static F64_BUFFERS: Buffers<f64> = Mutex::new(Vec::new());

/// Keeps `v` for reuse if it is large enough (dropping the oldest buffer when the pool is full).
pub(crate) fn give<T: Element>(v: Vec<T>) {
    if v.capacity() < MIN_POOLED {
        return;
    }
    let bytes = |v: &Vec<T>| v.capacity() * std::mem::size_of::<T>();
    if bytes(&v) > MAX_BYTES {
        return;
    }
    if let Ok(mut pool) = T::buffers().lock() {
        // The oldest go first, until the new one fits both limits.
        while pool.len() >= MAX_BUFFERS || pool.iter().map(bytes).sum::<usize>() + bytes(&v) > MAX_BYTES {
            pool.remove(0);
        }
        pool.push(v);
    }
}

/// A buffer of exactly `n` values with **unspecified contents** (a reused buffer keeps its old
/// values): for outputs that are written in full. The smallest pooled buffer that holds `n`
/// values and is at most twice that size, else a fresh one.
pub fn take<T: Element>(n: usize) -> Vec<T> {
    if n >= MIN_POOLED {
        if let Ok(mut pool) = T::buffers().lock() {
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= n && v.capacity() <= 2 * n)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut v = pool.swap_remove(i);
                v.resize(n, T::zero());
                return v;
            }
        }
    }
    vec![T::zero(); n]
}

/// An array of shape `dim` on a [`take`]n buffer (**unspecified contents**: for outputs that are
/// written in full).
pub(crate) fn array<T: Element>(dim: ndarray::IxDyn) -> ndarray::ArrayD<T> {
    let n = ndarray::Dimension::size(&dim);
    ndarray::ArrayD::from_shape_vec(dim, take(n)).expect("n values for the shape")
}

/// Frees every pooled buffer (for a program that wants its memory back between phases).
pub fn clear() {
    if let Ok(mut p) = F32_BUFFERS.lock() {
        p.clear();
    }
    if let Ok(mut p) = F64_BUFFERS.lock() {
        p.clear();
    }
}

/// How many buffers are pooled now, per dtype `(f32, f64)`.
pub fn pooled() -> (usize, usize) {
    (F32_BUFFERS.lock().map_or(0, |p| p.len()), F64_BUFFERS.lock().map_or(0, |p| p.len()))
}
