#!/usr/bin/env python
"""Round-trip the four user models of the training bench (bench/models/{a,b,c,d}.json, Keras
3.15's own files from bench/gen_user_models.py) through losskit and back into Keras.

Run with:  KERAS_BACKEND=jax python check_bench_archives.py [path/to/losskit]
(Keras 3.15.1, JAX; needs Debian's dataset-fashion-mnist and a release build of the CLI.)

For each model: `losskit fit --model bench/models/X.json --data fashion-mnist --epochs 1`
writes a run folder; `keras.saving.load_model(run/model.keras)` must open it compiled with the
model's own optimizer (its iteration count past 0), name and layer names (after the Rescaling
layer the CLI puts first), and its `predict` on 256 raw test images must equal
`losskit predict --model run/model.keras` to 1e-5.
Prints one line per model; exits non-zero on the first mismatch.
"""
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "bench"))
from fashion_data import load  # noqa: E402


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main():
    losskit = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "losskit")
    _, _, x_test, _ = load()
    # Raw pixels (0-255): the archive starts with the Rescaling layer the CLI adds.
    raw = np.round(x_test[:256] * 255.0).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "x.npy"), raw)
        for name in "abcd":
            spec = json.load(open(os.path.join(ROOT, "bench", "models", f"{name}.json")))
            out = os.path.join(tmp, name)
            run([losskit, "fit", "--model", os.path.join(ROOT, "bench", "models", f"{name}.json"), "--data",
                 "fashion-mnist", "--epochs", "1", "--verbose", "0", "--no-plots", "--out", out])
            archive = os.path.join(out, "model.keras")
            m = keras.saving.load_model(archive)
            ours = os.path.join(tmp, f"{name}_pred.npy")
            run([losskit, "predict", "--model", archive, "--input", os.path.join(tmp, "x.npy"), "-o", ours])
            diff = float(np.max(np.abs(m.predict(raw, verbose=0) - np.load(ours))))
            want_layers = [l["config"]["name"] for l in spec["config"]["layers"] if l["class_name"] != "InputLayer"]
            got_layers = [l.name for l in m.layers if l.__class__.__name__ != "Rescaling"]
            want_opt = spec["compile_config"]["optimizer"]["class_name"]
            print(f"{name}: Keras loaded {m.name} {[l.name for l in m.layers]}, {type(m.optimizer).__name__} at "
                  f"iteration {int(m.optimizer.iterations.numpy())}; max |prediction difference| {diff:.2e}")
            assert m.name == spec["config"]["name"], (m.name, spec["config"]["name"])
            assert got_layers == want_layers, (got_layers, want_layers)
            assert type(m.optimizer).__name__ == want_opt, (type(m.optimizer).__name__, want_opt)
            assert int(m.optimizer.iterations.numpy()) > 0
            assert diff <= 1e-5, diff


if __name__ == "__main__":
    main()
