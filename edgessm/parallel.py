"""Thread parallelism over channel chunks for the numpy reduction engine (torch-free).

Every stage of balanced truncation is independent per channel and runs as batched numpy on
(h, ...) arrays. numpy's ufunc loops and LAPACK gufuncs release the GIL, so splitting the
channels into chunks and mapping them over a thread pool uses every core without the
pickling and start-up costs of processes. Chunks of ~128 channels also keep each
temporary (128 x 64 complex = 128 KiB) in cache, which made the pivoted Cholesky 4x faster
than whole-layer arrays on its own.

Threads: ``EDGESSM_THREADS`` if set, else the CPUs this process may run on. Set it to 1 when
the caller already runs one reduction per core, and keep BLAS at one thread
(``OPENBLAS_NUM_THREADS=1``; the CLI does) so the two kinds of threads do not oversubscribe.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .errors import ConfigError

T = TypeVar("T")

__all__ = ["threads", "map_chunks"]


def threads() -> int:
    """Worker threads for channel-parallel work: EDGESSM_THREADS, else the usable CPU count."""
    env = os.environ.get("EDGESSM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"EDGESSM_THREADS must be a positive integer, got {env!r}; unset it to use every CPU")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def map_chunks(fn: Callable[[slice], T], H: int, chunk: int) -> list[T]:
    """[fn(slice(i, i + chunk)) for i in range(0, H, chunk)], run on up to threads() threads, in order."""
    parts = [slice(i, min(i + chunk, H)) for i in range(0, H, chunk)]
    n = min(threads(), len(parts))
    if n <= 1:
        return [fn(p) for p in parts]
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, parts))
