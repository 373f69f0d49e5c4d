"""edgessm: compress diagonal state space models by balanced truncation and run them on edge GPUs.

Heavy modules (torch, scipy, onnx) load lazily: ``import edgessm`` is cheap, and
``import edgessm.runtime`` on a device without torch succeeds.
"""
from __future__ import annotations

from ._lazy import lazy_exports

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
    "model_from_systems": "edgessm.model",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
