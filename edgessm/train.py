"""Training: one loop for `edgessm train` and `edgessm finetune` (and in-training reduction).

S4 practice (Gu et al. 2022, App. D): the SSM parameters (Lambda, dt) get their own learning rate and
no weight decay; AdamW for the rest; linear warm-up then cosine decay per step. Periodic evaluation on
a held-out validation split; the best model (by validation metric) is what gets saved.

Multi-GPU / multi-node: run under ``torchrun``; WORLD_SIZE > 1 switches on DistributedDataParallel
(NCCL on CUDA, gloo on CPU) and a per-rank shard of every epoch. Rank 0 evaluates, logs and saves.

Dimensions: B batch, L length, O outputs.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .model import SSMModel
from .tasks import TaskData

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "build_optimizer", "rebuild_optimizer", "predict_last"]


@dataclass
class TrainResult:
    model: SSMModel
    best_epoch: int
    val_metric: float             # accuracy (classification) or -MSE (regression): higher is better
    test_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    rank_schedule: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


# ---- helpers -------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    """TrainConfig.device -> torch.device; ConfigError when that device is not usable here."""
    from .errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"--device {name}: this torch has no usable CUDA device; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--device {name}: only {n} CUDA device(s) here (cuda:0..cuda:{n - 1})")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: MPS is not available here; use --device cpu (or auto)")
    return dev


def _diverged(what: str, value: float, epoch: int, step: int, cfg: TrainConfig) -> Exception:
    from .errors import TrainingDiverged

    return TrainingDiverged(f"training diverged: {what} is {value} at epoch {epoch}, step {step} (lr={cfg.lr:g}, "
                            f"lr_ssm={cfg.lr_ssm:g}); stopped, nothing written after the last finite model; "
                            "lower --lr / --lr-ssm or check the data")


def build_optimizer(model: SSMModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups: SSM parameters (lr_ssm, no weight decay) and the rest."""
    groups = [
        {"params": model.other_parameters(), "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": model.ssm_parameters(), "lr": cfg.lr_ssm, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, betas=(0.9, 0.98))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def predict_last(y: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """r(B L O) -> r(B O): the output at the last valid step (causal model: padding comes after)."""
    if lengths is None:
        return y[:, -1]
    return y[torch.arange(y.shape[0], device=y.device), lengths - 1]


def _loss(model: torch.nn.Module, data: TaskData, x, y, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)  # (B L O)
    if data.task_type == "classification":
        logits = predict_last(out, lengths)
        return F.cross_entropy(logits, y), (logits.argmax(-1) == y).float().sum()
    if data.per_step_targets:  # (B L O) targets; mask padding
        if lengths is None:
            err = (out - y) ** 2
            return err.mean(), -err.mean(dim=(1, 2)).sum()
        mask = (torch.arange(out.shape[1], device=out.device)[None] < lengths[:, None]).to(out.dtype)  # (B L)
        err = ((out - y) ** 2).mean(-1) * mask
        per = err.sum(1) / mask.sum(1)
        return per.mean(), -per.sum()
    err = (predict_last(out, lengths) - y) ** 2  # (B O)
    return err.mean(), -err.mean(-1).sum()


def _tensors(data: TaskData, split: str, device: torch.device):
    if getattr(data, f"x_{split}", None) is None:
        raise ValueError(f"task {data.name} has no {split!r} split")
    x = torch.from_numpy(getattr(data, f"x_{split}")).to(device)
    y = torch.from_numpy(getattr(data, f"y_{split}")).to(device)
    lens = getattr(data, f"len_{split}")
    return x, y, (torch.from_numpy(lens).to(device) if lens is not None else None)


@torch.no_grad()
def evaluate(model: SSMModel, data: TaskData, split: str = "test", batch_size: int = 500,
             device: Optional[torch.device] = None) -> dict[str, float]:
    """{'accuracy' | 'mse', 'loss', 'n'} on a split: 'test', 'train' or 'val' (after ``split_validation``)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    x, y, lens = _tensors(data, split, device)
    total_loss, total_metric, n = 0.0, 0.0, x.shape[0]
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        loss, metric = _loss(model, data, x[sl], y[sl], lens[sl] if lens is not None else None)
        total_loss += loss.item() * x[sl].shape[0]
        total_metric += metric.item()
    model.train(was_training)
    key = "accuracy" if data.task_type == "classification" else "mse"
    value = total_metric / max(n, 1)
    return {key: value if key == "accuracy" else -value, "loss": total_loss / max(n, 1), "n": n}


def _val_score(metrics: dict[str, float]) -> float:
    return metrics["accuracy"] if "accuracy" in metrics else -metrics["mse"]


# ---- the loop --------------------------------------------------------------------------------
def train(model: SSMModel, data: TaskData, cfg: TrainConfig, *,
          on_best: Optional[Callable[[SSMModel, dict[str, Any]], None]] = None,
          reducer: Optional[Callable[[SSMModel, TrainConfig], tuple[SSMModel, dict[str, Any]]]] = None,
          progress: bool = True) -> TrainResult:
    """Train ``model`` on ``data``; returns the best model (by validation metric) with test metrics.

    on_best(model, info): called on rank 0 whenever validation improves (the CLI saves a checkpoint).
    reducer(model, cfg) -> (model', event): in-training reduction, called at evaluation points during
    the first ``reduce_until`` of training; when model' is not model, the optimiser is rebuilt.
    """
    from tqdm import tqdm

    from .tasks import split_validation

    cfg.validate()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(cfg.device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(cfg.seed)
    train_data = split_validation(data, cfg.val_frac, seed=cfg.seed)  # train split minus the held-out val split
    model = model.to(device)
    x, y, lens = _tensors(train_data, "train", device)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / (cfg.batch_size * world))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_frac * total_steps))

    def wrap(m: SSMModel):
        if world == 1:
            return m
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(m, device_ids=[device.index] if device.type == "cuda" else None)

    net, opt = wrap(model), build_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    best = {"score": -math.inf, "epoch": -1, "state": None, "config": model.config}
    history: list[dict[str, Any]] = []
    schedule: list[dict[str, Any]] = [{"epoch": 0, "ranks": [b.ssm.N for b in model.blocks]}]
    gen = torch.Generator().manual_seed(cfg.seed)
    step, t0 = 0, time.time()
    bar = tqdm(total=total_steps, disable=not progress or rank != 0, unit="step", dynamic_ncols=True)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)  # same permutation on every rank, then sharded
        perm = perm[rank::world].to(device)
        run_loss = 0.0
        for i in range(0, perm.numel(), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            f = _lr_factor(step, total_steps, warmup)
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * f
            loss, _ = _loss(net, data, x[idx], y[idx], lens[idx] if lens is not None else None)
            loss_value = loss.item()
            if not math.isfinite(loss_value):  # every later step and checkpoint would be NaN: stop here
                bar.close()
                raise _diverged("the train loss", loss_value, epoch, step, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            run_loss += loss_value
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_value:.3f}")
        if epoch % cfg.eval_every and epoch != cfg.epochs:
            continue
        # in-training reduction (all ranks, deterministically: same weights -> same reduction)
        if (reducer is not None and (cfg.reduce_energy is not None or cfg.reduce_rank is not None)
                and epoch <= max(1, round(cfg.reduce_until * cfg.epochs)) and epoch % cfg.reduce_every == 0):
            new_model, event = reducer(model, cfg)
            if new_model is not model:
                old_model, model = model, new_model.to(device)
                net, opt = wrap(model), rebuild_optimizer(opt, old_model, model, cfg)
                base_lrs = [cfg.lr, cfg.lr_ssm]
                schedule.append({"epoch": epoch, "ranks": [b.ssm.N for b in model.blocks], **event})
                best["score"] = -math.inf  # compare only models of the current size from here on
        if rank == 0:
            val = evaluate(model, train_data, "val", device=device)
            score = _val_score(val)
            if not (math.isfinite(val["loss"]) and math.isfinite(score)):  # the weights overflowed after the step
                bar.close()
                raise _diverged("the validation loss", val["loss"], epoch, step, cfg)
            rec = {"epoch": epoch, "train_loss": run_loss / max(1, steps_per_epoch), "val": val,
                   "seconds": round(time.time() - t0, 1), "ranks": [b.ssm.N for b in model.blocks]}
            history.append(rec)
            bar.write(f"epoch {epoch:3d}  train loss {rec['train_loss']:.4f}  val "
                      + "  ".join(f"{k} {v:.4f}" for k, v in val.items() if k != "n"), file=sys.stderr)
            if score > best["score"]:
                best.update(score=score, epoch=epoch, config=model.config,
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})
                if on_best is not None:
                    on_best(model, {"epoch": epoch, "val": val})
    bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if best["state"] is not None:
        best_model = SSMModel(best["config"]).to(device)
        best_model.load_state_dict(best["state"])
        best_model.provenance = dict(getattr(model, "provenance", {}))
    else:
        best_model = model
    test = evaluate(best_model, data, "test", device=device) if rank == 0 else {}
    return TrainResult(best_model, best["epoch"], best["score"], test, history, schedule, time.time() - t0)


def rebuild_optimizer(old: torch.optim.Optimizer, old_model: SSMModel, model: SSMModel,
                      cfg: TrainConfig) -> torch.optim.Optimizer:
    """A fresh AdamW for the new shapes, carrying over old Adam state as ``cfg.reduce_moments`` says.

    "fresh": a parameter keeps its state only if the reduction left it alone (same name, shape and
    values); every other one (the reduced SSM's, and e.g. a D the reduction rewrote) starts fresh, its
    step count too, so Adam's bias correction treats its moments as new. "index" (CompreSSM's practice):
    same name and shape keeps the state whatever the values; a parameter that shrank takes the old
    moments' leading entries along every shrunk axis, with the old step count; one with an axis that grew
    starts fresh. "reset" carries nothing.
    """
    new = build_optimizer(model, cfg)
    if cfg.reduce_moments == "reset":
        return new
    old_params = dict(old_model.named_parameters())
    for name, p in model.named_parameters():
        q = old_params.get(name)
        if q is None or q not in old.state or q.dim() != p.dim():
            continue
        if q.shape == p.shape and (cfg.reduce_moments == "index" or torch.equal(q.detach().cpu(), p.detach().cpu())):
            new.state[p] = old.state[q]
        elif cfg.reduce_moments == "index" and all(b <= a for a, b in zip(q.shape, p.shape)):
            cut = tuple(slice(0, b) for b in p.shape)
            new.state[p] = {k: (v[cut].clone() if torch.is_tensor(v) and v.shape == q.shape else v)
                            for k, v in old.state[q].items()}
    return new
