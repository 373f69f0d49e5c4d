"""Map lindermanlab/S5's S5SSM parameters (``s5/ssm.py``) onto edgessm's S5Layer.

Input: the flat dict ``flax.traverse_util.flatten_dict(params, sep='/')`` of one S5SSM (no prefix, or a
prefix ending in '/'), and its constructor options. The format readers (npz, msgpack) live elsewhere.

Correspondence: Lambda_re, Lambda_im (P,) -> same; B (P, H, 2) -> B_re, B_im; C (H, P, 2) -> C_re, C_im;
D (H,) -> D; log_step (P, 1) -> log_step (P,) (one Delta per state); step_rescale and discretization
are constructor options. Only conj_sym=True, bidirectional=False, clip_eigs=False is mapped (edgessm's
S5 layer stores one mode per conjugate pair and reads 2 Re(C x)).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..errors import ConfigError
from ..layers_mimo import S5Layer

__all__ = ["s5_layer_from_arrays", "load_s5_layer"]


def _get(d: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in d:
        raise ConfigError(f"S5 params: missing array {key!r} (have {sorted(d)})")
    return np.asarray(d[key])


def load_s5_layer(layer: S5Layer, params: Mapping[str, np.ndarray], prefix: str = "") -> None:
    """Copy one S5SSM's params into an S5Layer of the same H and P."""
    B, C = _get(params, prefix + "B"), _get(params, prefix + "C")
    vals = {"Lambda_re": _get(params, prefix + "Lambda_re"), "Lambda_im": _get(params, prefix + "Lambda_im"),
            "B_re": B[..., 0], "B_im": B[..., 1], "C_re": C[..., 0], "C_im": C[..., 1],
            "D": _get(params, prefix + "D"), "log_step": _get(params, prefix + "log_step").reshape(-1)}
    with torch.no_grad():
        for k, v in vals.items():
            p = getattr(layer, k)
            if tuple(p.shape) != tuple(v.shape):
                raise ConfigError(f"S5 params: {prefix}{k} has shape {v.shape}, the layer expects {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(v)).to(p))


def s5_layer_from_arrays(params: Mapping[str, np.ndarray], options: Mapping[str, Any], prefix: str = "") -> S5Layer:
    """An S5Layer equal to S5SSM(**options) with these params."""
    o = options
    if not o.get("conj_sym", True) or o.get("bidirectional", False) or o.get("clip_eigs", False):
        raise ConfigError("only S5SSM with conj_sym=True, bidirectional=False, clip_eigs=False is mapped")
    layer = S5Layer(int(o["H"]), int(o["P"]), float(o.get("dt_min", 1e-3)), float(o.get("dt_max", 1e-1)),
                    discretization=str(o.get("discretization", "zoh")),
                    step_rescale=float(o.get("step_rescale", 1.0)), seed=0)
    load_s5_layer(layer, params, prefix)
    return layer
