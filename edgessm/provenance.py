"""Provenance: what made a model, in one schema, written by every command and read by export, info and compress.

A checkpoint's ``edgessm.provenance`` metadata is a JSON object. The keys edgessm writes and reads:

    command          str    train | finetune | compress | import | api (a model built in Python)
    edgessm_version  str    the writer's version
    task             str    the task name (or {"name": str, "classes": [...]} from older writers)
    classes          [str]  class names of a classification task, in label order (exported as y's meaning)
    seq_len          int    the task's sequence length (``compress --horizon auto``)
    task_meta, task_options, train_config, metrics {val, test, best_val}, best_epoch, rank_schedule,
    history          what training saw and reached
    reduction        the compression report summary (method, selector, modes, bounds, per-layer rows)
    parent           {"path": str, "sha256": str}: the checkpoint this one was made from
    import           the import: family, level, source file and its sha256, options, the import check

``derive(base, command, **updates)`` is how a command makes a child's provenance (task, classes and
seq_len carry over; the parent's history does not). ``check_provenance`` is the one reader-side check.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional

from .errors import CheckpointError

__all__ = ["check_provenance", "derive", "task_classes", "MAX_SEQ_LEN"]

# keys that describe the task and follow a model through finetune, compress and export
# (not metrics or train_config: a compressed model's accuracy is not its parent's; train and finetune write theirs)
_CARRIED = ("task", "classes", "seq_len", "task_meta", "task_options", "import")


def derive(base: Optional[dict[str, Any]], command: str, **updates: Any) -> dict[str, Any]:
    """A child's provenance: the parent's task description carried over, then ``updates`` (None values dropped)."""
    from . import __version__

    base = base or {}
    out = {k: base[k] for k in _CARRIED if k in base}
    if "classes" not in out:
        classes = task_classes(base)
        if classes is not None:
            out["classes"] = classes
    out.update({"command": command, "edgessm_version": __version__})
    out.update({k: v for k, v in updates.items() if v is not None})
    return out


def task_classes(prov: dict[str, Any]) -> Optional[list]:
    """Class names, wherever a writer put them (``classes``; older: task.classes, task_meta.class_names)."""
    task = prov.get("task")
    for cand in (prov.get("classes"), task.get("classes") if isinstance(task, dict) else None,
                 (prov.get("task_meta") or {}).get("classes") if isinstance(prov.get("task_meta"), dict) else None,
                 (prov.get("task_meta") or {}).get("class_names") if isinstance(prov.get("task_meta"), dict) else None):
        if isinstance(cand, (list, tuple)):
            return [str(c) for c in cand]
    return None


MAX_SEQ_LEN = 1 << 24  # as config.MAX_HORIZON: `compress --horizon auto` uses the recorded seq_len


def check_provenance(prov: dict[str, Any], where: str = "provenance") -> None:
    """The provenance keys later commands read (info, eval, compress --horizon auto, export) have their types.

    Provenance is free-form JSON in a user's file: a hand-edited `seq_len: "40"` or `parent: 3` must be
    one line naming the key, not a traceback three commands later.
    """
    def bad(key: str, v: Any, want: str) -> CheckpointError:
        r = repr(v)
        return CheckpointError(f"{where}: provenance {key}={r if len(r) <= 60 else r[:57] + '...'} "
                               f"must be {want}; the metadata was edited or damaged: re-save the checkpoint")

    def num(v: Any) -> bool:
        return v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool))

    def integer(v: Any, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    for key in ("command", "edgessm_version"):
        if key in prov and not isinstance(prov[key], str):
            raise bad(key, prov[key], "a string")
    task = prov.get("task", "")
    if not (isinstance(task, str) or (isinstance(task, dict) and isinstance(task.get("name", ""), str)
                                      and isinstance(task.get("classes", []), list))):
        raise bad("task", task, 'a task name, or {"name": str, "classes": [...]}')
    if "seq_len" in prov and not integer(prov["seq_len"], 1, MAX_SEQ_LEN):
        raise bad("seq_len", prov["seq_len"], f"an integer in [1, {MAX_SEQ_LEN}]")
    if "best_epoch" in prov and not integer(prov["best_epoch"], -1, 1 << 30):
        raise bad("best_epoch", prov["best_epoch"], "an integer epoch")
    for key in ("task_meta", "task_options", "train_config", "metrics", "reduction"):
        if key in prov and not isinstance(prov[key], dict):
            raise bad(key, prov[key], "a JSON object")
    if "parent" in prov:
        par = prov["parent"]
        if not isinstance(par, dict) or not isinstance(par.get("path"), str) or not isinstance(par.get("sha256", ""), str):
            raise bad("parent", par, 'an object {"path": ..., "sha256": ...} of strings')
    seed = prov.get("train_config", {}).get("seed", 0)
    if not integer(seed, 0, 2**32 - 1):
        raise bad("train_config.seed", seed, "an integer in [0, 2^32 - 1]")
    metrics = prov.get("metrics", {})
    for key in ("val", "test"):
        m = metrics.get(key, {})
        if not isinstance(m, dict) or not all(num(v) for v in m.values()):
            raise bad(f"metrics.{key}", m, "an object of numbers")
    if not num(metrics.get("best_val")):
        raise bad("metrics.best_val", metrics["best_val"], "a number")
    sched = prov.get("rank_schedule", [])
    if not isinstance(sched, list) or not all(
            isinstance(e, dict) and integer(e.get("epoch"), 0, 1 << 30) and isinstance(e.get("ranks"), list)
            and all(integer(r, 0, 1 << 20) for r in e["ranks"]) for e in sched):
        raise bad("rank_schedule", sched, 'a list of {"epoch": int, "ranks": [int, ...]}')
    red = prov.get("reduction", {})
    layers = red.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(l, dict) and num(l.get("max_bound")) for l in layers):
        raise bad("reduction.layers", layers, 'a list of objects with a numeric "max_bound"')
    if "classes" in prov and not (isinstance(prov["classes"], list) and all(isinstance(c, str) for c in prov["classes"])):
        raise bad("classes", prov["classes"], "a list of class names (strings)")
    if "import" in prov and not isinstance(prov["import"], dict):
        raise bad("import", prov["import"], "a JSON object")
    if "history" in prov and not isinstance(prov["history"], list):
        raise bad("history", prov["history"], "a list")
