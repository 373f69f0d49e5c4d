"""Importer for ag1988/dss ``src/models/sequence/ss/standalone/dss.py`` (DSS, DSSKernel) at commit 777084e.

Diagonal State Spaces (Gupta, Gu & Berant 2022). Dimensions: H channels, N modes, L length.

    Lambda c(N), SHARED by all channels; no conjugate symmetry: the N modes are all the modes
      'exp', 'exp-no-scale':  Lambda = -exp(Lambda_log_neg_re) + i Lambda_im
      'exp-re-im':            Lambda = -exp(Lambda_log_neg_re) + i exp(Lambda_log_im)
      'softmax':              Lambda = Lambda[:, 0] + i Lambda[:, 1]       (real part free)
      'clip', 'clip-no-scale': Lambda = min(Lambda[:, 0], max_real_Lambda) + i Lambda[:, 1]
    dt Lambda c(H N): exp(log_dt) Lambda, or with sep_dt_re_im exp(log_dt[:,0]) Re Lambda + i exp(log_dt[:,1]) Im Lambda
    K_l = Re( sum_n W_n s_n exp(dt Lambda_n l) )                          r(H L), no factor 2
      exp*, clip:  s = (exp(dt Lambda) - 1) conj(Lambda) / max(|Lambda|^2, 1e-7)
      *-no-scale:  s = 1
      softmax:     s = (exp(dt Lambda) - 1) / ((exp(dt Lambda L) - 1) Lambda) regularised by epsilon: depends on L

As a DiagonalSSM: A = exp(dt Lambda), B = s, C = W / 2 (2 Re(C x) = Re(W x)). 'softmax' is exact at one L only
(the training length; recorded in the checkpoint). Modes with Re(Lambda) >= 0 grow (the softmax form rescales them
inside one window, the stream cannot): refused.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..config import ModelConfig
from ..ssm import DiagonalSSM
from ._common import (ImportError_, Imported, Options, SourceLayer, activation_name, cexpm1, complex_of,
                      find_prefixes, linear_weight, pick_prefix, with_prefix)

__all__ = ["read_dss"]

DSS_DEFAULTS: dict[str, Any] = {
    # DSS(d_model, d_state=64, l_max=1, channels=1, bidirectional=False, activation='gelu', postact=None,
    #     initializer=None, weight_norm=False, hyper_act=None, dropout=0.0, transposed=True, max_kernel_length=None)
    "channels": 1, "bidirectional": False, "activation": "gelu", "postact": None, "hyper_act": None,
    "transposed": True, "max_kernel_length": None,
    # DSSKernel(..., sep_dt_re_im=True, epsilon=1e-7, version='softmax', max_real_Lambda=1e-4)
    "epsilon": 1e-7, "version": "softmax", "max_real_Lambda": 1e-4,
}
VERSIONS = ("softmax", "exp", "exp-re-im", "exp-no-scale", "clip", "clip-no-scale")


def _version(t: dict[str, np.ndarray], opts: Options, where: str) -> str:
    """The version the weights and the config agree on (the keys tell the family, not always the variant)."""
    if "kernel.Lambda_log_im" in t:
        fits = ("exp-re-im",)
    elif "kernel.Lambda_log_neg_re" in t:
        fits = ("exp", "exp-no-scale")
    elif "kernel.Lambda" in t:
        fits = ("softmax", "clip", "clip-no-scale")
    else:
        raise ImportError_(f"{where}: no DSS Lambda (kernel.Lambda, kernel.Lambda_log_neg_re) among the weights")
    if opts.has("version"):
        v = opts.get("version")
        if v not in VERSIONS:
            raise ImportError_(f"{where}: version={v!r} is not one of {list(VERSIONS)}")
        if v not in fits:
            raise ImportError_(f"{where}: the config says version={v!r} but the weights fit {list(fits)}; "
                               "pass the config this layer was trained with")
        return v
    if opts.defaults["version"] in fits:
        return opts.get("version")  # the upstream default, recorded as assumed
    raise ImportError_(f"{where}: the weights fit DSS versions {list(fits)}; say which with --set version=... "
                       "(or --config with the layer's constructor arguments)")


def read_dss(tensors: dict[str, np.ndarray], given: dict[str, Any], prefix: Optional[str], path: str) -> Imported:
    """One DSS layer (for your own backbone)."""
    opts = Options(given, DSS_DEFAULTS, "dss")
    found = find_prefixes(tensors, "kernel.W")
    found = [f for f in found if f + "kernel.log_dt" in tensors]
    p = pick_prefix(found, prefix, "DSS layer", path)
    t = with_prefix(tensors, p)
    where = f"{path} {p.rstrip('.') or 'DSS layer'}"
    if opts.get("bidirectional", math=False):
        raise ImportError_(f"{where}: bidirectional=True convolves with the future too (non-causal), so no stream "
                           "exists; only causal DSS layers can be imported")
    if opts.get("hyper_act", math=False) is not None:
        raise ImportError_(f"{where}: hyper_act={opts.get('hyper_act')!r} (a multiplicative second branch) has no "
                           "edgessm counterpart; only hyper_act=None imports")
    W = complex_of(t["kernel.W"])  # (C H N)
    if int(opts.get("channels", math=False) or 1) != 1 or W.shape[0] != 1:
        raise ImportError_(f"{where}: channels > 1 fans each channel out to several outputs (H -> C*H); edgessm "
                           "layers are one SISO system per channel: retrain with channels=1")
    W = W[0]  # (H N)
    H, N = W.shape
    version = _version(t, opts, where)
    act = activation_name(opts.get("activation"), "dss", "activation")
    # -- Lambda c(N) (DSSKernel._Lambda) --
    if version.startswith("exp"):
        re = -np.exp(np.asarray(t["kernel.Lambda_log_neg_re"], np.float64))
        im = (np.exp(np.asarray(t["kernel.Lambda_log_im"], np.float64)) if version == "exp-re-im"
              else np.asarray(t["kernel.Lambda_im"], np.float64))
    else:
        Lam = np.asarray(t["kernel.Lambda"], np.float64)  # (N 2)
        re, im = Lam[:, 0], Lam[:, 1]
        if version.startswith("clip"):
            re = np.minimum(re, float(opts.get("max_real_Lambda")))
    Lambda = re + 1j * im  # (N)
    if np.any(Lambda.real >= 0):
        n = int(np.argmax(Lambda.real >= 0))
        raise ImportError_(f"{where}: mode {n} has Re(Lambda) = {Lambda.real[n]:.3g} >= 0: it grows without bound in a "
                           "stream (the softmax form only rescales it inside one window); edgessm cannot run it")
    log_dt = np.asarray(t["kernel.log_dt"], np.float64)  # (H) or (H 2)
    if log_dt.ndim <= 1:
        dtL = np.exp(log_dt)[:, None] * Lambda[None]  # (H N)
        keep = log_dt.reshape(-1)
    else:  # sep_dt_re_im: Re Lambda dt0 + i Im Lambda dt1
        dtL = np.exp(log_dt[:, :1]) * Lambda.real[None] + 1j * np.exp(log_dt[:, 1:]) * Lambda.imag[None]  # (H N)
        keep = log_dt[:, 0]
    eps = float(opts.get("epsilon")) if version == "softmax" else 1e-7
    L_exact = None
    if version == "softmax":
        L_exact = given.get("_length")
        if not L_exact:
            raise ImportError_(f"{where}: DSS version 'softmax' normalises its kernel over the sequence length L, so it "
                               "is exact at one L only: pass --length L (the length it was trained at)")
        L_exact = int(L_exact)

    def scale(num_fn) -> np.ndarray:
        if version == "softmax":
            x = num_fn(dtL * L_exact) * Lambda[None]
            return num_fn(dtL) * np.conj(x) / (x * np.conj(x) + eps)  # reciprocal(den Lambda, epsilon)
        if version.endswith("no-scale"):
            return np.ones_like(dtL)
        return num_fn(dtL) * np.conj(Lambda)[None] / np.maximum(np.abs(Lambda) ** 2, 1e-7)  # reciprocal(clamp=True)

    system = DiagonalSSM(np.exp(dtL), scale(cexpm1), W / 2, np.asarray(t["D"], np.float64).reshape(-1))
    if system.D.shape != (H,):
        raise ImportError_(f"{where}: D has shape {np.asarray(t['D']).shape}, expected (1, {H})")

    def kernel(L: int) -> np.ndarray:
        # DSSKernel.forward in float64 (without its final .float()): Re(einsum W s exp(dtL l))
        s = scale(lambda z: np.exp(z) - 1.0)
        return np.einsum("hn,hnl->hl", W * s, np.exp(dtL[:, :, None] * np.arange(L))).real  # (H L)

    # -- output_linear: LinearActivation(H, H, transposed, activation=postact, activate=True) --
    postact = opts.get("postact", math=False)
    glu_keys = any(k.startswith("output_linear.0.") for k in t)  # Sequential(linear, GLU): the keys show it
    if not opts.has("postact") and glu_keys:
        postact = "glu"
    if postact is None:
        mix = linear_weight(t, "output_linear.")
        mixing, pre = "linear", "blocks.0.mixing."
    elif postact == "glu":
        mix = linear_weight(t, "output_linear.0.")
        mixing, pre = "glu", "blocks.0.mixing.0."
    else:
        raise ImportError_(f"{where}: postact={postact!r} after output_linear has no edgessm counterpart; "
                           "only postact=None or 'glu' imports")
    want = (2 * H, H) if mixing == "glu" else (H, H)
    if mix is None or mix[0].shape != want:
        raise ImportError_(f"{where}: output_linear with postact={postact!r} must be {want}, got "
                           f"{None if mix is None else mix[0].shape}; pass the layer's config (--config)")
    mkl = opts.get("max_kernel_length", math=False)
    cfg = ModelConfig(d_input=H, d_output=H, d_model=H, n_layers=1, d_state=N, layer="s4d", activation=act,
                      mixing=mixing, norm="none", prenorm=True, dropout=0.0, pooling="none", task_type="regression",
                      encoder="none", decoder="none", residual=False, final_norm=False)
    notes = ["a DSS layer alone: conv + D u -> activation -> output_linear; no residual or norm",
             "Lambda is shared by the channels in the source; edgessm stores it per channel (S4D layer) because "
             "each channel has its own dt and compression gives each channel its own modes"]
    layout = "B H L" if opts.get("transposed", math=False) else "B L H"
    return Imported("dss", "layer", cfg, [SourceLayer(system, keep, kernel, dtL / np.exp(keep)[:, None])],
                    {pre + "weight": mix[0], pre + "bias": mix[1]}, {**opts.effective(), "version": version, "postact": postact},
                    opts.assumed, exact_length=L_exact, max_length=int(mkl) if mkl else None, layout=layout,
                    prefix=p, notes=notes)
