"""What every family importer produces, and the helpers they share.

A family module turns the tensors of a source file (``formats.read_tensors``) plus the source's constructor
options into an :class:`Imported`: per SSM layer the exact float64 discrete system (the DiagonalSSM convention of
edgessm/ssm.py), the source's own kernel formula for the check, and every non-SSM weight under its SSMModel name.
The driver (``edgessm.importers.import_checkpoint``) builds, checks and saves the model from that.

Dimensions: H channels, N stored modes, L length, S independent SSM copies (n_ssm), O outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError
from ..mimo import MimoSSM
from ..ssm import DiagonalSSM

__all__ = ["ImportError_", "NotFound", "SourceLayer", "Imported", "Options", "find_prefixes", "pick_prefix", "linear_weight",
           "cexpm1", "activation_name", "complex_of", "with_prefix"]


class ImportError_(ConfigError):
    """A source model or option that edgessm cannot represent exactly (one line: what, and what to do)."""


class NotFound(ImportError_):
    """The family's layer is not in the file (the driver adds which family the keys look like)."""


@dataclass
class SourceLayer:
    """One SSM layer of the source, exactly, in float64."""

    system: Union[DiagonalSSM, MimoSSM]      # SISO: A, B, C c(H N), D r(H), output 2 Re(C x_k) + D u_k; MIMO (LRU, S5): mimo.py
    log_dt: Optional[np.ndarray]             # r(H): the dt the edgessm S4D layer keeps (Lambda = log(A) / dt); None for MIMO
    kernel: Callable[[int], np.ndarray]      # L -> r(H L) (MIMO: r(O I L)): the source's kernel by its own formula (no D)
    lambdas: Optional[np.ndarray] = None     # c(H N): continuous eigenvalues at that dt, to keep the trained branch


@dataclass
class Imported:
    family: str                              # s4d | s4 | dss | s5 | lru
    level: str                               # "model" (the whole network) | "layer" (SSM layer(s) for your backbone)
    config: ModelConfig
    layers: list[SourceLayer]
    weights: dict[str, np.ndarray]           # every non-SSM tensor under its SSMModel state-dict name
    options: dict[str, Any]                  # the source options in effect (given or the upstream default)
    assumed: list[str] = field(default_factory=list)   # options the math depends on that came from defaults
    exact_length: Optional[int] = None       # the source is reproduced at this L only (kernel normalised over L)
    max_length: Optional[int] = None         # the source is reproduced for L <= this (it truncates its kernel)
    layout: str = "B L H"                    # the source's own input/output layout
    prefix: str = ""                         # where in the file the weights were found
    notes: list[str] = field(default_factory=list)
    # A family whose layers edgessm keeps in their own parametrisation (LRU, S5: MIMO layers) builds the float32
    # model itself; the driver then checks and saves it instead of rebuilding S4D layers from the systems.
    model: Any = None


class Options:
    """The source's constructor options: given ones (config file, --set) over the upstream defaults.

    ``get`` records when a default that the math depends on was used, so the check can say so.
    """

    def __init__(self, given: dict[str, Any], defaults: dict[str, Any], family: str):
        self.given = dict(given)
        self.defaults = defaults
        self.family = family
        self.assumed: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.given

    def get(self, key: str, math: bool = True) -> Any:
        if key in self.given:
            return self.given[key]
        if key not in self.defaults:
            raise KeyError(key)
        v = self.defaults[key]
        if math:
            self.assumed.append(f"{key}={v!r}")
        return v

    def effective(self) -> dict[str, Any]:
        return {**self.defaults, **self.given}

    def refuse_unless(self, key: str, allowed: tuple, why: str) -> Any:
        v = self.get(key, math=False)
        if v not in allowed:
            raise ImportError_(f"{self.family}: {key}={v!r} is not supported ({why}); "
                               f"edgessm imports {key} in {list(allowed)}")
        return v


def with_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The tensors under ``prefix`` with it stripped."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def find_prefixes(keys, anchor: str) -> list[str]:
    """Every p with p + anchor in keys (p is '' or ends with '.' or '/')."""
    out = []
    for k in keys:
        if k.endswith(anchor):
            p = k[: len(k) - len(anchor)]
            if p == "" or p.endswith((".", "/")):
                out.append(p)
    return sorted(set(out))


def pick_prefix(found: list[str], prefix: Optional[str], what: str, path: str) -> str:
    """The one prefix to read: the user's, or the only one found; otherwise one line listing them."""
    if prefix is not None:
        p = prefix if prefix == "" or prefix.endswith((".", "/")) else prefix + "."
        if p not in found:
            raise ImportError_(f"{path}: no {what} under --prefix {prefix!r}; found it under "
                               f"{[f or '(top level)' for f in found][:8] or 'no prefix at all'}")
        return p
    if not found:
        raise NotFound(f"{path}: no {what} found")
    if len(found) > 1:
        shown = ", ".join(repr(f.rstrip('.')) for f in found[:8])
        raise ImportError_(f"{path} holds {len(found)} {what}s ({shown}{' ...' if len(found) > 8 else ''}); "
                           "pick one with --prefix")
    return found[0]


def linear_weight(t: dict[str, np.ndarray], base: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(W r(out in), b r(out)) of a Linear / Conv1d(k=1) / TransposedLinear at ``base``, weight norm resolved.

    Weight norm (Salimans & Kingma 2016, torch's weight_norm with dim=0): W = g v / ||v|| per output row.
    Returns None when there is no such layer.
    """
    if base + "weight" in t:
        W = np.asarray(t[base + "weight"], np.float64)
    elif base + "weight_v" in t or base + "parametrizations.weight.original1" in t:
        g = t.get(base + "weight_g", t.get(base + "parametrizations.weight.original0"))
        v = np.asarray(t.get(base + "weight_v", t.get(base + "parametrizations.weight.original1")), np.float64)
        norm = np.sqrt(np.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)).reshape((-1,) + (1,) * (v.ndim - 1))
        W = np.asarray(g, np.float64).reshape(norm.shape) * v / norm
    else:
        return None
    W = W.reshape(W.shape[0], -1)  # Conv1d (out in 1) -> (out in)
    b = t.get(base + "bias")
    b = np.zeros(W.shape[0]) if b is None else np.asarray(b, np.float64).reshape(-1)  # TransposedLinear bias (out 1)
    return W, b


def cexpm1(z: np.ndarray) -> np.ndarray:
    """exp(z) - 1 for complex z without cancellation (numpy's expm1 is real-only)."""
    x, y = z.real, z.imag
    return (np.expm1(x) * np.cos(y) - 2.0 * np.sin(0.5 * y) ** 2) + 1j * (np.exp(x) * np.sin(y))


# the source codebases' activation names -> edgessm's (refused when edgessm has no such activation)
_ACT = {None: "identity", "id": "identity", "identity": "identity", "linear": "identity", "none": "identity",
        "gelu": "gelu", "relu": "relu", "tanh": "tanh"}


def activation_name(v: Any, family: str, key: str) -> str:
    if v not in _ACT:
        raise ImportError_(f"{family}: {key}={v!r} has no edgessm counterpart; edgessm's blocks use "
                           "gelu, relu, tanh or none")
    return _ACT[v]


def complex_of(a: np.ndarray) -> np.ndarray:
    """view_as_real storage (... 2) -> complex128 (...); a complex array (torch cfloat parameters) as it is."""
    if np.iscomplexobj(a):
        return np.asarray(a, np.complex128)
    a = np.asarray(a, np.float64)
    if a.shape[-1:] != (2,):
        raise ImportError_(f"a complex parameter stored as real needs a last axis of 2 (view_as_real), got shape {a.shape}")
    return a[..., 0] + 1j * a[..., 1]
