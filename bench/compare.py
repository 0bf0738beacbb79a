"""The `losskit bench` workloads in PyTorch (eager) and JAX (jitted value_and_grad), side by side
with losskit's numbers from the same run.

python bench/compare.py [--python PATH] [--repeats 5]

Runs `losskit bench --json --no-composed`, then each workload (loss + gradient w.r.t. the
predictions, f32, mean reduction) in PyTorch and JAX when they import in --python, and prints
milliseconds (median after a warm-up) and losskit's speed-up over each.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The start of every peer script (also used by compare_composed.py): its arguments and the
# timing rule, the median of `repeats` runs after one warm-up, in milliseconds.
PEER_PRELUDE = r'''
import json, os, sys, time
import numpy as np
fw, repeats = sys.argv[1], int(sys.argv[2])
def median(f):
    f()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e3
'''

PEER = PEER_PRELUDE + r'''
W = [("cce_sparse_8192x1000", 8192, 1000), ("cce_onehot_8192x1000", 8192, 1000), ("cce_sparse_4096x32000", 4096, 32000),
     ("cce_onehot_4096x32000", 4096, 32000), ("bce_probs_8192x4096", 8192, 4096), ("bce_logits_8192x4096", 8192, 4096),
     ("mse_8192x4096", 8192, 4096), ("huber_8192x4096", 8192, 4096), ("logcosh_8192x4096", 8192, 4096), ("cosine_65536x256", 65536, 256)]
rng = np.random.default_rng(0)
for name, n, c in W:
    kind = name.split("_")[0]
    p = rng.uniform(1e-4, 1 - 1e-4, (n, c)).astype("float32") if name == "bce_probs_8192x4096" else rng.uniform(-4, 4, (n, c)).astype("float32")
    if "sparse" in name:
        t = rng.integers(0, c, n)
    elif "onehot" in name:
        t = np.zeros((n, c), "float32"); t[np.arange(n), np.arange(n) * 7919 % c] = 1
    elif kind == "bce":
        t = (rng.uniform(0, 1, (n, c)) > 0.5).astype("float32")
    else:
        t = rng.uniform(-1, 1, (n, c)).astype("float32")
    if fw == "torch":
        import torch
        F = torch.nn.functional
        P = torch.from_numpy(p).requires_grad_(True); T = torch.from_numpy(t)
        def loss():
            if kind == "cce" and "sparse" in name: return F.cross_entropy(P, T)
            if kind == "cce": return F.cross_entropy(P, T)
            if name.startswith("bce_probs"): return F.binary_cross_entropy(P, T)
            if kind == "bce": return F.binary_cross_entropy_with_logits(P, T)
            if kind == "mse": return F.mse_loss(P, T)
            if kind == "huber": return F.huber_loss(P, T)
            if kind == "logcosh": x = P - T; return (x + F.softplus(-2 * x) - np.log(2.0)).mean()
            return -F.cosine_similarity(P, T, dim=-1).mean()
        def step():
            P.grad = None; loss().backward()
        ms = median(step)
    else:
        import jax, jax.numpy as jnp
        import keras
        L = {"cce": keras.losses.SparseCategoricalCrossentropy(from_logits=True) if "sparse" in name else keras.losses.CategoricalCrossentropy(from_logits=True),
             "bce": keras.losses.BinaryCrossentropy(from_logits=not name.startswith("bce_probs")), "mse": keras.losses.MeanSquaredError(),
             "huber": keras.losses.Huber(), "logcosh": keras.losses.LogCosh(), "cosine": keras.losses.CosineSimilarity()}[kind]
        g = jax.jit(jax.value_and_grad(lambda pp, tt: L(tt, pp)))
        P, T = jnp.asarray(p), jnp.asarray(t)
        ms = median(lambda: jax.block_until_ready(g(P, T)))
    print(json.dumps({"workload": name, "ms": ms}), flush=True)
'''


def peer(python, fw, repeats):
    env = dict(os.environ, KERAS_BACKEND="jax")
    try:
        out = subprocess.run([python, "-c", PEER, fw, str(repeats)], capture_output=True, text=True, env=env, check=True).stdout
    except subprocess.CalledProcessError as e:
        print(f"({fw} skipped: {e.stderr.strip().splitlines()[-1] if e.stderr.strip() else e})")
        return {}
    return {r["workload"]: r["ms"] for r in map(json.loads, out.splitlines())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "losskit-cli"], cwd=ROOT, check=True, capture_output=True)
    out = subprocess.run([os.path.join(ROOT, "target", "release", "losskit"), "bench", "--json", "--no-composed", "--repeats", str(a.repeats)],
                         capture_output=True, text=True, check=True).stdout
    ours = [json.loads(line) for line in out.splitlines()]
    torch_ms, jax_ms = peer(a.python, "torch", a.repeats), peer(a.python, "jax", a.repeats)
    print(f"{'workload':<24} {'losskit ms':>10} {'GB/s':>6} {'%triad':>7} {'torch ms':>9} {'x':>6} {'jax ms':>8} {'x':>6}")
    for r in ours:
        w = r["workload"]
        t, j = torch_ms.get(w), jax_ms.get(w)
        fmt = lambda v: f"{v:9.1f}" if v else f"{'-':>9}"  # noqa: E731
        ratio = lambda v: f"{v / r['median_ms']:6.1f}" if v else f"{'-':>6}"  # noqa: E731
        print(f"{w:<24} {r['median_ms']:10.1f} {r['gbps']:6.1f} {100 * r['gbps'] / r['stream_triad_gbps']:6.0f}% {fmt(t)} {ratio(t)} {fmt(j)} {ratio(j)}")


if __name__ == "__main__":
    main()
