"""MIMO diagonal SSM layers: LRU (Orvieto et al. 2023) and S5 (Smith et al. 2023).

Dimensions: B batch, L length, H channels (input = output), P stored complex modes.

Both compute, for the whole H-vector input u_k (one state shared by all channels),

    x_k = a * x_{k-1} + B_bar u_k          a c(P), B_bar c(P H), x c(B P)
    y_k = c Re(C x_k) + D * u_k            C c(H P), D r(H); c = 1 (LRU), 2 (S5, conj_sym)

- LRU: log a = -exp(nu_log) + i exp(theta_log) (exact, no rounding of a), B_bar =
  diag(exp(gamma_log)) (B_re + i B_im); gamma_log is trained, initialised to log sqrt(1 - |a|^2);
  ring init: |a|^2 uniform on [r_min^2, r_max^2], arg a uniform on [0, max_phase].
- S5: Lambda = Lambda_re + i Lambda_im, Delta_p = step_rescale exp(log_step_p) (one per state);
  ZOH: log a = Delta Lambda, B_bar = (a - 1) / Lambda B; bilinear: a = (1 + Delta Lambda / 2) /
  (1 - Delta Lambda / 2), B_bar = Delta / (1 - Delta Lambda / 2) B. Init (S5's train.py recipe):
  HiPPO-LegS normal part's eigenvalues per block, B = V^-1 B_0, C = C_0 V with lecun-normal B_0, C_0,
  conjugate-symmetric (the stored half of each block's eigenvalues), Delta log-uniform [dt_min, dt_max].

Two modes that compute the same map:
- ``forward(u)``: per-mode causal FFT convolution of B_bar u with a^l (the state sequence in
  O(B P L log L)), then the output projection. a^l is formed in float64 from log a (float32 phases
  l Im(log a) lose accuracy for long L) and only then cast. Chosen over a parallel scan: torch has
  no associative scan, and a log-depth scan in Python costs log2(L) full passes over (B L P).
- ``step(u, x)``: explicit state in delta form x' = x + ((a - 1) x + B_bar u) with a - 1 = expm1(log a)
  rounded to complex64 (rounding a itself adds an error ~eps per step that accumulates over a slow
  mode's memory 1/(1 - |a|); layers.py measured it).

Each layer maps to and from :class:`~edgessm.mimo.MimoSSM` (``to_system`` / ``load_system``);
``load_system`` re-parametrises a reduced system into the layer's own parameters (LRU: nu, theta,
gamma, B, C; S5: Lambda, Delta, B, C).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, UnstableSystemError
from .mimo import MimoSSM

__all__ = ["LRULayer", "S5Layer", "MIMO_SSM_PARAM_NAMES", "THETA_LOG_FLOOR", "s5_hippo_init"]

# Parameters with their own learning rate and no weight decay (LRU paper App. D; S5's ssm_lr group).
MIMO_SSM_PARAM_NAMES = ("nu_log", "theta_log", "gamma_log", "Lambda_re", "Lambda_im", "log_step")

# A real positive reduced eigenvalue has arg a = 0, i.e. theta_log = -inf; stored as this floor
# instead (a phase of e^-80 ~ 2e-35 rad keeps the state real to float32 and every value finite).
THETA_LOG_FLOOR = -80.0


def _cplx(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    return torch.complex(re.double(), im.double())


class _MimoLayer(nn.Module):
    """Shared machinery; subclasses define ``log_a()`` c(P) and ``b_bar()`` c(P H), complex128, differentiable."""

    H: int
    N: int
    factor: float

    def log_a(self) -> torch.Tensor:
        raise NotImplementedError

    def a_minus_1(self) -> torch.Tensor:
        return torch.expm1(self.log_a())  # (P) without cancellation for slow modes

    def b_bar(self) -> torch.Tensor:
        raise NotImplementedError

    def c_mat(self) -> torch.Tensor:
        return _cplx(self.C_re, self.C_im)  # (H P)

    # ---- the two modes ---------------------------------------------------------------------
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """r(B L H) -> r(B L H) in u's precision (complex64 for float32 u, complex128 for float64)."""
        L = u.shape[1]
        cd = torch.complex128 if u.dtype == torch.float64 else torch.complex64
        la = self.log_a()  # (P) float64
        ell = torch.arange(L, device=u.device, dtype=torch.float64)  # (L)
        V = torch.exp(la[:, None] * ell).to(cd)  # (P L) a^l, float64 phases
        Bu = torch.einsum("ph,blh->bpl", self.b_bar().to(cd), u.to(cd))  # (B P L)
        n = 2 * L  # zero-pad: linear, not circular, convolution
        x = torch.fft.ifft(torch.fft.fft(Bu, n=n) * torch.fft.fft(V, n=n), n=n)[..., :L]  # (B P L) states
        y = self.factor * torch.einsum("hp,bpl->blh", self.c_mat().to(cd), x).real  # (B L H)
        return y.to(u.dtype) + u * self.D

    def step_params(self, dtype: torch.dtype = torch.complex64) -> tuple[torch.Tensor, ...]:
        """(a - 1 c(P), B_bar c(P H), C c(H P)) in the step dtype, computed once per run of steps."""
        return self.a_minus_1().to(dtype), self.b_bar().to(dtype), self.c_mat().to(dtype)

    def step(self, u: torch.Tensor, x: torch.Tensor, params=None) -> tuple[torch.Tensor, torch.Tensor]:
        """u r(B H), x c(B P) -> (y r(B H), x_next c(B P)); the output reads x_next."""
        am1, Bb, C = params if params is not None else self.step_params(x.dtype)
        x = x + (am1 * x + u.to(x.dtype) @ Bb.T)  # (B P) delta form
        y = self.factor * (x @ C.T).real + u * self.D  # (B H)
        return y.to(u.dtype), x

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The complex step state's shape without the batch axis: one P-vector for all channels."""
        return (self.N,)

    def init_state(self, batch: int, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
        return torch.zeros(batch, self.N, dtype=dtype, device=self.D.device)  # (B P)

    # ---- system mapping -----------------------------------------------------------------------
    @torch.no_grad()
    def to_system(self) -> MimoSSM:
        la = self.log_a().cpu().numpy()
        return MimoSSM(np.exp(la), self.b_bar().cpu().numpy(), self.c_mat().cpu().numpy(),
                       self.D.double().cpu().numpy(), self.factor, la)

    def to_diagonal(self):
        raise ConfigError(f"a {type(self).__name__} is a MIMO layer (one state shared by all channels): "
                          "use edgessm.layer_systems(model) / to_system(), not diagonal_systems")

    def _check(self, sys: MimoSSM, layer) -> None:
        where = f"layer {layer}" if layer is not None else "layer"
        if sys.n_in != self.H or sys.n_out != self.H:
            raise ConfigError(f"{where}: system maps {sys.n_in} -> {sys.n_out} channels, the layer has H = {self.H}")
        if sys.N != self.N:
            raise ConfigError(f"{where}: system has {sys.N} modes, the layer {self.N}; build the layer with that size")
        if not sys.is_finite():
            raise UnstableSystemError(f"{where}: the system has non-finite parameters")
        if not sys.is_stable():
            raise UnstableSystemError(f"{where}: the system is unstable (max |a| = {sys.spectral_radius():.6g})")
        if np.any(np.abs(sys.D - np.diag(np.diag(sys.D))) > 0):
            raise ConfigError(f"{where}: the layer's skip D is diagonal; this system has a full D")


class LRULayer(_MimoLayer):
    """The Linear Recurrent Unit (Orvieto et al. 2023) as CompreSSM's code defines it (module docstring)."""

    def __init__(self, H: int, N: int, r_min: float = 0.9, r_max: float = 0.999, max_phase: float = 6.28,
                 seed: int | None = None):
        super().__init__()
        if not 0 <= r_min < r_max <= 1:
            raise ConfigError(f"LRU ring init needs 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        self.H, self.N, self.factor = H, N, 1.0
        rng = np.random.default_rng(seed if seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        u1, u2 = rng.uniform(size=N), rng.uniform(size=N)
        nu_log = np.log(-0.5 * np.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))  # |a|^2 uniform on the ring
        theta_log = np.log(max_phase * u2)
        f32 = lambda a: nn.Parameter(torch.tensor(a, dtype=torch.float32))
        self.nu_log, self.theta_log = f32(nu_log), f32(theta_log)
        self.B_re = f32(rng.standard_normal((N, H)) / math.sqrt(2 * H))  # Glorot, as the LRU paper
        self.B_im = f32(rng.standard_normal((N, H)) / math.sqrt(2 * H))
        self.C_re = f32(rng.standard_normal((H, N)) / math.sqrt(N))
        self.C_im = f32(rng.standard_normal((H, N)) / math.sqrt(N))
        self.D = f32(rng.standard_normal(H))
        mod2 = np.exp(-2 * np.exp(nu_log))  # |a|^2
        self.gamma_log = f32(np.log(np.sqrt(1 - mod2)))  # trained from here on, not recomputed

    def log_a(self) -> torch.Tensor:
        return torch.complex(-torch.exp(self.nu_log.double()), torch.exp(self.theta_log.double()))  # (P)

    def b_bar(self) -> torch.Tensor:
        return _cplx(self.B_re, self.B_im) * torch.exp(self.gamma_log.double())[:, None]  # (P H)

    @torch.no_grad()
    def load_system(self, sys: MimoSSM, layer=None) -> None:
        """nu, theta from log a; gamma = log sqrt(1 - |a|^2) (the LRU normalisation), B = B_bar / gamma; C, D."""
        sys = sys.with_factor(1.0)
        self._check(sys, layer)
        la = np.log(sys.A)
        theta = np.mod(la.imag, 2 * np.pi)  # the same a for any branch; theta = exp(theta_log) > 0
        nu_log = np.log(-la.real)
        theta_log = np.log(np.maximum(theta, np.exp(THETA_LOG_FLOOR)))
        gamma = np.sqrt(-np.expm1(2 * la.real))  # sqrt(1 - |a|^2)
        Bp = sys.B / gamma[:, None]
        for name, v in (("nu_log", nu_log), ("theta_log", theta_log), ("gamma_log", np.log(gamma)),
                        ("B_re", Bp.real), ("B_im", Bp.imag), ("C_re", sys.C.real), ("C_im", sys.C.imag),
                        ("D", np.diag(sys.D))):
            getattr(self, name).copy_(torch.from_numpy(np.ascontiguousarray(v)).to(getattr(self, name)))


def s5_hippo_init(P_full: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(Lambda c(P), V c(P_full P)): S5's block-diagonal HiPPO-LegS-N init with conjugate symmetry.

    Per block of size b = P_full / blocks: the normal part S = A + p p^T of HiPPO-LegS has eigenvalues
    -1/2 + i w (the real part is the mean of diag S); S5 keeps the first b/2 (one of each conjugate
    pair) and their eigenvectors, and repeats the block. -> the stored P = P_full / 2 modes.
    """
    b = P_full // blocks
    n = np.arange(b)
    q = np.sqrt(1 + 2 * n)
    A = -(np.tril(q[:, None] * q[None, :]) - np.diag(n))  # HiPPO-LegS
    p = np.sqrt(n + 0.5)
    S = A + p[:, None] * p[None, :]
    w, V = np.linalg.eigh(S * -1j)  # S is diag(-1/2) + skew: -i S Hermitian
    lam = np.mean(np.diag(S)) + 1j * w
    half = b // 2
    lam, V = lam[:half], V[:, :half]
    Lam = np.tile(lam, blocks)
    Vb = np.zeros((P_full, blocks * half), np.complex128)
    for j in range(blocks):
        Vb[j * b:(j + 1) * b, j * half:(j + 1) * half] = V
    return Lam, Vb


def _lecun_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """jax.nn.initializers.lecun_normal: truncated (+-2 std) normal with variance 1 / fan_in."""
    std = 1.0 / math.sqrt(fan_in) / 0.87962566103423978  # jax's truncation correction
    x = rng.standard_normal(shape)
    bad = np.abs(x) > 2
    while bad.any():
        x[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(x) > 2
    return x * std


class S5Layer(_MimoLayer):
    """S5 (Smith et al. 2023) with conjugate symmetry (c = 2), as lindermanlab/S5's S5SSM (module docstring)."""

    def __init__(self, H: int, N: int, dt_min: float = 1e-3, dt_max: float = 1e-1, blocks: int = 1,
                 discretization: str = "zoh", step_rescale: float = 1.0, seed: int | None = None):
        super().__init__()
        if discretization not in ("zoh", "bilinear"):
            raise ConfigError(f"S5 discretisation {discretization!r} is not one of zoh, bilinear")
        if blocks < 1 or N % blocks:
            raise ConfigError(f"S5 needs d_state ({N}) divisible by s5_blocks ({blocks})")
        self.H, self.N, self.factor = H, N, 2.0
        self.discretization, self.step_rescale = discretization, float(step_rescale)
        rng = np.random.default_rng(seed if seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        Lam, V = s5_hippo_init(2 * N, blocks)  # (P), (2P P)
        B0 = _lecun_normal(rng, (2 * N, H), 2 * N)  # jax's lecun_normal of shape (2P, H): fan_in = 2P
        Bt = np.conj(V).T @ B0  # (P H) V^-1 B (V has orthonormal columns per block)
        C0 = _lecun_normal(rng, (H, 2 * N, 2), 2 * N)  # trunc_standard_normal: one lecun row per channel
        Ct = (C0[..., 0] + 1j * C0[..., 1]) @ V  # (H P)
        log_step = rng.uniform(size=N) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        f32 = lambda a: nn.Parameter(torch.tensor(np.ascontiguousarray(a), dtype=torch.float32))
        self.Lambda_re, self.Lambda_im = f32(Lam.real), f32(Lam.imag)
        self.B_re, self.B_im = f32(Bt.real), f32(Bt.imag)
        self.C_re, self.C_im = f32(Ct.real), f32(Ct.imag)
        self.D = f32(rng.standard_normal(H))
        self.log_step = f32(log_step)  # (P) one Delta per state

    def delta(self) -> torch.Tensor:
        return self.step_rescale * torch.exp(self.log_step.double())  # (P)

    def lam(self) -> torch.Tensor:
        return _cplx(self.Lambda_re, self.Lambda_im)  # (P)

    def log_a(self) -> torch.Tensor:
        z = self.lam() * self.delta()  # (P)
        if self.discretization == "zoh":
            return z
        return 2.0 * torch.atanh(0.5 * z)  # log((1 + z/2) / (1 - z/2))

    def a_minus_1(self) -> torch.Tensor:
        z = self.lam() * self.delta()
        if self.discretization == "zoh":
            return torch.expm1(z)
        return z / (1.0 - 0.5 * z)  # bilinear: exact, no cancellation

    def b_bar(self) -> torch.Tensor:
        lam, dl = self.lam(), self.delta()
        Bt = _cplx(self.B_re, self.B_im)  # (P H)
        if self.discretization == "zoh":
            return (torch.expm1(lam * dl) / lam)[:, None] * Bt
        return (dl / (1.0 - 0.5 * lam * dl))[:, None] * Bt

    @torch.no_grad()
    def mean_delta(self) -> float:
        """The geometric mean of the per-state Deltas."""
        return float(np.exp(np.mean(np.log(self.delta().detach().cpu().numpy()))))

    @torch.no_grad()
    def load_system(self, sys: MimoSSM, layer=None, delta: float | None = None) -> None:
        """Every mode gets one Delta (default: this layer's ``mean_delta``); Lambda and B from a, B_bar."""
        sys = sys.with_factor(2.0)
        self._check(sys, layer)
        dl = float(delta) if delta is not None else self.mean_delta()
        la = np.log(sys.A)
        if self.discretization == "zoh":
            lam = la / dl
            Bt = sys.B * (lam / np.expm1(la))[:, None]
        else:
            w = np.tanh(0.5 * la)  # = z / 2 with a = (1 + z/2) / (1 - z/2)
            lam = 2.0 * w / dl
            Bt = sys.B * ((1.0 - w) / dl)[:, None]
        log_step = np.full(self.N, math.log(dl / self.step_rescale))
        for name, v in (("Lambda_re", lam.real), ("Lambda_im", lam.imag), ("log_step", log_step),
                        ("B_re", Bt.real), ("B_im", Bt.imag), ("C_re", sys.C.real), ("C_im", sys.C.imag),
                        ("D", np.diag(sys.D))):
            getattr(self, name).copy_(torch.from_numpy(np.ascontiguousarray(v)).to(getattr(self, name)))
