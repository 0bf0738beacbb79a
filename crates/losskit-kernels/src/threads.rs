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
//! `main`) as worker 0. Results never depend on it: the kernels cut their work the same way
//! whichever threads run it.

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
