"""From an SSMModel to plain float64 arrays: every constant the ONNX graphs need, folded once.

Dimensions: H channels, N stored complex modes of a layer, T chunk length, O = d_output.

Real state layout (the graph contract): the complex state x c(B H N) of a layer (the model's own
step state, ``DiagonalSSM``'s x) is stored as X r(B H 2N) = [Re x_1 .. Re x_N | Im x_1 .. Im x_N].

Step, delta form (S4DLayer.step_params; docs/architecture.md): with a = A_bar - 1 = expm1(dt Lambda),

    x' = x + (a x + B_bar u)                      c(B H N)
    y  = 2 Re(sum_n C_n x'_n) + D u               r(B H)

On the real layout, a x is [ar | ar] * X + [-ai | ai] * swap(X) (swap = [Im | Re]); the "matrix"
form writes the same delta as one per-channel (2N+1) x 2N matrix acting on [X | u], and reads the
output from the *old* state, y = 2 Re(sum_n (C A_bar)_n x_n) + (2 Re(sum_n C_n B_n) + D) u,
so both the update and the readout are one contraction each over [X | u].

Chunk of T steps from state x0 (inputs z_0..z_{T-1}; t, j in 0..T-1):

    y_t     = 2 Re(sum_n C A^{t+1} x0) + sum_{j<=t} K_{t-j} z_j + D z_t,   K_l = 2 Re(sum_n C A^l B)
    x_T     = x0 + ((A^T - 1) x0 + sum_j A^{T-1-j} B z_j)        (delta form again: A^T - 1 = expm1(T dt Lambda))

written as one per-channel (2N+T) x (2N+T) matrix acting on [X0 | z_0..z_{T-1}] whose columns are
[delta x (2N) | y_0..y_{T-1} (T)]. Everything is computed in float64/complex128 from the layer's
continuous parameters (Lambda, dt) and rounded once to float32 when stored in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from edgessm.errors import EdgeSSMError, ExportError
from edgessm.mimo import MimoSSM
from edgessm.ssm import DiagonalSSM, cexpm1

__all__ = ["LayerNormParams", "LinearParams", "SSMParams", "MimoSSMParams", "BlockParams", "ModelParams",
           "lower_model", "step_elementwise", "step_matrices", "mimo_step_gemms", "mimo_step_diag", "chunk_matrix",
           "mimo_chunk_matrices",
           "cexpm1"]


@dataclass
class LinearParams:
    W: np.ndarray  # r(in out)  (x @ W + b)
    b: np.ndarray  # r(out)


@dataclass
class LayerNormParams:
    gamma: np.ndarray  # r(H)
    beta: np.ndarray   # r(H)
    eps: float


@dataclass
class SSMParams:
    """One layer's discretisation, complex128 (H N); dtL = dt * Lambda for powers of A."""

    dtL: np.ndarray   # c(H N)
    A_m1: np.ndarray  # c(H N)  expm1(dt Lambda)
    B: np.ndarray     # c(H N)  B_bar
    C: np.ndarray     # c(H N)
    D: np.ndarray     # r(H)

    H = property(lambda self: self.dtL.shape[0], doc="channels")
    N = property(lambda self: self.dtL.shape[1], doc="stored modes per channel")


@dataclass
class MimoSSMParams:
    """An LRU / S5 layer's step constants (one state of P modes for all H channels), complex128.

    The CompreSSM block's pre-SSM BatchNorm (inference: z = scale * h + shift per channel) is folded
    into the input side of the step (``mimo_step_gemms``); scale = 1, shift = 0 without it.
    """

    A_m1: np.ndarray   # c(P)   a - 1 = expm1(log a)
    B: np.ndarray      # c(P H) B_bar
    C: np.ndarray      # c(H P)
    D: np.ndarray      # r(H)
    factor: float      # y = factor Re(C x) + D u
    scale: np.ndarray  # r(H)
    shift: np.ndarray  # r(H)
    logA: Optional[np.ndarray] = None  # c(P) the exact log a (powers a^l of the chunk graph); None: log1p(A_m1)

    @property
    def N(self) -> int:
        return self.A_m1.shape[0]


@dataclass
class BlockParams:
    norm: Optional[LayerNormParams]
    prenorm: bool
    ssm: "SSMParams | MimoSSMParams"
    activation: str                 # gelu | relu | tanh | identity
    mixing: str                     # glu | linear | none
    mix: Optional[LinearParams]     # (H 2H) for glu, (H H) for linear
    residual: bool = True           # h + z; False: z alone (an imported S4Block / DSS layer)


@dataclass
class ModelParams:
    d_input: int
    d_output: int
    vocab_size: int
    H: int
    embedding: Optional[np.ndarray]       # r(V H) for token models
    encoder: Optional[LinearParams]       # (d_input H) otherwise; both None: x is already the H channels
    blocks: list[BlockParams] = field(default_factory=list)
    norm_f: Optional[LayerNormParams] = None
    decoder: Optional[LinearParams] = None  # None: y is the last block's H channels (config.decoder='none')
    pooling: str = "none"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


def _linear(mod: nn.Module, where: str) -> LinearParams:
    if not isinstance(mod, nn.Linear):
        raise ExportError(f"{where}: {type(mod).__name__} is not supported; export handles nn.Linear here")
    b = _np(mod.bias) if mod.bias is not None else np.zeros(mod.out_features)
    return LinearParams(W=_np(mod.weight).T.copy(), b=b)


def _layernorm(mod: nn.Module, where: str) -> Optional[LayerNormParams]:
    if isinstance(mod, nn.Identity):
        return None
    if not isinstance(mod, nn.LayerNorm) or len(mod.normalized_shape) != 1:
        raise ExportError(f"{where}: {type(mod).__name__} is not supported; export handles nn.LayerNorm over "
                          "the channel axis or no norm (config.norm='none')")
    H = mod.normalized_shape[0]
    gamma = _np(mod.weight) if mod.weight is not None else np.ones(H)
    beta = _np(mod.bias) if mod.bias is not None else np.zeros(H)
    return LayerNormParams(gamma, beta, float(mod.eps))


def mimo_ssm_params(sys: MimoSSM, norm: nn.Module, prenorm: bool, H: int, where: str
                    ) -> tuple[MimoSSMParams, Optional[LayerNormParams]]:
    """An LRU / S5 layer's step constants from its system, with a prenorm BatchNorm folded in;
    -> (params, norm left in the graph). A_m1 = expm1(log A) from the exact log the layer supplied."""
    scale, shift, keep = np.ones(H), np.zeros(H), None
    if isinstance(norm, nn.BatchNorm1d):
        if not prenorm:
            raise ExportError(f"{where}: BatchNorm after the residual (prenorm=False) is not supported; "
                              "export folds a prenorm BatchNorm into the SSM step")
        if norm.running_mean is None or norm.running_var is None:
            raise ExportError(f"{where}: BatchNorm without running statistics cannot be exported")
        scale = 1.0 / np.sqrt(_np(norm.running_var) + norm.eps)  # (H) inference BatchNorm
        shift = -_np(norm.running_mean) * scale
        if norm.affine:
            scale, shift = scale * _np(norm.weight), shift * _np(norm.weight) + _np(norm.bias)
    else:
        keep = _layernorm(norm, f"{where} norm")
    if not sys.is_finite():
        raise ExportError(f"{where}: NaN/Inf in the SSM parameters; retrain or use an earlier checkpoint")
    if not sys.is_stable():
        raise ExportError(f"{where}: an SSM mode has |a| >= 1 (unstable); fix the weights")
    if np.any(sys.D != np.diag(np.diag(sys.D))):
        raise ExportError(f"{where}: the step graph carries a diagonal D (a skip per channel); this system's D is full")
    p = MimoSSMParams(A_m1=cexpm1(sys.log_a()), B=sys.B.copy(), C=sys.C.copy(), D=np.diag(sys.D).copy(),
                      factor=float(sys.c), scale=scale, shift=shift,
                      logA=np.asarray(sys.log_a(), np.complex128).copy())  # c(P) c(P H) c(H P) r(H)
    for name in ("A_m1", "scale", "shift", "logA"):
        if not np.all(np.isfinite(getattr(p, name))):
            raise ExportError(f"{where}: NaN/Inf in the SSM parameters; retrain or use an earlier checkpoint")
    return p, keep


def ssm_params(sys: DiagonalSSM, where: str) -> SSMParams:
    """One layer's delta-form step constants in complex128, from its system (``edgessm.diagonal_systems``).

    dtL = log A (the layer's dt Lambda, kept by the system), A_m1 = expm1(dtL) without cancellation.
    """
    if not isinstance(sys, DiagonalSSM):
        raise ExportError(f"{where}: the SSM layer's system is a {type(sys).__name__}; export handles diagonal "
                          "systems (DiagonalSSM)")
    try:
        sys.check(where)  # the one system validator: finite, |A| < 1
    except EdgeSSMError as e:
        raise ExportError(str(e)) from None
    dtL = sys.logA if sys.logA is not None else np.log(sys.A)  # c(H N)
    if not np.all(np.isfinite(dtL)) or np.any(dtL.real >= 0):  # A = 0, or logA inconsistent with A
        raise ExportError(f"{where}: an SSM mode has log A non-finite or Re(dt Lambda) >= 0; fix the weights")
    return SSMParams(dtL=dtL.copy(), A_m1=cexpm1(dtL), B=sys.B.copy(), C=sys.C.copy(), D=sys.D.copy())


def lower_model(model: nn.Module) -> ModelParams:
    """Read every weight the graphs need from ``model`` (an SSMModel), in float64."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "decoder"):
        raise ExportError(f"{type(model).__name__} is not an edgessm SSMModel; load a checkpoint with edgessm.load")
    H = cfg.d_model
    mp = ModelParams(d_input=cfg.d_input, d_output=cfg.d_output, vocab_size=cfg.vocab_size, H=H,
                     embedding=None, encoder=None, pooling=cfg.pooling)
    if cfg.encoder == "none":
        pass  # x (B H) feeds the first block as it is
    elif cfg.vocab_size > 0:
        if not isinstance(model.encoder, nn.Embedding):
            raise ExportError("encoder: a token model (vocab_size > 0) needs an nn.Embedding encoder")
        mp.embedding = _np(model.encoder.weight)  # (V H)
    else:
        mp.encoder = _linear(model.encoder, "encoder")
    from edgessm.model import layer_systems, make_activation

    systems = layer_systems(model)  # the SSM part is lowered from the systems, never from layer internals
    for i, blk in enumerate(model.blocks):
        where = f"block {i}"
        act = cfg.activation
        ref = make_activation(act)  # the graph writes config.activation: the block's module must be that one
        if type(blk.activation) is not type(ref) or getattr(blk.activation, "approximate", None) != getattr(ref, "approximate", None):
            raise ExportError(f"{where}: activation module {blk.activation!r} does not match "
                              f"config.activation={act!r}; rebuild the model from its config")
        if cfg.mixing == "glu":
            mix = _linear(blk.mixing[0], f"{where} mixing")
        elif cfg.mixing == "linear":
            mix = _linear(blk.mixing, f"{where} mixing")
        else:
            mix = None
        if isinstance(systems[i], MimoSSM):  # LRU / S5: one MIMO state per layer
            ssm, norm = mimo_ssm_params(systems[i], blk.norm, bool(cfg.prenorm), H, where)
        else:
            ssm, norm = ssm_params(systems[i], where), _layernorm(blk.norm, f"{where} norm")
        mp.blocks.append(BlockParams(norm=norm, prenorm=bool(cfg.prenorm), ssm=ssm, activation=act,
                                     mixing=cfg.mixing, mix=mix, residual=bool(cfg.residual)))
    mp.norm_f = _layernorm(model.norm_f, "final norm")
    mp.decoder = None if cfg.decoder == "none" else _linear(model.decoder, "decoder")
    for name, arr in _arrays(mp):
        if not np.all(np.isfinite(arr)):
            raise ExportError(f"{name}: NaN/Inf weights; retrain or use an earlier checkpoint")
    return mp


def _arrays(mp: ModelParams):
    if mp.embedding is not None:
        yield "encoder", mp.embedding
    for name, lin in (("encoder", mp.encoder), ("decoder", mp.decoder)):
        if lin is not None:
            yield name, lin.W
            yield name, lin.b
    for i, b in enumerate(mp.blocks):
        if b.mix is not None:
            yield f"block {i} mixing", b.mix.W
            yield f"block {i} mixing", b.mix.b
        if b.norm is not None:
            yield f"block {i} norm", b.norm.gamma
            yield f"block {i} norm", b.norm.beta
    if mp.norm_f is not None:
        yield "final norm", mp.norm_f.gamma
        yield "final norm", mp.norm_f.beta


# ---- complex helpers ---------------------------------------------------------------------
def _stack(c: np.ndarray) -> np.ndarray:
    """c(... N) -> r(... 2N) = [Re | Im]."""
    return np.concatenate([c.real, c.imag], axis=-1)


# ---- step constants ------------------------------------------------------------------------
def step_elementwise(p: SSMParams) -> dict[str, np.ndarray]:
    """Constants of the elementwise step on X = [Re | Im] r(B H 2N).

    delta = Ac * X + As * swap(X) + Bc * u,  X' = X + delta,  y = sum(Cc * X') + D u;
    swap(X) = X[..., swap] = X @ P.
    """
    a = p.A_m1
    swap = np.concatenate([np.arange(p.N, 2 * p.N), np.arange(p.N)]).astype(np.int64)
    P = np.zeros((2 * p.N, 2 * p.N))
    P[swap, np.arange(2 * p.N)] = 1.0
    return {
        "Ac": np.concatenate([a.real, a.real], -1),         # r(H 2N)
        "As": np.concatenate([-a.imag, a.imag], -1),        # r(H 2N)
        "Bc": _stack(p.B),                                  # r(H 2N)
        "Cc": np.concatenate([2 * p.C.real, -2 * p.C.imag], -1),  # r(H 2N)
        "D": p.D.copy(),                                    # r(H)
        "swap": swap,                                       # (2N) indices: X[..., swap] = [Im | Re]
        "P": P,                                             # r(2N 2N) 0/1: X @ P = X[..., swap]
    }


def step_matrices(p: SSMParams) -> dict[str, np.ndarray]:
    """Constants of the matrix step on XU = [X | u] r(B H 2N+1).

    delta = einsum('bhi,hij->bhj', XU, M) with M r(H 2N+1 2N); y = einsum('bhi,hi->bh', XU, R), R r(H 2N+1),
    reading the output from the old state: y = 2 Re(C A x) + (2 Re(C B) + D) u (exact algebra).
    """
    H, N = p.H, p.N
    a = p.A_m1
    M = np.zeros((H, 2 * N + 1, 2 * N))  # (H 2N+1 2N): rows = inputs [Re x | Im x | u], cols = [Re d | Im d]
    n = np.arange(N)
    M[:, n, n] = a.real              # Re d_n += ar xr_n
    M[:, N + n, n] = -a.imag         # Re d_n -= ai xi_n
    M[:, N + n, N + n] = a.real      # Im d_n += ar xi_n
    M[:, n, N + n] = a.imag          # Im d_n += ai xr_n
    M[:, 2 * N, :] = _stack(p.B)     # + B u
    w = p.C * (1.0 + p.A_m1)         # C A_bar  c(H N)
    R = np.concatenate([2 * w.real, -2 * w.imag, (2 * np.sum(p.C * p.B, -1).real + p.D)[:, None]], -1)  # (H 2N+1)
    return {"M": M, "R": R}


def mimo_step_gemms(p: MimoSSMParams) -> dict[str, np.ndarray]:
    """Constants of the Gemm-shaped MIMO step on XU = [X | h] r(B 2P+H), X = [Re x | Im x] r(B 2P).

    With u = scale * h + shift (the folded BatchNorm) and x' = x + ((a - 1) x + B u):
        delta = XU @ M + bd           M r(2P+H 2P), bd r(2P)
        y     = XU @ R + by           R r(2P+H H),  by r(H)
    reading the output from the old state, y = c Re(C a x) + (c Re(C B) + D) u (exact algebra), so both
    are one Gemm over the same [X | h]. a = 1 + (a - 1) is formed in float64 before rounding.
    """
    P, H = p.N, p.D.shape[0]
    am = p.A_m1
    M = np.zeros((2 * P + H, 2 * P))
    n = np.arange(P)
    M[n, n] = am.real            # Re d += ar xr
    M[P + n, n] = -am.imag       # Re d -= ai xi
    M[P + n, P + n] = am.real    # Im d += ar xi
    M[n, P + n] = am.imag        # Im d += ai xr
    Bs = p.B * p.scale[None, :]  # (P H) B diag(scale)
    M[2 * P:, :P] = Bs.real.T
    M[2 * P:, P:] = Bs.imag.T
    bd = np.concatenate([(p.B @ p.shift).real, (p.B @ p.shift).imag])  # (2P) B shift
    Ca = p.factor * p.C * (1.0 + am)[None, :]  # (H P) c C diag(a)
    Ku = p.factor * (p.C @ p.B).real + np.diag(p.D)  # (H H) feedthrough of u
    R = np.zeros((2 * P + H, H))
    R[:P] = Ca.real.T
    R[P:2 * P] = -Ca.imag.T
    R[2 * P:] = (Ku * p.scale[None, :]).T
    by = Ku @ p.shift  # (H)
    return {"M": M, "bd": bd, "R": R, "by": by}


def mimo_step_diag(p: MimoSSMParams) -> dict[str, np.ndarray]:
    """Constants of the MIMO step with the diagonal update elementwise (large P: no (2P)^2 matrix).

    delta = Ac * X + As * [Im | Re] + (h @ Bm + bd),  X' = X + delta,  y = XU @ R + by (as mimo_step_gemms).
    """
    g = mimo_step_gemms(p)
    P, am = p.N, p.A_m1
    return {"Ac": np.concatenate([am.real, am.real]), "As": np.concatenate([-am.imag, am.imag]),  # r(2P)
            "Bm": g["M"][2 * P:], "bd": g["bd"], "R": g["R"], "by": g["by"]}


def chunk_matrix(p: SSMParams, T: int) -> np.ndarray:
    """W r(H 2N+T 2N+T): [X0 | z_0..z_{T-1}] -> [delta x (2N) | y_0..y_{T-1} (T)] for one chunk (module doc)."""
    H, N = p.H, p.N
    W = np.zeros((H, 2 * N + T, 2 * N + T))
    n = np.arange(N)
    # delta x from x0: (A^T - 1) x0, a complex multiply on [Re | Im]
    g = cexpm1(T * p.dtL)  # c(H N)
    W[:, n, n] = g.real
    W[:, N + n, n] = -g.imag
    W[:, N + n, N + n] = g.real
    W[:, n, N + n] = g.imag
    k = np.arange(T)
    # delta x from z_j: A^{T-1-j} B   c(H N T)
    q = np.exp(p.dtL[:, :, None] * (T - 1 - k)) * p.B[:, :, None]  # (H N T)
    W[:, 2 * N:, :N] = np.transpose(q.real, (0, 2, 1))   # (H T N)
    W[:, 2 * N:, N:2 * N] = np.transpose(q.imag, (0, 2, 1))
    # y_t from x0: 2 Re(C A^{t+1} x0)
    w = p.C[:, :, None] * np.exp(p.dtL[:, :, None] * (k + 1))  # (H N T)
    W[:, :N, 2 * N:] = 2 * w.real
    W[:, N:2 * N, 2 * N:] = -2 * w.imag
    # y_t from z_j: causal Toeplitz K_{t-j}, D on the diagonal
    K = 2 * np.einsum("hn,hnl->hl", p.C * p.B, np.exp(p.dtL[:, :, None] * k)).real  # (H T) lags 0..T-1
    lag = k[None, :] - k[:, None]  # (j, t) -> t - j
    toe = np.where(lag >= 0, K[:, np.clip(lag, 0, None)], 0.0)  # (H T_j T_t)
    toe[:, k, k] += p.D[:, None]
    W[:, 2 * N:, 2 * N:] = toe
    return W


def mimo_chunk_matrices(p: MimoSSMParams, T: int) -> dict[str, np.ndarray]:
    """Constants of one LRU / S5 layer's T-step chunk, per mode (P T^2 weights, not the (T H)^2 of a dense map).

    With u_j = scale * z_j + shift (the folded BatchNorm) and v = [x0, B u_0, .., B u_{T-1}] c(T+1) per mode:

        U     = z @ Bm + bu                 Bm r(H 2P), bu r(2P): [Re | Im] of B u_j          (B T 2P)
        w     = v @ G per mode              G c(P T+1 T+1), as L r(2P 2T+2 T+1) on [v | swap v] (below)
              w_t = x_t = a^{t+1} x0 + sum_{j<=t} a^{t-j} B u_j      (t < T: every updated state)
              w_T = delta = (a^T - 1) x0 + sum_j a^{T-1-j} B u_j    (x_{T-1} = x0 + delta, the delta form)
        y_t   = [x_t | z_t] @ R + by        R r(2P+H H), by r(H): c Re(C x_t) + D u_t (output reads x_t)

    Every power a^l = exp(l log a) and a^T - 1 = expm1(T log a) is formed in complex128 from the exact log
    (no repeated multiplication, no 1 - |a|^T cancellation for slow modes) and rounded once when stored.
    The complex product per mode is one real batched MatMul over the 2P rows r of the state (as the step's
    elementwise form): row r < P (Re x_r) reads [Re v_r | Im v_r] with L_r = [Re G_r ; -Im G_r], row r = P + p
    (Im x_p) reads [Im v_p | Re v_p] with L_r = [Re G_p ; Im G_p].
    """
    P, H = p.N, p.D.shape[0]
    logA = p.logA if p.logA is not None else np.log1p(p.A_m1)  # c(P)
    t = np.arange(T)
    e = t[None, :] - t[:, None]  # (T_j T_t) lag t - j of u_j in x_t
    causal = e >= 0
    # L is the one large constant (P (2T+2)^2 floats): formed a few modes at a time in complex128 and
    # written straight into float32, so building it holds little more than L itself
    L = np.empty((2 * P, 2 * T + 2, T + 1), np.float32)  # (2P 2T+2 T+1)
    step = max(1, (1 << 22) // ((T + 1) ** 2))  # modes per block: ~64 MB of complex128 at a time
    for m0 in range(0, P, step):
        la = logA[m0:m0 + step]  # c(m)
        G = np.zeros((la.size, T + 1, T + 1), np.complex128)  # rows [x0 | B u_0..B u_{T-1}], cols [x_0..x_{T-1} | delta]
        G[:, 0, :T] = np.exp(la[:, None] * (t + 1))                                       # x0 -> x_t: a^{t+1}
        G[:, 0, T] = cexpm1(T * la)                                                       # x0 -> delta: a^T - 1
        G[:, 1:, :T] = np.where(causal, np.exp(la[:, None, None] * np.maximum(e, 0)), 0)  # B u_j -> x_t: a^{t-j}
        G[:, 1:, T] = np.exp(la[:, None] * (T - 1 - t))                                   # B u_j -> delta: a^{T-1-j}
        sl, im = slice(m0, m0 + la.size), slice(P + m0, P + m0 + la.size)
        L[sl, :T + 1], L[sl, T + 1:] = G.real, -G.imag    # Re rows read [Re v | Im v]
        L[im, :T + 1], L[im, T + 1:] = G.real, G.imag     # Im rows read [Im v | Re v]
    Bs = p.B * p.scale[None, :]  # (P H) B diag(scale)
    Bm = np.concatenate([Bs.real.T, Bs.imag.T], axis=1)  # (H 2P)
    bu = _stack(p.B @ p.shift)  # (2P) B shift
    R = np.zeros((2 * P + H, H))
    R[:P] = p.factor * p.C.real.T       # c Re(C x) = c (Cr xr - Ci xi)
    R[P:2 * P] = -p.factor * p.C.imag.T
    R[2 * P:] = np.diag(p.D * p.scale)  # D u = D scale z + D shift
    by = p.D * p.shift  # (H)
    return {"Bm": Bm, "bu": bu, "L": L, "R": R, "by": by}
