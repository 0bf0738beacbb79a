//! A fusion leaf on values a caller lends for the length of a call ([`crate::lend`]): a
//! framework's buffer read in place instead of copied.

use crate::storage::Element;
use crate::{pool, DType, Storage};
use ndarray::IxDyn;
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard};

/// A caller's buffer of `len` values of type `dtype`, lent until [`Foreign::end`].
///
/// Programs read it while holding a read lock on `ended`; ending the loan takes the write lock,
/// so it waits for every program still reading, and after it no program reads the buffer again:
/// they read `copy`, taken just before (if the leaf had no value of its own by then). Only
/// `end` sets `copy`, so ending never waits on anything but the readers.
pub(crate) struct Foreign {
    ptr: *const u8,
    len: usize,
    dtype: DType,
    ended: RwLock<bool>,
    copy: OnceLock<Storage>,
}

// SAFETY: the buffer is only ever read, as a `&[T]` of an `f32`/`f64` (both `Sync`), and only
// while the loan lasts: `lend` ends every loan (the write lock waits for the readers) before it
// returns and its caller's borrow of the buffer ends.
unsafe impl Send for Foreign {}
// SAFETY: as for `Send`: shared reads only, all within the loan.
unsafe impl Sync for Foreign {}

/// A lent leaf's values: the lender's buffer with the guard that keeps the loan from ending
/// while they are read, or (no guard) the copy taken when the loan ended.
pub(crate) type Lent<'a, T> = (Option<RwLockReadGuard<'a, bool>>, &'a [T]);

impl Foreign {
    /// A loan of `values`, which must stay valid and unchanged until [`Foreign::end`] (what
    /// [`crate::lend`] guarantees by borrowing them for its whole call).
    pub(crate) fn new<T: Element>(values: &[T]) -> Foreign {
        Foreign {
            ptr: values.as_ptr().cast(),
            len: values.len(),
            dtype: T::DTYPE,
            ended: RwLock::new(false),
            copy: OnceLock::new(),
        }
    }

    /// The values: lent while the loan lasts, the copy after it; `None` once it has ended
    /// without a copy (the leaf had its own value then).
    ///
    /// Panics if `T` is not the lent type (the expression's own dtype is asked for: a bug).
    pub(crate) fn read<T: Element>(&self) -> Option<Lent<'_, T>> {
        assert_eq!(T::DTYPE, self.dtype, "a lent leaf read as another dtype");
        let guard = self.ended.read().unwrap_or_else(PoisonError::into_inner);
        if *guard {
            let copy = T::view(self.copy.get()?)?.as_slice()?;
            return Some((None, copy));
        }
        // SAFETY: made from a `&[T]` of `len` values (the dtype is checked above), valid until
        // the loan ends, which waits for `guard`.
        let values = unsafe { std::slice::from_raw_parts(self.ptr.cast::<T>(), self.len) };
        Some((Some(guard), values))
    }

    /// Ends the loan, once: waits for the programs still reading, then keeps a copy of the
    /// values in `shape` when `wanted` says one is needed (the leaf has no value yet).
    pub(crate) fn end(&self, shape: &[usize], wanted: impl FnOnce() -> bool) {
        let mut ended = self.ended.write().unwrap_or_else(PoisonError::into_inner);
        if *ended {
            return;
        }
        if wanted() {
            let copy = match self.dtype {
                DType::F32 => f32::wrap(self.copy::<f32>(shape)),
                DType::F64 => f64::wrap(self.copy::<f64>(shape)),
            };
            let _ = self.copy.set(copy);
        }
        *ended = true;
    }

    /// The values copied into a pooled array of `shape` (called under the write lock, before
    /// the loan ends).
    fn copy<T: Element>(&self, shape: &[usize]) -> ndarray::ArrayD<T> {
        // SAFETY: as in `read`; the loan has not ended (the caller holds the write lock).
        let values = unsafe { std::slice::from_raw_parts(self.ptr.cast::<T>(), self.len) };
        let mut out = pool::array::<T>(IxDyn(shape));
        out.as_slice_mut().expect("a fresh array is contiguous").copy_from_slice(values);
        out
    }
}
