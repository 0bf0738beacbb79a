"""One epoch of the seed's model on Fashion-MNIST: losskit vs PyTorch vs Keras (JAX), same run.

python bench/compare_training.py [--python PATH] [--epochs 3]

Runs `cargo run --release --example train_epoch` for losskit and, when their Python packages
import, the PyTorch and Keras scripts beside this file; for SGD/batch 32 and Adam/batch 128 it
prints each framework's epoch time (median of the epochs after the first, which holds JIT and
warm-up), test accuracy after the run, and losskit's ratio to each.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = [("sgd", 32), ("adam", 128)]


def run(cmd, env=None):
    try:
        out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, env=env, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        return None, str(e)
    line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), None


def epoch_time(r):
    t = r["epoch_seconds"]
    return statistics.median(t[1:]) if len(t) > 1 else t[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())))
    subprocess.run(["cargo", "build", "--release", "--example", "train_epoch"], cwd=ROOT, check=True, capture_output=True)
    binary = os.path.join(ROOT, "target", "release", "examples", "train_epoch")
    print(f"machine: {os.cpu_count()} cores; epochs per run: {args.epochs}")
    for opt, batch in CONFIGS:
        results = {}
        r, err = run([binary, opt, str(batch), str(args.epochs)], env)
        results["losskit"] = r
        for name, script in [("pytorch", "train_epoch_torch.py"), ("keras-jax", "train_epoch_keras.py")]:
            r, err = run([args.python, script, opt, str(batch), str(args.epochs)], env)
            results[name] = r
            if r is None:
                print(f"  ({name} skipped: {err.splitlines()[-1] if err else 'not installed'})")
        print(f"\n{opt.upper()} batch {batch}:")
        base = results["losskit"]
        for name, r in results.items():
            if r is None:
                continue
            ratio = "" if name == "losskit" else f"  losskit/{name} = {epoch_time(base) / epoch_time(r):.2f}x"
            print(f"  {name:<10} {epoch_time(r):6.2f} s/epoch  test accuracy {r['test_accuracy']:.4f}{ratio}")


if __name__ == "__main__":
    main()
