"""MNIST-1D (Greydanus 2020, "Scaling down deep learning"), generated locally.

The ``mnist1d`` package builds each example from one of ten 12-point digit templates by
padding, dilation, scaling, translation, correlated + iid noise and shear, then resamples
to 40 steps. Its defaults give 5000 examples split 4000 train / 1000 test, classes balanced
to within a few percent. ``make_dataset`` standardises with ONE mean and std computed over
all 5000 examples (train and test together), so x has mean ~0 and std ~1 overall.

We call ``make_dataset`` (never ``get_dataset``, which downloads) with the package's
default arguments and ``seed = 42 + seed``, so ``seed=0`` is the package's reference
dataset. Output: x float32 (n, 40, 1), y int64 (n,). Generation takes ~2 s (+ ~1 s of
imports) on one core; the arrays are cached (see ``cache.py``).
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np

from ..errors import TaskError
from .base import TaskData, check_task_bytes
from .cache import cached_arrays

__all__ = ["load_mnist1d", "OPTIONS"]

OPTIONS = {"num_samples": 5000, "cache": True}  # num_samples: total, split 80/20 by the generator
GENERATOR_VERSION = 1  # bump when the arrays produced for the same options change

# test accuracy on the default 4000/1000 split, from the mnist1d README table (Greydanus 2020)
PUBLISHED_BASELINES = {
    "logistic_regression": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91, "human": 0.96,
    "source": "Greydanus 2020, Scaling down deep learning (arXiv:2011.14439); github.com/greydanus/mnist1d README",
}


def _generator_args(num_samples: int, seed: int) -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only get_dataset uses it, to download
    args["num_samples"] = num_samples
    args["seed"] = 42 + seed
    return args


def _generate(args: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset reseeds the global `random` and `np.random` generators: restore them so a
    # cache miss does not change the caller's random stream (a cache hit would not).
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = {
        "x_train": np.asarray(d["x"], dtype=np.float32)[:, :, None],       # (n L 1)
        "y_train": np.asarray(d["y"], dtype=np.int64),                     # (n,)
        "x_test": np.asarray(d["x_test"], dtype=np.float32)[:, :, None],
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }
    return arrays, {}


def load_mnist1d(seed: int = 0, num_samples: int = 5000, cache: bool = True) -> TaskData:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 20:
        raise TaskError(f"mnist1d num_samples={num_samples!r} must be an integer >= 20 "
                        "(10 classes, split 80/20 into train/test)")
    # 40 steps of float32 per sample, plus mnist1d's own float64 working copies (~4x)
    check_task_bytes("mnist1d", 4 * 8.0 * 40 * num_samples, f"num_samples={num_samples}")
    try:
        import mnist1d  # noqa: F401
    except ImportError:
        raise TaskError("task mnist1d needs the mnist1d package: pip install mnist1d") from None
    args = _generator_args(int(num_samples), int(seed))
    spec = {"version": GENERATOR_VERSION, "args": args, "package": _package_version()}
    arrays, _, _ = cached_arrays("mnist1d", spec, lambda: _generate(args), use_cache=cache)
    meta = {
        "source": "generated locally by mnist1d.data.make_dataset (no download)",
        "generator_args": args,
        "mnist1d_version": spec["package"],
        "class_names": [str(i) for i in range(10)],
        "standardisation": "make_dataset subtracts one mean and divides by one std over train+test together",
        "published_baselines": PUBLISHED_BASELINES,
    }
    L = arrays["x_train"].shape[1]
    return TaskData(
        name="mnist1d", task_type="classification",
        x_train=arrays["x_train"], y_train=arrays["y_train"],
        x_test=arrays["x_test"], y_test=arrays["y_test"],
        len_train=None, len_test=None,
        d_input=1, d_output=10, vocab_size=0, seq_len=int(L), meta=meta,
    ).validate()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("mnist1d")
    except Exception:  # metadata missing (vendored copy): the key just loses this detail
        return "unknown"
