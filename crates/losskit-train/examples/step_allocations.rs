//! What one training step of the seed's model asks of the allocator, once warm: a counting
//! global allocator around the system one, read at the end of every batch.
//!
//! `cargo run --release -p losskit-train --example step_allocations` prints, for SGD/batch 32
//! and Adam/batch 128 on synthetic data shaped like Fashion-MNIST (784 features, 10 classes;
//! the seed's model, which `fit` trains through its planned step),
//! the allocations per step, their bytes, how many are the size of a data buffer (≥ 4 KiB:
//! 1024 f32 values, the smallest buffer losskit's pool keeps; what is left below that is the
//! tape's bookkeeping), and how many are large (≥ 256 KiB, the sizes that would fault fresh
//! pages in if they were not recycled) with their sizes.

use losskit::Tensor;
use losskit_train::{Compile, Dense, Dropout, Fit, Flatten, LambdaCallback, Optimizer, Sequential};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting calls and bytes.
struct Counting;

static CALLS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGE: AtomicUsize = AtomicUsize::new(0);
static DATA_SIZED: AtomicUsize = AtomicUsize::new(0);
/// The sizes of the last large allocations (a ring; the allocator itself must not allocate).
static LARGE_SIZES: [AtomicUsize; 1024] = [const { AtomicUsize::new(0) }; 1024];
/// Allocations of at least this many bytes count as large.
const LARGE_BYTES: usize = 256 << 10;
/// Allocations of at least this many bytes are the size of a data buffer.
const DATA_BYTES: usize = 4 << 10;

fn count(size: usize) {
    CALLS.fetch_add(1, Relaxed);
    BYTES.fetch_add(size, Relaxed);
    if size >= DATA_BYTES {
        DATA_SIZED.fetch_add(1, Relaxed);
    }
    if size >= LARGE_BYTES {
        let i = LARGE.fetch_add(1, Relaxed);
        LARGE_SIZES[i % LARGE_SIZES.len()].store(size, Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn snapshot() -> [usize; 4] {
    [CALLS.load(Relaxed), BYTES.load(Relaxed), LARGE.load(Relaxed), DATA_SIZED.load(Relaxed)]
}

fn main() -> Result<(), losskit::Error> {
    // As the `losskit` binary: the main thread is rayon's worker 0. (From a thread outside the
    // pool, every parallel region is queued on rayon's injector, whose queue takes a new block
    // of ~1.5 KB every 63 regions: ~0.06 allocations per step, none of them losskit's.)
    losskit_train::use_calling_thread(None).map_err(|e| losskit::Error::Config(e.to_string()))?;
    let rows = 4096;
    let x: Vec<f32> = (0..rows * 784).map(|i| ((i * 7919) % 256) as f32 / 255.0).collect();
    let y: Vec<f32> = (0..rows).map(|i| (i % 10) as f32).collect();
    let (x, y) = (Tensor::from_vec(x, &[rows, 28, 28])?, Tensor::from_vec(y, &[rows])?);
    for (opt, batch) in [("sgd", 32), ("adam", 128)] {
        let mut model = Sequential::new()
            .add(Flatten::new())
            .add(Dense::new(512).activation("relu")?)
            .add(Dropout::new(0.2)?)
            .add(Dense::new(10).activation("softmax")?);
        model.compile(
            Compile::new()
                .optimizer(Optimizer::parse(opt)?)
                .loss("sparse_categorical_crossentropy")
                .metrics(&["accuracy"]),
        )?;
        // Room for every mark up front: the probe's own list must not grow during the count.
        let marks = Rc::new(RefCell::new(Vec::with_capacity(2 * rows / batch + 2)));
        let m = marks.clone();
        let mut probe = LambdaCallback::new().on_batch_end(move |_, _| {
            m.borrow_mut().push(snapshot());
            Ok(())
        });
        model.fit(&x, &y, Fit::new().epochs(2).batch_size(batch).verbose(0).callback(&mut probe))?;
        let marks = marks.borrow();
        // The second epoch, between batch ends (its first step excluded: epoch boundaries).
        let steps = &marks[marks.len() / 2 + 1..];
        let per_step = |k: usize| (steps[steps.len() - 1][k] - steps[0][k]) as f64 / (steps.len() - 1) as f64;
        println!(
            "{opt}/{batch}: {} allocations in {} warm steps: {:.2} per step, {:.0} KiB per step, {:.2} of them >= 4 KiB, {:.2} >= 256 KiB",
            steps[steps.len() - 1][0] - steps[0][0],
            steps.len() - 1,
            per_step(0),
            per_step(1) / 1024.0,
            per_step(3),
            per_step(2)
        );
        // The sizes of the large ones in the last full step.
        let (a, b) = (steps[steps.len() - 2][2], steps[steps.len() - 1][2]);
        let sizes: Vec<usize> = (a..b).map(|i| LARGE_SIZES[i % LARGE_SIZES.len()].load(Relaxed) >> 10).collect();
        println!("  the large ones of one step, KiB: {sizes:?}");
    }
    Ok(())
}
