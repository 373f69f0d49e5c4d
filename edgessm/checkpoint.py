"""Checkpoints: one ``.safetensors`` file, the model config and provenance in its metadata. No pickle.

Metadata keys (all strings): ``edgessm.format_version``, ``edgessm.config`` (ModelConfig JSON),
``edgessm.provenance`` (JSON: task, metrics, reduction report summary, rank schedule, parent hash...).
Writes go to a temp file in the target folder and are renamed into place: never a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from . import __version__
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .report import json_default

__all__ = ["save", "load", "read_metadata", "file_sha256", "FORMAT_VERSION", "atomic_write"]

FORMAT_VERSION = 1


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class atomic_write:
    """Context manager yielding a temp path next to ``path``; renamed onto ``path`` only on success."""

    def __init__(self, path: str | os.PathLike, what: str = "output"):
        self.path = Path(path)
        self.what = what

    def __enter__(self) -> Path:
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise CheckpointError(f"cannot write {self.what} {self.path}: folder {parent} does not exist; create it first")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        except OSError as e:
            raise CheckpointError(f"cannot write {self.what} {self.path}: {e.strerror}; choose a writable path") from None
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def save(model: torch.nn.Module, path: str | os.PathLike, provenance: Optional[dict[str, Any]] = None) -> Path:
    """Write ``model`` (an SSMModel) with its config and provenance; returns the path."""
    from safetensors.torch import save_file

    prov = dict(getattr(model, "provenance", {}) or {})
    prov.update(provenance or {})
    prov.setdefault("edgessm_version", __version__)
    meta = {
        "edgessm.format_version": str(FORMAT_VERSION),
        "edgessm.config": model.config.to_json(),
        "edgessm.provenance": json.dumps(prov, sort_keys=True, default=json_default),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path, "checkpoint") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    model.provenance = prov
    return Path(path)


def read_metadata(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, provenance) from the file's header alone; validates the format."""
    meta = _header(path)
    return _config(path, meta), _provenance(path, meta)


def _header(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} not found; pass the path of a .safetensors file written by edgessm")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a folder; pass the .safetensors file inside it")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        from .importers.formats import describe_file

        foreign = describe_file(p)  # a PyTorch pickle, .ckpt, .npz or msgpack: say what it is and what to run
        if foreign:
            raise CheckpointError(f"checkpoint {p} is not an edgessm checkpoint: {foreign}") from None
        raise CheckpointError(f"checkpoint {p} is not a readable safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'corrupt header'}); re-save or re-download it") from None
    if "edgessm.format_version" not in meta:
        raise CheckpointError(f"checkpoint {p} is a safetensors file but not an edgessm checkpoint (no edgessm "
                              f"metadata): import it with `edgessm import {p} --from s4d|s4|dss|s5|lru -o model.safetensors`, "
                              "or train one with `edgessm train`")
    try:
        version = int(meta["edgessm.format_version"])
    except ValueError:
        raise CheckpointError(f"checkpoint {p} has an invalid format version {meta['edgessm.format_version']!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} has format version {version}, newer than this edgessm "
                              f"({__version__}, format {FORMAT_VERSION}); upgrade edgessm")
    return meta


def _config(path, meta: dict[str, str]) -> ModelConfig:
    if "edgessm.config" not in meta:
        raise CheckpointError(f"checkpoint {path} has no edgessm.config metadata; it cannot be rebuilt")
    try:
        return ModelConfig.from_json(meta["edgessm.config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path}: invalid model config ({e})") from None


def _provenance(path, meta: dict[str, str]) -> dict[str, Any]:
    try:
        prov = json.loads(meta.get("edgessm.provenance", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {path} has corrupt provenance metadata (not JSON)") from None
    return prov if isinstance(prov, dict) else {}


def load(path: str | os.PathLike, map_location: str = "cpu", check_finite: bool = True) -> torch.nn.Module:
    """Rebuild the SSMModel stored at ``path``; raises CheckpointError with one line on any defect."""
    from safetensors.torch import load_file

    from .model import SSMModel

    meta = _header(path)
    cfg, prov = _config(path, meta), _provenance(path, meta)
    try:
        tensors = load_file(str(path), device=map_location)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); re-save it") from None
    model = SSMModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        raise CheckpointError(f"checkpoint {path} does not match its config: {'; '.join(parts)}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"checkpoint {path}: tensor {k} has shape {tuple(v.shape)}, "
                                  f"config says {tuple(expected[k].shape)}")
        if check_finite and v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"checkpoint {path}: tensor {k} has NaN/Inf values; the training diverged, "
                                  "use an earlier checkpoint or a lower learning rate")
    model.load_state_dict(tensors)
    model.provenance = prov
    model.source_path = str(path)
    return model.to(map_location)
