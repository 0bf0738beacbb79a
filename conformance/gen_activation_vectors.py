#!/usr/bin/env python
"""Generate reference values and gradients of Keras' element-wise activations.

Run with:  KERAS_BACKEND=jax python gen_activation_vectors.py
(Keras 3.15.1, JAX 0.10.2, float32.)

For every activation a Keras config can name (`Activation("name")` or `Dense(activation=...)`,
each with its default parameters), its value at each point of X (kinks and edges included)
and its gradient there (`jax.grad` of the element's value), as JAX computes them. Writes
activation_vectors.json: {"x": [...], "activations": {name: {"value": [...], "grad": [...]}}}.
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


def main():
    out = {"x": X, "activations": {}}
    x = jnp.asarray(X, dtype=jnp.float32)
    for name in NAMES:
        f = keras.activations.get(name)
        value = f(x)
        grad = jax.vmap(jax.grad(lambda v: f(v[None])[0]))(x)
        out["activations"][name] = {"value": [float(v) for v in value], "grad": [float(g) for g in grad]}
    with open(os.path.join(HERE, "activation_vectors.json"), "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print(f"{len(NAMES)} activations at {len(X)} points")


if __name__ == "__main__":
    main()
