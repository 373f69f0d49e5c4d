"""On-disk cache for generated task arrays: one .npz per (task, generator version, options).

Location: ``$EDGESSM_CACHE`` or ``~/.cache/edgessm``, under ``tasks/``. Files are written to a
temporary name in the same folder and renamed into place (``os.replace`` is atomic on POSIX
and Windows), so a reader never sees a half-written file, and two processes generating the
same key at once both end with a complete file. A file that cannot be read is regenerated.
Nothing here downloads anything.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..runtime.fileio import atomic_write

__all__ = ["cache_dir", "cache_key", "cached_arrays"]

_META = "__meta_json__"


def cache_dir() -> Path:
    root = os.environ.get("EDGESSM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgessm")
    return Path(root) / "tasks"


def cache_key(task: str, spec: dict[str, Any]) -> str:
    """A file stem naming the task and hashing everything that determines its arrays."""
    blob = json.dumps({"task": task, **spec}, sort_keys=True, default=str).encode()
    return f"{task}-{hashlib.sha256(blob).hexdigest()[:20]}"


def _read(path: Path) -> Optional[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != _META}
            meta = json.loads(str(z[_META])) if _META in z.files else {}
        return arrays, meta
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return None  # truncated or foreign file: regenerate and overwrite it


def _write(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Through the one atomic writer (runtime/fileio.py): mode 0666 & ~umask, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "task cache file", OSError) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{_META: np.array(json.dumps(meta, sort_keys=True))})


def cached_arrays(
    task: str,
    spec: dict[str, Any],
    generate: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
    *,
    use_cache: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, Any], bool]:
    """Return ``(arrays, meta, hit)``: from the cache if present, else ``generate()`` and store.

    ``spec`` must hold everything the arrays depend on (options, seed, generator version).
    An unwritable cache folder only costs the regeneration next time (a warning says so).
    """
    if not use_cache:
        arrays, meta = generate()
        return arrays, meta, False
    path = cache_dir() / (cache_key(task, spec) + ".npz")
    got = _read(path)
    if got is not None:
        return got[0], got[1], True
    arrays, meta = generate()
    try:
        _write(path, arrays, meta)
    except OSError as e:
        warnings.warn(f"edgessm: could not write the task cache {path} ({e}); set EDGESSM_CACHE to a "
                      "writable folder to skip regeneration next time", RuntimeWarning, stacklevel=3)
    return arrays, meta, False
