#!/usr/bin/env python
"""Generate Keras model-file fixtures for losskit-train's reader and writer.

Run with:  KERAS_BACKEND=jax python gen_model_json.py
(Keras 3.15.1, JAX backend.)

Writes conformance/keras_models/:
  <name>.json      model.to_json() of small Sequential models on 8x8 inputs, most compiled
                   (their compile_config: loss with its config, optimizer with its config,
                   metrics, loss weights);
  archive.keras    model.save() of the first one (a zip with config.json and the weights);
  unsupported_conv.json  a model with a layer losskit does not have (the reader's error);
  expected.json    per file, what Keras itself reports: the layer classes, units,
                   activations, count_params, the optimizer's class and learning rate, the
                   loss' class and config, the metrics, the loss weights.
Then it checks that Keras reads back every model losskit wrote (keras_models/written/*.json,
made by the Rust test `written_models_are_the_committed_golden_files`) with
keras.models.model_from_json, and prints what it read.
"""
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
from keras import layers, initializers, regularizers, optimizers, losses  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "keras_models")
os.makedirs(OUT, exist_ok=True)


def models():
    m = keras.Sequential([
        keras.Input((8, 8)), layers.Flatten(), layers.Dense(32, activation="relu"),
        layers.Dropout(0.2), layers.Dense(10, activation="softmax")])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    yield "seed_sgd", m

    m = keras.Sequential([
        keras.Input((8, 8)), layers.Flatten(),
        layers.Dense(16, activation="relu", kernel_initializer=initializers.HeNormal(seed=3),
                     kernel_regularizer=regularizers.L2(0.01), bias_regularizer=regularizers.L1(0.001)),
        layers.Dense(10), layers.Activation("softmax")])
    m.compile(optimizer=optimizers.Adam(0.002), loss=losses.SparseCategoricalCrossentropy(),
              metrics=["accuracy"])
    yield "adam_regularized", m

    m = keras.Sequential([
        keras.Input((64,)),
        layers.Dense(24, activation="tanh", use_bias=False,
                     kernel_initializer=initializers.RandomNormal(stddev=0.1, seed=1)),
        layers.Dense(10)])
    m.compile(optimizer=optimizers.RMSprop(0.001, clipnorm=1.0),
              loss=losses.SparseCategoricalCrossentropy(from_logits=True), loss_weights=[0.5])
    yield "rmsprop_logits", m

    m = keras.Sequential([
        keras.Input((8, 8)), layers.Flatten(),
        layers.Dense(8, activation="gelu", kernel_regularizer=regularizers.L1L2(l1=0.001, l2=0.002),
                     bias_initializer=initializers.Ones()),
        layers.Dense(10, activation="softmax")])
    m.compile(optimizer=optimizers.AdamW(weight_decay=0.01),
              loss=losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    yield "adamw_categorical", m

    m = keras.Sequential([
        keras.Input((8, 8)), layers.Flatten(),
        layers.Dense(12, activation="sigmoid", kernel_initializer="lecun_uniform"),
        layers.Dense(10, activation="softmax")])
    m.compile(optimizer=optimizers.SGD(0.05, momentum=0.9, nesterov=True, global_clipnorm=5.0),
              loss="categorical_focal_crossentropy", metrics=["accuracy"])
    yield "sgd_nesterov_focal", m

    m = keras.Sequential([keras.Input((8, 8)), layers.Flatten(), layers.Dense(10, activation="softmax")])
    yield "uncompiled", m


def facts(m):
    f = {
        "layers": [l.__class__.__name__ for l in m.layers],
        "units": [getattr(l, "units", None) for l in m.layers],
        "activations": [getattr(getattr(l, "activation", None), "__name__", None) for l in m.layers],
        "count_params": int(m.count_params()),
        "input_shape": list(m.input_shape[1:]),
    }
    if m.compiled:
        cc = m.get_compile_config()
        opt = m.optimizer
        f["optimizer"] = opt.__class__.__name__
        f["learning_rate"] = float(opt.learning_rate.numpy())
        loss = keras.losses.get(cc["loss"]) if isinstance(cc["loss"], str) else cc["loss"]
        if isinstance(loss, str):
            f["loss"] = loss
        elif isinstance(loss, dict):
            f["loss"] = loss["class_name"]
            f["loss_config"] = loss["config"]
        else:
            f["loss"] = loss.__class__.__name__ if not callable(loss) or hasattr(loss, "get_config") else loss.__name__
        f["metrics"] = cc["metrics"]
        f["loss_weights"] = cc["loss_weights"]
    return f


def main():
    expected = {}
    for name, m in models():
        with open(os.path.join(OUT, name + ".json"), "w") as fh:
            fh.write(m.to_json(indent=1))
        expected[name + ".json"] = facts(m)
        if name == "seed_sgd":
            m.save(os.path.join(OUT, "archive.keras"))
            expected["archive.keras"] = facts(m)
    conv = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3), layers.Flatten(), layers.Dense(10)])
    with open(os.path.join(OUT, "unsupported_conv.json"), "w") as fh:
        fh.write(conv.to_json(indent=1))
    with open(os.path.join(OUT, "expected.json"), "w") as fh:
        json.dump(expected, fh, indent=1, sort_keys=True)
    written = os.path.join(OUT, "written")
    if os.path.isdir(written):
        for f in sorted(os.listdir(written)):
            with open(os.path.join(written, f)) as fh:
                m = keras.models.model_from_json(fh.read())
            print(f"Keras reads losskit's {f}:", json.dumps(facts(m)))


if __name__ == "__main__":
    main()
