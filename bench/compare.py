"""The `losskit bench` workloads in PyTorch (eager) and JAX (jitted value_and_grad), side by side
with losskit's numbers from the same run.

python bench/compare.py [--python PATH] [--repeats 5] [--only NAME]

Runs `losskit bench --json --no-composed`, then each workload (loss + gradient w.r.t. the
predictions, f32, mean reduction) in PyTorch and JAX when they import in --python, and prints
milliseconds (median after a warm-up) and losskit's speed-up over each.

The linear + cross-entropy head (`--only linear_ce`): losskit's fused and naive paths against
PyTorch's `F.cross_entropy(h @ W.T + b, y)` and JAX's jitted `log_softmax(h @ W.T + b)` (loss
and the gradients of h, W, b), with each one's peak resident memory growth over its inputs
(measured from before the first step; PyTorch's gradient buffers exist before it, as
losskit's do; JAX returns new gradient arrays each call, ~0.3 GB of its growth, and its first
step includes compilation).

With --rounds R (the head only), losskit and the peers run R times, interleaved (losskit, PyTorch,
JAX, losskit, ...), and each path's time is the median of its rounds: on a machine whose speed
drifts, every path meets the same slow and fast minutes.
"""
import argparse
import json
import os
import statistics
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


PEER_LINEAR_CE = PEER_PRELUDE + r'''
N, D, V = 4096, 2048, 32000
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
rng = np.random.default_rng(0)
h = rng.uniform(-1, 1, (N, D)).astype("float32")
w = rng.uniform(-0.05, 0.05, (V, D)).astype("float32")
b = rng.uniform(-0.1, 0.1, V).astype("float32")
y = rng.integers(0, V, N)
if fw == "torch":
    import torch
    F = torch.nn.functional
    H, W, B = (torch.from_numpy(a).requires_grad_(True) for a in (h, w, b))
    Y = torch.from_numpy(y)
    for t in (H, W, B):
        t.grad = torch.zeros_like(t)  # the gradients' buffers exist before the baseline, as losskit's
    def step():
        for t in (H, W, B):
            t.grad.zero_()
        F.cross_entropy(H @ W.T + B, Y).backward()
else:
    import jax, jax.numpy as jnp
    def loss(hh, ww, bb, yy):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(hh @ ww.T + bb), yy[:, None], 1))
    g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    H, W, B, Y = map(jnp.asarray, (h, w, b, y))
    def step():
        jax.block_until_ready(g(H, W, B, Y))
# The baseline is taken before the first step (which `median` runs as its warm-up): a caching
# allocator (JAX's) keeps the first step's buffers, so later steps alone would show no growth.
ok = reset_peak()
base = peak_mb()
ms = median(step)
print(json.dumps({"workload": "linear_ce_naive_4096x2048x32000", "ms": ms, "peak_mb": peak_mb() - base if ok else None}))
'''


def peer(python, fw, repeats, script=PEER):
    env = dict(os.environ, KERAS_BACKEND="jax")
    try:
        out = subprocess.run([python, "-c", script, fw, str(repeats)], capture_output=True, text=True, env=env, check=True).stdout
    except subprocess.CalledProcessError as e:
        print(f"({fw} skipped: {e.stderr.strip().splitlines()[-1] if e.stderr.strip() else e})")
        return {}
    return {r["workload"]: r for r in map(json.loads, out.splitlines())}


def losskit_rows(repeats, only):
    """`losskit bench --json` rows (the binary built by main)."""
    out = subprocess.run([os.path.join(ROOT, "target", "release", "losskit"), "bench", "--json", "--no-composed", "--repeats", str(repeats), *only],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def median_of_rounds(rounds, key):
    """One row per workload: the median of `key` over the rounds' rows (a list of row lists, or
    of dicts for peers), keeping the first round's other fields; each round's value in `rounds_<key>`."""
    rounds = [r for r in rounds if r]
    if not rounds:
        return None
    row = dict(rounds[0])
    values = [r[key] for r in rounds]
    row[key] = statistics.median(values)
    row["rounds_" + key] = values
    return row


def linear_ce_table(rows, python, repeats, rounds=1, only=()):
    """The fused head against the naive paths; ratios are the peer's time over losskit's fused.
    With `rounds` > 1, losskit (`only`) and the peers are run again in turn, and medians taken."""
    own = {r["workload"]: [r] for r in rows}
    peer_runs = {"torch": [], "jax": []}
    for i in range(rounds):
        if i > 0:
            for r in losskit_rows(repeats, only):
                own.setdefault(r["workload"], []).append(r)
        for fw in peer_runs:
            peer_runs[fw].append(peer(python, fw, min(repeats, 3), PEER_LINEAR_CE).get("linear_ce_naive_4096x2048x32000"))
    rows = [median_of_rounds(rs, "median_ms") for rs in own.values()]
    peers = {fw: median_of_rounds(rs, "ms") for fw, rs in peer_runs.items()}
    fused = next((r for r in rows if "naive" not in r["workload"]), None)
    print(f"\nlinear + cross-entropy head, loss + 3 gradients; large GEMM {rows[0]['gemm_gflops']:.0f} GFLOP/s"
          f" (inputs and gradients: {rows[0]['floor_mb']:.0f} MB)")
    print(f"{'path':<40} {'ms':>8} {'peak MB (+)':>12} {'fused is':>10}")
    entries = [(r["workload"], r["median_ms"], r["peak_mb"]) for r in rows]
    entries += [(f"{fw} naive", r["ms"], r["peak_mb"]) for fw, r in peers.items() if r]
    for name, ms, mb in entries:
        ratio = f"{ms / fused['median_ms']:9.2f}x" if fused else ""
        peak = f"{mb:12.0f}" if mb is not None else f"{'-':>12}"
        print(f"{name:<40} {ms:8.0f} {peak} {ratio}")
    if rounds > 1:
        print("each round's ms:")
        for r in rows:
            print(f"  {r['workload']:<38} " + " ".join(f"{v:.0f}" for v in r["rounds_median_ms"]))
        for fw, r in peers.items():
            if r:
                print(f"  {fw + ' naive':<38} " + " ".join(f"{v:.0f}" for v in r["rounds_ms"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default=None, help="only the workloads whose name contains this")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved runs of the linear_ce head and its peers")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "losskit-cli"], cwd=ROOT, check=True, capture_output=True)
    only = ["--only", a.only] if a.only else []
    rows = losskit_rows(a.repeats, only)
    head = [r for r in rows if r["workload"].startswith("linear_ce")]
    ours = [r for r in rows if not r["workload"].startswith("linear_ce")]
    if head:
        linear_ce_table(head, a.python, a.repeats, a.rounds, ["--only", "linear_ce"])
    if not ours:
        return
    torch_ms = {w: r["ms"] for w, r in peer(a.python, "torch", a.repeats).items()}
    jax_ms = {w: r["ms"] for w, r in peer(a.python, "jax", a.repeats).items()}
    print(f"{'workload':<24} {'losskit ms':>10} {'GB/s':>6} {'%triad':>7} {'torch ms':>9} {'x':>6} {'jax ms':>8} {'x':>6}")
    for r in ours:
        w = r["workload"]
        t, j = torch_ms.get(w), jax_ms.get(w)
        fmt = lambda v: f"{v:9.1f}" if v else f"{'-':>9}"  # noqa: E731
        ratio = lambda v: f"{v / r['median_ms']:6.1f}" if v else f"{'-':>6}"  # noqa: E731
        print(f"{w:<24} {r['median_ms']:10.1f} {r['gbps']:6.1f} {100 * r['gbps'] / r['stream_triad_gbps']:6.0f}% {fmt(t)} {ratio(t)} {fmt(j)} {ratio(j)}")


if __name__ == "__main__":
    main()
