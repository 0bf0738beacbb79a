"""The seed's model on Fashion-MNIST in PyTorch (eager): epoch times and test accuracy as JSON.

python train_epoch_torch.py sgd 32 3 [wide]

`wide`: Flatten -> Dense 2048 relu -> Dense 2048 relu -> Dense 10 (the GEMM-bound config).
"""
import json
import sys
import time

import numpy as np
import torch
from torch import nn

from fashion_data import load

opt_name, batch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wide = len(sys.argv) > 4 and sys.argv[4] == "wide"
torch.manual_seed(0)
x, y, tx, ty = (torch.from_numpy(np.ascontiguousarray(a)) for a in load())
if wide:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))
else:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 10))
# Keras' defaults: SGD lr 0.01; Adam lr 0.001, eps 1e-7; RMSprop lr 0.001, rho 0.9, eps 1e-7.
# "_clipnorm": each gradient clipped to norm 1 (Keras' clipnorm is per tensor).
base_name, clip = opt_name.removesuffix("_clipnorm"), opt_name.endswith("_clipnorm")
params = list(model.parameters())
opt = {
    "sgd": lambda: torch.optim.SGD(params, lr=0.01),
    "adam": lambda: torch.optim.Adam(params, lr=0.001, eps=1e-7),
    "rmsprop": lambda: torch.optim.RMSprop(params, lr=0.001, alpha=0.9, eps=1e-7),
}[base_name]()
loss_fn = nn.CrossEntropyLoss()
times = []
n = x.shape[0]
for _ in range(epochs):
    t = time.perf_counter()
    model.train()
    perm = torch.randperm(n)
    for i in range(0, n, batch):
        idx = perm[i:i + batch]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        if clip:
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, 1.0)
        opt.step()
    times.append(time.perf_counter() - t)
model.eval()
with torch.no_grad():
    acc = (model(tx).argmax(1) == ty).float().mean().item()
print(json.dumps({"framework": "pytorch", "epoch_seconds": times, "test_accuracy": acc}))
