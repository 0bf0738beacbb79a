"""One epoch of the seed's model on Fashion-MNIST: losskit vs PyTorch vs Keras (JAX), same run.

python bench/compare_training.py [--python PATH] [--epochs 3]

Runs `cargo run --release --example train_epoch` for losskit and, when their Python packages
import, the PyTorch and Keras scripts beside this file; for SGD/batch 32 and Adam/batch 128 it
prints each framework's epoch time (median of the epochs after the first, which holds JIT and
warm-up), test accuracy after the run, and losskit's ratio to each. For the wide model (Flatten ->
Dense 2048 relu -> Dense 2048 relu -> Dense 10 softmax, Adam, batch 256) it also prints the
fraction of the machine's GEMM rate losskit reaches: FLOPs per step / step time, against a
2048^3 product timed in the same losskit process.

With --configs OPT:BATCH:MODEL,... it runs other configs: `rmsprop:32:seed`, `sgd_clipnorm:32:seed`
(each gradient clipped to norm 1; PyTorch clips each tensor likewise).

MODEL may also be a, b, c or d: the Keras user models of bench/models/ (bench/gen_user_models.py;
OPT is then ignored, the file's compile config is used), trained by losskit and Keras (PyTorch
has no reader for them) with validation_split 0.2: `--configs x:32:a,x:32:b,x:32:c,x:32:d`.

With --busy N, N CPU-bound processes run beside every framework's run (started before it,
stopped after it, each bounded to 30 minutes): the training shares the machine as it does beside
data loading or another job.

With --rounds R, each config runs every framework R times, interleaved (losskit, PyTorch, Keras,
losskit, ...), and each framework's epoch time is the median over all its runs' epochs after the
first: on a machine whose speed drifts, every framework meets the same slow and fast minutes.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# (optimizer, batch, model): the seed's model, then the GEMM-bound wide one.
TRAIN_ROWS = 60000
CONFIGS = [("sgd", 32, "seed"), ("adam", 128, "seed"), ("adam", 256, "wide")]


BUSY_LOOP = "import time\nend = time.time() + 1800\nwhile time.time() < end:\n    pass\n"


@contextmanager
def busy(n):
    """N CPU-bound processes for the duration of the block (each stops by itself after 30 min)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run(cmd, env=None, load=0):
    try:
        with busy(load):
            out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, env=env, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        return None, str(e)
    line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), None


def epoch_time(r):
    t = r["epoch_seconds"]
    return statistics.median(t[1:]) if len(t) > 1 else t[0]


def merge(runs):
    """One framework's runs as one result: every run's epochs after the first, pooled (the
    first kept as a placeholder), each run's own epoch time, the median GEMM rate, and the
    last run's other fields."""
    runs = [r for r in runs if r is not None]
    if not runs:
        return None
    merged = dict(runs[-1])
    merged["epoch_seconds"] = [runs[0]["epoch_seconds"][0]] + [
        t for r in runs for t in (r["epoch_seconds"][1:] or r["epoch_seconds"])
    ]
    merged["run_times"] = [epoch_time(r) for r in runs]
    if "gemm_gflops" in merged:
        merged["gemm_gflops"] = statistics.median(r["gemm_gflops"] for r in runs)
    return merged


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved runs of every framework per config")
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound processes beside every run")
    ap.add_argument(
        "--configs",
        help="OPT:BATCH:MODEL,... instead of the default three, e.g. rmsprop:32:seed,sgd_clipnorm:32:seed "
        "(OPT: a Keras optimizer name, optionally with _clipnorm; MODEL: seed, wide, or a/b/c/d: "
        "bench/models/MODEL.json with its own compile config)",
    )
    args = ap.parse_args()
    configs = CONFIGS
    if args.configs:
        configs = [(o, int(b), m) for o, b, m in (c.split(":") for c in args.configs.split(","))]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())))
    subprocess.run(["cargo", "build", "--release", "--example", "train_epoch"], cwd=ROOT, check=True, capture_output=True)
    binary = os.path.join(ROOT, "target", "release", "examples", "train_epoch")
    print(f"machine: {os.cpu_count()} cores; epochs per run: {args.epochs}; interleaved rounds: {args.rounds}; "
          f"busy processes beside each run: {args.busy}")
    for opt, batch, model in configs:
        if model in ("seed", "wide"):
            cfg = [opt, str(batch), str(args.epochs), model]
            commands = {
                "losskit": [binary, *cfg],
                "pytorch": [args.python, "train_epoch_torch.py", *cfg],
                "keras-jax": [args.python, "train_epoch_keras.py", *cfg],
            }
        else:
            cfg = ["model", os.path.join(HERE, "models", f"{model}.json"), str(batch), str(args.epochs)]
            commands = {"losskit": [binary, *cfg], "keras-jax": [args.python, "train_epoch_keras.py", *cfg]}
        runs = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                if runs[name] is None:
                    continue
                r, err = run(cmd, env, args.busy)
                if r is None and name != "losskit":
                    print(f"  ({name} skipped: {err.splitlines()[-1] if err else 'not installed'})")
                    runs[name] = None
                    continue
                runs[name].append(r)
        results = {name: merge(rs) if rs is not None else None for name, rs in runs.items()}
        print(f"\n{opt.upper()} batch {batch}, {model} model:")
        base = results["losskit"]
        for name, r in results.items():
            if r is None:
                continue
            ratio = "" if name == "losskit" or base is None else f"  losskit/{name} = {epoch_time(base) / epoch_time(r):.2f}x"
            each = "" if len(r["run_times"]) < 2 else "  (runs: " + " ".join(f"{t:.2f}" for t in r["run_times"]) + ")"
            print(f"  {name:<10} {epoch_time(r):6.2f} s/epoch  test accuracy {r['test_accuracy']:.4f}{ratio}{each}")
            if "step_path" in r:
                print(f"             step path: {r['step_path']}")
        if base is not None and "step_flops" in base:
            steps = -(-TRAIN_ROWS // batch)
            rate = base["step_flops"] * steps / epoch_time(base) / 1e9
            print(f"  losskit: {rate:.1f} GFLOP/s in training, large GEMM {base['gemm_gflops']:.1f} GFLOP/s: "
                  f"{100 * rate / base['gemm_gflops']:.0f}% of the GEMM rate")


if __name__ == "__main__":
    main()
