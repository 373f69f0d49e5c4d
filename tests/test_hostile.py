"""Hostile inputs: every file, option and stream a user can give gets one line, exit code 2, no traceback,
nothing half-written and no input overwritten (README's promise).

The table ``CASES`` holds one row per hostile input, grouped by class. To add one: write a row with
the command line (paths relative to a fresh copy of the ``world`` folder), an optional ``setup`` that
plants the hostile file, and a substring of the expected error line. ``test_hostile_case`` then checks
the promise for it: exit code, one ``error:`` line (the last line of stderr), no traceback, every
pre-existing file byte-identical afterwards, no new file (nor temp file) left behind.

The tests after the table cover what a table row cannot: file modes under a umask, pipes closed
early, a full stdout, NaN in a stream, what onnxruntime prints.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import test_runtime_graphs as fx
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import edgessm
from edgessm.cli import main as edgessm_main
from edgessm.config import ModelConfig
from edgessm.model import SSMModel
from edgessm.runtime.cli import main as runtime_main

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = dict(d_input=1, d_output=2, d_model=4, n_layers=2, d_state=3)
TRAIN = ["--d-model", "4", "--n-layers", "1", "--d-state", "2", "--epochs", "2", "--batch-size", "8", "--quiet"]


# ---------------------------------------------------------------------------------------- the world
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """One folder with a checkpoint, its ONNX graphs, a dataset and runtime inputs; each case gets a copy."""
    d = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    model = SSMModel(ModelConfig(**TINY_CFG))
    edgessm.save(model, d / "m.safetensors", provenance={"task": "npz:data.npz", "seq_len": 6, "command": "train"})
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.standard_normal((40, 6, 1)).astype(np.float32), y=rng.integers(0, 2, 40))
    fx.save_models(d, {"g": dict(d_input=3), "tok": dict(vocab=7)})     # g.onnx (d_input 3), tok.onnx (tokens)
    np.save(d / "x.npy", rng.standard_normal((5, 3)).astype(np.float32))
    return d


def _tensors(world: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(world / "m.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def ckpt(name: str, config: Optional[dict] = None, provenance: Optional[dict] = None,
         tensors: Optional[Callable[[dict], dict]] = None) -> Callable[[Path], None]:
    """setup: write ``name`` from m.safetensors with config keys / provenance replaced (raw, no validation)."""
    def setup(d: Path) -> None:
        t, meta = _tensors(d)
        cfg = json.loads(meta["edgessm.config"])
        cfg.update(config or {})
        meta["edgessm.config"] = json.dumps(cfg)
        if provenance is not None:
            meta["edgessm.provenance"] = json.dumps({**json.loads(meta["edgessm.provenance"]), **provenance})
        save_file(tensors(t) if tensors else t, str(d / name), metadata=meta)
    return setup


def npz(name: str, **arrays) -> Callable[[Path], None]:
    return lambda d: np.savez(d / name, **{k: v() if callable(v) else v for k, v in arrays.items()})


def fifo(name: str) -> Callable[[Path], None]:
    return lambda d: os.mkfifo(d / name)


def raw_file(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data)


def npy_claiming(name: str, shape: tuple) -> Callable[[Path], None]:
    """A .npy whose header declares ``shape`` float32 but holds 16 bytes."""
    def setup(d: Path) -> None:
        with open(d / name, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            f.write(b"\0" * 16)
    return setup


def graph(name: str, state_shape=(4, 6), meta: Optional[dict] = None) -> Callable[[Path], None]:
    """A foreign step graph: x (batch, 3) -> y, one state of ``state_shape``, Identity all the way."""
    from onnx import TensorProto, helper

    def setup(d: Path) -> None:
        io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
              helper.make_tensor_value_info("past_state.0", TensorProto.FLOAT, ["batch", *state_shape])]
        out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
               helper.make_tensor_value_info("present_state.0", TensorProto.FLOAT, ["batch", *state_shape])]
        nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["past_state.0"], ["present_state.0"])]
        m = helper.make_model(helper.make_graph(nodes, "foreign", io, out), opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        if meta:
            helper.set_model_props(m, {k: json.dumps(v) for k, v in meta.items()})
        (d / name).write_bytes(m.SerializeToString())
    return setup


def ir_version(name: str, v: int) -> Callable[[Path], None]:
    import onnx

    def setup(d: Path) -> None:
        m = onnx.load(str(d / "g.onnx"))
        m.ir_version = v
        onnx.save(m, str(d / name))
    return setup


def zipped(name: str, member: str, header_shape: tuple, data: bytes) -> Callable[[Path], None]:
    """An npz member whose npy header claims ``header_shape`` but stores ``data``."""
    def setup(d: Path) -> None:
        import io
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
        with zipfile.ZipFile(d / name, "w") as z:
            z.writestr(member + ".npy", buf.getvalue() + data)
            z.writestr("y.npy", _npy_bytes(np.zeros(4, np.int64)))
    return setup


def _npy_bytes(a: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def many(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for s in setups:
            s(d)
    return setup


# ---------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    argv: list                                # the command line; "rt" as first item: python -m edgessm.runtime
    expect: str                               # a substring of the error line
    setup: Optional[Callable[[Path], None]] = None
    stdin: Optional[str] = None
    env: Optional[dict] = None                # environment variables set for the run


NO_CUDA = not torch.cuda.is_available()


def _idx_dir(d: Path, images: int = 3, dotted_labels: bool = False) -> None:
    """The four MNIST idx files, tiny; ``images`` is what the training-image header declares."""
    import gzip

    d.mkdir()
    for split in ("train", "t10k"):
        n = images if split == "train" else 3
        (d / f"{split}-images-idx3-ubyte").write_bytes(
            (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * (3 * 784))
        name = f"{split}-labels.idx1-ubyte.gz" if dotted_labels else f"{split}-labels-idx1-ubyte"
        data = (2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\0\1\2"
        (d / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)

CASES = [
    # ---- no output path may resolve to an input or to another output of the same command
    Case("export-o-is-input", ["export", "m.safetensors", "-o", "m.safetensors"], "is the checkpoint"),
    Case("export-o-symlink-to-input", ["export", "m.safetensors", "-o", "link.onnx"], "is the checkpoint",
         setup=lambda d: os.symlink(d / "m.safetensors", d / "link.onnx")),
    Case("export-o-hardlink-to-input", ["export", "m.safetensors", "-o", "hard.onnx"], "is the checkpoint",
         setup=lambda d: os.link(d / "m.safetensors", d / "hard.onnx")),
    Case("export-chunk-graph-is-input", ["export", "m.chunk4.onnx", "-o", "m.onnx", "--chunk", "4"], "is the checkpoint",
         setup=lambda d: shutil.copy(d / "m.safetensors", d / "m.chunk4.onnx")),
    Case("export-o-is-a-folder", ["export", "m.safetensors", "-o", "sub"], "directory", setup=lambda d: (d / "sub").mkdir()),
    Case("compress-report-is-input", ["compress", "m.safetensors", "--rank", "2", "-o", "s.safetensors",
                                      "--report", "m.safetensors"], "is the checkpoint"),
    Case("compress-plot-is-input", ["compress", "m.safetensors", "--rank", "2", "-o", "s.safetensors",
                                    "--plot", "./m.safetensors"], "is the checkpoint"),
    Case("compress-report-is-o", ["compress", "m.safetensors", "--rank", "2", "-o", "s.safetensors",
                                  "--report", "s.safetensors"], "same file"),
    Case("compress-o-is-input", ["compress", "m.safetensors", "--rank", "2", "-o", "m.safetensors"], "is the checkpoint"),
    Case("finetune-o-is-input", ["finetune", "m.safetensors", "--task", "npz:data.npz", "-o", "m.safetensors"],
         "is the checkpoint"),
    Case("train-o-is-the-data", ["train", "--task", "npz:data.npz", "-o", "data.npz", *TRAIN], "is the --task file"),
    Case("export-o-dotdot-to-input", ["export", "m.safetensors", "-o", "sub/../m.safetensors"], "is the checkpoint",
         setup=lambda d: (d / "sub").mkdir()),
    Case("compress-plot-is-report", ["compress", "m.safetensors", "--rank", "2", "-o", "s.safetensors",
                                     "--report", "r.json", "--plot", "r.json"], "same file"),
    Case("finetune-o-is-the-data", ["finetune", "m.safetensors", "--task", "npz:data.npz", "-o", "data.npz"],
         "is the --task file"),
    Case("compress-report-to-a-device", ["compress", "m.safetensors", "--rank", "2", "-o", "s.safetensors",
                                         "--report", "/dev/null"], "it is a device"),
    Case("runtime-output-is-a-folder", ["rt", "g.onnx", "-i", "x.npy", "-o", "out.npy"], "it is a folder",
         setup=lambda d: (d / "out.npy").mkdir()),
    Case("train-o-in-missing-folder", ["train", "--task", "npz:data.npz", "-o", "no/such/m.safetensors", *TRAIN],
         "does not exist"),
    Case("runtime-output-is-input", ["rt", "g.onnx", "-i", "x.npy", "-o", "x.npy"], "is the --input"),
    Case("runtime-output-is-model", ["rt", "g.onnx", "-i", "x.npy", "-o", "g.npy"], "is the model",
         setup=lambda d: os.symlink(d / "g.onnx", d / "g.npy")),
    Case("runtime-stdin-to-missing-folder", ["rt", "g.onnx", "-i", "-", "-o", "no/y.npy"], "no/y.npy",
         stdin="1,2,3\n" * 3),
    # ---- a diverged run is an error, and no NaN checkpoint is written
    Case("train-lr-1e30", ["train", "--task", "npz:data.npz", "-o", "out.safetensors", "--lr", "1e30", *TRAIN],
         "training diverged"),
    Case("train-lr-nan", ["train", "--task", "npz:data.npz", "-o", "out.safetensors", "--lr", "nan", *TRAIN],
         "train.lr=nan"),
    Case("train-float32-overflow", ["train", "--task", "npz:big.npz", "-o", "out.safetensors", *TRAIN],
         "beyond float32's range", setup=npz("big.npz", x=np.full((20, 4), 1e300), y=np.arange(20) % 2)),
    Case("finetune-dt-overflows", ["finetune", "hot.safetensors", "--task", "npz:data.npz", "-o", "out.safetensors",
                                   "--epochs", "1", "--quiet"], "training diverged",
         setup=ckpt("hot.safetensors", tensors=lambda t: {k: (torch.full_like(v, 800.0) if k.endswith("log_dt") else v)
                                                           for k, v in t.items()})),
    # ---- checkpoint configs: the types and ranges of every field
    Case("config-float-dim", ["info", "c.safetensors"], "config.d_state=2.5", setup=ckpt("c.safetensors", {"d_state": 2.5})),
    Case("config-string-dim", ["info", "c.safetensors"], "config.d_model='4'", setup=ckpt("c.safetensors", {"d_model": "4"})),
    Case("config-bool-dim", ["info", "c.safetensors"], "config.n_layers=True", setup=ckpt("c.safetensors", {"n_layers": True})),
    Case("config-dropout", ["eval", "c.safetensors", "--task", "npz:data.npz"], "config.dropout=1.5",
         setup=ckpt("c.safetensors", {"dropout": 1.5})),
    Case("config-prenorm-string", ["export", "c.safetensors", "-o", "c.onnx"], "config.prenorm='false'",
         setup=ckpt("c.safetensors", {"prenorm": "false"})),
    Case("config-null-dim", ["info", "c.safetensors"], "config.d_output=None", setup=ckpt("c.safetensors", {"d_output": None})),
    Case("config-layer-d-state-string", ["info", "c.safetensors"], "layer_d_state",
         setup=ckpt("c.safetensors", {"layer_d_state": "3,3"})),
    Case("config-nested-json", ["info", "c.safetensors"], "nested too deeply",
         setup=lambda d: _set_raw(d, "edgessm.config", "[" * 100_000 + "]" * 100_000)),
    Case("tensor-int-dtype", ["info", "c.safetensors"], "expected floating point",
         setup=ckpt("c.safetensors", tensors=lambda t: {k: (v.to(torch.int64) if k == "decoder.weight" else v)
                                                         for k, v in t.items()})),
    # ---- huge dims in a small file: refused from the header, before anything is built
    Case("config-n-layers-1e6", ["info", "c.safetensors"], "n_layers", setup=ckpt("c.safetensors", {"n_layers": 10**6})),
    Case("config-d-model-1e8", ["info", "c.safetensors"], "d_model", setup=ckpt("c.safetensors", {"d_model": 10**8})),
    Case("config-n-layers-beyond-file", ["info", "c.safetensors"], "stores 2 blocks",
         setup=ckpt("c.safetensors", {"n_layers": 900})),
    Case("config-d-model-beyond-file", ["eval", "c.safetensors", "--task", "npz:data.npz"], "does not match its config",
         setup=ckpt("c.safetensors", {"d_model": 8000})),
    Case("config-d-state-beyond-file", ["info", "c.safetensors"], "does not match its config",
         setup=ckpt("c.safetensors", {"d_state": 9000})),
    # ---- malformed provenance, where info / eval / compress --horizon auto read it
    Case("prov-parent-int", ["info", "c.safetensors"], "provenance parent=3", setup=ckpt("c.safetensors", provenance={"parent": 3})),
    Case("prov-metrics-string", ["info", "c.safetensors"], "provenance metrics", setup=ckpt("c.safetensors", provenance={"metrics": "good"})),
    Case("prov-test-metric-string", ["info", "c.safetensors"], "metrics.test",
         setup=ckpt("c.safetensors", provenance={"metrics": {"test": {"accuracy": "high"}}})),
    Case("prov-rank-schedule", ["info", "c.safetensors"], "rank_schedule",
         setup=ckpt("c.safetensors", provenance={"rank_schedule": [{"epoch": 1, "ranks": "8"}]})),
    Case("prov-seq-len-string", ["compress", "c.safetensors", "--rank", "2", "--horizon", "auto", "-o", "s.safetensors"],
         "seq_len", setup=ckpt("c.safetensors", provenance={"seq_len": "40"})),
    Case("prov-seq-len-1e9", ["compress", "c.safetensors", "--rank", "2", "--horizon", "auto", "-o", "s.safetensors"],
         "seq_len", setup=ckpt("c.safetensors", provenance={"seq_len": 1e9})),
    Case("prov-train-seed", ["eval", "c.safetensors", "--task", "npz:data.npz"], "train_config.seed",
         setup=ckpt("c.safetensors", provenance={"task": "npz:data.npz", "train_config": {"seed": "x"}})),
    Case("prov-not-an-object", ["info", "c.safetensors"], "must be a JSON object",
         setup=lambda d: _set_raw_prov(d, "[1]")),
    # ---- CLI values
    Case("device-bogus", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--device", "bogus", *TRAIN], "train.device"),
    *([Case("device-cuda-without-cuda", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--device", "cuda", *TRAIN],
            "no usable CUDA device")] if NO_CUDA else []),
    Case("threads-negative", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--threads", "-1", *TRAIN], "train.threads"),
    Case("threads-zero", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--threads", "0", *TRAIN], "train.threads"),
    Case("seed-negative", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--seed", "-1", *TRAIN], "train.seed"),
    Case("compress-seed-negative", ["compress", "m.safetensors", "--method", "random", "--rank", "2", "--seed", "-1",
                                    "-o", "s.safetensors"], "--seed"),
    Case("eval-every-zero", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--eval-every", "0", *TRAIN],
         "train.eval_every"),
    Case("warmup-negative", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--warmup-frac", "-5", *TRAIN],
         "train.warmup_frac"),
    Case("weight-decay-negative", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--weight-decay", "-1", *TRAIN],
         "train.weight_decay"),
    Case("horizon-1e9-string", ["compress", "m.safetensors", "--rank", "2", "--horizon", "1e9", "-o", "s.safetensors"], "--horizon"),
    Case("horizon-huge", ["compress", "m.safetensors", "--rank", "2", "--horizon", str(10**9), "-o", "s.safetensors"], "--horizon"),
    Case("export-chunk-100000", ["export", "m.safetensors", "-o", "m.onnx", "--chunk", "100000"], "use --chunk"),
    Case("export-opset-huge", ["export", "m.safetensors", "-o", "m.onnx", "--opset", "999"], "opset"),
    Case("listops-max-len-1e9", ["train", "--task", "listops", "--task-option", f"max_len={10**9}", "-o", "o.safetensors",
                                 *TRAIN], "max_len"),
    Case("listops-num-train-huge", ["train", "--task", "listops", "--task-option", "num_train=100000000", "-o",
                                    "o.safetensors", *TRAIN], "num_train"),
    Case("listops-over-memory-limit", ["train", "--task", "listops", "--task-option", "num_train=1000000",
                                       "--task-option", "max_len=1024", "-o", "o.safetensors", *TRAIN], "GiB in memory"),
    Case("delay-longer-than-the-sequence", ["train", "--task", "delay", "--task-option", "delay=500", "-o", "o.safetensors",
                                            *TRAIN], "delay delay=500"),
    Case("delay-bandwidth-nan", ["train", "--task", "delay", "--task-option", "bandwidth=nan", "-o", "o.safetensors",
                                 *TRAIN], "bandwidth"),
    Case("delay-over-memory-limit", ["train", "--task", "delay", "--task-option", "num_train=4000000", "--task-option",
                                     "length=4096", "--task-option", "delay=8", "-o", "o.safetensors", *TRAIN], "GiB in memory"),
    Case("smnist-not-a-folder", ["train", "--task", "smnist:nowhere", "-o", "o.safetensors", *TRAIN], "not a folder"),
    Case("smnist-header-lies", ["train", "--task", "smnist:mn", "-o", "o.safetensors", *TRAIN], "GiB in memory",
         setup=lambda d: _idx_dir(d / "mn", images=2 ** 31 - 1)),
    Case("smnist-o-is-an-input", ["train", "--task", "smnist:mn", "-o", "mn/train-labels.idx1-ubyte.gz", *TRAIN],
         "is the --task file", setup=lambda d: _idx_dir(d / "mn", dotted_labels=True)),
    Case("reduce-moments-bogus", ["train", "--task", "npz:data.npz", "-o", "o.safetensors", "--reduce-moments", "transform",
                                  *TRAIN], "transform"),
    Case("npz-scalar-x", ["train", "--task", "npz:s.npz", "-o", "o.safetensors", *TRAIN], "array 'x' must be",
         setup=npz("s.npz", x=np.float32(3.0), y=np.arange(4))),
    Case("npz-label-1e9", ["train", "--task", "npz:l.npz", "-o", "o.safetensors", *TRAIN], "classes",
         setup=npz("l.npz", x=np.zeros((10, 4), np.float32), y=np.array([0, 10**9] * 5))),
    Case("npz-lengths-float", ["train", "--task", "npz:lf.npz", "-o", "o.safetensors", *TRAIN], "'lengths' must be integer",
         setup=npz("lf.npz", x=np.zeros((10, 4), np.float32), y=np.arange(10) % 2, lengths=np.full(10, 2.5))),
    Case("npz-vocab-string", ["train", "--task", "npz:data.npz", "--task-option", "vocab_size=abc", "-o", "o.safetensors",
                              *TRAIN], "vocab_size"),
    Case("npz-header-lies", ["train", "--task", "npz:z.npz", "-o", "o.safetensors", *TRAIN], "claims shape",
         setup=zipped("z.npz", "x", (10**12,), b"\0" * 64)),
    Case("npz-over-memory-limit", ["train", "--task", "npz:zeros.npz", "-o", "o.safetensors", *TRAIN], "GiB in memory",
         setup=lambda d: np.savez_compressed(d / "zeros.npz", x=np.zeros((64, 4096)), y=np.zeros(64, np.int64)),
         env={"EDGESSM_MAX_DATA_BYTES": "1000000"}),
    # ---- files that are not regular files: refused before they are opened (a FIFO would hang)
    Case("fifo-checkpoint-info", ["info", "p.safetensors"], "FIFO", setup=fifo("p.safetensors")),
    Case("fifo-checkpoint-eval", ["eval", "p.safetensors", "--task", "npz:data.npz"], "FIFO", setup=fifo("p.safetensors")),
    Case("fifo-checkpoint-export", ["export", "p.safetensors", "-o", "p.onnx"], "FIFO", setup=fifo("p.safetensors")),
    Case("fifo-npz", ["train", "--task", "npz:p.npz", "-o", "o.safetensors", *TRAIN], "FIFO", setup=fifo("p.npz")),
    Case("import-o-is-source", ["import", "m.safetensors", "--from", "s4d", "-o", "hard.safetensors"], "is the input file",
         setup=lambda d: os.link(d / "m.safetensors", d / "hard.safetensors")),
    Case("fifo-import-source", ["import", "p.pt", "--from", "s4d", "-o", "o.safetensors"], "FIFO", setup=fifo("p.pt")),
    Case("fifo-onnx-info", ["info", "p.onnx"], "FIFO", setup=fifo("p.onnx")),
    Case("device-file-checkpoint", ["info", "/dev/zero"], "device"),
    Case("fifo-runtime-input", ["rt", "g.onnx", "-i", "p.npy"], "FIFO", setup=fifo("p.npy")),
    # ---- the runtime's inputs
    Case("npy-header-1e12", ["rt", "g.onnx", "-i", "h.npy", "-o", "y.npy"], "header says",
         setup=npy_claiming("h.npy", (10**12, 3))),
    Case("csv-not-utf8", ["rt", "g.onnx", "-i", "b.csv", "-o", "y.npy"], "not UTF-8",
         setup=raw_file("b.csv", b"1,2,3\n\xff\xfe,1,2\n")),
    Case("stdin-endless-line", ["rt", "g.onnx", "-i", "-"], "longer than", stdin="1," * 200_000),
    Case("state-20000-squared", ["rt", "big.onnx", "--info"], "GiB of state", setup=graph("big.onnx", (20000, 20000))),
    Case("state-1e5-squared", ["rt", "big.onnx", "--info"], "GiB of state", setup=graph("big.onnx", (100000, 100000))),
    Case("metadata-shape-int", ["rt", "m5.onnx", "--info"], "not a list of sizes",
         setup=graph("m5.onnx", meta={"edgessm.input": {"shape": 5}})),
    Case("metadata-states-shape-string", ["rt", "ms.onnx", "--info"], "not a list of sizes",
         setup=graph("ms.onnx", meta={"edgessm.states": [{"input": "past_state.0", "shape": "4x6"}]})),
    Case("batch-1e9", ["rt", "g.onnx", "-i", "-", "--batch", str(10**9)], "--batch", stdin=""),
    Case("batch-huge-for-graph", ["rt", "mid.onnx", "--batch", "1000", "--info"], "GiB of state",
         setup=graph("mid.onnx", (1000, 1000))),
    Case("batch-not-an-integer", ["rt", "g.onnx", "-i", "-", "--batch", "1e9"], "invalid int value", stdin=""),
    Case("click-usage-error", ["export", "m.safetensors", "-o", "m.onnx", "--chunk", "0"], "--chunk"),
    Case("warmup-negative-runtime", ["rt", "g.onnx", "--bench", "10", "--warmup", "-5"], "--warmup"),
    Case("threads-zero-runtime", ["rt", "g.onnx", "--bench", "10", "--threads", "0"], "--threads"),
    Case("ir-version-too-new", ["rt", "ir.onnx", "--info"], "Unsupported model IR version: 99", setup=ir_version("ir.onnx", 99)),
    Case("int-tokens-to-float-model", ["rt", "g.onnx", "-i", "t.npy", "-o", "y.npy"], "(7, 3)",
         setup=lambda d: np.save(d / "t.npy", np.arange(7))),
    Case("npy-no-steps", ["rt", "g.onnx", "-i", "e.npy", "-o", "y.npy"], "no time steps",
         setup=lambda d: np.save(d / "e.npy", np.zeros((0, 3), np.float32))),
    Case("npy-object-array", ["rt", "g.onnx", "-i", "o.npy", "-o", "y.npy"], "expected float features",
         setup=lambda d: np.save(d / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)),
    Case("float-to-token-model", ["rt", "tok.onnx", "-i", "x.npy", "-o", "y.npy"], "token ids"),
    Case("nan-in-stream", ["rt", "g.onnx", "-i", "-"], "stream 0, step 5",
         stdin="".join("nan,0,0\n" if t == 5 else "0.1,0.2,0.3\n" for t in range(40))),
]


def _set_raw(d: Path, key: str, raw: str) -> None:
    """c.safetensors from m.safetensors with one metadata value replaced by ``raw`` text."""
    t, meta = _tensors(d)
    meta[key] = raw
    save_file(t, str(d / "c.safetensors"), metadata=meta)


def _set_raw_prov(d: Path, raw: str) -> None:
    _set_raw(d, "edgessm.provenance", raw)


def _snapshot(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(d))] = stat.filemode(st.st_mode)
    return out


class _Timeout(Exception):
    pass


def _run(argv: list, d: Path, stdin: Optional[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """In-process run of either tool in folder d; (exit code, stdout, stderr). A hang fails after 60 s."""
    monkeypatch.chdir(d)

    def alarm(*_):
        raise _Timeout("the command hung")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    try:
        if argv[0] == "rt":
            import io
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
            try:
                rc = runtime_main([str(a) for a in argv[1:]])
            except SystemExit as e:  # argparse's usage errors exit from inside main
                rc = e.code
            out, err = capsys.readouterr()
            return rc, out, err
        res = CliRunner().invoke(edgessm_main, [str(a) for a in argv], input=stdin)
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            import traceback
            return 1, res.stdout, "Traceback\n" + "".join(traceback.format_exception(res.exception))
        return res.exit_code, res.stdout, res.stderr
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(case: Case, world, tmp_path, capsys, monkeypatch):
    d = tmp_path / "w"
    shutil.copytree(world, d)
    if case.setup:
        case.setup(d)
    for k, v in (case.env or {}).items():
        monkeypatch.setenv(k, v)
    before = _snapshot(d)
    rc, out, err = _run(case.argv, d, case.stdin, capsys, monkeypatch)
    assert "Traceback" not in err, err
    assert rc == 2, f"exit {rc}\nstdout: {out}\nstderr: {err}"
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(l.startswith("error: ") for l in lines) == 1, err
    assert case.expect in lines[-1], lines[-1]
    assert "\x1b[" not in err  # no onnxruntime colour codes
    assert _snapshot(d) == before  # no input changed, nothing (not even a temp file) left behind


# ---------------------------------------------------------------------------------------- beyond the table
def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _cli(*args, ok=True):
    res = CliRunner().invoke(edgessm_main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output + repr(res.exception)
    return res


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_output_respects_the_umask(world, tmp_path, monkeypatch, umask):
    """Checkpoints, ONNX files, reports and runtime outputs end with mode 0666 & ~umask (not mkstemp's 0600)."""
    d = tmp_path / "w"
    shutil.copytree(world, d)
    monkeypatch.chdir(d)
    plot = ["--plot", "p.png"] if _has("matplotlib") else []
    old = os.umask(umask)
    try:
        _cli("compress", "m.safetensors", "--rank", "2", "-o", "s.safetensors", "--report", "r.json", *plot)
        _cli("export", "s.safetensors", "-o", "s.onnx", "--chunk", "2", "--verify-steps", "4")
        assert runtime_main(["g.onnx", "-i", "x.npy", "-o", "y.npy"]) == 0
        assert runtime_main(["g.onnx", "-i", "x.npy", "-o", "y.csv"]) == 0
        edgessm.save(edgessm.load("m.safetensors"), "copy.safetensors")
    finally:
        os.umask(old)
    for name in ("s.safetensors", "r.json", "s.onnx", "s.chunk2.onnx", "y.npy", "y.csv", "copy.safetensors",
                 *(["p.png"] if plot else [])):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o666 & ~umask, name


def test_symlinked_output_is_written_through(world, tmp_path, monkeypatch):
    """-o naming a symlink to a non-input file replaces the target's content and keeps the link."""
    d = tmp_path / "w"
    shutil.copytree(world, d)
    monkeypatch.chdir(d)
    (d / "real.onnx").write_bytes(b"old")
    os.symlink(d / "real.onnx", d / "link.onnx")
    _cli("export", "m.safetensors", "-o", "link.onnx", "--verify-steps", "4")
    assert (d / "link.onnx").is_symlink() and (d / "real.onnx").read_bytes()[:3] != b"old"


def test_diverged_training_keeps_the_last_finite_checkpoint(world, tmp_path, monkeypatch):
    """Training that diverges after a finite best epoch leaves that epoch's checkpoint, loadable."""
    d = tmp_path / "w"
    shutil.copytree(world, d)
    monkeypatch.chdir(d)
    from edgessm import train as train_mod

    real = train_mod._loss
    calls = {"n": 0}

    def loss_nan_after_epoch_1(model, data, x, y, lengths):  # a run that diverges in its second epoch
        loss, metric = real(model, data, x, y, lengths)
        calls["n"] += 1
        return (loss * float("nan"), metric) if calls["n"] > 6 and model.training else (loss, metric)

    monkeypatch.setattr(train_mod, "_loss", loss_nan_after_epoch_1)
    res = _cli("train", "--task", "npz:data.npz", "-o", "o.safetensors", *TRAIN, ok=False)
    assert res.exit_code == 2 and "training diverged" in res.stderr and "best finite model (epoch 1)" in res.stderr
    m = edgessm.load(d / "o.safetensors")  # refuses NaN tensors: this one is finite
    assert m.provenance["best_epoch"] == 1


def test_save_refuses_a_nan_model(tmp_path):
    from edgessm.errors import CheckpointError

    m = SSMModel(ModelConfig(**TINY_CFG))
    with torch.no_grad():
        m.decoder.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        edgessm.save(m, tmp_path / "nan.safetensors")
    assert list(tmp_path.iterdir()) == []


def _script(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edgessm.runtime", *map(str, args)], env=env, **kw)


@pytest.mark.parametrize("extra", [["-i", "x.npy"], ["--bench", "2000", "--no-floor"], ["--info"]])
def test_runtime_into_a_closed_pipe_is_quiet(world, tmp_path, extra):
    """`... | head -1`: the reader leaves after one line; no 'Broken pipe' error, exit 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    np.save(tmp_path / "long.npy", np.zeros((20000, 3), np.float32))
    args = ["-i", tmp_path / "long.npy"] if extra[0] == "-i" else extra
    p = subprocess.Popen([sys.executable, "-m", "edgessm.runtime", world / "g.onnx", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err, err


@pytest.mark.parametrize("cmd", [["edgessm.cli", "info", "--json", "m.safetensors"],
                                 ["edgessm.runtime", "g.onnx", "--info", "--json"]])
def test_info_into_a_full_stdout(world, cmd):
    """`edgessm info --json > /dev/full` (and the runtime's --info): one line, exit 2, no traceback."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", *cmd], cwd=world, env=env,
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "No space left" in r.stderr


def test_nan_in_a_stream_stops_by_default_and_only_on_request_runs_on(world):
    """One NaN at step 5 poisons a stream from there on; the default refuses it, naming the step."""
    from edgessm.runtime import RuntimeInputError, StreamingSession

    xs = np.random.default_rng(0).standard_normal((1, 40, 3)).astype(np.float32)
    xs[0, 5, 0] = np.nan
    s = StreamingSession(str(world / "g.onnx"), provider="cpu")
    for t in range(5):
        s.step(xs[:, t])
    with pytest.raises(RuntimeInputError, match="stream 0, step 5"):
        s.step(xs[:, 5])
    with pytest.raises(RuntimeInputError, match="stream 0, step 5"):
        StreamingSession(str(world / "g.onnx"), provider="cpu").run(xs)
    ys = StreamingSession(str(world / "g.onnx"), provider="cpu", check_finite=False).run(xs)
    assert np.isnan(ys[0, 5:]).all() and np.isfinite(ys[0, :5]).all()  # what the check prevents
    big = np.full((1, 3), 3e38, np.float32)  # x . x overflows, yet every value is finite: accepted
    StreamingSession(str(world / "g.onnx"), provider="cpu").step(big)


def test_runtime_on_cpu_prints_only_what_was_asked(world, tmp_path):
    """auto on a machine without GPU libraries: no TensorRT/CUDA notice on a normal run; --provider cuda
    without CUDA: one line naming the reason, no onnxruntime log."""
    r = _script(world / "g.onnx", "-i", world / "x.npy", "-o", tmp_path / "y.npy", capture_output=True, text=True,
                timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [f"wrote {tmp_path / 'y.npy'}: 5 steps x 1 streams on "
                                             f"{r.stderr.split(' on ')[-1].strip()}"]
    assert "TensorRT" not in r.stderr and "Please install" not in r.stderr
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        r = _script(world / "g.onnx", "-i", world / "x.npy", "--provider", "cuda", capture_output=True, text=True,
                    timeout=120)
        lines = r.stderr.strip().splitlines()
        if r.returncode != 0:  # no usable CUDA here
            assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "\x1b[" not in r.stderr


def test_integer_features_are_features_for_a_float_model(world, tmp_path):
    """An integer (L, d_input) array fed to a float model runs as features, same as its float copy."""
    xi = np.arange(15).reshape(5, 3) % 4
    np.save(tmp_path / "i.npy", xi)
    np.save(tmp_path / "f.npy", xi.astype(np.float32))
    assert runtime_main([str(world / "g.onnx"), "-i", str(tmp_path / "i.npy"), "-o", str(tmp_path / "yi.npy")]) == 0
    assert runtime_main([str(world / "g.onnx"), "-i", str(tmp_path / "f.npy"), "-o", str(tmp_path / "yf.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "yi.npy"), np.load(tmp_path / "yf.npy"))  # same graph, same input
