"""Run by test_keras_agrees_with_torch.py in a process of its own (PyTorch
and TensorFlow do not share a process here: see mk/python.mk): the MLP of the
ground-truth tests, trained by gdiv.torch.DiversityMonitor on the batches
given as JSON on stdin; prints the monitor's history and the final weights."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gdiv import BatchSizePolicy
from gdiv.torch import DiversityMonitor

job = json.load(sys.stdin)
X, y = np.asarray(job["X"]), np.asarray(job["y"], dtype=np.int64)
state = {k: torch.as_tensor(np.asarray(v)) for k, v in job["state"].items()}
model = nn.Sequential(nn.Linear(X.shape[1], job["hidden"]), nn.Tanh(), nn.Linear(job["hidden"], 10)).double()
model.load_state_dict(state)
opt = torch.optim.SGD(model.parameters(), lr=job["lr"])
policy = BatchSizePolicy(**job["policy"])
mon = DiversityMonitor(
    model, policy=policy, optimizer=opt, batch_size=job["batch"], estimator_beta=0.9, dataset_size=len(y), sampling="replacement", seed=job["seed"]
)
Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
for idx in job["batches"]:
    ii = torch.as_tensor(idx)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(Xt[ii]), yt[ii]).backward()
    mon.step()
    opt.step()
print(json.dumps({"history": mon.history, "weights": {k: v.tolist() for k, v in model.state_dict().items()}}))
