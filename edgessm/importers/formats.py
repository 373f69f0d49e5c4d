"""Reading weights from the files other codebases write, without ever executing code from them.

One entry point, ``read_tensors(path) -> {key: numpy array}``, for every family's importer (S4D, S4, DSS here;
LRU and S5 call it too). The format is decided by the file's first bytes, not its name:

| format | first bytes | how it is read |
|---|---|---|
| PyTorch zip (`torch.save`, `.pt` `.pth` `.ckpt`) | `PK\\x03\\x04` + `*/data.pkl` | `torch.load(weights_only=True)`: tensors and plain containers only |
| PyTorch legacy pickle | `\\x80` (pickle protocol 2) | the same `weights_only=True` loader |
| safetensors | 8-byte header length, then `{` | `safetensors.numpy.load_file` |
| NumPy `.npz` | `PK\\x03\\x04` + `*.npy` members | `np.load(allow_pickle=False)` |
| flax msgpack (`flax.serialization.to_bytes`) | a msgpack map | our own msgpack decoder: maps, strings, numbers, bytes, and flax's ndarray extension |

Nested containers are flattened to dotted keys (``{"state_dict": {"a": {"b": t}}}`` -> ``"a.b"``); a Lightning
checkpoint's ``state_dict`` (or a plain ``{"model": state_dict}`` wrapper) is unwrapped. A full unpickle is
never attempted: when ``weights_only`` refuses an object inside the file, the error says how to re-save just the
tensors in the user's own environment.

No torch at import time: ``describe_file`` (used by checkpoint loading to name a foreign file) is cheap.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import CheckpointError

__all__ = ["read_tensors", "sniff", "describe_file", "import_hint"]

# What `edgessm import` reads, per family; the hint names the flag a user passes.
import_hint = "edgessm import FILE --from s4d|s4|dss|s5|lru -o model.safetensors"


def sniff(path: str | os.PathLike) -> str:
    """'torch-zip' | 'torch-legacy' | 'safetensors' | 'npz' | 'msgpack' | 'unknown' from the file's first bytes."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "unknown"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in (2, 3, 4, 5):
        return "torch-legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= 100_000_000 and head[8:9] == b"{" and n + 8 <= p.stat().st_size:
            return "safetensors"
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack"
    return "unknown"


def describe_file(path: str | os.PathLike) -> Optional[str]:
    """One sentence naming a weights file that is not an edgessm checkpoint and what to run, or None."""
    try:
        kind = sniff(path)
    except OSError:
        return None
    ext = Path(path).suffix.lower()
    if kind in ("torch-zip", "torch-legacy"):
        what = "a PyTorch Lightning checkpoint" if ext == ".ckpt" else "a PyTorch file"
        return f"this is {what}: import it with `edgessm import {path} --from s4d|s4|dss -o model.safetensors`"
    if kind == "npz":
        return (f"this is a NumPy .npz archive: import it with `edgessm import {path} --from s5|lru -o model.safetensors` "
                "(JAX weights saved with path keys, see the README's 'Import your model')")
    if kind == "msgpack":
        return f"this looks like a flax msgpack file: import it with `edgessm import {path} --from s5 -o model.safetensors`"
    return None


# ---- readers ----------------------------------------------------------------------------------------
def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array in the file under a flat dotted (or the file's own path) key; numpy, original dtype."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"weights file {p} not found; pass the file your training code saved")
    if p.is_dir():
        raise CheckpointError(f"weights file {p} is a folder; pass the weights file inside it")
    kind = sniff(p)
    if kind in ("torch-zip", "torch-legacy"):
        out = _read_torch(p)
    elif kind == "safetensors":
        out = _read_safetensors(p)
    elif kind == "npz":
        out = _read_npz(p)
    elif kind == "msgpack":
        out = _flatten(_read_msgpack(p), sep="/")
    else:
        raise CheckpointError(f"{p} is not a PyTorch (.pt/.pth/.ckpt), safetensors, .npz or flax msgpack file; "
                              "save the weights in one of those formats")
    if not out:
        raise CheckpointError(f"{p} holds no tensors; pass the file with the model's weights")
    return out


def _read_torch(p: Path) -> dict[str, np.ndarray]:
    import pickle

    import torch

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        detail = f"it holds a {m.group(1)} object" if m else (str(e).strip().splitlines() or ["an object"])[0][:120]
        raise CheckpointError(
            f"{p} has a Python object that safe loading (torch.load weights_only=True) refuses ({detail}); "
            f"edgessm never unpickles it. Re-save just the tensors where you trained: python -c \"import torch; "
            f"m = torch.load('{p.name}', weights_only=False); "
            f"torch.save(m['state_dict'] if isinstance(m, dict) else m.state_dict(), 'state_dict.pt')\"") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{p} is a truncated or corrupt PyTorch file ({type(e).__name__}); re-save it") from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):  # Lightning, common training loops
            inner = obj.get(wrapper)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    flat = _flatten(obj, sep=".")
    out = {}
    for k, v in flat.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
                t = t.float()  # exact: both widen into float32
            out[k] = t.numpy()
    return out


def _read_safetensors(p: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file

        return dict(load_file(str(p)))
    except Exception as e:  # safetensors' own error types: truncated header, bf16 in numpy...
        if "bf16" in str(e).lower() or "bfloat16" in str(e).lower():
            from safetensors.torch import load_file as load_pt

            return {k: v.float().numpy() for k, v in load_pt(str(p)).items()}
        raise CheckpointError(f"{p} is not a readable safetensors file ({type(e).__name__}); re-save it") from None


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(str(p), allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except ValueError as e:  # an object array inside needs pickle: refused
        raise CheckpointError(f"{p} has an array that needs pickle to load ({e}); save plain numeric arrays "
                              "(np.savez(path, **{key: np.asarray(leaf)}))") from None


def _flatten(obj: Any, sep: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, sep, f"{prefix}{sep if prefix else ''}{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten(v, sep, f"{prefix}{sep if prefix else ''}{i}"))
    elif prefix:
        out[prefix] = obj
    return out


# ---- msgpack (flax.serialization.to_bytes) ---------------------------------------------------------
# A small decoder of the msgpack spec (msgpack.org/spec), enough for what flax writes: maps with string keys,
# numbers, strings, bytes, arrays, and three extension types (flax/serialization.py): 1 = ndarray
# (a msgpack array [shape, dtype name, raw bytes]), 2 = native complex, 3 = numpy scalar. Nothing in it can
# run code: every value becomes a number, a string, bytes, a list, a dict or a numpy array.
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_SCALAR = 1, 2, 3
_SAFE_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64", "complex64", "complex128"}


def _read_msgpack(p: Path) -> Any:
    data = p.read_bytes()
    try:
        obj, end = _Unpacker(data).read(0)
    except (IndexError, struct.error, ValueError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{p} is not a readable msgpack file ({type(e).__name__}: {e}); re-save it") from None
    if end != len(data):
        raise CheckpointError(f"{p} has {len(data) - end} bytes after its msgpack object; re-save it")
    return obj


class _Unpacker:
    def __init__(self, data: bytes):
        self.d = data

    def _take(self, i: int, n: int) -> tuple[bytes, int]:
        if i + n > len(self.d):
            raise ValueError("truncated")
        return self.d[i:i + n], i + n

    def _unpack(self, fmt: str, i: int) -> tuple[Any, int]:
        n = struct.calcsize(fmt)
        b, i = self._take(i, n)
        return struct.unpack(fmt, b)[0], i

    def read(self, i: int) -> tuple[Any, int]:
        t = self.d[i]
        i += 1
        if t <= 0x7F:
            return t, i
        if t >= 0xE0:
            return t - 0x100, i
        if 0x80 <= t <= 0x8F:
            return self._map(i, t & 0x0F)
        if 0x90 <= t <= 0x9F:
            return self._array(i, t & 0x0F)
        if 0xA0 <= t <= 0xBF:
            b, i = self._take(i, t & 0x1F)
            return b.decode("utf-8"), i
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if t in simple:
            return simple[t], i
        fixed = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
                 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if t in fixed:
            return self._unpack(fixed[t], i)
        sized = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I", 0xD9: ">B", 0xDA: ">H", 0xDB: ">I",
                 0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I", 0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}
        if t in sized:
            n, i = self._unpack(sized[t], i)
            if t in (0xC4, 0xC5, 0xC6):
                return self._take(i, n)
            if t in (0xD9, 0xDA, 0xDB):
                b, i = self._take(i, n)
                return b.decode("utf-8"), i
            if t in (0xDC, 0xDD):
                return self._array(i, n)
            if t in (0xDE, 0xDF):
                return self._map(i, n)
            code, i = self._unpack(">b", i)
            b, i = self._take(i, n)
            return self._ext(code, b), i
        fixext = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
        if t in fixext:
            code, i = self._unpack(">b", i)
            b, i = self._take(i, fixext[t])
            return self._ext(code, b), i
        raise ValueError(f"msgpack type byte 0x{t:02x} is not supported")

    def _array(self, i: int, n: int) -> tuple[list, int]:
        out = []
        for _ in range(n):
            v, i = self.read(i)
            out.append(v)
        return out, i

    def _map(self, i: int, n: int) -> tuple[dict, int]:
        out = {}
        for _ in range(n):
            k, i = self.read(i)
            v, i = self.read(i)
            out[k if isinstance(k, str) else str(k)] = v
        return out, i

    def _ext(self, code: int, b: bytes) -> Any:
        if code in (_EXT_NDARRAY, _EXT_SCALAR):
            v, _ = _Unpacker(b).read(0)  # [shape, dtype name, raw C-order bytes]
            if not (isinstance(v, list) and len(v) == 3 and isinstance(v[1], str) and isinstance(v[2], bytes)):
                raise ValueError("a flax ndarray extension must hold [shape, dtype, bytes]")
            shape, dtype, buf = v
            if dtype not in _SAFE_DTYPES:
                raise ValueError(f"array dtype {dtype!r} is not a plain numeric type")
            shape = tuple(int(s) for s in shape) if isinstance(shape, list) else ()
            if int(np.prod(shape)) * np.dtype(dtype).itemsize != len(buf):
                raise ValueError(f"array of shape {shape} {dtype} has {len(buf)} bytes")
            arr = np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
            return arr if code == _EXT_NDARRAY else arr[()]
        if code == _EXT_COMPLEX:
            v, _ = _Unpacker(b).read(0)
            return complex(v[0], v[1])
        raise ValueError(f"msgpack extension type {code} is not one flax writes")


def json_or_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A config file: JSON, or YAML when PyYAML is installed (safe_load: plain data only)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"config file {p} not found; pass the JSON (or YAML) file of the model's constructor arguments")
    if p.stat().st_size > 1 << 24:  # a constructor-argument file is a few KB
        raise CheckpointError(f"config {p} is {p.stat().st_size / 2**20:.0f} MiB; a config file of constructor arguments is small")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"config {p} is not UTF-8 text; pass the JSON (or YAML) file of the constructor arguments") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CheckpointError(f"config {p} is YAML but PyYAML is not installed; pip install pyyaml, or pass JSON") from None
        try:
            d = yaml.safe_load(text)
        except RecursionError:
            raise CheckpointError(f"config {p} is nested too deeply to be a config file") from None
        except yaml.YAMLError as e:
            raise CheckpointError(f"config {p} is not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"config {p} is not valid JSON ({e})") from None
        except RecursionError:
            raise CheckpointError(f"config {p} is nested too deeply to be a config file") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"config {p} must hold an object of constructor arguments")
    return d
