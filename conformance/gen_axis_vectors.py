#!/usr/bin/env python
"""Reference values for SparseCategoricalCrossentropy with the class axis not last.

Run with:  KERAS_BACKEND=torch python gen_axis_vectors.py
(Keras 3.15.1, PyTorch 2.15, float32.)

Keras on torch takes `axis` (the class axis of y_pred; Keras on JAX supports only the last):
the reference is Keras' own `SparseCategoricalCrossentropy(from_logits=..., axis=...)` on the
torch backend, differentiated with torch's autograd with respect to the predictions. (The
earlier vectors, Keras on JAX with the class axis moved last, agree with these to 2.4e-7 in the
loss and 1.5e-8 in the gradient.) Writes axis_vectors.json: a list of cases {"from_logits",
"axis", "y_true", "y_true_shape", "y_pred", "y_pred_shape", "loss", "grad"}.
"""
import json
import os

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def case(shape, axis, labels_shape, from_logits, seed):
    rng = np.random.default_rng(seed)
    y_pred = rng.normal(size=shape).astype("float32")
    if not from_logits:
        y_pred = np.abs(y_pred) + 0.05
    classes = shape[axis]
    y_true = rng.integers(0, classes, size=labels_shape).astype("float32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, axis=axis)
    p = torch.tensor(y_pred, requires_grad=True)
    value = loss(torch.tensor(y_true), p)
    value.backward()
    return {"from_logits": from_logits, "axis": axis, "y_true": y_true.ravel().tolist(),
            "y_true_shape": list(labels_shape), "y_pred": y_pred.ravel().tolist(), "y_pred_shape": list(shape),
            "loss": float(value), "grad": p.grad.numpy().ravel().tolist()}


def main():
    cases = [
        case((2, 4, 3), 1, (2, 3), True, 0),
        case((3, 5, 2, 2), 1, (3, 2, 2), False, 1),
        case((2, 4, 3), 1, (2, 1, 3), True, 2),
        case((2, 3, 4, 5), -2, (2, 3, 5), True, 3),
    ]
    with open(os.path.join(HERE, "axis_vectors.json"), "w") as fh:
        json.dump(cases, fh)
        fh.write("\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
