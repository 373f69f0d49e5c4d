"""edgessm: compress diagonal state space models by balanced truncation and run them on edge GPUs.

Heavy modules (torch, scipy, onnx) load lazily: ``import edgessm`` is cheap, and
``import edgessm.runtime`` on a device without torch succeeds.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first access)
_LAZY = {
    "DiagonalSSM": "edgessm.ssm",
    "ModelConfig": "edgessm.config",
    "EdgeSSMError": "edgessm.errors",
    "SSMModel": "edgessm.model",
    "diagonal_systems": "edgessm.model",
    "with_diagonal_systems": "edgessm.model",
    "MimoSSM": "edgessm.mimo",
    "layer_systems": "edgessm.model",
    "with_mimo_systems": "edgessm.model",
    "load": "edgessm.checkpoint",
    "save": "edgessm.checkpoint",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'edgessm' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
