//! The calling thread as one of rayon's workers.
//!
//! Every parallel kernel here (the products, the optimizer updates, the row kernels) runs on
//! rayon's global pool. A thread outside the pool that starts a parallel region hands all of it
//! to the pool and sleeps until it is done: one region costs a wake-up of a pool thread and a
//! wake-up of the caller, and the caller's core idles meanwhile. On a machine with few cores and
//! a training step of a few short regions (a batch-32 step of the seed's model has three, of
//! 0.1–0.3 ms each), they add up: on two cores, a batch-32 epoch on Fashion-MNIST ran ~15% faster
//! with the calling thread in the pool. From a thread *of* the pool, a region starts at once on
//! that thread, and the other workers take their shares when they are free: nobody waits for a
//! wake-up.
//!
//! [`use_calling_thread`] builds the global pool that way, with the calling thread (normally
//! `main`) as worker 0, and [`keep_pool_awake`] keeps the pool's other workers from sleeping
//! between regions for as long as its guard lives (`fit` holds one while it trains). Results
//! never depend on either: the kernels cut their work the same way whichever threads run it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a kept-awake worker spins after its last job before it only yields its core
/// between looks for work (see [`keep_pool_awake`]).
const SPIN_FOR: Duration = Duration::from_micros(300);

/// rayon's global pool could not be built with the calling thread in it.
#[derive(Debug, thiserror::Error)]
#[error(
    "could not make this thread one of rayon's workers: {0} (call use_calling_thread before any \
     parallel work, once per process)"
)]
pub struct ThreadPoolError(#[from] rayon::ThreadPoolBuildError);

/// Builds rayon's global pool with the calling thread as its worker 0 and `threads - 1` more
/// (`None`: rayon's default count, `RAYON_NUM_THREADS` or else the number of logical CPUs), so
/// that parallel regions this thread starts begin on it at once (see the [module](self) docs).
/// Returns the pool's number of threads.
///
/// Call it once, early in `main`, before anything runs on rayon. It fails when the global pool is
/// already built (a second call, or rayon used before). Jobs that *other* threads hand to the
/// global pool run on its other workers, and on this one only while it waits inside rayon, so
/// a program whose other threads feed rayon while this one does other work should keep
/// rayon's default pool.
pub fn use_calling_thread(threads: Option<usize>) -> Result<usize, ThreadPoolError> {
    let builder = rayon::ThreadPoolBuilder::new().use_current_thread();
    let builder = match threads {
        Some(n) => builder.num_threads(n),
        None => builder,
    };
    builder.build_global()?;
    Ok(rayon::current_num_threads())
}

/// While alive, the other workers of the calling thread's rayon pool look for work without
/// pause instead of going to sleep (see [`keep_pool_awake`]); dropping it lets them sleep again.
#[must_use = "the workers may sleep again as soon as this is dropped"]
#[derive(Debug)]
pub struct KeepAwake {
    stop: Option<Arc<AtomicBool>>,
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Keeps the other workers of the calling thread's pool awake until the returned guard is
/// dropped: each runs a loop that takes any job it can find ([`rayon::yield_now`]), spins for up
/// to 300 µs after its last job, as OpenMP's workers spin between parallel regions, and after
/// that only yields its core to the operating system between looks for work. An idle rayon
/// worker goes to sleep after a few tens of microseconds, and waking it took ~60 µs here, so a
/// region that follows 200 µs of serial work (a training step's optimizer update after its
/// backward pass) waited for it: two halves of 50 µs took 117 µs, against 52 µs with the worker
/// kept awake. Spinning without end cost the most when the cores are shared: with two CPU-bound
/// processes beside it, a tape-trained model's epoch took 2.9–3.1× its quiet time against
/// 1.4–2.2× with the spin bounded (same quiet time). Does nothing when the calling thread is not
/// a worker of a pool of two or more threads (see [`use_calling_thread`]).
pub fn keep_pool_awake() -> KeepAwake {
    let me = match rayon::current_thread_index() {
        Some(me) if rayon::current_num_threads() >= 2 => me,
        _ => return KeepAwake { stop: None },
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() == me {
            return;
        }
        let mut last_job = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            if matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                last_job = Instant::now();
            } else if last_job.elapsed() < SPIN_FOR {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
            } else {
                // Idle for longer than a step's serial stretches: hand the core to whoever
                // else wants it (another process, or this one's main thread) before looking
                // again. On an idle machine the call returns at once.
                std::thread::yield_now();
            }
        }
    });
    KeepAwake { stop: Some(stop) }
}
