"""`losskit bench --composed` beside PyTorch (eager) and JAX (jitted value_and_grad), same run.

python bench/compare_composed.py [--python PATH] [--repeats 5]

Runs `losskit bench --composed --json`, then the same six formulas (loss + gradient w.r.t. the
predictions, f32, mean over the batch) in PyTorch and JAX when they import in --python, and
prints milliseconds (median after a warm-up) and the ratios (peer ms / losskit ms), and the
custom MSE closure against the fused MSE kernel (`mse_kernel_8192x4096`, losskit only). Dice and Tversky are Keras 3's
formulas (JAX runs `keras.losses.Dice`/`Tversky` under jit).
"""
import argparse
import json
import os
import subprocess
import sys

from compare import PEER_PRELUDE

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PEER = PEER_PRELUDE + r'''
W = [("custom_mse_8192x4096", 8192, 4096), ("dice_8192x4096", 8192, 4096), ("tversky_8192x4096", 8192, 4096),
     ("smooth_l1_8192x4096", 8192, 4096), ("torch_cross_entropy_4096x32000", 4096, 32000),
     ("custom_softmax_ce_4096x32000", 4096, 32000)]
rng = np.random.default_rng(0)
for name, n, c in W:
    if "cross_entropy" in name:
        p = rng.uniform(-2, 2, (n, c)).astype("float32"); t = rng.integers(0, c, n)
    elif "softmax_ce" in name:
        p = rng.uniform(-2, 2, (n, c)).astype("float32")
        t = np.zeros((n, c), "float32"); t[np.arange(n), np.arange(n) * 7919 % c] = 1
    else:
        p = (0.5 + 0.2 * rng.uniform(-2, 2, (n, c))).astype("float32"); t = rng.uniform(0, 1, (n, c)).astype("float32")
    if fw == "torch":
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(os.cpu_count())
        P = torch.tensor(p); T = torch.tensor(t)
        def loss(x):
            if name.startswith("custom_mse"): return (x - T).square().mean(-1).mean()
            if name.startswith("dice"):
                inter = (T * x).sum(-1); return (1 - (2 * inter) / (T.sum(-1) + x.sum(-1))).mean()
            if name.startswith("tversky"):
                tp = (T * x).sum(-1); fp = ((1 - T) * x).sum(-1); fn = (T * (1 - x)).sum(-1)
                return (1 - tp / (tp + 0.5 * fp + 0.5 * fn)).mean()
            if name.startswith("smooth_l1"): return F.smooth_l1_loss(x, T)
            if name.startswith("torch_cross"): return F.cross_entropy(x, T)
            return -(torch.log_softmax(x, -1) * T).sum(-1).mean()
        def step():
            x = P.clone().requires_grad_(True); loss(x).backward()
        ms = median(step)
    else:
        os.environ.setdefault("KERAS_BACKEND", "jax")
        import jax, jax.numpy as jnp, keras
        P = jnp.asarray(p); T = jnp.asarray(t)
        def loss(x):
            if name.startswith("custom_mse"): return jnp.mean(jnp.mean((x - T) ** 2, -1))
            if name.startswith("dice"): return keras.losses.Dice()(T, x)
            if name.startswith("tversky"): return keras.losses.Tversky()(T, x)
            if name.startswith("smooth_l1"):
                d = jnp.abs(x - T); return jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5))
            if name.startswith("torch_cross"):
                lp = jax.nn.log_softmax(x, -1); return -jnp.mean(jnp.take_along_axis(lp, T[:, None], -1))
            return -jnp.mean(jnp.sum(jax.nn.log_softmax(x, -1) * T, -1))
        g = jax.jit(jax.value_and_grad(loss))
        ms = median(lambda: jax.block_until_ready(g(P)))
    print(json.dumps({"workload": name, "median_ms": ms}), flush=True)
'''


def peer(python, fw, repeats):
    try:
        out = subprocess.run([python, "-c", PEER, fw, str(repeats)], capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as e:
        print(f"({fw} unavailable: {e.stderr.strip().splitlines()[-1] if e.stderr.strip() else e})", file=sys.stderr)
        return {}
    return {json.loads(line)["workload"]: json.loads(line)["median_ms"] for line in out.stdout.splitlines()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    cmd = ["cargo", "run", "--release", "-q", "-p", "losskit-cli", "--", "bench", "--composed", "--json",
           "--repeats", str(a.repeats)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    ours = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    torch = peer(a.python, "torch", a.repeats)
    jax = peer(a.python, "jax", a.repeats)
    print(f"{'workload':<32} {'losskit ms':>10} {'faults/call':>11} {'torch ms':>9} {'x':>6} {'jax ms':>8} {'x':>6}")
    for w in ours:
        n = w["workload"]
        t, j = torch.get(n), jax.get(n)
        rt = f"{t / w['median_ms']:.2f}" if t else "-"
        rj = f"{j / w['median_ms']:.2f}" if j else "-"
        print(f"{n:<32} {w['median_ms']:>10.1f} {w['minor_faults_per_call']:>11.0f} "
              f"{(t or 0):>9.1f} {rt:>6} {(j or 0):>8.1f} {rj:>6}")
    ms = {w["workload"]: w["median_ms"] for w in ours}
    if "custom_mse_8192x4096" in ms and "mse_kernel_8192x4096" in ms:
        print(f"custom MSE closure / fused MSE kernel: "
              f"{ms['custom_mse_8192x4096'] / ms['mse_kernel_8192x4096']:.2f}x (target: at most 2x)")


if __name__ == "__main__":
    main()
