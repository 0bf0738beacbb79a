"""The seed's model on Fashion-MNIST in Keras 3 (JAX): epoch times and test accuracy as JSON.

python train_epoch_keras.py sgd 32 3 [wide]
python train_epoch_keras.py model models/a.json 32 3

`wide`: Flatten -> Dense 2048 relu -> Dense 2048 relu -> Dense 10 softmax (the GEMM-bound config).
`model FILE`: a Keras model file with its compile config (bench/gen_user_models.py), trained with
validation_split 0.2 (as `train_epoch model FILE` in losskit), one-hot targets for a loss that is
not a sparse one.
"""
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402

from fashion_data import load  # noqa: E402

x, y, tx, ty = load()
if sys.argv[1] == "model":
    with open(sys.argv[2]) as f:
        spec = json.load(f)
    batch, epochs = int(sys.argv[3]), int(sys.argv[4])
    model = keras.models.model_from_json(json.dumps(spec))
    model.compile_from_config(spec["compile_config"])
    if not type(model.loss).__name__.startswith("Sparse") and "sparse" not in str(model.loss):
        y, ty = keras.utils.to_categorical(y, 10), keras.utils.to_categorical(ty, 10)
    validation = {"validation_split": 0.2}
else:
    validation = {}
    opt, batch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wide = len(sys.argv) > 4 and sys.argv[4] == "wide"
hidden = (
    [keras.layers.Dense(2048, activation="relu"), keras.layers.Dense(2048, activation="relu")]
    if wide
    else [keras.layers.Dense(512, activation="relu"), keras.layers.Dropout(0.2)]
)
if not validation:
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), *hidden,
                              keras.layers.Dense(10, activation="softmax")])
    # A Keras name with its defaults, optionally with "_clipnorm" (each gradient clipped to norm 1).
    optimizer = keras.optimizers.get(opt.removesuffix("_clipnorm"))
    if opt.endswith("_clipnorm"):
        optimizer = optimizer.__class__.from_config({**optimizer.get_config(), "clipnorm": 1.0})
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


class Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.t)


timer = Timer()
model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer], **validation)
acc = model.evaluate(tx, ty, batch_size=1024, verbose=0)[1]
print(json.dumps({"framework": "keras-jax", "epoch_seconds": timer.times, "test_accuracy": float(acc)}))
