#!/usr/bin/env python
"""Write the four Keras user models of bench/compare_training.py's `--models` set as Keras 3
JSON (`model.to_json()` of a compiled model: its compile_config included), for
`losskit fit --model bench/models/<name>.json` and for train_epoch_keras.py.

Run with:  KERAS_BACKEND=jax python bench/gen_user_models.py   (Keras 3.15.1)

  a: Dense 256 relu + L2(1e-4) -> Dropout 0.3 -> Dense 128 tanh -> Dense 10 softmax,
     Adam(3e-4, clipnorm=1), sparse categorical cross-entropy
  b: the same with CategoricalFocalCrossentropy (one-hot targets)
  c: Dense 200 -> Activation relu -> Dense 64 -> Activation relu -> Dense 10 -> Activation
     softmax, RMSprop, sparse categorical cross-entropy
  d: Dense 128 relu -> Dropout 0.2 -> Dense 10 softmax, SGD(0.01, momentum 0.9), sparse
     categorical cross-entropy
Every model reads (28, 28) images through a Flatten and reports accuracy.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
from keras import layers, optimizers, regularizers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def model_a():
    return [layers.Dense(256, activation="relu", kernel_regularizer=regularizers.L2(1e-4)),
            layers.Dropout(0.3), layers.Dense(128, activation="tanh"), layers.Dense(10, activation="softmax")]


def build(name, body, optimizer, loss):
    m = keras.Sequential([keras.Input((28, 28)), layers.Flatten(), *body], name=name)
    m.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return m


MODELS = {
    "a": lambda: build("model_a", model_a(), optimizers.Adam(3e-4, clipnorm=1.0), "sparse_categorical_crossentropy"),
    "b": lambda: build("model_b", model_a(), optimizers.Adam(3e-4, clipnorm=1.0),
                       keras.losses.CategoricalFocalCrossentropy()),
    "c": lambda: build("model_c", [layers.Dense(200), layers.Activation("relu"), layers.Dense(64),
                                   layers.Activation("relu"), layers.Dense(10), layers.Activation("softmax")],
                       optimizers.RMSprop(), "sparse_categorical_crossentropy"),
    "d": lambda: build("model_d", [layers.Dense(128, activation="relu"), layers.Dropout(0.2),
                                   layers.Dense(10, activation="softmax")],
                       optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy"),
}

if __name__ == "__main__":
    os.makedirs(os.path.join(HERE, "models"), exist_ok=True)
    for name, make in MODELS.items():
        path = os.path.join(HERE, "models", f"{name}.json")
        with open(path, "w") as f:
            f.write(make().to_json(indent=1))
        print("wrote", path)
