#!/usr/bin/env python
"""Reference values for Circle loss against a separate reference set.

Run with:  KERAS_BACKEND=jax python gen_circle_vectors.py
(Keras 3.15.1, JAX 0.10.2, float32.)

Keras' `keras.losses.circle(y_true, y_pred, ref_labels, ref_embeddings, remove_diagonal)`
wrapped as a loss (`keras.src.losses.losses.LossFunctionWrapper`, as the `Circle` class wraps it: the mask it attaches, then sum_over_batch_size),
its per-sample values and the gradient with respect to y_pred (`jax.grad`). Writes
circle_vectors.json: a list of cases {"remove_diagonal", "y_true", "y_pred", "y_pred_shape",
"ref_labels", "ref_embeddings", "ref_shape", "per_sample", "loss", "grad"}.
"""
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
from keras.src.losses.losses import LossFunctionWrapper  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def normalised(rng, n, d):
    x = rng.normal(size=(n, d)).astype("float32")
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def case(b, r, d, remove_diagonal, seed):
    rng = np.random.default_rng(seed)
    y_pred, ref = normalised(rng, b, d), normalised(rng, r, d)
    y_true = rng.integers(0, 3, size=b).astype("float32")
    ref_labels = rng.integers(0, 3, size=r).astype("float32")
    per_sample = keras.losses.circle(y_true, y_pred, ref_labels=ref_labels, ref_embeddings=ref,
                                     remove_diagonal=remove_diagonal)
    loss = LossFunctionWrapper(keras.losses.circle, ref_labels=ref_labels, ref_embeddings=ref,
                                            remove_diagonal=remove_diagonal)
    value, grad = jax.value_and_grad(lambda p: loss(y_true, p))(jnp.asarray(y_pred))
    return {"remove_diagonal": remove_diagonal, "y_true": y_true.tolist(), "y_pred": y_pred.ravel().tolist(),
            "y_pred_shape": [b, d], "ref_labels": ref_labels.tolist(), "ref_embeddings": ref.ravel().tolist(),
            "ref_shape": [r, d], "per_sample": np.asarray(per_sample).tolist(), "loss": float(value),
            "grad": np.asarray(grad).ravel().tolist()}


def main():
    cases = [case(5, 7, 4, True, 0), case(6, 4, 3, False, 1), case(4, 9, 5, True, 2)]
    with open(os.path.join(HERE, "circle_vectors.json"), "w") as fh:
        json.dump(cases, fh)
        fh.write("\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
