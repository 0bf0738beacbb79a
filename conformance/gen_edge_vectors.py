#!/usr/bin/env python
"""Reference vectors for the numerical edges: NaN and inf predictions, clip bounds, overflow,
and cross-entropies over 32 000 - 100 000 classes. Values AND gradients (d loss / d y_pred of
the default `sum_over_batch_size` reduction).

Run with:  KERAS_BACKEND=jax python gen_edge_vectors.py
(Keras 3.15.1 on JAX 0.10.) Writes edge_vectors.json next to this script: a JSON list of
  {name, loss, config, referee, y_true | y_true_gen, y_true_dtype, y_pred | y_pred_gen,
   expected, grad, grad_index?, deviation?}

* Small cases run Keras in float32, with two documented replacements of Keras-on-JAX behaviour
  by TensorFlow's conventions (losskit follows TensorFlow's, see losskit-tensor's docs):
  - clip: JAX gives half the gradient at a clip bound (it splits ties); TensorFlow's
    clip_by_value passes all of it. `jnp.clip` is replaced by a clip with TensorFlow's gradient
    while the reference runs (`deviation: "tf-clip"` marks the cases where this matters).
  - a NaN prediction: Keras-on-JAX's gradient there is whatever JAX's select-based derivative
    rules give (0 for Hinge, +-100/n for MAPE, NaN for most). losskit gives NaN wherever the
    prediction is NaN; the generator writes NaN there (`deviation: "nan-grad"` where Keras'
    number differed).
* Large cases (`referee: "keras-f64"`) run Keras in float64 on the float32 inputs: the truth
  losskit's float32 must reach (values 1e-6 relative, gradients rtol 1e-5). Their inputs are
  not stored but generated (`*_gen`): u = ((i + 1) * 2654435761 mod 2^32) / 2^32 for the i-th
  value in row-major order, x = float32(lo + (hi - lo) * u^power) (u^power by repeated products
  in float64). Their gradients are stored at `grad_index` (flat positions) only.
"""
import json
import math
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

assert keras.backend.backend() == "jax"
CASES = []
_jnp_clip = jnp.clip


@jax.custom_jvp
def _tf_clip_fn(x, lo, hi):
    return _jnp_clip(x, lo, hi)


@_tf_clip_fn.defjvp
def _tf_clip_jvp(primals, tangents):
    x, lo, hi = primals
    dx, _, _ = tangents
    # TensorFlow's clip_by_value gradient: zero where x < lo or x > hi, the tangent elsewhere
    # (the bounds, and NaN, pass).
    outside = jnp.logical_or(x < lo, x > hi)
    return _tf_clip_fn(x, lo, hi), jnp.where(outside, jnp.zeros_like(dx), dx)


def tf_clip(x, min=None, max=None, **kw):  # noqa: A002 - jnp.clip's own parameter names
    x = jnp.asarray(x)
    lo = jnp.asarray(-jnp.inf if min is None else min, dtype=x.dtype)
    hi = jnp.asarray(jnp.inf if max is None else max, dtype=x.dtype)
    return _tf_clip_fn(x, lo, hi)


def enc(v):
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def tolist(a):
    a = np.asarray(a)
    if a.ndim == 0:
        return enc(a)
    return [tolist(x) for x in a]


def value_and_grad(loss, yt, yp, clip):
    jnp.clip = clip
    try:
        v, g = jax.value_and_grad(lambda p: loss(yt, p))(jnp.asarray(yp))
        return np.asarray(v), np.asarray(g)
    finally:
        jnp.clip = _jnp_clip


def small(name, loss, config, y_true, y_pred, y_true_dtype="float32"):
    """A literal case in float32, TensorFlow's clip gradient, NaN gradient at NaN predictions."""
    obj = getattr(keras.losses, loss)(**config)
    yt = np.array(y_true, dtype=y_true_dtype)
    yp = np.array(y_pred, dtype="float32")
    v, g = value_and_grad(obj, yt, yp, tf_clip)
    _, g_jax = value_and_grad(obj, yt, yp, _jnp_clip)
    deviation = []
    if not np.array_equal(g, g_jax, equal_nan=True):
        deviation.append("tf-clip")
    g_nan = np.where(np.isnan(yp), np.nan, g)
    if not np.array_equal(g_nan, g, equal_nan=True):
        deviation.append("nan-grad")
    entry = {"name": name, "loss": loss, "config": config, "referee": "keras-f32",
             "y_true": tolist(yt), "y_true_dtype": y_true_dtype, "y_pred": tolist(yp),
             "expected": enc(v), "grad": tolist(g_nan)}
    if deviation:
        entry["deviation"] = ",".join(deviation)
        entry["keras_jax_grad"] = tolist(g_jax)
    CASES.append(entry)


def generated(rows, cols, lo, hi, power=1):
    n = rows * cols
    i = np.arange(1, n + 1, dtype=np.uint64)
    u = ((i * np.uint64(2654435761)) % np.uint64(2**32)).astype(np.float64) / 2.0**32
    up = np.ones_like(u)
    for _ in range(power):
        up = up * u
    return (lo + (hi - lo) * up).astype(np.float32).reshape(rows, cols)


def large(name, loss, config, rows, cols, pred_gen, labels, one_hot):
    """A generated case, Keras in float64 as the referee; gradient kept at a sample of positions."""
    x = generated(rows, cols, **pred_gen)
    lab = np.array(labels)
    if one_hot:
        yt = np.zeros((rows, cols), dtype=np.float64)
        yt[np.arange(rows), lab] = 1.0
    else:
        yt = lab.astype(np.int64)
    obj = getattr(keras.losses, loss)(dtype="float64", **config)
    v, g = value_and_grad(obj, yt, x.astype(np.float64), tf_clip)
    flat = g.reshape(-1)
    index = set(range(0, 40)) | set(range(0, flat.size, 997)) | {r * cols + k for r, k in enumerate(labels)}
    if not config.get("from_logits", False):
        # The elements closest to the lower clip bound, where a wrong row sum flips the clip.
        o = (x.astype(np.float64) / x.astype(np.float64).sum(axis=-1, keepdims=True)).reshape(-1)
        index |= set(np.argsort(np.abs(np.log(o / 1e-7)))[:40].tolist())
    index = sorted(index)
    CASES.append({"name": name, "loss": loss, "config": config, "referee": "keras-f64",
                  "rows": rows, "cols": cols, "y_pred_gen": pred_gen, "labels": labels,
                  "one_hot": one_hot, "expected": enc(v), "grad_index": index,
                  "grad": [enc(flat[j]) for j in index]})


NAN, INF = float("nan"), float("inf")

# --- 1. NaN and inf predictions propagate ------------------------------------------------
small("bce_nan", "BinaryCrossentropy", {}, [[1.0, 0.0]], [[NAN, 0.2]])
small("bce_nan_logits", "BinaryCrossentropy", {"from_logits": True}, [[1.0, 0.0]], [[NAN, 0.2]])
small("bce_inf_prob", "BinaryCrossentropy", {}, [[1.0, 0.0]], [[INF, 0.2]])
small("cce_nan", "CategoricalCrossentropy", {}, [[1.0, 0.0, 0.0]], [[NAN, 0.2, 0.3]])
small("cce_inf", "CategoricalCrossentropy", {}, [[1.0, 0.0, 0.0]], [[0.5, INF, 0.2]])
small("scce_nan", "SparseCategoricalCrossentropy", {}, [0], [[0.5, NAN, 0.2]], "int32")
small("scce_inf", "SparseCategoricalCrossentropy", {}, [0], [[0.5, INF, 0.2]], "int32")
small("cce_logits_nan", "CategoricalCrossentropy", {"from_logits": True}, [[1.0, 0.0, 0.0]],
      [[0.5, NAN, 0.2]])
small("scce_logits_nan", "SparseCategoricalCrossentropy", {"from_logits": True}, [0],
      [[0.5, NAN, 0.2]], "int32")
small("cce_logits_pinf", "CategoricalCrossentropy", {"from_logits": True}, [[1.0, 0.0, 0.0]],
      [[0.5, INF, 0.2]])
small("scce_logits_pinf", "SparseCategoricalCrossentropy", {"from_logits": True}, [0],
      [[0.5, INF, 0.2]], "int32")
small("cce_logits_ninf", "CategoricalCrossentropy", {"from_logits": True}, [[1.0, 0.0, 0.0]],
      [[0.5, -INF, 0.2]])
small("scce_logits_ninf", "SparseCategoricalCrossentropy", {"from_logits": True}, [0],
      [[0.5, -INF, 0.2]], "int32")
small("scce_logits_ninf_at_label", "SparseCategoricalCrossentropy", {"from_logits": True}, [1],
      [[0.5, -INF, 0.2]], "int32")
small("bfce_nan", "BinaryFocalCrossentropy", {}, [[1.0, 0.0]], [[NAN, 0.2]])
small("bfce_inf", "BinaryFocalCrossentropy", {}, [[1.0, 0.0]], [[INF, 0.2]])
small("cfce_nan", "CategoricalFocalCrossentropy", {}, [[1.0, 0.0, 0.0]], [[NAN, 0.2, 0.3]])
small("cfce_inf", "CategoricalFocalCrossentropy", {}, [[1.0, 0.0, 0.0]], [[0.5, INF, 0.2]])
small("cfce_logits_nan", "CategoricalFocalCrossentropy", {"from_logits": True},
      [[1.0, 0.0, 0.0]], [[0.5, NAN, 0.2]])
small("hinge_nan", "Hinge", {}, [[1.0, -1.0]], [[NAN, 0.2]])
small("squared_hinge_nan", "SquaredHinge", {}, [[1.0, -1.0]], [[NAN, 0.2]])
small("categorical_hinge_nan", "CategoricalHinge", {}, [[1.0, 0.0]], [[NAN, 0.2]])
small("msle_nan", "MeanSquaredLogarithmicError", {}, [[1.0, 2.0]], [[NAN, 0.2]])
small("kld_nan", "KLDivergence", {}, [[0.3, 0.7]], [[NAN, 0.2]])
small("mape_nan", "MeanAbsolutePercentageError", {}, [[1.0, 2.0]], [[NAN, 0.2]])
small("huber_nan", "Huber", {}, [[1.0, 2.0]], [[NAN, 0.2]])
small("mse_nan", "MeanSquaredError", {}, [[1.0, 2.0]], [[NAN, 0.2]])
small("mae_inf", "MeanAbsoluteError", {}, [[1.0, 2.0]], [[INF, 0.2]])
small("logcosh_nan", "LogCosh", {}, [[1.0, 2.0]], [[NAN, 0.2]])
small("poisson_nan", "Poisson", {}, [[1.0, 2.0]], [[NAN, 0.2]])
small("cosine_nan", "CosineSimilarity", {}, [[1.0, 2.0]], [[NAN, 0.2]])
small("dice_nan", "Dice", {}, [[1.0, 0.0]], [[NAN, 0.2]])
small("tversky_nan", "Tversky", {}, [[1.0, 0.0]], [[NAN, 0.2]])

# --- 3. Clip bounds are inside (TensorFlow's clip_by_value) -------------------------------
small("bce_at_lower_clip", "BinaryCrossentropy", {}, [[1.0, 0.0, 1.0]], [[1e-7, 0.5, 0.3]])
small("kld_saturated", "KLDivergence", {}, [[0.3, 0.7]], [[0.0, 1.0]])
small("bfce_at_lower_clip", "BinaryFocalCrossentropy", {}, [[1.0, 0.0]], [[1e-7, 0.5]])
small("cce_at_upper_clip", "CategoricalCrossentropy", {}, [[0.5, 0.5]], [[1.0, 0.0]])

# --- 4. Overflow --------------------------------------------------------------------------
small("bce_logits_neg_inf", "BinaryCrossentropy", {"from_logits": True}, [[1.0]], [[-INF]])
small("bce_logits_large", "BinaryCrossentropy", {"from_logits": True}, [[1.0, 0.0]],
      [[-1e30, 1e30]])

# CosineSimilarity whose squares overflow float32: Keras itself returns -0 (its sum of squares
# overflows); the referee is Keras in float64, where nothing overflows. The gradient's terms
# are of size 1/|y_pred| (parallel vectors: they cancel to rounding noise), so it is compared
# with an absolute tolerance of 1e-5/|y_pred| (`grad_atol`).
obj = keras.losses.CosineSimilarity(dtype="float64")
for name, yt, yp in [("cosine_overflow_parallel", [[2e19, 3e19]], [[4e19, 6e19]]),
                     ("cosine_overflow_general", [[2e19, -3e19, 1e19]], [[4e19, 1e19, -3e30]])]:
    yt32 = np.array(yt, dtype=np.float32)
    yp32 = np.array(yp, dtype=np.float32)
    v, g = value_and_grad(obj, yt32.astype(np.float64), yp32.astype(np.float64), tf_clip)
    CASES.append({"name": name, "loss": "CosineSimilarity", "config": {}, "referee": "keras-f64",
                  "y_true": tolist(yt32), "y_true_dtype": "float32", "y_pred": tolist(yp32),
                  "expected": enc(v), "grad": tolist(g),
                  "grad_atol": 1e-5 / float(np.linalg.norm(yp32.astype(np.float64)))})

# --- 2. Large vocabularies against the float64 referee ------------------------------------
LOGITS = {"lo": -1.5, "hi": 1.5}
PROBS = {"lo": 0.0, "hi": 1.0, "power": 6}
for c in [32000, 100000]:
    labels = [7, c - 3]
    large(f"scce_logits_{c}", "SparseCategoricalCrossentropy", {"from_logits": True}, 2, c,
          LOGITS, labels, False)
    large(f"cce_logits_ls_{c}", "CategoricalCrossentropy",
          {"from_logits": True, "label_smoothing": 0.1}, 2, c, LOGITS, labels, True)
    large(f"cce_probs_ls_{c}", "CategoricalCrossentropy", {"label_smoothing": 0.1}, 2, c, PROBS,
          labels, True)
    large(f"scce_probs_{c}", "SparseCategoricalCrossentropy", {}, 2, c, PROBS, labels, False)
    large(f"cfce_logits_ls_{c}", "CategoricalFocalCrossentropy",
          {"from_logits": True, "label_smoothing": 0.1}, 2, c, LOGITS, labels, True)
    large(f"bce_logits_{c}", "BinaryCrossentropy", {"from_logits": True}, 2, c, LOGITS, labels,
          True)

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edge_vectors.json")
with open(out, "w") as f:
    json.dump(CASES, f, indent=None, separators=(",", ":"))
    f.write("\n")
print(f"{len(CASES)} cases -> {out}")
