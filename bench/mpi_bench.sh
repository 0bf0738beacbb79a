#!/usr/bin/env bash
# Data-parallel steps per second of the seed's model (784 inputs, 407k weights) at global batch
# 256 over MPI: 1 and 2 processes, 1 thread each, then 2 threads each, in one run.
# Needs Open MPI and libclang (Debian: libopenmpi-dev openmpi-bin libclang-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p losskit-train --features mpi --example mpi_bench
bin=target/release/examples/mpi_bench
echo "machine: $(nproc) cores"
for threads in 1 2; do
  for np in 1 2; do
    RAYON_NUM_THREADS=$threads mpirun --allow-run-as-root --oversubscribe -x RAYON_NUM_THREADS -np "$np" "$bin" | grep '^{'
  done
done
