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

use std::sync::atomic::{AtomicU8, Ordering};
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
/// [`KeepAwake::step_done`] has them stay out of the calling thread's regions while that is
/// faster.
#[must_use = "the workers may sleep again as soon as this is dropped"]
#[derive(Debug)]
pub struct KeepAwake {
    state: Option<Arc<AtomicU8>>,
    chooser: Chooser,
}

/// The kept-awake workers take shares of parallel regions.
const HELP: u8 = 0;
/// The kept-awake workers nap and take no work: the calling thread runs every region alone.
const NAP: u8 = 1;
/// The kept-awake workers return to rayon (the guard was dropped).
const STOP: u8 = 2;

impl Drop for KeepAwake {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            state.store(STOP, Ordering::Relaxed);
        }
    }
}

impl KeepAwake {
    /// Whether the other workers currently take shares of the calling thread's parallel
    /// regions (`false`: it runs them alone while they nap).
    pub fn helpers_on(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.load(Ordering::Relaxed) == HELP)
    }

    /// Tells the guard that one step of a repeated workload (a training step) took `took`;
    /// it times a stretch of steps with the other workers helping and one with the calling
    /// thread alone, keeps the faster way for a few seconds, then times both again. On a
    /// quiet machine the helpers win; when other processes hold the cores, a region's share
    /// waits for a worker the operating system has not scheduled, and the calling thread alone
    /// is faster (two CPU-bound processes beside a 2-thread training run: 1.1–1.5 s per epoch
    /// alone against 1.7–2.3 s with the helper). Results never depend on it: the kernels cut
    /// their work the same way whichever threads run it.
    pub fn step_done(&mut self, took: Duration) {
        let Some(state) = &self.state else { return };
        if let Some(helpers) = self.chooser.record(took, Instant::now()) {
            state.store(if helpers { HELP } else { NAP }, Ordering::Relaxed);
        }
    }
}

/// Steps timed per trial of each way (after the first [`WARM_UP`] steps).
const TRIAL_STEPS: u32 = 16;
/// Steps left out at the start (caches, buffers, the first epoch's page faults).
const WARM_UP: u32 = 8;
/// How long the faster way is kept before both are timed again.
const HOLD: Duration = Duration::from_secs(2);

/// [`KeepAwake::step_done`]'s choice: timed trials of both ways, then the faster held.
#[derive(Debug)]
struct Chooser {
    phase: Phase,
    /// The last trial's time with the helpers.
    with_helpers: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Steps not timed yet.
    WarmUp { left: u32 },
    /// Timing `left` more steps with the helpers on or off; `total` so far.
    Trial { helpers: bool, left: u32, total: Duration },
    /// Keeping the faster way until then.
    Hold { until: Instant },
}

impl Chooser {
    fn new() -> Chooser {
        Chooser { phase: Phase::WarmUp { left: WARM_UP }, with_helpers: Duration::ZERO }
    }

    /// Records a step that took `took` (finished at `now`); the way for the next steps when it
    /// changes.
    fn record(&mut self, took: Duration, now: Instant) -> Option<bool> {
        let trial = |helpers| Phase::Trial { helpers, left: TRIAL_STEPS, total: Duration::ZERO };
        let (next, way) = match self.phase {
            Phase::WarmUp { left: 0 } => (trial(true), None),
            Phase::WarmUp { left } => (Phase::WarmUp { left: left - 1 }, None),
            Phase::Trial { helpers, left, total } if left > 1 => {
                (Phase::Trial { helpers, left: left - 1, total: total + took }, None)
            }
            Phase::Trial { helpers: true, total, .. } => {
                self.with_helpers = total + took;
                (trial(false), Some(false))
            }
            Phase::Trial { helpers: false, total, .. } => {
                let helpers = self.with_helpers <= total + took;
                (Phase::Hold { until: now + HOLD }, Some(helpers))
            }
            Phase::Hold { until } if now >= until => (trial(true), Some(true)),
            hold @ Phase::Hold { .. } => (hold, None),
        };
        self.phase = next;
        way
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
/// 1.4–2.2× with the spin bounded (same quiet time). While [`KeepAwake::step_done`] has chosen
/// the calling thread alone, the workers take no jobs and sleep in 1 ms naps. Does nothing
/// when the calling thread is not a worker of a pool of two or more threads (see
/// [`use_calling_thread`]).
pub fn keep_pool_awake() -> KeepAwake {
    let me = match rayon::current_thread_index() {
        Some(me) if rayon::current_num_threads() >= 2 => me,
        _ => return KeepAwake { state: None, chooser: Chooser::new() },
    };
    let state = Arc::new(AtomicU8::new(HELP));
    let flag = Arc::clone(&state);
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() == me {
            return;
        }
        let mut last_job = Instant::now();
        loop {
            match flag.load(Ordering::Relaxed) {
                STOP => break,
                NAP => {
                    // No job is taken: the calling thread's regions find their pieces still
                    // in its own queue and run them itself.
                    std::thread::sleep(Duration::from_millis(1));
                    last_job = Instant::now();
                }
                _ if matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) => last_job = Instant::now(),
                _ if last_job.elapsed() < SPIN_FOR => {
                    for _ in 0..32 {
                        std::hint::spin_loop();
                    }
                }
                // Idle for longer than a step's serial stretches: hand the core to whoever
                // else wants it (another process, or this one's main thread) before looking
                // again. On an idle machine the call returns at once.
                _ => std::thread::yield_now(),
            }
        }
    });
    KeepAwake { state: Some(state), chooser: Chooser::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways are timed, the faster kept for [`HOLD`], then both timed again.
    #[test]
    fn the_faster_way_is_chosen_and_timed_again_later() {
        let mut c = Chooser::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut ways = Vec::new();
        // Steps take 2 ms with the helpers and 1 ms alone (a busy machine).
        let mut helpers = true;
        for step in 0..(WARM_UP + 1 + 2 * TRIAL_STEPS + 3) {
            let took = if helpers { ms(2) } else { ms(1) };
            if let Some(w) = c.record(took, t0 + ms(u64::from(step))) {
                helpers = w;
                ways.push((step, w));
            }
        }
        let after_warm_up = WARM_UP + 1;
        assert_eq!(ways, vec![(after_warm_up + TRIAL_STEPS - 1, false), (after_warm_up + 2 * TRIAL_STEPS - 1, false)]);
        // Held until 2 s later, then timed again from the helpers' side.
        assert_eq!(c.record(ms(1), t0 + ms(1000)), None);
        assert_eq!(c.record(ms(1), t0 + HOLD + ms(100)), Some(true));
        // Quiet now: the helpers win the next round.
        for _ in 0..TRIAL_STEPS {
            c.record(ms(1), t0 + HOLD + ms(200));
        }
        let mut last = None;
        for _ in 0..TRIAL_STEPS {
            if let Some(w) = c.record(ms(3), t0 + HOLD + ms(300)) {
                last = Some(w);
            }
        }
        assert_eq!(last, Some(true));
    }
}
