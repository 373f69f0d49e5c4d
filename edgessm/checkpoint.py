"""Checkpoints: one ``.safetensors`` file, the model config and provenance in its metadata. No pickle.

Metadata keys (all strings): ``edgessm.format_version``, ``edgessm.config`` (ModelConfig JSON),
``edgessm.provenance`` (JSON: task, metrics, reduction report summary, rank schedule, parent hash...).
Writes go to a temp file in the target folder and are renamed into place: never a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from . import __version__
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .report import json_default
from .runtime import fileio as _fileio

__all__ = ["save", "load", "read_metadata", "file_sha256", "FORMAT_VERSION", "atomic_write", "check_outputs"]

from .provenance import check_provenance  # noqa: E402
from .runtime.contract import FORMAT_VERSION  # noqa: E402  one version for checkpoints and graphs


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    _fileio.regular_file(path, "file", CheckpointError)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, what: str = "output"):
    """Context manager yielding a temp path next to ``path``, renamed onto it only on success.

    The one writer of every edgessm output (runtime/fileio.py): final mode 0666 & ~umask, and an
    error names ``path``, never the temp file.
    """
    return _fileio.atomic_write(path, what, CheckpointError)


def check_outputs(inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    """CheckpointError if an output path is one of the inputs or two outputs are one file (runtime/fileio.py)."""
    _fileio.check_outputs(inputs, outputs, CheckpointError)


def save(model: torch.nn.Module, path: str | os.PathLike, provenance: Optional[dict[str, Any]] = None) -> Path:
    """Write ``model`` (an SSMModel) with its config and provenance; returns the path."""
    from safetensors.torch import save as save_bytes

    prov = dict(getattr(model, "provenance", {}) or {})
    prov.update(provenance or {})
    prov.setdefault("edgessm_version", __version__)
    meta = {
        "edgessm.format_version": str(FORMAT_VERSION),
        "edgessm.config": model.config.to_json(),
        "edgessm.provenance": json.dumps(prov, sort_keys=True, default=json_default),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # every later command would refuse the file: never write one
        raise CheckpointError(f"refusing to write {path}: tensor {bad[0]} has NaN/Inf values (the model diverged); "
                              "lower the learning rate or start from an earlier checkpoint")
    blob = save_bytes(tensors, metadata=meta)  # save_file would recreate the file with mode 0600
    with atomic_write(path, "checkpoint") as tmp:
        with open(tmp, "wb") as f:
            f.write(blob)
    model.provenance = prov
    return Path(path)


def read_metadata(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, provenance) from the file's header alone; validates the format."""
    meta, _ = _header(path)
    return _config(path, meta), _provenance(path, meta)


def _header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    from safetensors import safe_open

    p = _fileio.regular_file(path, "checkpoint", CheckpointError,
                             "pass the path of a .safetensors file written by edgessm")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
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
    if version < 1:
        raise CheckpointError(f"checkpoint {p} has an invalid format version {version}")
    return meta, shapes


def _config(path, meta: dict[str, str]) -> ModelConfig:
    if "edgessm.config" not in meta:
        raise CheckpointError(f"checkpoint {path} has no edgessm.config metadata; it cannot be rebuilt")
    try:
        return ModelConfig.from_json(meta["edgessm.config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path}: invalid model config ({e})") from None


def _check_dims(path, cfg: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """The config's sizes against the stored tensors' shapes, from the header, before anything is built.

    A few bytes of JSON can ask for a model of gigabytes (n_layers = 1e6 in a 14 KB file); the tensors
    that fix each size (encoder: d_input or vocab x H; decoder: O x H, when the config has them; each
    block's size tensor, layers.SIZE_TENSORS) must be there with those shapes. The full name-by-name comparison follows
    once the model is built.
    """
    H = cfg.d_model
    want = {}
    if cfg.encoder == "linear":
        want["encoder.weight"] = (cfg.vocab_size, H) if cfg.vocab_size > 0 else (H, cfg.d_input)
    if cfg.decoder == "linear":
        want["decoder.weight"] = (cfg.d_output, H)
    from .layers import SIZE_TENSORS

    for i in range(cfg.n_layers):
        name, shape = SIZE_TENSORS[cfg.layer](H, cfg.n_modes(i))
        want[f"blocks.{i}.ssm.{name}"] = shape
    blocks = {k.split(".")[1] for k in shapes if k.startswith("blocks.") and k.count(".") >= 2}
    if blocks != {str(i) for i in range(cfg.n_layers)}:
        raise CheckpointError(f"checkpoint {path} does not match its config: config.n_layers={cfg.n_layers} but the "
                              f"file stores {len(blocks)} blocks; the metadata was edited or the file is damaged")
    for k, shape in want.items():
        if k not in shapes:
            raise CheckpointError(f"checkpoint {path} does not match its config: missing tensors ['{k}']")
        if shapes[k] != shape:
            raise CheckpointError(f"checkpoint {path} does not match its config: tensor {k} has shape "
                                  f"{shapes[k]}, config says {shape}; the metadata was edited or the file is damaged")


def _provenance(path, meta: dict[str, str]) -> dict[str, Any]:
    try:
        prov = json.loads(meta.get("edgessm.provenance", "{}"))
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"checkpoint {path} has corrupt provenance metadata (not JSON)") from None
    if not isinstance(prov, dict):
        raise CheckpointError(f"checkpoint {path}: provenance metadata must be a JSON object, got {type(prov).__name__}")
    check_provenance(prov, f"checkpoint {path}")
    return prov


def load(path: str | os.PathLike, map_location: str = "cpu", check_finite: bool = True) -> torch.nn.Module:
    """Rebuild the SSMModel stored at ``path``; raises CheckpointError with one line on any defect."""
    from safetensors.torch import load_file

    from .model import SSMModel

    meta, shapes = _header(path)
    cfg, prov = _config(path, meta), _provenance(path, meta)
    _check_dims(path, cfg, shapes)
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
        if expected[k].is_floating_point() and not v.is_floating_point():  # load_state_dict would cast it silently
            raise CheckpointError(f"checkpoint {path}: tensor {k} has dtype {v.dtype}, expected floating point; "
                                  "the file was not written by edgessm or is damaged")
        if check_finite and v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"checkpoint {path}: tensor {k} has NaN/Inf values; the training diverged, "
                                  "use an earlier checkpoint or a lower learning rate")
    model.load_state_dict(tensors)
    model.provenance = prov
    model.source_path = str(path)
    return model.to(map_location)
