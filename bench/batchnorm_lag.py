"""BatchNorm's running statistics against the batch statistics of a trained model, on its own training data.

    python bench/batchnorm_lag.py model.safetensors --task delay [--json out.json]

Scores the training split (the same one `edgessm train` used: seed and validation split from the
checkpoint's provenance) twice: in inference mode (running statistics, what eval, export and the runtime
use) and in training mode (statistics of each batch, what the training loss saw), and prints both with the
per-channel running vs batch variance of every BatchNorm's input. A large gap means the statistics lag
the weights: the model that was optimised is not the one that is deployed.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch


def main(argv=None) -> dict:
    import edgessm
    from edgessm.model import ChannelBatchNorm
    from edgessm.tasks import load_task, split_validation
    from edgessm.train import evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--task", required=True)
    ap.add_argument("--batch-size", type=int, default=50, help="the training batch size (train mode statistics)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    model = edgessm.load(a.model)
    tc = (getattr(model, "provenance", {}) or {}).get("train_config", {}) or {}
    seed, frac = int(tc.get("seed", 0)), float(tc.get("val_frac", 0.1))
    data = split_validation(load_task(a.task, seed=seed), frac, seed=seed)
    infer = evaluate(model, data, "train")
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, k=k: seen.setdefault(k, []).append(inp[0].detach()))
             for k, m in model.named_modules() if isinstance(m, ChannelBatchNorm)]
    model.eval()
    with torch.no_grad():
        model(x[: a.batch_size * 10])  # the inputs every BatchNorm sees, for their batch statistics
    for h in hooks:
        h.remove()
    norms = {k: {"running_var": dict(model.get_submodule(k).named_buffers())["running_var"].tolist(),
                 "batch_var": v[0].reshape(-1, v[0].shape[-1]).var(0).tolist()} for k, v in seen.items()}
    model.train()  # batch statistics; no dropout in these blocks is assumed (checked below)
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        raise SystemExit("the model has dropout: train mode would add noise; this check needs dropout 0")
    state = {k: v.clone() for k, v in model.state_dict().items()}  # train mode updates the running statistics
    errs, n = [], x.shape[0]
    with torch.no_grad():
        for i in range(0, n, a.batch_size):
            out = model(x[i:i + a.batch_size])
            errs.append(((out - y[i:i + a.batch_size]) ** 2).mean(dim=tuple(range(1, out.dim()))))
    model.load_state_dict(state)
    train_mode = float(torch.cat(errs).mean())
    res = {"model": os.path.abspath(a.model), "task": a.task, "inference_mode_mse": infer.get("mse"),
           "train_mode_mse": train_mode, "batchnorms": norms}
    print(f"training split, MSE: inference mode (running statistics) {infer.get('mse'):.4g}, "
          f"train mode (batch statistics) {train_mode:.4g}")
    for k, v in norms.items():
        r, b = np.array(v["running_var"]), np.array(v["batch_var"])
        print(f"{k}: running / batch variance per channel {np.round(r / b, 2).tolist()}")
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, a.json)
    return res


if __name__ == "__main__":
    main()
