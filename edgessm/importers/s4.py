"""Importers for state-spaces/s4: the standalone S4D (``models/s4/s4d.py``, also inside ``example.py``'s S4Model)
and the library's S4Block -> FFTConv -> SSMKernelDiag (``src/models/sequence``), read at the semantics of commit
e757cef (the fixtures' pin).

Dimensions: H channels, N complex modes (s4's d_state counts real state numbers, N = d_state / 2), S = n_ssm
independent (A, B) copies, L length.

s4d.py (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space Models"):
    dt = exp(log_dt) r(H); A = -exp(log_A_real) + i A_imag c(H N); C c(H N)
    K_l = 2 Re(sum_n C (exp(dt A) - 1) / A exp(dt A)^l)                       ZOH, B = 1 folded in
  i.e. exactly an edgessm S4D layer (same names, same signs). Block: conv + D u -> GELU -> Conv1d(H, 2H, 1) -> GLU.
  example.py's S4Model: Linear encoder -> n x [S4D -> dropout -> + residual -> LayerNorm (postnorm, or before the
  layer with prenorm)] -> mean over L -> Linear decoder; no final norm in either variant.

SSMKernelDiag (S4D inside the general S4 block):
    dt = f_dt(inv_dt) (H 1) or (H N) (dt_tie=False), with sinh first when dt_fast
    A = -f_re(A_real) - i f_im(A_imag) c(S N): the imaginary sign is the opposite of s4d.py's
    channel h uses copy h % n_ssm; C c(channels H N), B c(1 S N): only C * B enters
    zoh:      K = 2 Re(sum C B (exp(dtA) - 1) / A exp(dtA)^l)
    bilinear: K = 2 Re(sum C B dt / (1 - dtA/2) dA^l), dA = (1 + dtA/2) / (1 - dtA/2)
    dss:      K = Re(sum C B (exp(dtA) - 1) r exp(dtA l)), r = 1 / ((exp(dtA L) - 1) A) regularised: exact at one L
    is_real:  A, B, C real; the same formulas (a real mode is one real state number)
    bandlimit: C masked where dt |Im A| / 2 pi >= bandlimit / 2
  Every discretisation is an exact discrete diagonal system; the edgessm layer stores it by ZOH parameters
  (Lambda = log(A_bar) / dt), so bilinear and dss sources are represented exactly.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..config import ModelConfig
from ..ssm import DiagonalSSM
from ._common import (ImportError_, Imported, Options, SourceLayer, activation_name, cexpm1, complex_of,
                      find_prefixes, linear_weight, pick_prefix, with_prefix)

__all__ = ["read_s4d", "read_s4"]


# ---- s4d.py / example.py -----------------------------------------------------------------------------
S4D_DEFAULTS: dict[str, Any] = {
    # example.py S4Model(d_input, d_output=10, d_model=256, n_layers=4, dropout=0.2, prenorm=False)
    "prenorm": False, "dropout": 0.2,
    # s4d.py S4D(d_model, d_state=64, dropout=0.0, transposed=True, **kernel_args)
    "transposed": True,
}


def _s4d_layer(t: dict[str, np.ndarray], where: str) -> tuple[SourceLayer, tuple[np.ndarray, np.ndarray]]:
    need = ["D", "kernel.log_dt", "kernel.log_A_real", "kernel.A_imag", "kernel.C"]
    missing = [k for k in need if k not in t]
    if missing:
        raise ImportError_(f"{where}: an s4d.py S4D layer needs {need}; missing {missing}")
    log_dt = np.asarray(t["kernel.log_dt"], np.float64).reshape(-1)  # (H)
    A = -np.exp(np.asarray(t["kernel.log_A_real"], np.float64)) + 1j * np.asarray(t["kernel.A_imag"], np.float64)  # (H N)
    C = complex_of(t["kernel.C"])  # (H N)
    D = np.asarray(t["D"], np.float64).reshape(-1)  # (H)
    H = D.shape[0]
    if log_dt.shape != (H,) or A.shape != C.shape or A.shape[0] != H:
        raise ImportError_(f"{where}: inconsistent S4D shapes log_dt {log_dt.shape}, A {A.shape}, C {C.shape}, D {D.shape}")
    dtA = np.exp(log_dt)[:, None] * A  # (H N)
    if np.any(A.real >= 0):
        raise ImportError_(f"{where}: a mode has Re(A) >= 0 (unstable); edgessm needs stable modes")
    system = DiagonalSSM(np.exp(dtA), cexpm1(dtA) / A, C, D)

    def kernel(L: int) -> np.ndarray:
        # s4d.py S4DKernel.forward, in float64: C (exp(dtA) - 1) / A, Vandermonde, 2 Re
        Cs = C * (np.exp(dtA) - 1.0) / A  # (H N)
        V = np.exp(dtA[:, :, None] * np.arange(L))  # (H N L)
        return 2.0 * np.einsum("hn,hnl->hl", Cs, V).real  # (H L)

    mix = linear_weight(t, "output_linear.0.")
    if mix is None or mix[0].shape != (2 * H, H):
        raise ImportError_(f"{where}: S4D's output_linear must be Conv1d(H, 2H, 1) + GLU, got "
                           f"{None if mix is None else mix[0].shape}")
    return SourceLayer(system=system, log_dt=log_dt, kernel=kernel, lambdas=A), mix


def read_s4d(tensors: dict[str, np.ndarray], given: dict[str, Any], prefix: Optional[str], path: str) -> Imported:
    """example.py's S4Model (whole model), or one s4d.py S4D layer (for your own backbone)."""
    opts = Options(given, S4D_DEFAULTS, "s4d")
    models = find_prefixes(tensors, "s4_layers.0.kernel.log_A_real")
    models = [p for p in models if p + "encoder.weight" in tensors and p + "decoder.weight" in tensors]
    layers = find_prefixes(tensors, "kernel.log_A_real")
    if prefix is None and len(models) == 1:
        return _s4d_model(with_prefix(tensors, models[0]), opts, models[0], path)
    if prefix is not None and (prefix if prefix.endswith((".", "/")) or prefix == "" else prefix + ".") in models:
        p = prefix if prefix.endswith((".", "/")) or prefix == "" else prefix + "."
        return _s4d_model(with_prefix(tensors, p), opts, p, path)
    p = pick_prefix(layers, prefix, "s4d.py S4D layer", path)
    t = with_prefix(tensors, p)
    src, (W, b) = _s4d_layer(t, f"{path} {p or 'layer'}")
    H = src.system.H
    cfg = ModelConfig(d_input=H, d_output=H, d_model=H, n_layers=1, d_state=src.system.N, layer="s4d",
                      activation="gelu", mixing="glu", norm="none", prenorm=True, dropout=0.0, pooling="none",
                      task_type="regression", encoder="none", decoder="none", residual=False, final_norm=False)
    weights = {"blocks.0.mixing.0.weight": W, "blocks.0.mixing.0.bias": b}
    layout = "B H L" if opts.get("transposed", math=False) else "B L H"
    return Imported("s4d", "layer", cfg, [src], weights, opts.effective(), opts.assumed, layout=layout, prefix=p,
                    notes=["an S4D layer alone: conv + D u -> GELU -> Conv1d(H, 2H, 1) + GLU, no residual or norm"])


def _s4d_model(t: dict[str, np.ndarray], opts: Options, p: str, path: str) -> Imported:
    n_layers = 0
    while f"s4_layers.{n_layers}.kernel.log_A_real" in t:
        n_layers += 1
    enc, dec = linear_weight(t, "encoder."), linear_weight(t, "decoder.")
    H, d_input = enc[0].shape
    d_output = dec[0].shape[0]
    prenorm = bool(opts.get("prenorm"))
    layers, weights = [], {"encoder.weight": enc[0], "encoder.bias": enc[1],
                           "decoder.weight": dec[0], "decoder.bias": dec[1]}
    for i in range(n_layers):
        src, (W, b) = _s4d_layer(with_prefix(t, f"s4_layers.{i}."), f"{path} s4_layers.{i}")
        if src.system.H != H:
            raise ImportError_(f"{path}: s4_layers.{i} has H={src.system.H}, the encoder gives H={H}")
        norm = linear_weight(t, f"norms.{i}.")
        if norm is None:
            raise ImportError_(f"{path}: example.py's S4Model has a LayerNorm norms.{i}; it is missing")
        layers.append(src)
        weights.update({f"blocks.{i}.mixing.0.weight": W, f"blocks.{i}.mixing.0.bias": b,
                        f"blocks.{i}.norm.weight": norm[0].reshape(-1), f"blocks.{i}.norm.bias": norm[1]})
    Ns = [s.system.N for s in layers]
    cfg = ModelConfig(d_input=d_input, d_output=d_output, d_model=H, n_layers=n_layers, d_state=Ns[0],
                      layer_d_state=None if len(set(Ns)) == 1 else Ns, layer="s4d", activation="gelu",
                      mixing="glu", norm="layer", prenorm=prenorm, final_norm=False,
                      dropout=float(opts.get("dropout", math=False)), pooling="mean", task_type="classification")
    # LayerNorm eps: nn.LayerNorm's default 1e-5 on both sides. Mean pooling: example.py averages h over L and
    # then decodes; edgessm decodes each step and keeps the running mean: equal at every step (the decoder is linear).
    return Imported("s4d", "model", cfg, layers, weights, opts.effective(), opts.assumed, layout="B L D", prefix=p,
                    notes=[f"example.py S4Model, {'prenorm' if prenorm else 'postnorm'}, no final norm; "
                           "the logits are the last step's output (a causal running mean of the decoded steps)"])


# ---- S4Block / FFTConv / SSMKernelDiag -----------------------------------------------------------------------
S4_DEFAULTS: dict[str, Any] = {
    # S4Block
    "bottleneck": None, "activation": "gelu", "gate": None, "gate_act": None, "mult_act": None, "final_act": "glu",
    "postact": None, "weight_norm": False, "transposed": True, "layer": "fftconv",
    # FFTConv
    "l_max": None, "channels": 1, "bidirectional": False, "mode": "dplr", "kernel": None,
    # SSMKernelDiag / SSMKernel (e757cef)
    "disc": "zoh", "dt_fast": False, "real_transform": "exp", "imag_transform": "none", "bandlimit": None,
    "is_real": False, "dt_transform": "exp",
}
_TRANSFORMS = ("none", "exp", "relu", "sigmoid", "softplus")


def _transform(x: np.ndarray, kind: str) -> np.ndarray:
    """ssm.py param_transform in float64."""
    if kind == "none":
        return x
    if kind == "exp":
        return np.exp(x)
    if kind == "relu":
        return np.maximum(x, 0.0) + 1e-4
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if kind == "softplus":
        return np.logaddexp(0.0, x)
    raise ImportError_(f"s4: transform {kind!r} is not one of {list(_TRANSFORMS)}")


def read_s4(tensors: dict[str, np.ndarray], given: dict[str, Any], prefix: Optional[str], path: str) -> Imported:
    """One S4Block (layer='fftconv', mode='diag'); refuses what edgessm cannot reproduce exactly."""
    opts = Options(given, S4_DEFAULTS, "s4")
    found = sorted(set(find_prefixes(tensors, "layer.kernel.inv_dt")))
    p = pick_prefix(found, prefix, "S4Block", path)
    t = with_prefix(tensors, p)
    where = f"{path} {p.rstrip('.') or 'S4Block'}"
    mode = opts.given.get("kernel") or opts.given.get("mode")
    if "layer.kernel.P" in t or mode in ("s4", "nplr", "dplr"):
        raise ImportError_(f"{where}: mode='dplr' (S4 with a low-rank term) is not a diagonal SSM; edgessm imports "
                           "S4Block with mode='diag' (S4D)")
    if mode is not None and mode not in ("diag", "s4d"):
        raise ImportError_(f"{where}: kernel mode {mode!r} is not supported; edgessm imports mode='diag'")
    opts.refuse_unless("layer", ("fftconv",), "only the FFTConv inner layer is an SSM")
    if opts.get("bidirectional", math=False):
        raise ImportError_(f"{where}: bidirectional=True convolves with the future too (a non-causal kernel), so no "
                           "stream exists; only causal S4 blocks can be imported")
    if int(opts.get("channels", math=False) or 1) != 1 or np.asarray(t["layer.kernel.C"]).shape[0] != 1:
        raise ImportError_(f"{where}: channels > 1 fans each input channel out to several outputs (H -> C*H); "
                           "edgessm layers are one SISO system per channel: retrain with channels=1")
    for key in ("bottleneck", "gate"):
        if opts.get(key, math=False) is not None:
            raise ImportError_(f"{where}: {key}={opts.get(key)!r} (a gated/bottleneck block) has no edgessm counterpart; "
                               f"only {key}=None imports")
    if activation_name(opts.get("mult_act", math=False), "s4", "mult_act") != "identity":
        raise ImportError_(f"{where}: mult_act={opts.get('mult_act')!r} has no edgessm counterpart; only mult_act=None imports")
    act = activation_name(opts.get("activation"), "s4", "activation")
    disc = opts.get("disc")
    if disc not in ("zoh", "bilinear", "dss"):
        raise ImportError_(f"{where}: disc={disc!r} is not one of zoh, bilinear, dss")
    dt_tf, re_tf, im_tf = opts.get("dt_transform"), opts.get("real_transform"), opts.get("imag_transform")
    for k, v in (("dt_transform", dt_tf), ("real_transform", re_tf), ("imag_transform", im_tf)):
        if v not in _TRANSFORMS:
            raise ImportError_(f"{where}: {k}={v!r} is not one of {list(_TRANSFORMS)}")
    is_real = "layer.kernel.A_imag" not in t
    if opts.has("is_real") and bool(opts.get("is_real")) != is_real:
        raise ImportError_(f"{where}: the config says is_real={opts.get('is_real')} but the weights "
                           f"{'lack' if is_real else 'have'} A_imag; pass the config this block was trained with")
    # -- parameters, float64 (ssm.py SSMKernelDiag._get_params) --
    inv_dt = np.asarray(t["layer.kernel.inv_dt"], np.float64)  # (H 1) or (H N)
    if opts.get("dt_fast"):
        inv_dt = np.sinh(inv_dt)
    dt = _transform(inv_dt, dt_tf)  # (H 1|N)
    A_real = np.asarray(t["layer.kernel.A_real"], np.float64)  # (S N)
    if is_real:
        A = -_transform(A_real, re_tf) + 0j  # (S N)
        Bp = np.asarray(t["layer.kernel.B"], np.float64)[0] + 0j  # (S N)
        C = np.asarray(t["layer.kernel.C"], np.float64)[0] + 0j  # (H N)
    else:
        A = -_transform(A_real, re_tf) - 1j * _transform(np.asarray(t["layer.kernel.A_imag"], np.float64), im_tf)
        Bp = complex_of(t["layer.kernel.B"])[0]  # (S N)
        C = complex_of(t["layer.kernel.C"])[0]  # (H N)
    H, N = C.shape
    S = A.shape[0]
    if H % S or Bp.shape != (S, N) or dt.shape[0] != H:
        raise ImportError_(f"{where}: inconsistent shapes A {A.shape}, B {Bp.shape}, C {C.shape}, inv_dt {inv_dt.shape}")
    A = A[np.arange(H) % S]  # (H N) channel h uses copy h % n_ssm (einops '(v t)')
    Bp = Bp[np.arange(H) % S]  # (H N)
    bandlimit = opts.get("bandlimit")
    if bandlimit is not None:
        freqs = dt * np.abs(A.imag) / (2 * math.pi)  # (H N)
        C = C * np.where(freqs < bandlimit * 0.5, 1.0, 0.0)
    D = np.asarray(t["layer.D"], np.float64)
    if D.shape != (1, H):
        raise ImportError_(f"{where}: layer.D has shape {D.shape}, expected (1, {H}) (a GLU FFTConv activation doubles it; "
                           "not supported)")
    D = D[0]
    dtA = dt * A  # (H N)
    if disc in ("zoh", "dss") and np.any(A.real >= 0):
        raise ImportError_(f"{where}: a mode has Re(A) >= 0 (unstable: |exp(dt A)| >= 1); no stable stream reproduces "
                           "it. Only blocks whose every mode decays import")
    if disc == "bilinear" and np.any(A.real >= 0):
        raise ImportError_(f"{where}: a mode has Re(A) >= 0, so the bilinear |dA| >= 1 (unstable); not importable")
    CB = C * Bp  # (H N): only the product enters
    L_exact = None
    if disc == "zoh":
        Ad, Bd, Cd = np.exp(dtA), Bp * cexpm1(dtA) / A, C
    elif disc == "bilinear":
        Ad, Bd, Cd = (1 + dtA / 2) / (1 - dtA / 2), Bp * dt / (1 - dtA / 2), C
    else:  # dss: B is normalised over the kernel's length: exact at that L only
        L_exact = given.get("_length") or opts.given.get("l_max")
        if not L_exact:
            raise ImportError_(f"{where}: disc='dss' normalises the kernel over the sequence length L, so it is exact "
                               "at one L only: pass --length L (the length it was trained at)")
        L_exact = int(L_exact)
        x = cexpm1(dtA * L_exact) * A
        r = np.conj(x) / (x * np.conj(x) + 1e-7)
        Ad, Bd, Cd = np.exp(dtA), Bp * cexpm1(dtA) * r, C / 2  # K has no factor 2 here: .float() takes Re
    system = DiagonalSSM(Ad, Bd, Cd, D)

    def kernel(L: int) -> np.ndarray:
        # SSMKernelDiag.forward in float64 (state=None), log_vandermonde_naive = 2 Re(sum v exp(x l))
        ell = np.arange(L)
        if disc == "zoh":
            v = CB * (np.exp(dtA) - 1.0) / A
            return 2.0 * np.einsum("hn,hnl->hl", v, np.exp(dtA[:, :, None] * ell)).real
        if disc == "bilinear":
            v = CB * (1.0 / (1.0 - dtA / 2)) * dt
            dA = (1.0 + dtA / 2) / (1.0 - dtA / 2)
            return 2.0 * np.einsum("hn,hnl->hl", v, np.exp(np.log(dA)[:, :, None] * ell)).real
        num = np.exp(dtA) - 1.0
        x = (np.exp(dtA * L_exact) - 1.0) * A
        r = np.conj(x) / (x * np.conj(x) + 1e-7)
        return np.einsum("hn,hnl->hl", CB * num * r, np.exp(dtA[:, :, None] * ell)).real

    # one dt per channel for the edgessm layer: the source's (dt_tie) or the geometric mean over modes
    log_dt = np.mean(np.log(dt), axis=1) if dt.shape[1] > 1 else np.log(dt[:, 0])  # (H)
    lambdas = dtA / np.exp(log_dt)[:, None] if disc != "bilinear" else None  # (H N) branch hint
    # -- output_linear (LinearActivation) --
    final_act = opts.get("final_act", math=False) if opts.get("postact", math=False) is None else opts.get("postact")
    mix = linear_weight(t, "output_linear.0.") or linear_weight(t, "output_linear.")
    weights: dict[str, np.ndarray] = {}
    if mix is None:
        if opts.has("final_act") and final_act is not None:
            raise ImportError_(f"{where}: final_act={final_act!r} needs output_linear weights; the file has none")
        mixing = "none"
    else:
        W, b = mix
        if W.shape == (2 * H, H) and (not opts.has("final_act") or final_act == "glu"):
            mixing = "glu"
        elif W.shape == (H, H) and (not opts.has("final_act") or activation_name(final_act, "s4", "final_act") == "identity"):
            mixing = "linear"
        else:
            raise ImportError_(f"{where}: output_linear {W.shape} with final_act={final_act!r} is not supported; "
                               "edgessm mixes with Linear(H, 2H) + GLU (final_act='glu'), Linear(H, H) ('id') or nothing (None)")
        pre = "blocks.0.mixing.0." if mixing == "glu" else "blocks.0.mixing."
        weights = {pre + "weight": W, pre + "bias": b}
    l_max = opts.get("l_max", math=False)
    cfg = ModelConfig(d_input=H, d_output=H, d_model=H, n_layers=1, d_state=N, layer="s4d", activation=act,
                      mixing=mixing, norm="none", prenorm=True, dropout=0.0, pooling="none", task_type="regression",
                      encoder="none", decoder="none", residual=False, final_norm=False)
    notes = ["an S4Block alone: FFTConv (conv + D u) -> activation -> output_linear; no residual or norm "
             "(those live in the s4 backbone)"]
    if S < H:
        notes.append(f"n_ssm={S}: (A, B) tied across {H // S} channel groups; edgessm stores them per channel")
    if dt.shape[1] > 1:
        notes.append("dt_tie=False: one dt per mode; edgessm keeps the per-channel geometric mean and folds the rest into Lambda")
    layout = "B H L" if opts.get("transposed", math=False) else "B L H"
    in_effect = {**opts.effective(), "final_act": {"glu": "glu", "linear": "id", "none": None}[mixing],
                 "is_real": is_real, "n_ssm": S, "dt_tie": dt.shape[1] == 1}
    return Imported("s4", "layer", cfg, [SourceLayer(system, log_dt, kernel, lambdas)], weights, in_effect,
                    opts.assumed, exact_length=L_exact, max_length=int(l_max) if l_max else None, layout=layout,
                    prefix=p, notes=notes)
