"""The task container every loader returns, its shape checks, and the validation split.

Dimensions: n examples, L sequence length (max, right-padded), d_input features per step,
d_output classes or regression dims.

Layout (the training loop, the model and the step graph rely on it):
- float inputs ``x: float32 (n, L, d_input)``; token inputs ``x: int64 (n, L)``, pad id 0.
- the model runs causally and predicts at the last valid step (index ``len - 1``), so
  padding goes at the END and ``len_*`` gives the valid lengths (None: all steps valid).
- classification ``y: int64 (n,)``; regression ``y: float32 (n, d_output)`` (target at the
  last valid step) or ``float32 (n, L, d_output)`` (a target at every step).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import TaskError

__all__ = ["TaskData", "split_validation", "TASK_TYPES", "MAX_CLASSES", "check_task_bytes", "max_task_bytes",
           "check_int"]

TASK_TYPES = ("classification", "regression")

# The memory a task's arrays may take once loaded (training then holds them as tensors, with copies for
# the validation split): a limit checked from array headers and option values before anything is read
# or generated, so a zip bomb or max_len=1e9 is one line, not an out-of-memory kill.
DEFAULT_MAX_BYTES = 2 << 30
MAX_CLASSES = 1 << 16  # classification outputs: a label of 1e9 must not build a 1e9-wide decoder


def max_task_bytes() -> int:
    """EDGESSM_MAX_DATA_BYTES (bytes) or 2 GiB."""
    raw = os.environ.get("EDGESSM_MAX_DATA_BYTES", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_BYTES


def check_task_bytes(label: str, nbytes: float, what: str) -> None:
    """TaskError when ``nbytes`` of arrays would exceed :func:`max_task_bytes`."""
    limit = max_task_bytes()
    if nbytes > limit:
        raise TaskError(f"{label}: {what} would take {nbytes / 2**30:.3g} GiB in memory, over the limit of "
                        f"{limit / 2**30:.3g} GiB; use less data, or raise EDGESSM_MAX_DATA_BYTES if the machine has it")


def check_int(task: str, name: str, v: Any, lo: int, hi: int) -> int:
    """An int option in [lo, hi] (bools and floats refused); TaskError naming the task and the option."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise TaskError(f"{task} {name}={v!r} must be an integer in [{lo}, {hi}]")
    return int(v)


@dataclass
class TaskData:
    name: str                  # a built-in name ("mnist1d", "delay", ...) or "npz:<path>", "smnist:<dir>", ...
    task_type: str             # "classification" | "regression"
    x_train: np.ndarray        # float32 (n, L, d_input) or int64 tokens (n, L)
    y_train: np.ndarray        # int64 (n,) | float32 (n, d_output) | float32 (n, L, d_output)
    x_test: np.ndarray
    y_test: np.ndarray
    len_train: Optional[np.ndarray]  # int64 (n,) valid lengths of right-padded sequences, else None
    len_test: Optional[np.ndarray]
    d_input: int               # features per step (1 for tokens)
    d_output: int              # classes or regression dims
    vocab_size: int            # 0 for float inputs; > 0 for int64 tokens (pad id 0)
    seq_len: int               # L (max length)
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able description and provenance
    # the validation split held out of the training set (``split_validation``), else None
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    len_val: Optional[np.ndarray] = None

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def per_step_targets(self) -> bool:
        """True when regression targets have a time axis (n, L, d_output)."""
        return self.task_type == "regression" and self.y_train.ndim == 3

    def replace(self, **changes: Any) -> "TaskData":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TaskData":
        """Check dtypes, shapes and value ranges against the layout above; raise TaskError."""
        def bad(msg: str) -> TaskError:
            return TaskError(f"task {self.name}: {msg}")

        if self.task_type not in TASK_TYPES:
            raise bad(f"task_type={self.task_type!r} is not one of {', '.join(TASK_TYPES)}")
        L = self.seq_len
        for split in ("train", "test") + (("val",) if self.x_val is not None else ()):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            lengths = getattr(self, f"len_{split}")
            n = x.shape[0]
            if self.vocab_size > 0:
                if x.dtype != np.int64 or x.ndim != 2 or x.shape[1] != L:
                    raise bad(f"x_{split} must be int64 tokens (n, {L}), got {x.dtype} {x.shape}")
                if n and (x.min() < 0 or x.max() >= self.vocab_size):
                    raise bad(f"x_{split} has token ids outside [0, {self.vocab_size})")
            elif x.dtype != np.float32 or x.ndim != 3 or x.shape[1:] != (L, self.d_input):
                raise bad(f"x_{split} must be float32 (n, {L}, {self.d_input}), got {x.dtype} {x.shape}")
            if y.shape[0] != n:
                raise bad(f"x_{split} has {n} examples but y_{split} has {y.shape[0]}")
            if self.task_type == "classification":
                if y.dtype != np.int64 or y.ndim != 1:
                    raise bad(f"y_{split} must be int64 (n,) for classification, got {y.dtype} {y.shape}")
                if n and (y.min() < 0 or y.max() >= self.d_output):
                    raise bad(f"y_{split} has labels outside [0, {self.d_output})")
            else:
                ok = y.dtype == np.float32 and (
                    (y.ndim == 2 and y.shape[1] == self.d_output)
                    or (y.ndim == 3 and y.shape[1:] == (L, self.d_output)))
                if not ok:
                    raise bad(f"y_{split} must be float32 (n, {self.d_output}) or (n, {L}, {self.d_output}), "
                              f"got {y.dtype} {y.shape}")
            if lengths is not None:
                if lengths.dtype != np.int64 or lengths.shape != (n,):
                    raise bad(f"len_{split} must be int64 ({n},), got {lengths.dtype} {lengths.shape}")
                if n and (lengths.min() < 1 or lengths.max() > L):
                    raise bad(f"len_{split} has lengths outside [1, {L}]")
        if self.y_train.ndim != self.y_test.ndim:
            raise bad(f"y_train is {self.y_train.ndim}-D but y_test is {self.y_test.ndim}-D")
        if (self.len_train is None) != (self.len_test is None):
            raise bad("len_train and len_test must both be given or both be None")
        return self


def _take(a: Optional[np.ndarray], idx: np.ndarray) -> Optional[np.ndarray]:
    return None if a is None else a[idx]


def split_validation(data: TaskData, frac: float = 0.1, seed: int = 0) -> TaskData:
    """Hold out a seeded random ``frac`` of the training set as the validation split.

    Returns the same task with the remaining training examples as its train split and the held-out
    ones as ``x_val, y_val, len_val`` (evaluate it as split "val"). The test set is never touched.
    Classification splits are stratified by label, so each class keeps its share (a class with one
    example stays in training).
    """
    if not 0.0 < frac < 1.0:
        raise TaskError(f"split_validation frac={frac!r} must lie in (0, 1)")
    n = data.n_train
    rng = np.random.default_rng(seed)
    if data.task_type == "classification":
        held = []
        for c in np.unique(data.y_train):
            idx = np.flatnonzero(data.y_train == c)
            k = int(round(frac * len(idx)))
            k = min(k, len(idx) - 1)
            held.append(rng.permutation(idx)[:k])
        val_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    else:
        val_idx = np.sort(rng.permutation(n)[: int(round(frac * n))])
    if len(val_idx) == 0 or len(val_idx) == n:
        raise TaskError(f"split_validation frac={frac} of {n} training examples leaves an empty split; "
                        "change frac")
    keep = np.ones(n, dtype=bool)
    keep[val_idx] = False
    tr_idx = np.flatnonzero(keep)
    split_meta = {"validation_frac": frac, "validation_seed": seed, "n_validation": int(len(val_idx))}
    return data.replace(
        x_train=data.x_train[tr_idx], y_train=data.y_train[tr_idx], len_train=_take(data.len_train, tr_idx),
        x_val=data.x_train[val_idx], y_val=data.y_train[val_idx], len_val=_take(data.len_train, val_idx),
        meta={**data.meta, **split_meta})
