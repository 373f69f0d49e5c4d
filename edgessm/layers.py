"""Diagonal SSM layers: S4D (per-channel Lambda) and DSS (Lambda shared across channels).

Dimensions: B batch, L length, H channels, N stored complex modes.

Both layers compute, per channel h, the ZOH discretisation of x' = Lambda x + 1 u, y = 2 Re(C x) + D u:

    A_bar = exp(dt Lambda)                    c(H N)
    B_bar = (exp(dt Lambda) - 1) / Lambda     c(H N)   (input matrix fixed to 1, S4D's minimal form)
    K_l   = 2 Re( sum_n C_n B_bar_n A_bar_n^l )    r(H L)   convolution kernel (S4D eq. 5)

Two modes that compute the same map:
- ``forward(u)``: FFT convolution, O(L log L), for training. The Vandermonde product is formed
  in complex128 and only then cast: float32 phases dt*Im(Lambda)*l lose accuracy for long L
  (conv/step divergence is a known failure of S4 implementations); tests/test_parity.py proves agreement.
- ``step(u_t, x)``: one recurrent step with explicit state x c(B H N), no cached state on the module.

Parametrisation (the "exp" form of DSS, Gupta et al. 2022, and S4D): Re(Lambda) = -exp(log_A_real)
keeps Re(Lambda) < 0, so every discretised mode is stable, |A_bar| < 1. Each layer maps to and from
:class:`~edgessm.ssm.DiagonalSSM` (``to_diagonal`` / ``load_diagonal``); ``load_diagonal`` keeps the
layer's own dt and solves Lambda = log(A) / dt, C_model = C B / B_bar (only the products C_n B_n
enter the map).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, UnstableSystemError
from .init import init_C, init_lambda, init_log_dt
from .layers_mimo import MIMO_SSM_PARAM_NAMES, LRULayer, S5Layer
from .ssm import DiagonalSSM

__all__ = ["S4DLayer", "DSSLayer", "LRULayer", "S5Layer", "SSM_PARAM_NAMES", "LAYER_FAMILIES", "SIZE_TENSORS", "build_layer",
           "make_layer"]

# Parameters that S4 trains with their own learning rate and no weight decay (Gu et al. 2022, App. D),
# and the MIMO layers' counterparts (layers_mimo.py).
SSM_PARAM_NAMES = ("log_dt", "log_A_real", "A_imag") + MIMO_SSM_PARAM_NAMES

# Above this many complex entries the (H N L) Vandermonde is formed in channel blocks (memory bound).
_VANDERMONDE_BLOCK = 1 << 22


class _DiagonalLayer(nn.Module):
    """Shared machinery; subclasses define ``lambda_()`` -> c(H N) and ``_set_lambda``."""

    H: int
    N: int

    # ---- subclass hooks ------------------------------------------------------------------
    def lambda_(self) -> torch.Tensor:  # c(H N), complex128
        raise NotImplementedError

    def _set_lambda(self, Lambda: np.ndarray) -> None:
        raise NotImplementedError

    # ---- discretisation ------------------------------------------------------------------
    def dt(self) -> torch.Tensor:
        return torch.exp(self.log_dt.double())  # r(H)

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A_bar, B_bar, C) c(H N) complex128 by ZOH; differentiable."""
        Lambda = self.lambda_()  # (H N)
        dtL = Lambda * self.dt()[:, None]  # (H N)
        A_bar = torch.exp(dtL)  # (H N)
        B_bar = torch.expm1(dtL) / Lambda  # (H N)
        C = torch.view_as_complex(self.C.double().contiguous())  # (H N)
        return A_bar, B_bar, C

    def kernel(self, L: int) -> torch.Tensor:
        """r(H L) float64: K_l = 2 Re(sum_n C_n B_bar_n A_bar_n^l)."""
        Lambda = self.lambda_()
        dtL = Lambda * self.dt()[:, None]  # (H N)
        CB = torch.view_as_complex(self.C.double().contiguous()) * torch.expm1(dtL) / Lambda  # (H N)
        ell = torch.arange(L, device=dtL.device, dtype=torch.float64)  # (L)
        hb = max(1, _VANDERMONDE_BLOCK // max(1, self.N * L))
        parts = []
        for h0 in range(0, self.H, hb):
            V = torch.exp(dtL[h0:h0 + hb, :, None] * ell)  # (h N L)
            parts.append(2.0 * torch.einsum("hn,hnl->hl", CB[h0:h0 + hb], V).real)  # (h L)
        return torch.cat(parts, 0)  # (H L)

    # ---- the two modes ---------------------------------------------------------------------
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """r(B L H) -> r(B L H): causal FFT convolution with K plus D skip."""
        L = u.shape[1]
        K = self.kernel(L).to(u.dtype)  # (H L)
        n = 2 * L  # zero-pad to 2L: linear, not circular, convolution
        uf = torch.fft.rfft(u.transpose(1, 2), n=n)  # (B H n/2+1)
        kf = torch.fft.rfft(K, n=n)  # (H n/2+1)
        y = torch.fft.irfft(uf * kf, n=n)[..., :L]  # (B H L)
        return y.transpose(1, 2) + u * self.D  # (B L H)

    def step_params(self, dtype: torch.dtype = torch.complex64) -> tuple[torch.Tensor, ...]:
        """(a_hi, a_lo, B_bar, C) c(H N) in the step dtype: computed once, passed to ``step``.

        The step runs in *delta form*, x' = x + (a_hi x + (a_lo x + B_bar u)), where a = A_bar - 1 =
        expm1(dt Lambda) is computed in float64 and split into its rounding a_hi = fl(a) and the rest
        a_lo = fl(a - a_hi) (a float-float pair: Dekker 1971). Why both halves: rounding A_bar itself
        perturbs every mode by ~eps per step, and rounding a alone still moves the pole by eps |a|, a
        systematic error that adds up over the mode's memory 1/(1 - |A|) to eps |Lambda| / |Re Lambda|
        relative: 3e-4 over 16k steps for Re Lambda = -0.02 (S4D-Lin). With a_lo the pole is exact to
        eps^2 and only the rounding of the state itself is left (measured 1.7e-5 there;
        tests/test_parity.py holds the bar for slow modes). In complex128 a_lo is 0.
        """
        A_bar, B_bar, C = self.discrete()
        a = torch.expm1(self.lambda_() * self.dt()[:, None])  # (H N) = A_bar - 1 without cancellation
        a_hi = a.to(dtype)  # (H N)
        a_lo = (a - a_hi.to(torch.complex128)).to(dtype)  # (H N) the part fl(a) lost
        return a_hi, a_lo, B_bar.to(dtype), C.to(dtype)

    def step(self, u: torch.Tensor, x: torch.Tensor, params=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step. u r(B H), x c(B H N) -> (y r(B H), x_next c(B H N)); output reads x_next."""
        a_hi, a_lo, B_bar, C = params if params is not None else self.step_params(x.dtype)
        # (B H N) delta form; the small terms are summed first so a_lo x is not lost against a_hi x
        x = x + (a_hi * x + (a_lo * x + B_bar * u.unsqueeze(-1).to(x.dtype)))
        y = 2.0 * torch.einsum("hn,bhn->bh", C, x).real + u * self.D  # (B H)
        return y.to(u.dtype), x

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The complex step state's shape without the batch axis."""
        return (self.H, self.N)

    def init_state(self, batch: int, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
        return torch.zeros(batch, self.H, self.N, dtype=dtype, device=self.D.device)  # (B H N)

    # ---- DiagonalSSM mapping ------------------------------------------------------------
    @torch.no_grad()
    def to_diagonal(self) -> DiagonalSSM:
        A_bar, B_bar, C = self.discrete()
        logA = (self.lambda_() * self.dt()[:, None]).cpu().numpy()  # (H N) dt Lambda, exact in float64
        return DiagonalSSM(A_bar.cpu().numpy(), B_bar.cpu().numpy(), C.cpu().numpy(),
                           self.D.double().cpu().numpy(), logA)

    @torch.no_grad()
    def load_diagonal(self, sys: DiagonalSSM, layer: int | None = None) -> None:
        """Set this layer's parameters so that ``to_diagonal()`` realises ``sys`` (same H and N)."""
        where = f"layer {layer}" if layer is not None else "layer"
        if (sys.H, sys.N) != (self.H, self.N):
            raise ConfigError(f"{where}: system has shape (H={sys.H}, N={sys.N}), layer has (H={self.H}, N={self.N})")
        sys.check(where)  # finite and |A| < 1
        if np.any(sys.A == 0):
            h = int(np.argwhere(sys.A == 0)[0, 0])
            raise UnstableSystemError(f"{where}: channel {h} has A = 0, which has no Lambda = log(A)/dt; "
                                      f"store it as an inactive mode (A = 0.5, B = C = 0)")
        dt = np.exp(self.log_dt.double().cpu().numpy())[:, None]  # (H 1)
        Lambda = np.log(sys.A) / dt  # (H N): Re < 0 since |A| < 1; a real negative A gets Im = pi/dt
        B_bar = np.expm1(dt * Lambda) / Lambda  # (H N) the layer's fixed-input ZOH column
        self._set_lambda(Lambda)
        C_model = sys.C * sys.B / B_bar  # (H N): only C_n B_n enters the map
        self.C.copy_(torch.view_as_real(torch.from_numpy(C_model)).to(self.C))
        self.D.copy_(torch.from_numpy(sys.D).to(self.D))


class S4DLayer(_DiagonalLayer):
    """S4D (Gu et al. 2022): per-channel Lambda c(H N), dt r(H), C c(H N), D r(H)."""

    def __init__(self, H: int, N: int, init: str = "s4d-lin", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 seed: int | None = None):
        super().__init__()
        self.H, self.N = H, N
        rng = np.random.default_rng(seed if seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        Lambda = np.broadcast_to(init_lambda(init, N, rng), (H, N))  # (H N)
        self.log_dt = nn.Parameter(torch.tensor(init_log_dt(H, dt_min, dt_max, rng), dtype=torch.float32))
        self.log_A_real = nn.Parameter(torch.tensor(np.log(-Lambda.real), dtype=torch.float32))
        self.A_imag = nn.Parameter(torch.tensor(Lambda.imag.copy(), dtype=torch.float32))
        self.C = nn.Parameter(torch.view_as_real(torch.tensor(init_C(H, N, rng))).float())  # (H N 2)
        self.D = nn.Parameter(torch.tensor(rng.standard_normal(H), dtype=torch.float32))

    def lambda_(self) -> torch.Tensor:
        return torch.complex(-torch.exp(self.log_A_real.double()), self.A_imag.double())  # (H N)

    def _set_lambda(self, Lambda: np.ndarray) -> None:
        self.log_A_real.copy_(torch.from_numpy(np.log(-Lambda.real)).to(self.log_A_real))
        self.A_imag.copy_(torch.from_numpy(Lambda.imag.copy()).to(self.A_imag))


class DSSLayer(_DiagonalLayer):
    """DSS-exp (Gupta et al. 2022): Lambda c(N) shared by all channels, per-channel dt r(H), W c(H N), D r(H).

    ``C`` plays the role of DSS's W (the factor 2 of ``2 Re`` is absorbed into it). A reduced system
    has per-channel eigenvalues, so ``load_diagonal`` accepts only systems whose Lambda is shared;
    compression therefore produces S4D layers.
    """

    def __init__(self, H: int, N: int, init: str = "skew-hippo", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 seed: int | None = None):
        super().__init__()
        self.H, self.N = H, N
        rng = np.random.default_rng(seed if seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        Lambda = init_lambda(init, N, rng)  # (N)
        self.log_dt = nn.Parameter(torch.tensor(init_log_dt(H, dt_min, dt_max, rng), dtype=torch.float32))
        self.log_A_real = nn.Parameter(torch.tensor(np.log(-Lambda.real), dtype=torch.float32))  # (N)
        self.A_imag = nn.Parameter(torch.tensor(Lambda.imag.copy(), dtype=torch.float32))  # (N)
        self.C = nn.Parameter(torch.view_as_real(torch.tensor(init_C(H, N, rng))).float())  # (H N 2)
        self.D = nn.Parameter(torch.tensor(rng.standard_normal(H), dtype=torch.float32))

    def lambda_(self) -> torch.Tensor:
        Lam = torch.complex(-torch.exp(self.log_A_real.double()), self.A_imag.double())  # (N)
        return Lam.unsqueeze(0).expand(self.H, self.N)  # (H N)

    def _set_lambda(self, Lambda: np.ndarray) -> None:
        shared = Lambda[0]
        if not np.allclose(Lambda, shared[None], rtol=1e-5, atol=1e-8):
            raise ConfigError("a DSS layer shares Lambda across channels, but this system has per-channel "
                              "eigenvalues; load it into an S4D layer (config.layer='s4d')")
        self.log_A_real.copy_(torch.from_numpy(np.log(-shared.real)).to(self.log_A_real))
        self.A_imag.copy_(torch.from_numpy(shared.imag.copy()).to(self.A_imag))


# ---- the layer-family registry: config.layer -> a builder of layer i from the ModelConfig -----------

LAYER_FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "s4d": lambda cfg, i, seed=None: S4DLayer(cfg.d_model, cfg.n_modes(i), cfg.init, cfg.dt_min, cfg.dt_max, seed),
    "dss": lambda cfg, i, seed=None: DSSLayer(cfg.d_model, cfg.n_modes(i), cfg.init, cfg.dt_min, cfg.dt_max, seed),
    "lru": lambda cfg, i, seed=None: LRULayer(cfg.d_model, cfg.n_modes(i), cfg.lru_r_min, cfg.lru_r_max,
                                              cfg.lru_max_phase, seed),
    "s5": lambda cfg, i, seed=None: S5Layer(cfg.d_model, cfg.n_modes(i), cfg.dt_min, cfg.dt_max, _s5_blocks(cfg, i),
                                            cfg.s5_discretization, cfg.s5_step_rescale, seed),
}


# The registry's second column: which stored tensor of a family fixes (H, N), so a checkpoint's config can
# be checked against its tensor shapes before anything is built (checkpoint.py).
SIZE_TENSORS: dict[str, Callable[[int, int], tuple[str, tuple[int, ...]]]] = {
    "s4d": lambda H, N: ("C", (H, N, 2)),
    "dss": lambda H, N: ("C", (H, N, 2)),
    "lru": lambda H, N: ("C_re", (H, N)),
    "s5": lambda H, N: ("C_re", (H, N)),
}


def _s5_blocks(cfg, i: int) -> int:
    """S5's init blocks; a reduced layer (per-layer sizes, parameters loaded after construction) of a size
    the blocks do not divide is built with one block, since its init is overwritten anyway."""
    n, b = cfg.n_modes(i), int(cfg.s5_blocks)
    return b if cfg.layer_d_state is None or n % b == 0 else 1


def build_layer(cfg, i: int, seed: int | None = None) -> nn.Module:
    """Layer i of the model described by cfg (a ModelConfig)."""
    if cfg.layer not in LAYER_FAMILIES:
        raise ConfigError(f"layer {cfg.layer!r} is not one of {', '.join(LAYER_FAMILIES)}")
    return LAYER_FAMILIES[cfg.layer](cfg, i, seed)


def make_layer(kind: str, H: int, N: int, init: str, dt_min: float, dt_max: float,
               seed: int | None = None) -> _DiagonalLayer:
    """A SISO layer from loose arguments (kept for callers that have no ModelConfig)."""
    if kind not in ("s4d", "dss"):
        raise ConfigError(f"layer {kind!r} is not one of s4d, dss")
    cls = S4DLayer if kind == "s4d" else DSSLayer
    return cls(H, N, init, dt_min, dt_max, seed)

