#!/usr/bin/env python
"""Generate Keras-exact training fixtures for losskit-train.

Run with:  KERAS_BACKEND=jax python gen_training_vectors.py
(Keras 3.15.1, JAX backend, float32.) Optimizers: SGD (momentum, Nesterov), Adam, RMSprop
(centered, momentum), AdamW, Adagrad, Adamax, Lion, Lamb, Ftrl, Adadelta, Nadam, Adafactor; weight_decay;
amsgrad; use_ema (with and without ema_overwrite_frequency); clipnorm, clipvalue, global_clipnorm; the learning-rate
schedules ExponentialDecay (and staircase), InverseTimeDecay, PiecewiseConstantDecay,
PolynomialDecay (and cycle), CosineDecay (and warmup), CosineDecayRestarts.

A small MLP (Flatten, Dense 16 relu, Dense 10 softmax) starts from fixed, deterministic
weights and trains for two epochs on the first 90 digits (pixels / 16), shuffle=False,
batch 16 (the last batch is partial), with sparse categorical cross-entropy and accuracy.
Each run records the weights after training and the History. Writes training_vectors.json:
  {"x": [...], "x_shape": [...], "y": [...], "initial_weights": [{"name", "shape", "values"}],
   "runs": [{"name", "optimizer", "fit", "history", "final_weights"}]}
"""
import gzip
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "..", "crates", "losskit-train", "data", "digits.csv.gz")

rows = np.loadtxt(gzip.open(DIGITS, "rt"), delimiter=",", dtype=np.float32)
N = 90
x = (rows[:N, :64] / 16.0).astype("float32").reshape(N, 8, 8)
y = rows[:N, 64].astype("int32")


def build():
    model = keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return model


def initial_weights(model):
    out = []
    for k, w in enumerate(model.get_weights()):
        n = w.size
        i = np.arange(n, dtype=np.float64)
        vals = 0.2 * np.sin(0.37 * i + 1.3 * k) * np.cos(0.11 * i)
        out.append(vals.astype("float32").reshape(w.shape))
    return out


NAMES = ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"]
CLASS_WEIGHT = {0: 2.0, 1: 0.5, 3: 1.5, 7: 3.0}
SAMPLE_WEIGHT = (0.5 + (np.arange(N) % 4) * 0.25).astype("float32")

RUNS = [
    ("sgd", {"class_name": "SGD", "learning_rate": 0.1}, {}),
    ("sgd_momentum_class_weight", {"class_name": "SGD", "learning_rate": 0.05, "momentum": 0.9},
     {"class_weight": CLASS_WEIGHT}),
    ("sgd_nesterov_sample_weight", {"class_name": "SGD", "learning_rate": 0.05, "momentum": 0.8, "nesterov": True},
     {"sample_weight": SAMPLE_WEIGHT}),
    ("adam", {"class_name": "Adam", "learning_rate": 0.01}, {}),
    ("adam_class_weight", {"class_name": "Adam", "learning_rate": 0.01}, {"class_weight": CLASS_WEIGHT}),
    ("adam_sample_weight_clipnorm", {"class_name": "Adam", "learning_rate": 0.01, "clipnorm": 0.5},
     {"sample_weight": SAMPLE_WEIGHT}),
    ("sgd_validation_split", {"class_name": "SGD", "learning_rate": 0.1}, {"validation_split": 0.2}),
    ("rmsprop_centered", {"class_name": "RMSprop", "learning_rate": 0.005, "centered": True}, {}),
    ("rmsprop_momentum", {"class_name": "RMSprop", "learning_rate": 0.005, "momentum": 0.5}, {}),
    ("adamw", {"class_name": "AdamW", "learning_rate": 0.01, "weight_decay": 0.05}, {}),
    ("sgd_clipvalue", {"class_name": "SGD", "learning_rate": 0.1, "clipvalue": 0.02}, {}),
    ("adam_global_clipnorm", {"class_name": "Adam", "learning_rate": 0.01, "global_clipnorm": 0.3}, {}),
]

# Keras' other optimizers.
RUNS += [
    ("adagrad", {"class_name": "Adagrad", "learning_rate": 0.05}, {}),
    ("adamax_class_weight", {"class_name": "Adamax", "learning_rate": 0.01}, {"class_weight": CLASS_WEIGHT}),
    ("lion_clipnorm", {"class_name": "Lion", "learning_rate": 0.002, "clipnorm": 0.5}, {}),
    ("lamb", {"class_name": "Lamb", "learning_rate": 0.01}, {}),
    ("ftrl", {"class_name": "Ftrl", "learning_rate": 0.1}, {}),
    ("ftrl_regularized", {"class_name": "Ftrl", "learning_rate": 0.2, "learning_rate_power": -0.7,
                          "l1_regularization_strength": 0.001, "l2_regularization_strength": 0.01,
                          "l2_shrinkage_regularization_strength": 0.005, "beta": 0.5}, {"sample_weight": SAMPLE_WEIGHT}),
    ("lamb_weight_decay_class_weight", {"class_name": "Lamb", "learning_rate": 0.01, "weight_decay": 0.05},
     {"class_weight": CLASS_WEIGHT}),
    ("adadelta", {"class_name": "Adadelta", "learning_rate": 1.0}, {}),
    ("nadam_sample_weight", {"class_name": "Nadam", "learning_rate": 0.01}, {"sample_weight": SAMPLE_WEIGHT}),
    # Keras' decoupled weight_decay on other optimizers than AdamW.
    ("sgd_momentum_weight_decay", {"class_name": "SGD", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.05},
     {}),
    ("rmsprop_weight_decay", {"class_name": "RMSprop", "learning_rate": 0.005, "weight_decay": 0.1}, {}),
    ("adam_amsgrad", {"class_name": "Adam", "learning_rate": 0.01, "amsgrad": True}, {}),
    ("adamw_amsgrad_clipnorm", {"class_name": "AdamW", "learning_rate": 0.01, "weight_decay": 0.05, "amsgrad": True,
                                "clipnorm": 0.5}, {}),
]

# Learning-rate schedules (12 steps in two epochs), serialized as Keras serializes them.
def schedule(cls, **config):
    return {"class_name": cls, "config": config}


RUNS += [
    ("sgd_exponential_decay",
     {"class_name": "SGD", "learning_rate": schedule("ExponentialDecay", initial_learning_rate=0.1, decay_steps=3,
                                                     decay_rate=0.5)}, {}),
    ("adam_exponential_decay_staircase",
     {"class_name": "Adam", "learning_rate": schedule("ExponentialDecay", initial_learning_rate=0.02, decay_steps=4,
                                                      decay_rate=0.3, staircase=True)}, {}),
    ("sgd_inverse_time_decay",
     {"class_name": "SGD", "learning_rate": schedule("InverseTimeDecay", initial_learning_rate=0.1, decay_steps=2,
                                                     decay_rate=0.5)}, {}),
    ("sgd_momentum_piecewise_constant",
     {"class_name": "SGD", "momentum": 0.9,
      "learning_rate": schedule("PiecewiseConstantDecay", boundaries=[3, 7], values=[0.05, 0.02, 0.005])}, {}),
    ("sgd_polynomial_decay",
     {"class_name": "SGD", "learning_rate": schedule("PolynomialDecay", initial_learning_rate=0.1, decay_steps=8,
                                                     end_learning_rate=0.01, power=2.0)}, {}),
    ("sgd_polynomial_decay_cycle",
     {"class_name": "SGD", "learning_rate": schedule("PolynomialDecay", initial_learning_rate=0.1, decay_steps=5,
                                                     end_learning_rate=0.02, power=1.5, cycle=True)}, {}),
    ("adam_cosine_decay",
     {"class_name": "Adam", "learning_rate": schedule("CosineDecay", initial_learning_rate=0.02, decay_steps=10,
                                                      alpha=0.1)}, {}),
    ("sgd_cosine_decay_warmup",
     {"class_name": "SGD", "learning_rate": schedule("CosineDecay", initial_learning_rate=0.0, decay_steps=6,
                                                     warmup_target=0.1, warmup_steps=4)}, {}),
    ("rmsprop_cosine_decay_restarts",
     {"class_name": "RMSprop", "learning_rate": schedule("CosineDecayRestarts", initial_learning_rate=0.01,
                                                         first_decay_steps=3, t_mul=2.0, m_mul=0.5, alpha=0.05)}, {}),
]

# Adafactor (factored moments of the kernels, full ones of the biases) and use_ema.
RUNS += [
    ("adafactor", {"class_name": "Adafactor", "learning_rate": 0.01}, {}),
    ("adafactor_relative_step_sample_weight",
     {"class_name": "Adafactor", "learning_rate": 0.5, "beta_2_decay": -0.6, "epsilon_2": 0.01,
      "clip_threshold": 0.5}, {"sample_weight": SAMPLE_WEIGHT}),
    ("adafactor_clipvalue_weight_decay",
     {"class_name": "Adafactor", "learning_rate": 0.05, "relative_step": False, "clipvalue": 0.05,
      "weight_decay": 0.02}, {}),
    ("adafactor_cosine_decay",
     {"class_name": "Adafactor", "learning_rate": schedule("CosineDecay", initial_learning_rate=0.8, decay_steps=10,
                                                           alpha=0.1)}, {}),
    ("adam_ema", {"class_name": "Adam", "learning_rate": 0.01, "use_ema": True}, {"validation_split": 0.2}),
    ("sgd_momentum_ema_overwrite",
     {"class_name": "SGD", "learning_rate": 0.1, "momentum": 0.9, "use_ema": True, "ema_momentum": 0.8,
      "ema_overwrite_frequency": 5}, {}),
    ("nadam_ema_class_weight", {"class_name": "Nadam", "learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.5},
     {"class_weight": CLASS_WEIGHT}),
]


def make_optimizer(spec):
    spec = dict(spec)
    cls = getattr(keras.optimizers, spec.pop("class_name"))
    if isinstance(spec.get("learning_rate"), dict):
        spec["learning_rate"] = keras.optimizers.schedules.deserialize(spec["learning_rate"])
    return cls(**spec)


def jsonable(v):
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def main():
    model = build()
    init = initial_weights(model)
    runs = []
    for name, opt, fit_kwargs in RUNS:
        model = build()
        model.set_weights(init)
        model.compile(optimizer=make_optimizer(opt), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        hist = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, **fit_kwargs)
        runs.append({
            "name": name,
            "optimizer": opt,
            "fit": jsonable(fit_kwargs),
            "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()},
            "final_weights": [{"name": n, "shape": list(w.shape), "values": w.reshape(-1).tolist()}
                              for n, w in zip(NAMES, model.get_weights())],
        })
        print(name, {k: [round(v, 6) for v in vs] for k, vs in hist.history.items()})
    out = {
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "x_shape": list(x.shape),
        "x": x.reshape(-1).tolist(),
        "y": y.tolist(),
        "batch_size": 16,
        "epochs": 2,
        "initial_weights": [{"name": n, "shape": list(w.shape), "values": w.reshape(-1).tolist()}
                            for n, w in zip(NAMES, init)],
        "runs": runs,
    }
    with open(os.path.join(HERE, "training_vectors.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
