"""User data from one ``.npz`` file: ``load_task("npz:<path>")``.

Arrays (n examples, L steps, d features):
- ``x``: float (n, L, d) or (n, L) (-> (n, L, 1)); integer (n, L) token ids with ``vocab_size=``
  given (pad id 0; without vocab_size integer x is read as float features).
- ``y``: the targets, see the inference below.
- ``x_test``, ``y_test``: optional, both or neither; without them a seeded ``test_frac`` split.
- ``lengths``, ``lengths_test``: optional int (n,) valid lengths of right-padded sequences.

Task type (``task_type=`` overrides):
- integer (or bool) 1-D y with at most ``max_classes`` distinct values -> classification,
  ``d_output = num_classes`` if given, else max label + 1;
- float y (or integer y with more distinct values) -> regression: 1-D -> (n, 1),
  2-D (n, d_output) -> target at the last valid step, 3-D (n, L, d_output) -> a target per step.
Every problem raises ``TaskError`` with one line naming the file, the array and the fix.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import TaskError
from ..runtime.fileio import regular_file
from .base import MAX_CLASSES, TASK_TYPES, TaskData, check_task_bytes

__all__ = ["load_npz", "OPTIONS"]

OPTIONS = {"task_type": None, "vocab_size": None, "num_classes": None, "test_frac": 0.2, "max_classes": 100}
KNOWN_ARRAYS = ("x", "y", "x_test", "y_test", "lengths", "lengths_test")


def _member_sizes(path: Path, name: str, how: str) -> None:
    """Every member's npy header against its zip entry and the memory limit, before any array is read.

    numpy allocates what a member's header declares; zip stores what the entry's size says. A zip bomb
    (5 GB of zeros in a few MB) or a header claiming more than the entry holds is refused here.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # not a zip: np.load below says what it is
    total = 0
    with zf:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            try:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError):
                raise TaskError(f"{name}: member '{key}' of {path} is not a .npy array; {how}") from None
            need = float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if need > info.file_size:
                raise TaskError(f"{name}: array '{key}' claims shape {shape} ({need:.3g} bytes) but its entry holds "
                                f"{info.file_size} bytes; the file is damaged: rewrite it")
            total += need
    check_task_bytes(name, total, f"the arrays in {path}")


def _read(path: Path, name: str) -> dict[str, np.ndarray]:
    how = "save with np.savez(path, x=..., y=...)"
    if not path.exists():
        raise TaskError(f"{name}: file not found ({path}); give the path of an .npz file ({how})")
    regular_file(path, f"{name}: path", TaskError, f"give the path of an .npz file ({how})")
    _member_sizes(path, name, how)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        # numpy reads anything that is neither .npy nor .npz as a pickle, which allow_pickle=False refuses
        raise TaskError(f"{name}: {path} is not an .npz file ({type(e).__name__}); {how}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise TaskError(f"{name}: {path} holds a single array (.npy), not an .npz; {how}")
    with z:
        out = {}
        for k in z.files:
            try:
                out[k] = z[k]
            except ValueError:
                raise TaskError(f"{name}: array '{k}' is an object (pickled) array; store plain numeric arrays") from None
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise TaskError(f"{name}: array '{k}' in {path} is unreadable ({e}); rewrite the file") from None
    return out


def _finite(name: str, key: str, a: np.ndarray) -> None:
    if a.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise TaskError(f"{name}: array '{key}' has {bad} NaN/Inf values; clean or impute them before training")


def _numeric(name: str, key: str, a: np.ndarray) -> None:
    if a.dtype.kind not in "biuf":
        raise TaskError(f"{name}: array '{key}' has dtype {a.dtype}; it must be numeric (int, float or bool)")


def _as_float32(name: str, key: str, a: np.ndarray) -> np.ndarray:
    """float32 copy; values beyond float32's range (1e300 in a float64 file) would become Inf."""
    with np.errstate(over="ignore"):
        out = a.astype(np.float32)
    if not np.isfinite(out).all():
        big = float(np.max(np.abs(a.astype(np.float64))))
        raise TaskError(f"{name}: array '{key}' has values up to {big:.3g}, beyond float32's range (3.4e38): "
                        "they would train as Inf; rescale the data")
    return out


def _prepare_x(name: str, key: str, x: np.ndarray, vocab_size: int) -> np.ndarray:
    if x.ndim < 2:
        raise TaskError(f"{name}: array '{key}' must be (n, L) or (n, L, d_input), got shape {x.shape}")
    if x.shape[0] == 0:
        raise TaskError(f"{name}: array '{key}' has no examples")
    if vocab_size > 0:
        if x.dtype.kind not in "iub" or x.ndim != 2:
            raise TaskError(f"{name}: with vocab_size={vocab_size}, array '{key}' must be integer token ids (n, L), "
                            f"got {x.dtype} {x.shape}")
        if x.min() < 0 or x.max() >= vocab_size:
            raise TaskError(f"{name}: array '{key}' has token ids in [{x.min()}, {x.max()}], outside [0, {vocab_size}); "
                            "raise vocab_size (pad id is 0)")
        return x.astype(np.int64)
    if x.ndim == 2:
        x = x[:, :, None]                                                # (n L) -> (n L 1)
    if x.ndim != 3:
        raise TaskError(f"{name}: array '{key}' must be (n, L) or (n, L, d_input), got shape {x.shape}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise TaskError(f"{name}: array '{key}' has an empty axis, shape {x.shape}")
    return _as_float32(name, key, x)


def _prepare_lengths(name: str, key: str, lengths: Optional[np.ndarray], n: int, L: int) -> Optional[np.ndarray]:
    if lengths is None:
        return None
    if lengths.dtype.kind not in "iu" or lengths.shape != (n,):
        raise TaskError(f"{name}: array '{key}' must be integer ({n},) valid lengths, got {lengths.dtype} {lengths.shape}")
    if n and (lengths.min() < 1 or lengths.max() > L):
        raise TaskError(f"{name}: array '{key}' has lengths in [{lengths.min()}, {lengths.max()}], outside [1, {L}] "
                        "(sequences are right-padded to L)")
    return lengths.astype(np.int64)


def _infer_task_type(y: np.ndarray, max_classes: int) -> str:
    if y.ndim == 1 and y.dtype.kind in "biu" and len(np.unique(y)) <= max_classes:
        return "classification"
    return "regression"


def load_npz(path: str, seed: int = 0, task_type: Optional[str] = None, vocab_size: Optional[int] = None,
             num_classes: Optional[int] = None, test_frac: float = 0.2, max_classes: int = 100) -> TaskData:
    name = f"npz:{path}"
    if task_type is not None and task_type not in TASK_TYPES:
        raise TaskError(f"{name}: task_type={task_type!r} is not one of {', '.join(TASK_TYPES)}")
    def int_option(key: str, v: Any, lo: int, hi: int) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise TaskError(f"{name}: {key}={v!r} must be an integer in [{lo}, {hi}]")
        return int(v)

    vocab = int_option("vocab_size", vocab_size, 0, 1 << 24) or 0
    num_classes = int_option("num_classes", num_classes, 2, MAX_CLASSES)
    max_classes = int_option("max_classes", max_classes, 2, MAX_CLASSES)
    if isinstance(test_frac, bool) or not isinstance(test_frac, (int, float)):
        raise TaskError(f"{name}: test_frac={test_frac!r} must be a number in (0, 1)")
    arrays = _read(Path(path).expanduser(), name)
    for key in ("x", "y"):
        if key not in arrays:
            raise TaskError(f"{name}: missing array '{key}' (found {sorted(arrays) or 'none'}); "
                            "save with np.savez(path, x=inputs, y=targets)")
    unknown = sorted(set(arrays) - set(KNOWN_ARRAYS))
    if unknown:
        raise TaskError(f"{name}: unknown arrays {unknown}; allowed: {', '.join(KNOWN_ARRAYS)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise TaskError(f"{name}: give both 'x_test' and 'y_test' or neither (then a seeded test_frac split is used)")
    if "lengths_test" in arrays and "x_test" not in arrays:
        raise TaskError(f"{name}: 'lengths_test' given without 'x_test'")
    if "x_test" in arrays and (("lengths" in arrays) != ("lengths_test" in arrays)):
        raise TaskError(f"{name}: give both 'lengths' and 'lengths_test' or neither")
    for key, a in arrays.items():
        _numeric(name, key, a)
        _finite(name, key, a)

    x = _prepare_x(name, "x", arrays["x"], vocab)
    n, L = x.shape[0], x.shape[1]
    y = arrays["y"]
    if y.shape[:1] != (n,):
        raise TaskError(f"{name}: 'x' has {n} examples but 'y' has shape {y.shape}; they must match along axis 0")
    lengths = _prepare_lengths(name, "lengths", arrays.get("lengths"), n, L)
    if "x_test" in arrays:
        x_test = _prepare_x(name, "x_test", arrays["x_test"], vocab)
        if x_test.shape[1:] != x.shape[1:]:
            raise TaskError(f"{name}: 'x_test' steps/features {x_test.shape[1:]} differ from 'x' {x.shape[1:]}; "
                            "pad both to the same L and pass lengths/lengths_test")
        y_test = arrays["y_test"]
        if y_test.shape[:1] != (x_test.shape[0],) or y_test.shape[1:] != y.shape[1:]:
            raise TaskError(f"{name}: 'y_test' has shape {y_test.shape}; expected ({x_test.shape[0]}, *{y.shape[1:]}) "
                            "to match 'x_test' and 'y'")
        len_test = _prepare_lengths(name, "lengths_test", arrays.get("lengths_test"), x_test.shape[0], L)
        split = "file"
    else:
        if not 0.0 < test_frac < 1.0:
            raise TaskError(f"{name}: test_frac={test_frac!r} must lie in (0, 1)")
        n_test = int(round(test_frac * n))
        if n_test < 1 or n_test >= n:
            raise TaskError(f"{name}: {n} examples with test_frac={test_frac} leave an empty split; "
                            "add x_test/y_test or more examples")
        perm = np.random.default_rng(seed).permutation(n)
        te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        x, x_test, y, y_test = x[tr], x[te], y[tr], y[te]
        lengths, len_test = (None, None) if lengths is None else (lengths[tr], lengths[te])
        split = f"seeded test_frac={test_frac} split (seed {seed})"

    inferred = _infer_task_type(np.concatenate([y, y_test]), max_classes)
    kind = task_type or inferred
    if kind == "classification":
        if y.ndim != 1:
            raise TaskError(f"{name}: classification needs 'y' of shape (n,) integer labels, got {y.shape}")
        for key, a in (("y", y), ("y_test", y_test)):
            if a.dtype.kind == "f" and not np.all(a == np.round(a)):
                raise TaskError(f"{name}: task_type=classification but '{key}' has non-integer values; "
                                "store integer labels 0..C-1")
        y, y_test = y.astype(np.int64), y_test.astype(np.int64)
        lo, hi = int(min(y.min(), y_test.min())), int(max(y.max(), y_test.max()))
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))):
            raise TaskError(f"{name}: num_classes={num_classes!r} must be an integer")
        d_output = int(num_classes) if num_classes is not None else hi + 1
        if d_output > MAX_CLASSES:
            raise TaskError(f"{name}: {d_output} classes (labels up to {hi}) exceed the limit of {MAX_CLASSES}; "
                            "labels must be 0..num_classes-1: relabel them")
        if lo < 0 or hi >= d_output:
            raise TaskError(f"{name}: labels in 'y'/'y_test' span [{lo}, {hi}], outside [0, {d_output}); "
                            "labels must be 0..num_classes-1")
        if d_output < 2:
            raise TaskError(f"{name}: classification needs at least 2 classes, got {d_output}")
    else:
        if num_classes is not None:
            raise TaskError(f"{name}: num_classes is only for classification")
        if y.ndim == 1:
            y, y_test = y[:, None], y_test[:, None]                      # (n,) -> (n 1)
        if y.ndim == 3 and y.shape[1] != L:
            raise TaskError(f"{name}: per-step targets 'y' have {y.shape[1]} steps but 'x' has {L}; "
                            "y must be (n, L, d_output)")
        if y.ndim not in (2, 3):
            raise TaskError(f"{name}: regression 'y' must be (n,), (n, d_output) or (n, L, d_output), got {y.shape}")
        y, y_test = _as_float32(name, "y", y), _as_float32(name, "y_test", y_test)
        d_output = int(y.shape[-1])
        if d_output > MAX_CLASSES:
            raise TaskError(f"{name}: regression targets have {d_output} outputs, over the limit of {MAX_CLASSES}")

    meta: dict[str, Any] = {
        "source": str(Path(path).expanduser().resolve()),
        "task_type_inferred": inferred,
        "task_type_overridden": task_type is not None and task_type != inferred,
        "test_split": split,
        "inputs": "tokens" if vocab else "float",
    }
    if kind == "classification":
        meta["label_counts_train"] = np.bincount(y, minlength=d_output).tolist()
    return TaskData(
        name=name, task_type=kind, x_train=x, y_train=y, x_test=x_test, y_test=y_test,
        len_train=lengths, len_test=len_test,
        d_input=1 if vocab else int(x.shape[2]), d_output=d_output, vocab_size=vocab, seq_len=int(L), meta=meta,
    ).validate()
