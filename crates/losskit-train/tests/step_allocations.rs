//! A warm training step of the seed's model allocates nothing (#14): a counting global
//! allocator, read at the end of every batch. One test in this binary, so nothing else
//! allocates meanwhile.

use losskit::Tensor;
use losskit_train::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

struct Counting;

static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CALLS.fetch_add(1, Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations between the ends of consecutive batches of the second epoch (its first step,
/// after the epoch boundary, left out), for the seed's model with `opt` at `batch`, through the
/// planned step or the tape's; with class weights (per-sample weights) when `weighted`; with
/// the activations as `Activation` layers of their own (`"separate"`) or L1L2 and L2
/// regularizers (`"regularized"`, or L2 on a wide kernel: `"wide"`), or another loss on one-hot targets (`"focal"`: categorical
/// focal cross-entropy, `"bce"`, `"mse"`, `"hinge"`: squared hinge) as `variant` says.
/// An optimizer by name; `name+ema` with Keras' `use_ema` (overwriting every 3 steps).
fn optimizer(name: &str) -> Optimizer {
    match name.strip_suffix("+ema") {
        Some(rule) => {
            let ema = Ema { momentum: 0.99, overwrite_frequency: Some(3) };
            Optimizer::parse(rule).unwrap().with_ema(Some(ema)).unwrap()
        }
        None => Optimizer::parse(name).unwrap(),
    }
}

fn allocations_per_step(opt: &str, batch: usize, planned: bool, weighted: bool, variant: &str) -> Vec<usize> {
    allocations_per_distributed_step(opt, batch, planned, weighted, variant, 1)
}

/// [`allocations_per_step`] with `workers` data-parallel workers (a `ThreadGroup`, each worker
/// on a rayon pool of one thread of its own, so that its parallel regions run on it), counted
/// over every worker, between the ends of rank 0's batches.
fn allocations_per_distributed_step(
    opt: &str,
    batch: usize,
    planned: bool,
    weighted: bool,
    variant: &str,
    workers: usize,
) -> Vec<usize> {
    let rows = 640;
    let x: Vec<f32> = (0..rows * 64).map(|i| ((i * 7919) % 256) as f32 / 255.0).collect();
    let y: Vec<f32> = (0..rows).map(|i| (i % 10) as f32).collect();
    let (x, mut y) = (Tensor::from_vec(x, &[rows, 8, 8]).unwrap(), Tensor::from_vec(y, &[rows]).unwrap());
    let mut loss = LossArg::from("sparse_categorical_crossentropy");
    let on_one_hot = match variant {
        "focal" => Some("categorical_focal_crossentropy"),
        "bce" => Some("binary_crossentropy"),
        "mse" => Some("mean_squared_error"),
        "hinge" => Some("squared_hinge"),
        _ => None,
    };
    if let Some(name) = on_one_hot {
        y = Tensor::one_hot(&y, 10, losskit::DType::F32).unwrap();
        loss = LossArg::from(name);
    }
    let build = || -> Model {
        let mut model = if variant == "regularized" {
            let l1l2 = Regularizer::L1L2 { l1: 1e-4, l2: 1e-4 };
            Sequential::new()
                .add(Flatten::new())
                .add(Dense::new(128).activation("relu").unwrap().kernel_regularizer(l1l2).bias_regularizer(l1l2))
                .add(Dropout::new(0.2).unwrap())
                .add(Dense::new(10).activation("softmax").unwrap().kernel_regularizer(Regularizer::L2(1e-3)))
        } else if variant == "wide" {
            // A kernel of 64 × 2048: its folded update in parallel pieces, its norm in groups.
            Sequential::new()
                .add(Flatten::new())
                .add(Dense::new(2048).activation("relu").unwrap().kernel_regularizer(Regularizer::L2(1e-4)))
                .add(Dense::new(10).activation("softmax").unwrap())
        } else if variant == "separate" {
            Sequential::new()
                .add(Flatten::new())
                .add(Dense::new(128))
                .add(ActivationLayer::new("relu").unwrap())
                .add(Dropout::new(0.2).unwrap())
                .add(Dense::new(10))
                .add(ActivationLayer::new("softmax").unwrap())
        } else if variant == "heads" {
            Sequential::new()
                .add(Flatten::new())
                .add(Dense::new(64).activation("relu").unwrap())
                .add(Dropout::new(0.2).unwrap())
                .head("digit", Stack::new().add(Dense::new(10).activation("softmax").unwrap()))
                .head("even", Stack::new().add(Dense::new(8).activation("tanh").unwrap()).add(Dense::new(1)))
        } else if variant == "rows" {
            Sequential::new()
                .add(Flatten::new())
                .add(Dense::new(128).activation("glu").unwrap())
                .add(Dense::new(32))
                .add(ActivationLayer::new("sparsemax").unwrap())
                .add(Dense::new(10).activation("softmax").unwrap())
        } else if variant == "elementwise" {
            Sequential::new()
                .add(Flatten::new())
                .add(Dense::new(128).activation("gelu").unwrap())
                .add(ActivationLayer::new("mish").unwrap())
                .add(Dropout::new(0.2).unwrap())
                .add(Dense::new(10).activation("softmax").unwrap())
        } else {
            Sequential::new()
                .add(Flatten::new())
                .add(Dense::new(128).activation("relu").unwrap())
                .add(Dropout::new(0.2).unwrap())
                .add(Dense::new(10).activation("softmax").unwrap())
        };
        let compile = Compile::new()
            .optimizer(optimizer(opt))
            .loss(loss.clone())
            .metrics(&["accuracy"])
            .planned_step(Some(planned));
        let compile = match variant {
            "loss_weight" => compile.loss_weights(&[0.5]),
            "heads" => compile.loss_for("digit", loss.clone()).loss_for("even", "mse").loss_weights(&[1.0, 0.3]),
            _ => compile,
        };
        model.compile(compile).unwrap();
        model
    };
    let marks = Arc::new(Mutex::new(Vec::with_capacity(2 * rows / batch + 2)));
    // Rank 0 (or the one process) marks the count at each batch.
    let train = |group: Option<&ThreadGroup>| {
        let m = Arc::clone(&marks);
        let mark = move || {
            m.lock().unwrap().push(CALLS.load(Relaxed));
            Ok(())
        };
        // With other workers, at the start of rank 0's batches: after its last batch the
        // others may already be ending the epoch before rank 0's end-of-batch mark.
        let mut probe = match group {
            None => LambdaCallback::new().on_batch_end(move |_, _| mark()),
            Some(_) => LambdaCallback::new().on_batch_begin(move |_, _| mark()),
        };
        let mut fit = Fit::new().epochs(2).batch_size(batch).verbose(0);
        if group.is_none_or(|g| g.rank() == 0) {
            fit = fit.callback(&mut probe);
        }
        if let Some(g) = group {
            fit = fit.distribute(g);
        }
        if weighted {
            fit = fit.class_weight((0..10).map(|c| (c, 1.0 + c as f64 / 4.0)).collect());
        }
        let mut model = build();
        if variant == "heads" {
            let even: Vec<f32> =
                y.to_vec::<f32>().iter().map(|&c| f32::from(u8::from((c as u8).is_multiple_of(2)))).collect();
            let even = Tensor::from_vec(even, &[rows, 1]).unwrap();
            model.fit(&x, vec![("digit", y.clone()), ("even", even)], fit).unwrap();
        } else {
            model.fit(&x, &y, fit).unwrap();
        }
        let kind = model.step_path().unwrap().kind;
        assert_eq!(matches!(kind, StepKind::Planned | StepKind::DistributedPlanned), planned, "{kind:?}");
    };
    if workers == 1 {
        train(None);
    } else {
        let groups = ThreadGroup::new(workers).unwrap();
        let pools: Vec<rayon::ThreadPool> =
            (0..workers).map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap()).collect();
        std::thread::scope(|s| {
            for (g, pool) in groups.iter().zip(&pools) {
                let train = &train;
                s.spawn(move || pool.install(|| train(Some(g))));
            }
        });
    }
    let marks = marks.lock().unwrap();
    let second = &marks[marks.len() / 2..];
    let per_step = second.windows(2).map(|w| w[1] - w[0]);
    // The others' epoch boundary and first step of the epoch (as the one process', left out)
    // overlap rank 0's first two windows.
    let skip = if workers == 1 { 0 } else { 2 };
    per_step.skip(skip).collect()
}

#[test]
fn a_warm_planned_step_allocates_nothing() {
    // As the `losskit` binary: this thread is rayon's worker 0 (from outside the pool, rayon's
    // injector queue allocates a block every 63 parallel regions).
    use_calling_thread(None).unwrap();
    // Products run in losskit's own kernel (packing buffers kept per thread) where the CPU has
    // AVX2 + FMA; matrixmultiply, elsewhere, allocates its packing buffers every product.
    #[cfg(target_arch = "x86_64")]
    let own_gemm = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let own_gemm = false;
    let cases = [
        ("sgd", 32, false, "seed"),
        ("adam", 64, false, "seed"),
        ("rmsprop", 64, false, "seed"),
        ("adam", 64, true, "seed"),
        ("rmsprop", 64, false, "separate"),
        ("adam", 64, false, "regularized"),
        ("sgd", 64, true, "regularized"),
        ("rmsprop+ema", 64, false, "regularized"),
        ("adafactor", 64, false, "regularized"),
        ("adam", 64, false, "wide"),
        ("adam", 64, false, "focal"),
        ("sgd", 64, true, "bce"),
        ("adam", 32, false, "mse"),
        ("rmsprop", 64, false, "hinge"),
        ("adafactor", 64, false, "seed"),
        ("adam+ema", 64, true, "seed"),
        ("sgd", 64, false, "elementwise"),
        ("sgd", 64, false, "rows"),
        ("adam", 64, true, "loss_weight"),
        ("adam", 64, false, "heads"),
    ];
    for (opt, batch, weighted, variant) in cases {
        let planned = allocations_per_step(opt, batch, true, weighted, variant);
        assert_eq!(planned.len(), 640 / batch - 1);
        if own_gemm {
            assert!(planned.iter().all(|&n| n == 0), "{opt}/{batch}: allocations per warm step {planned:?}");
        }
        // The counter counts: the tape's step allocates its graph every step.
        let tape = allocations_per_step(opt, batch, false, weighted, variant);
        assert!(tape.iter().all(|&n| n > 50), "{opt}/{batch}: the tape's step {tape:?}");
    }
    // Data-parallel workers: the planned step's shards, both all-reduces and the update.
    for (workers, opt, weighted, variant) in [(2, "adam", false, "seed"), (3, "sgd", true, "regularized")] {
        let planned = allocations_per_distributed_step(opt, 64, true, weighted, variant, workers);
        assert_eq!(planned.len(), 640 / 64 - 3);
        if own_gemm {
            assert!(planned.iter().all(|&n| n == 0), "{workers} workers: allocations per warm step {planned:?}");
        }
        let tape = allocations_per_distributed_step(opt, 64, false, weighted, variant, workers);
        assert!(tape.iter().all(|&n| n > 50), "{workers} workers: the tape's step {tape:?}");
    }
}
