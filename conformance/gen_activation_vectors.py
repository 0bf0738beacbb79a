#!/usr/bin/env python
"""Generate reference values and gradients of Keras' element-wise activations.

Run with:  KERAS_BACKEND=jax python gen_activation_vectors.py
(Keras 3.15.1, JAX 0.10.2, float32.)

For every activation a Keras config can name (`Activation("name")` or `Dense(activation=...)`,
each with its default parameters), its value at each point of X (kinks and edges included)
and its gradient there (`jax.grad` of the element's value), as JAX computes them; the same for
the two that take arguments (`gelu(x, approximate=True)`, `threshold(x, 0.5, -2.0)`); and for
the two over the last axis (`sparsemax` with the fix of keras#23469, `glu`) on rows X2 (shape ROWS), their values and the
gradient of `sum(f(x)·W)` for fixed weights W of the output's shape. Writes
activation_vectors.json: {"x": [...], "activations": {name: {"value": [...], "grad": [...]}},
"with_arguments": {name: {"args": {...}, "value": [...], "grad": [...]}},
"rows": {"x": [...], "shape": [...], "activations": {name: {"w": [...], "value": [...], "grad": [...]}}}}.
"""
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
X = [-20.0, -7.0, -6.0, -3.5, -3.0, -2.0, -1.5, -1.0, -0.5, -0.25, -1e-3, 0.0, 1e-3, 0.25, 0.5, 1.0,
     1.5, 2.0, 3.0, 3.5, 6.0, 7.0, 20.0]
NAMES = ["celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_swish",
         "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "mish", "relu", "relu6", "selu", "sigmoid",
         "silu", "soft_shrink", "softplus", "softsign", "sparse_plus", "squareplus", "swish", "tanh",
         "tanh_shrink"]


WITH_ARGUMENTS = {
    "gelu_approximate": ({"approximate": True}, lambda v: keras.activations.gelu(v, approximate=True)),
    "threshold": ({"threshold": 0.5, "default_value": -2.0}, lambda v: keras.activations.threshold(v, 0.5, -2.0)),
}
ROWS = [3, 6]
X2 = [[0.3, -1.2, 2.5, 2.5, 0.0, -0.7],
      [1.0, 0.9, 0.8, 0.7, 0.55, 0.45],
      [-3.0, 4.0, -0.25, 0.1, 7.5, -6.0]]


def sparsemax_fixed(x, axis=-1):
    """Keras 3.15.1's JAX `sparsemax` with the fix of keras-team/keras#23469 (merged 2026-08-19,
    not in a release yet): the threshold sums the sorted logits over the support (the cumulative
    sum at the support's end, Martins & Astudillo's tau) where 3.15.1 sums the cumulative sums,
    whose rows do not sum to 1 once the support holds two or more entries (keras#23425)."""
    logits_sorted = -1.0 * jnp.sort(x * -1.0, axis=axis)
    logits_cumsum = jnp.cumsum(logits_sorted, axis=axis)
    r = jnp.arange(1, x.shape[axis] + 1).reshape([1] * (x.ndim - 1) + [-1])
    support = logits_sorted - (logits_cumsum - 1) / r > 0
    k = jnp.sum(support, axis=axis, keepdims=True)
    tau = (jnp.sum(jnp.where(support, logits_sorted, 0.0), axis=axis, keepdims=True) - 1) / k
    return jnp.maximum(x - tau, 0.0)


def rows():
    x = jnp.asarray(X2, dtype=jnp.float32)
    out = {"x": [v for r in X2 for v in r], "shape": ROWS, "activations": {}}
    for name in ["sparsemax", "glu"]:
        f = sparsemax_fixed if name == "sparsemax" else keras.activations.get(name)
        value = f(x)
        w = jnp.asarray(0.5 + 0.25 * jnp.arange(value.size).reshape(value.shape) % 1.75, dtype=jnp.float32)
        grad = jax.grad(lambda v: jnp.sum(f(v) * w))(x)
        out["activations"][name] = {"w": [float(v) for v in w.ravel()], "value": [float(v) for v in value.ravel()],
                                    "grad": [float(g) for g in grad.ravel()]}
    return out


def main():
    out = {"x": X, "activations": {}}
    x = jnp.asarray(X, dtype=jnp.float32)
    for name in NAMES:
        f = keras.activations.get(name)
        value = f(x)
        grad = jax.vmap(jax.grad(lambda v: f(v[None])[0]))(x)
        out["activations"][name] = {"value": [float(v) for v in value], "grad": [float(g) for g in grad]}
    out["with_arguments"] = {}
    for name, (args, f) in WITH_ARGUMENTS.items():
        value = f(x)
        grad = jax.vmap(jax.grad(lambda v: f(v[None])[0]))(x)
        out["with_arguments"][name] = {"args": args, "value": [float(v) for v in value],
                                       "grad": [float(g) for g in grad]}
    out["rows"] = rows()
    with open(os.path.join(HERE, "activation_vectors.json"), "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print(f"{len(NAMES)} activations at {len(X)} points")


if __name__ == "__main__":
    main()
