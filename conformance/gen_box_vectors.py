#!/usr/bin/env python
"""Reference vectors for GIoULoss' `giou`, `diou` and `ciou` modes, made by running torchvision's
`generalized_box_iou_loss`, `distance_box_iou_loss` and `complete_box_iou_loss`.

Run with:  python gen_box_vectors.py   (torch 2.x, torchvision 0.2x; float64, eps = 0)

Writes box_vectors.json: a list of {mode, y_true, y_pred, expected, grad?} with boxes in
losskit's (TFA's) order [y_min, x_min, y_max, x_max] (torchvision's is [x1, y1, x2, y2]),
`expected` the per-box losses and `grad` d(sum of the losses)/d(y_pred).

CIoU: torchvision computes alpha = v / (1 - IoU + v) under `torch.no_grad()` (alpha is a
constant in its gradient); losskit differentiates through alpha (the exact gradient of the
value). So CIoU cases carry values only; losskit's CIoU gradient is checked against finite
differences instead.
"""
import json
import os

import numpy as np
import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

torch.set_default_dtype(torch.float64)
rng = np.random.RandomState(11)


def boxes(n):
    """n boxes [y_min, x_min, y_max, x_max] with positive width and height."""
    lo = np.round(rng.uniform(-2.0, 2.0, size=(n, 2)), 3)
    size = np.round(rng.uniform(0.2, 2.5, size=(n, 2)), 3)
    return np.concatenate([lo, lo + size], axis=1)


def to_xyxy(b):
    return b[..., [1, 0, 3, 2]]


def from_xyxy(g):
    return g[..., [1, 0, 3, 2]]


CASES = []
FUNCS = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}
true = boxes(6)
pred = boxes(6)
# Two overlapping pairs, one nested, one identical-centre, one disjoint: every branch of IoU.
pred[0] = true[0] + np.array([0.1, -0.2, 0.3, 0.1])
pred[1] = true[1] + np.array([0.05, 0.05, -0.05, -0.05])
pred[2] = np.array([true[2][0] - 0.3, true[2][1] - 0.2, true[2][2] + 0.3, true[2][3] + 0.2])
for mode, fn in FUNCS.items():
    yp = torch.tensor(to_xyxy(pred), requires_grad=True)
    yt = torch.tensor(to_xyxy(true))
    out = fn(yp, yt, reduction="none", eps=0.0)
    out.sum().backward()
    entry = {"mode": mode, "y_true": true.tolist(), "y_pred": pred.tolist(),
             "expected": out.detach().numpy().tolist()}
    if mode != "ciou":
        entry["grad"] = from_xyxy(yp.grad.numpy()).tolist()
    CASES.append(entry)

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "box_vectors.json")
with open(out, "w") as f:
    json.dump(CASES, f, indent=1)
    f.write("\n")
print(f"{len(CASES)} cases -> {out}")
