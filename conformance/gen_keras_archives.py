#!/usr/bin/env python
"""Generate trained `.keras` archives (with their weights and optimizer state) for
losskit-train's archive reader, and check the archives losskit writes.

Run with:  KERAS_BACKEND=jax python gen_keras_archives.py
(Keras 3.15.1, JAX backend, float32.)

Writes conformance/keras_models/archives/:
  <name>.keras   a Sequential model with the user's own layer and model names, trained two
                 epochs on the first 120 digits (pixels / 16, 8 x 8; the `preprocessing` one
                 on raw pixels in rows of 64, which its Rescaling and Reshape layers turn into
                 what the others take), shuffle=False, batch 32, and
                 saved with `model.save` (config.json, metadata.json, model.weights.h5 with the
                 optimizer's variables);
  expected.json  per archive: Keras' `evaluate` on digits 120-199 (loss, accuracy), its
                 predictions on the first 4 of them, and the History of one more epoch of
                 `fit` on the first 120 (shuffle=False, batch 32) from the loaded archive
                 (`keras.saving.load_model`), with the weights after it.
Then, for every archive losskit wrote (keras_models/written/*.keras, made by the Rust test
`a_written_archive_is_the_committed_golden_file`), it loads it with
`keras.saving.load_model`, prints its layer names and checks that its predictions on the
test digits equal `predictions.json` beside it (losskit's own) to 1e-5.
"""
import gzip
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "keras_models", "archives")
WRITTEN = os.path.join(HERE, "keras_models", "written")
DIGITS = os.path.join(HERE, "..", "crates", "losskit-train", "data", "digits.csv.gz")

rows = np.loadtxt(gzip.open(DIGITS, "rt"), delimiter=",", dtype=np.float32)
X_SCALED = (rows[:200, :64] / 16.0).astype("float32").reshape(200, 8, 8)
X_RAW = rows[:200, :64].astype("float32")
y = rows[:200, 64].astype("int32")
y_train, y_test = y[:120], y[120:]


def models():
    keras.utils.set_random_seed(1)
    m = keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.Flatten(name="pixels"),
        keras.layers.Dense(24, activation="relu", name="hidden"),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ], name="digits_adam")
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    yield "adam", m

    keras.utils.set_random_seed(2)
    m = keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="tanh", name="features"),
        keras.layers.Dense(10, name="logits"),
    ], name="digits_rmsprop")
    m.compile(optimizer=keras.optimizers.RMSprop(0.005, momentum=0.5, centered=True),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    yield "rmsprop_centered_momentum", m

    keras.utils.set_random_seed(3)
    m = keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.Flatten(),
        keras.layers.Dense(20, activation="relu", name="dense_7"),
        keras.layers.Dropout(0.25, name="drop"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    yield "sgd_momentum_dropout", m

    # Preprocessing inside the model: raw pixels (0-16) as flat rows of 64.
    keras.utils.set_random_seed(4)
    m = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Rescaling(1.0 / 16.0, offset=-0.5, name="scale"),
        keras.layers.Reshape((8, 8)),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="raw_pixels")
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    yield "preprocessing", m

    # Adafactor's factored moments (scalar placeholders for the biases) and use_ema's averages.
    keras.utils.set_random_seed(5)
    m = keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digits_adafactor")
    m.compile(optimizer=keras.optimizers.Adafactor(0.05, use_ema=True, ema_momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    yield "adafactor_ema", m


def as_list(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def generate():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name, m in models():
        # The preprocessing model takes raw pixels as flat rows; the others pixels / 16, 8 x 8.
        raw = name == "preprocessing"
        x_train, x_test = (X_RAW[:120], X_RAW[120:]) if raw else (X_SCALED[:120], X_SCALED[120:])
        m.fit(x_train, y_train, epochs=2, batch_size=32, shuffle=False, verbose=0)
        path = os.path.join(OUT, f"{name}.keras")
        m.save(path)
        loaded = keras.saving.load_model(path)
        loss, acc = loaded.evaluate(x_test, y_test, batch_size=32, verbose=0)
        pred = loaded.predict(x_test[:4], verbose=0)
        entry = {"evaluate": {"loss": float(loss), "accuracy": float(acc)},
                 "predictions": as_list(pred), "layer_names": [l.name for l in loaded.layers],
                 "model_name": loaded.name, "iterations": int(loaded.optimizer.iterations.numpy())}
        if "dropout" not in name:
            h = loaded.fit(x_train, y_train, epochs=1, batch_size=32, shuffle=False, verbose=0)
            entry["continued"] = {"history": {k: [float(v) for v in vs] for k, vs in h.history.items()},
                                  "weights": [as_list(w) for w in loaded.get_weights()]}
        expected[name] = entry
        print(name, entry["evaluate"], entry["layer_names"])
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


def check_written():
    if not os.path.isdir(WRITTEN):
        return
    for fname in sorted(os.listdir(WRITTEN)):
        if not fname.endswith(".keras"):
            continue
        path = os.path.join(WRITTEN, fname)
        m = keras.saving.load_model(path)
        ours = json.load(open(os.path.join(WRITTEN, fname[:-len(".keras")] + ".predictions.json")))
        pred = m.predict(np.asarray(ours["x"], dtype="float32").reshape(ours["x_shape"]), verbose=0)
        diff = float(np.max(np.abs(pred.ravel() - np.asarray(ours["predictions"]))))
        opt = getattr(m, "optimizer", None)
        compiled = (f"compiled with {type(opt).__name__} at iteration {int(opt.iterations.numpy())}"
                    if opt is not None else "uncompiled")
        print(f"{fname}: Keras loaded {m.name} {[l.name for l in m.layers]}, {compiled}; "
              f"max |prediction difference| {diff:.2e}")
        assert diff <= 1e-5, fname


if __name__ == "__main__":
    import sys
    if "--check-only" not in sys.argv:
        generate()
    check_written()
