//! Data-parallel training: several processes (or threads) train one model, each on its shard
//! of every global batch, with Keras' global-batch loss semantics.
//!
//! A [`Collective`] is the group of workers: its rank and size, an element-wise sum over all
//! workers (all-reduce), a broadcast, and a way to stop them all when one fails.
//! [`Fit::distribute`](crate::Fit::distribute) uses it:
//! - every worker holds the whole training set and draws the same shuffled order from the
//!   shared seed; global batch `b` (of `batch_size` rows) is split into `size` contiguous
//!   shards as evenly as possible, and worker `r` computes the losses of shard `r` only (an
//!   uneven last batch, or fewer rows than workers, gives some workers fewer or no rows);
//! - the reduction divides by the *global* denominator: the whole batch's count for
//!   `sum_over_batch_size`, its weight sum for `mean_with_sample_weight` (the denominators are
//!   summed across workers first), nothing for `sum` — so a worker's loss is its share of the
//!   global batch's loss, and the sum of the workers' gradients (one all-reduce of one flat
//!   buffer per step, in the model's dtype) is the gradient of the global batch; the losses'
//!   sums and denominators and the metrics' sums and counts go in one small f64 all-reduce
//!   before the backward pass; regularization is added once, split across workers;
//! - rank 0's initial weights are broadcast to all, each worker draws dropout masks from its
//!   own stream of the model's generator, and every worker applies the same update;
//! - the logged loss and metrics are sums and counts over the whole batch and epoch (not means
//!   of means), the same on every worker; validation runs on every worker over the whole
//!   validation set; only rank 0 shows a progress bar;
//! - a worker whose step fails calls [`Collective::fail`]: with MPI it aborts the job with the
//!   error; in a [`ThreadGroup`] the other workers' next collective returns that error.
//! - [`BackupAndRestore`](crate::BackupAndRestore) on every worker (same folder, shared file
//!   system): rank 0 writes the backup with every worker's dropout generator, every worker
//!   reads it on resume; a backup resumes only with as many workers as made it.
//!
//! With the `mpi` feature, `Mpi` (in this module) runs the workers as MPI processes
//! (`mpirun -np N`).

use losskit::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};

/// The workers of a data-parallel run.
pub trait Collective {
    /// This worker's index, `0..size`.
    fn rank(&self) -> usize;
    /// The number of workers.
    fn size(&self) -> usize;
    /// Replaces `buf` by its element-wise sum over all workers (every worker passes a buffer of
    /// the same length and gets the same result).
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] for f32 values (gradients of f32 models: half the bytes).
    /// The default goes through f64 (allocating); [`ThreadGroup`] sums in f64 without
    /// allocating, MPI sums f32 natively.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let mut wide: Vec<f64> = buf.iter().map(|&v| f64::from(v)).collect();
        self.all_reduce_sum(&mut wide)?;
        buf.iter_mut().zip(&wide).for_each(|(b, w)| *b = *w as f32);
        Ok(())
    }
    /// Replaces `buf` by worker `root`'s.
    fn broadcast(&self, buf: &mut [f64], root: usize) -> Result<()>;
    /// Stops the other workers because this one failed with `error` (they must not wait for
    /// it forever).
    fn fail(&self, error: &Error);
}

/// The global batch's rows `idx` split into `size` contiguous shards as evenly as possible:
/// shard `rank`'s rows (the first `len % size` shards get one more).
pub fn shard(idx: &[usize], rank: usize, size: usize) -> &[usize] {
    let (base, extra) = (idx.len() / size, idx.len() % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    &idx[start..start + len]
}

/// Workers as threads of one process, for tests and for data parallelism without MPI: each
/// thread runs its own `fit` with its own member of the group.
///
/// A collective sums the workers' buffers in rank order, in f64 (so the result does not depend
/// on which worker arrives first), and allocates nothing once its buffers have grown to the
/// largest collective's size.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    state: Mutex<Round>,
    turn: Condvar,
}

/// One collective in progress: the workers' buffers arrived so far, the round's result, and a
/// failure. The buffers keep their capacity from round to round.
#[derive(Default)]
struct Round {
    generation: u64,
    arrived: usize,
    /// Values per worker in this round.
    len: usize,
    /// Each worker's contribution, `size × len` in rank order (a broadcast keeps the root's).
    parts: Vec<f64>,
    /// Which workers contribute (all for a sum, the root for a broadcast).
    contributes: Vec<bool>,
    result: Vec<f64>,
    failed: Option<String>,
}

impl Round {
    /// The round's result: the contributions summed in rank order, starting from 0.0 (a
    /// broadcast: the root's values as they are).
    fn finish(&mut self, broadcast: bool) {
        let len = self.len;
        self.result.clear();
        self.result.resize(len, 0.0);
        for (part, &on) in self.parts.chunks_exact(len.max(1)).zip(&self.contributes) {
            if !on {
                continue;
            }
            match broadcast {
                true => self.result.copy_from_slice(&part[..len]),
                false => self.result.iter_mut().zip(part).for_each(|(r, v)| *r += v),
            }
        }
    }
}

/// The element types a [`ThreadGroup`] sums: widened to f64 to sum, narrowed back after.
trait Summed: Copy {
    fn wide(self) -> f64;
    fn narrow(v: f64) -> Self;
}

impl Summed for f64 {
    fn wide(self) -> f64 {
        self
    }
    fn narrow(v: f64) -> f64 {
        v
    }
}

impl Summed for f32 {
    fn wide(self) -> f64 {
        f64::from(self)
    }
    fn narrow(v: f64) -> f32 {
        v as f32
    }
}

impl ThreadGroup {
    /// `size` members, one per worker thread (rank `i` is the `i`-th).
    pub fn new(size: usize) -> Result<Vec<ThreadGroup>> {
        if size == 0 {
            return Err(Error::invalid_parameter("ThreadGroup", "size", 0, ">= 1"));
        }
        let shared = Arc::new(Shared { size, state: Mutex::new(Round::default()), turn: Condvar::new() });
        Ok((0..size).map(|rank| ThreadGroup { rank, shared: shared.clone() }).collect())
    }

    /// Puts `buf` (widened to f64) in as this worker's contribution when `contributes`, waits
    /// for all workers, and writes the round's result back into `buf` (narrowed): the
    /// rank-order sum, or with `broadcast` the contributor's values.
    fn exchange<T: Summed>(&self, buf: &mut [T], contributes: bool, broadcast: bool) -> Result<()> {
        let poisoned = |_| Error::Config("ThreadGroup: a worker panicked".into());
        let size = self.shared.size;
        let mut round = self.shared.state.lock().map_err(poisoned)?;
        if let Some(msg) = &round.failed {
            return Err(Error::Config(msg.clone()));
        }
        let len = buf.len();
        if round.arrived == 0 {
            round.len = len;
            round.parts.clear();
            round.parts.resize(size * len, 0.0);
            round.contributes.clear();
            round.contributes.resize(size, false);
        }
        if round.len != len {
            let msg = format!("ThreadGroup: buffers of {len} and {} values in one collective", round.len);
            round.failed = Some(msg.clone());
            self.shared.turn.notify_all();
            return Err(Error::Config(msg));
        }
        if contributes {
            let part = &mut round.parts[self.rank * len..(self.rank + 1) * len];
            part.iter_mut().zip(buf.iter()).for_each(|(p, &v)| *p = v.wide());
            round.contributes[self.rank] = true;
        }
        round.arrived += 1;
        let generation = round.generation;
        if round.arrived == size {
            round.finish(broadcast);
            round.arrived = 0;
            round.generation += 1;
            self.shared.turn.notify_all();
        } else {
            while round.generation == generation && round.failed.is_none() {
                round = self.shared.turn.wait(round).map_err(poisoned)?;
            }
            // A round that completed counts even if a worker failed afterwards.
            if round.generation == generation {
                return Err(Error::Config(round.failed.clone().unwrap_or_default()));
            }
        }
        // The result stays until every worker has read it: the next round cannot complete
        // before this worker joins it.
        buf.iter_mut().zip(&round.result).for_each(|(b, &r)| *b = T::narrow(r));
        Ok(())
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
        self.exchange(buf, true, false)
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.exchange(buf, true, false)
    }
    fn broadcast(&self, buf: &mut [f64], root: usize) -> Result<()> {
        self.exchange(buf, self.rank == root, true)
    }
    fn fail(&self, error: &Error) {
        if let Ok(mut round) = self.shared.state.lock() {
            round.failed.get_or_insert_with(|| format!("worker {} of {} failed: {error}", self.rank, self.shared.size));
            self.shared.turn.notify_all();
        }
    }
}

#[cfg(feature = "mpi")]
pub use self::mpi_group::Mpi;

#[cfg(feature = "mpi")]
mod mpi_group {
    use super::Collective;
    use losskit::{Error, Result};
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::topology::{Communicator, SimpleCommunicator};

    /// The MPI processes of this job (`MPI_COMM_WORLD`), started by `mpirun -np N`; a single
    /// process started without `mpirun` is a group of one.
    pub struct Mpi {
        // Finalizes MPI when dropped: kept for the group's lifetime.
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
    }

    impl Mpi {
        /// Initializes MPI (once per process).
        pub fn init() -> Result<Mpi> {
            let universe = mpi::initialize().ok_or_else(|| Error::Config("MPI is already initialized".into()))?;
            let world = universe.world();
            Ok(Mpi { _universe: universe, world })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
            let send = buf.to_vec();
            self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            let send = buf.to_vec();
            self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
        fn broadcast(&self, buf: &mut [f64], root: usize) -> Result<()> {
            self.world.process_at_rank(root as i32).broadcast_into(buf);
            Ok(())
        }
        fn fail(&self, error: &Error) {
            eprintln!("losskit: error on MPI rank {} of {}: {error}; stopping every rank", self.rank(), self.size());
            self.world.abort(2);
        }
    }
}
