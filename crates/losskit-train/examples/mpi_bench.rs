//! Data-parallel steps per second (bench/mpi_bench.sh runs it): the seed's model on
//! Fashion-MNIST-sized inputs (Flatten → Dense 512 relu → Dropout 0.2 → Dense 10 softmax,
//! 407k weights) at global batch 256, SGD, on however many MPI processes `mpirun -np N`
//! starts (threads per process: `RAYON_NUM_THREADS`). Rank 0 prints one JSON line: steps per
//! second over the timed epochs and the share of the step spent in the all-reduce.
//!
//! `mpirun --allow-run-as-root --oversubscribe -np 2 target/release/examples/mpi_bench`
//! (built with `cargo build --release -p losskit-train --features mpi --example mpi_bench`).

use losskit::{Error, Tensor};
use losskit_train::distribute::Mpi;
use losskit_train::{Collective, Compile, Dense, Dropout, Fit, Flatten, Sequential};
use std::cell::Cell;
use std::time::Instant;

/// A collective that times its all-reduces.
struct Timed<'a> {
    inner: &'a dyn Collective,
    seconds: Cell<f64>,
}

impl Collective for Timed<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn all_reduce_sum(&self, buf: &mut [f64]) -> losskit::Result<()> {
        let t = Instant::now();
        let r = self.inner.all_reduce_sum(buf);
        self.seconds.set(self.seconds.get() + t.elapsed().as_secs_f64());
        r
    }
    fn broadcast(&self, buf: &mut [f64], root: usize) -> losskit::Result<()> {
        self.inner.broadcast(buf, root)
    }
    fn fail(&self, error: &Error) {
        self.inner.fail(error)
    }
}

const SAMPLES: usize = 256 * 40;
const BATCH: usize = 256;
const EPOCHS: usize = 3;

fn main() -> Result<(), Error> {
    let mpi = Mpi::init()?;
    let timed = Timed { inner: &mpi, seconds: Cell::new(0.0) };
    // Fixed pseudo-random pixels and labels (the same on every rank).
    let x: Vec<f32> = (0..SAMPLES * 784).map(|i| ((i * 2_654_435_761) % 1000) as f32 / 1000.0).collect();
    let y: Vec<f32> = (0..SAMPLES).map(|i| ((i * 7919) % 10) as f32).collect();
    let (x, y) = (Tensor::from_vec(x, &[SAMPLES, 784])?, Tensor::from_vec(y, &[SAMPLES])?);
    let mut model = Sequential::new()
        .add(Flatten::new())
        .add(Dense::new(512).activation("relu")?)
        .add(Dropout::new(0.2)?)
        .add(Dense::new(10).activation("softmax")?);
    model.compile(Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy"))?;
    // One warm-up epoch, then the timed ones.
    let group: Option<&dyn Collective> = (mpi.size() > 1).then_some(&timed);
    let fit = |epochs| {
        let f = Fit::new().epochs(epochs).batch_size(BATCH).verbose(0).check_data(false);
        match group {
            Some(g) => f.distribute(g),
            None => f,
        }
    };
    model.fit(&x, &y, fit(1))?;
    timed.seconds.set(0.0);
    let start = Instant::now();
    model.fit(&x, &y, fit(EPOCHS))?;
    let secs = start.elapsed().as_secs_f64();
    if mpi.rank() == 0 {
        let steps = (EPOCHS * SAMPLES / BATCH) as f64;
        let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
        println!(
            "{{\"processes\": {}, \"threads_per_process\": \"{threads}\", \"steps_per_second\": {:.2}, \"allreduce_share\": {:.4}, \"weights\": {}}}",
            mpi.size(),
            steps / secs,
            timed.seconds.get() / secs,
            model.count_params()
        );
    }
    Ok(())
}
