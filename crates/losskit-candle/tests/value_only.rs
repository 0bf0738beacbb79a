//! A forward on a `y_pred` that candle does not track runs the loss' value-only path on
//! candle's own buffer: a counting allocator sees no buffer of `y_pred`'s size, where a tracked
//! forward allocates one, the gradient the fused kernel writes with the value (`y_pred` itself
//! is read in place either way). One test in this binary, so nothing
//! else allocates meanwhile.

use candle_core::{Device, Tensor, Var};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

/// Allocations of at least [`BIG`] bytes.
static BIG_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// `y_pred`'s size in bytes (256 × 1000 f32).
const BIG: usize = 256 * 1000 * 4;

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

/// Big allocations while `f` runs, from an empty buffer pool.
fn big_allocations(f: impl FnOnce()) -> usize {
    losskit_tensor::pool::clear();
    let before = BIG_ALLOCATIONS.load(Relaxed);
    f();
    BIG_ALLOCATIONS.load(Relaxed) - before
}

#[test]
fn an_untracked_forward_computes_no_gradient() {
    let (rows, cols) = (256, 1000);
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0).collect();
    let labels: Vec<u32> = (0..rows as u32).map(|i| (i * 7) % cols as u32).collect();
    let dev = Device::Cpu;
    let logits = Tensor::from_vec(x, (rows, cols), &dev).unwrap();
    let labels = Tensor::from_vec(labels, rows, &dev).unwrap();
    let var = Var::from_tensor(&logits).unwrap();
    // A built-in loss' value on candle's own buffer: no copy, no gradient.
    let untracked = big_allocations(|| {
        let out = losskit_candle::nn::cross_entropy(&logits, &labels).unwrap();
        assert!(!out.track_op());
        std::hint::black_box(out.to_scalar::<f32>().unwrap());
    });
    assert_eq!(untracked, 0, "an evaluation forward");
    // The gradient the kernel writes with the value, on candle's buffer too: no copy.
    let tracked = big_allocations(|| {
        let out = losskit_candle::nn::cross_entropy(var.as_tensor(), &labels).unwrap();
        assert!(out.track_op());
        std::hint::black_box(out.to_scalar::<f32>().unwrap());
    });
    assert_eq!(tracked, 1, "a training forward");
}
