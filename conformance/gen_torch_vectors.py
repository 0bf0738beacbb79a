#!/usr/bin/env python
"""Reference vectors for losskit's PyTorch losses, made by running PyTorch itself.

Run with:  python gen_torch_vectors.py   (torch 2.x; float64)

Writes torch_vectors.json: a list of
  {loss, config, y_true, y_pred, expected, expected_shape, grad}
where `y_pred` is in losskit's layout (several inputs stacked: MarginRanking (N,2) = [x1, x2],
CosineEmbedding (N,2,D), TripletMargin (N,3,D) = [a, p, n], GaussianNLL (...,2) = [mean, var])
and `grad` is d(sum of the output)/d(y_pred).
"""
import json
import os

import numpy as np
import torch
from torch import nn

torch.set_default_dtype(torch.float64)
rng = np.random.RandomState(7)
CASES = []


def r(*shape, lo=-1.5, hi=1.5):
    return np.round(rng.uniform(lo, hi, size=shape), 4)


def case(loss, config, y_true, y_pred, call):
    yp = torch.tensor(np.asarray(y_pred, dtype=np.float64), requires_grad=True)
    yt = torch.tensor(np.asarray(y_true, dtype=np.float64))
    kwargs = {k: (torch.tensor(v) if k == "weight" else v) for k, v in config.items()}
    out = call(getattr(nn, loss)(**kwargs), yt, yp)
    out.sum().backward()
    CASES.append({
        "loss": loss,
        "config": config,
        "y_true": np.asarray(y_true).tolist(),
        "y_pred": np.asarray(y_pred).tolist(),
        "expected": out.detach().numpy().tolist(),
        "expected_shape": list(out.shape),
        "grad": yp.grad.numpy().tolist(),
    })


plain = lambda m, t, p: m(p, t)  # noqa: E731
index = lambda m, t, p: m(p, t.long())  # noqa: E731

logits = r(4, 3)
labels = [0, 2, 1, 2]
for red in ["mean", "sum", "none"]:
    case("NLLLoss", {"reduction": red}, labels, np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True)), index)
    case("CrossEntropyLoss", {"reduction": red}, labels, logits, index)
case("NLLLoss", {"weight": [1.0, 2.0, 0.5], "ignore_index": 2}, [0, 2, 1, 1], r(4, 3, lo=-3, hi=-0.1), index)
case("CrossEntropyLoss", {"weight": [1.0, 2.0, 0.5]}, labels, logits, index)
case("CrossEntropyLoss", {"weight": [1.0, 2.0, 0.5], "label_smoothing": 0.2, "ignore_index": 1}, [0, 1, 1, 2], logits, index)
case("CrossEntropyLoss", {"label_smoothing": 0.1}, labels, logits, index)
probs = np.abs(r(4, 3)) + 0.1
probs = probs / probs.sum(1, keepdims=True)
case("CrossEntropyLoss", {}, probs, logits, plain)
case("CrossEntropyLoss", {"weight": [1.0, 2.0, 0.5], "label_smoothing": 0.1, "reduction": "sum"}, probs, logits, plain)
case("CrossEntropyLoss", {}, [[0, 1], [2, 0]], r(2, 3, 2), index)

x, y = r(3, 4), r(3, 4)
for cfg in [{}, {"beta": 0.5}, {"beta": 0.0, "reduction": "sum"}, {"beta": 2.0, "reduction": "none"}]:
    case("SmoothL1Loss", cfg, y, x, plain)

pm = [1.0, -1.0, 1.0, -1.0]
pair = r(4, 2)
for cfg in [{}, {"margin": 0.3, "reduction": "none"}]:
    case("MarginRankingLoss", cfg, pm, pair, lambda m, t, p: m(p[:, 0], p[:, 1], t))
for cfg in [{}, {"margin": 0.5, "reduction": "sum"}]:
    case("HingeEmbeddingLoss", cfg, [[1.0, -1.0, -1.0], [1.0, 1.0, -1.0]], r(2, 3, lo=-1, hi=2), plain)
case("SoftMarginLoss", {}, [[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]], r(2, 3), plain)
case("SoftMarginLoss", {"reduction": "none"}, [[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]], r(2, 3), plain)
ml = [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
case("MultiLabelSoftMarginLoss", {}, ml, r(3, 4), plain)
case("MultiLabelSoftMarginLoss", {"weight": [1.0, 0.5, 2.0, 1.5], "reduction": "none"}, ml, r(3, 4), plain)
case("MultiLabelMarginLoss", {}, [[3, 0, -1, 1], [1, 2, 3, -1], [0, -1, -1, -1]], r(3, 4), index)
case("MultiLabelMarginLoss", {"reduction": "none"}, [[3, 0, -1, 1], [1, 2, 3, -1], [0, -1, -1, -1]], r(3, 4), index)
emb2 = r(3, 2, 4)
for cfg in [{}, {"margin": 0.2, "reduction": "none"}]:
    case("CosineEmbeddingLoss", cfg, [1.0, -1.0, -1.0], emb2, lambda m, t, p: m(p[:, 0], p[:, 1], t))
for cfg in [{}, {"p": 2, "margin": 0.7, "weight": [1.0, 2.0, 0.5], "reduction": "none"}]:
    case("MultiMarginLoss", cfg, labels, logits, index)
trip = r(3, 3, 4)
for cfg in [{}, {"margin": 0.5, "p": 1.0, "swap": True, "reduction": "none"}, {"p": 3.0, "reduction": "sum"}]:
    case("TripletMarginLoss", cfg, [0.0, 0.0, 0.0], trip, lambda m, t, p: m(p[:, 0], p[:, 1], p[:, 2]))
mean_var = np.stack([r(3, 2), np.abs(r(3, 2)) + 0.05], axis=-1)
mean_var[0, 0, 1] = 1e-9  # below eps: clamped
for cfg in [{}, {"full": True, "reduction": "none"}]:
    case("GaussianNLLLoss", cfg, r(3, 2), mean_var, lambda m, t, p: m(p[..., 0], t, p[..., 1]))
counts = [[0.0, 1.0, 3.0], [2.0, 0.0, 5.0]]
case("PoissonNLLLoss", {}, counts, r(2, 3), plain)
case("PoissonNLLLoss", {"log_input": False, "full": True, "reduction": "none"}, counts, np.abs(r(2, 3)) + 0.2, plain)
logq = np.log(probs)
for cfg in [{}, {"reduction": "batchmean"}, {"reduction": "sum"}, {"reduction": "none"}]:
    case("KLDivLoss", cfg, np.where(probs > 0.3, probs, 0.0), logq, plain)
case("KLDivLoss", {"log_target": True, "reduction": "batchmean"}, np.log(probs[::-1].copy()), logq, plain)

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_vectors.json"), "w") as f:
    json.dump(CASES, f, indent=1)
print(len(CASES), "vectors, torch", torch.__version__)
