//! A counting global allocator for the framework adapters' copy tests: it counts allocations
//! of at least [`BIG`] bytes (a `y_pred` of 256 × 1000 f32), so a test can tell whether a call
//! copied `y_pred` or allocated its gradient. Included by each test binary that uses it (the
//! allocator is the binary's), with nothing else running meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

/// Allocations of at least [`BIG`] bytes.
static BIG_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// `y_pred`'s size in bytes (256 × 1000 f32).
pub const BIG: usize = 256 * 1000 * 4;

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= BIG {
            BIG_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= BIG {
            BIG_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= BIG {
            BIG_ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Big allocations while `f` runs, from an empty buffer pool (a copy into a pooled buffer
/// allocates).
pub fn big_allocations(f: impl FnOnce()) -> usize {
    losskit_tensor::pool::clear();
    let before = BIG_ALLOCATIONS.load(Relaxed);
    f();
    BIG_ALLOCATIONS.load(Relaxed) - before
}
