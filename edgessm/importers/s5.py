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

__all__ = ["s5_layer_from_arrays", "load_s5_layer", "read"]


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


# ---- `edgessm import --from s5`: one S5SSM layer ----------------------------------------------------------
# S5SSM's constructor arguments (s5/ssm.py) and what they mean for the map. H and P come from the shapes (a
# given value is checked); Lambda_re_init, Lambda_im_init, V, Vinv, dt_min, dt_max and C_init (trunc_standard_normal,
# lecun_normal or complex_normal: all store C as (H P 2)) only shape the initialisation.
_DEFAULTS = {"discretization": "zoh", "conj_sym": True, "clip_eigs": False, "bidirectional": False,
             "step_rescale": 1.0, "C_init": "trunc_standard_normal", "dt_min": 1e-3, "dt_max": 1e-1}
_C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
# clip_eigs=True computes with min(Lambda_re, -1e-4) (S5SSM.setup)
CLIP_EIGS_AT = -1e-4


def _discretize(lam: np.ndarray, B: np.ndarray, delta: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """S5's discretize_zoh / discretize_bilinear in float64, as written there: (Lambda_bar c(P), B_bar c(P H))."""
    if how == "zoh":
        lam_bar = np.exp(lam * delta)  # (P)
        return lam_bar, (1 / lam * (lam_bar - 1.0))[:, None] * B
    BL = 1 / (1.0 - (delta / 2.0) * lam)  # (P)
    return BL * (1.0 + (delta / 2.0) * lam), (BL * delta)[:, None] * B


def read(tensors: Mapping[str, np.ndarray], options: dict[str, Any], prefix, path: str):
    """One S5SSM (``flatten_dict(params, sep='/')`` keys, or a prefix to one inside a bigger model) -> Imported."""
    from ..config import ModelConfig
    from ..mimo import MimoSSM
    from ..model import SSMModel
    from ._common import Imported, ImportError_, Options, SourceLayer, find_prefixes, pick_prefix

    p = pick_prefix(find_prefixes(tensors, "Lambda_re"), prefix, "S5SSM layer (a Lambda_re parameter)", path)
    t = {k[len(p):]: np.asarray(v) for k, v in tensors.items() if k.startswith(p)}
    opts = Options(options, _DEFAULTS, "s5")
    if opts.get("bidirectional", math=False) or "C1" in t or "C2" in t:
        raise ImportError_("s5: bidirectional=True runs a second scan backwards in time (non-causal): a stream "
                           "cannot reproduce it; only causal S5 layers import")
    opts.refuse_unless("discretization", ("zoh", "bilinear"), "S5SSM implements zoh and bilinear")
    opts.refuse_unless("C_init", _C_INITS, "S5SSM raises NotImplementedError for any other")
    how = opts.get("discretization")
    conj_sym = bool(opts.get("conj_sym"))
    clip = bool(opts.get("clip_eigs"))
    rescale = float(opts.get("step_rescale"))
    if not rescale > 0:
        raise ImportError_(f"s5: step_rescale={rescale!r} must be positive (it multiplies every Delta)")
    lam_re = np.asarray(t["Lambda_re"], np.float64)  # (P)
    lam_im = np.asarray(t["Lambda_im"], np.float64)  # (P)
    B, C = np.asarray(t["B"], np.float64), np.asarray(t["C"], np.float64)  # (P H 2), (H P 2)
    D, log_step = np.asarray(t["D"], np.float64), np.asarray(t["log_step"], np.float64)  # (H), (P 1)
    for k, a in (("Lambda_re", lam_re), ("Lambda_im", lam_im), ("B", B), ("C", C), ("D", D), ("log_step", log_step)):
        if not np.all(np.isfinite(a)):
            raise ImportError_(f"s5: {p}{k} has non-finite values (NaN or inf); the training diverged, "
                               "export an earlier checkpoint")
    P, H = lam_re.shape[0], D.shape[0]
    want = {"Lambda_im": (P,), "B": (P, H, 2), "C": (H, P, 2), "log_step": (P, 1)}
    for k, shp in want.items():
        if tuple(t[k].shape) != shp:
            raise ImportError_(f"{path}: S5 parameter {p}{k} has shape {tuple(t[k].shape)}, an S5SSM with H={H}, "
                               f"P={P} stores {shp}; is this an S5SSM (bidirectional needs C1, C2)?")
    for k, v in (("H", H), ("P", P)):
        if opts.has(k) and int(opts.given[k]) != v:
            raise ImportError_(f"s5: --config says {k}={opts.given[k]} but the weights have {k}={v}; "
                               "pass the config of this layer")
    lam = (np.minimum(lam_re, CLIP_EIGS_AT) if clip else lam_re) + 1j * lam_im  # (P) as S5SSM.setup
    delta = rescale * np.exp(log_step[:, 0])  # (P) one Delta per state
    B_t, C_t = B[..., 0] + 1j * B[..., 1], C[..., 0] + 1j * C[..., 1]  # (P H), (H P)
    lam_bar, B_bar = _discretize(lam, B_t, delta, how)
    f = 2.0 if conj_sym else 1.0  # apply_ssm: 2 Re(C x) with conjugate symmetry, Re(C x) without
    if not np.all(np.abs(lam_bar) < 1.0):
        bad = int(np.sum(np.abs(lam_bar) >= 1.0))
        raise ImportError_(f"s5: {bad} of {P} modes do not decay (|Lambda_bar| >= 1, Re Lambda >= 0); a stream "
                           "of them grows without bound; retrain with clip_eigs=True")
    system = MimoSSM(lam_bar, B_bar, C_t, D, f)

    def kernel(L: int) -> np.ndarray:  # (H H L): f Re(C_tilde Lambda_bar^l B_bar), apply_ssm's scan unrolled
        powers = lam_bar[:, None] ** np.arange(L)  # (P L)
        return f * np.einsum("op,pl,pi->oil", C_t, powers, B_bar).real

    cfg = ModelConfig(d_input=H, d_output=H, d_model=H, n_layers=1, d_state=P, layer="s5", s5_discretization=how,
                      s5_step_rescale=rescale, dt_min=float(opts.get("dt_min", math=False)),
                      dt_max=float(opts.get("dt_max", math=False)), activation="identity", mixing="none",
                      norm="none", prenorm=True, dropout=0.0, pooling="none", task_type="regression",
                      encoder="none", decoder="none", residual=False, final_norm=False)
    model = SSMModel(cfg)
    layer = model.blocks[0].ssm
    # conj_sym=False: y = Re(C x) = 2 Re((C/2) x), the same real map in edgessm's conjugate-symmetric S5 layer
    vals = {"Lambda_re": lam.real, "Lambda_im": lam_im, "B_re": B[..., 0], "B_im": B[..., 1],
            "C_re": C[..., 0] * (f / 2.0), "C_im": C[..., 1] * (f / 2.0), "D": D, "log_step": log_step[:, 0]}
    with torch.no_grad():
        for k, v in vals.items():
            getattr(layer, k).copy_(torch.from_numpy(np.ascontiguousarray(v)).to(getattr(layer, k)))
    notes = ["an S5SSM alone: y = SSM(u) + D u (no activation, norm or residual: those live in your backbone)"]
    if not conj_sym:
        notes.append("conj_sym=False: the P modes are stored as they are and C is halved (Re(C x) = 2 Re(C/2 x))")
    if clip:
        notes.append(f"clip_eigs=True: Lambda_re is stored clipped to <= {CLIP_EIGS_AT:g} as the source computes it; "
                     "edgessm's layer does not clip while finetuning")
    return Imported("s5", "layer", cfg, [SourceLayer(system, None, kernel)], {}, opts.effective(), opts.assumed,
                    layout="B L H", prefix=p, notes=notes, model=model.eval())
