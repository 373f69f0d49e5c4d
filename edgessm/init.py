"""Initialisations of the continuous-time diagonal state matrix Lambda and of the step size dt.

Dimensions: H channels, N stored (complex) modes. Every function returns numpy float64 /
complex128; the layers cast to their parameter dtype.

- skew-hippo: eigenvalues of the normal (skew-symmetric + -1/2 I) part of the HiPPO-LegS matrix,
  Re = -1/2 (DSS, Gupta et al. 2022, sec. 3.3; S4D-LegS, Gu et al. 2022). A HiPPO matrix of size
  2N gives N conjugate pairs; we keep the N eigenvalues with positive imaginary part.
- s4d-lin: Lambda_n = -1/2 + i pi n (S4D, Gu et al. 2022, eq. 8).
- s4d-inv: Lambda_n = -1/2 + i N/pi (N/(2n+1) - 1) (S4D, eq. 9).
- random: Re ~ -U(0.1, 1), Im ~ U(0, pi N): a generic stable spectrum for tests and ablations.
"""
from __future__ import annotations

import numpy as np

from .config import INITS
from .errors import ConfigError

__all__ = ["init_lambda", "init_log_dt", "init_C", "skew_hippo_eigenvalues"]


def skew_hippo_eigenvalues(N: int) -> np.ndarray:
    """c(N): eigenvalues of the normal part of HiPPO-LegS of size 2N with Im > 0, sorted by Im.

    HiPPO-LegS: A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k); with
    P_n = sqrt(n + 1/2), A + P P^T = -1/2 I + S, S_nk = -1/2 sqrt((2n+1)(2k+1)) sign(n - k).
    S is real skew-symmetric, so i S is Hermitian: eigvalsh gives its spectrum accurately.
    """
    M = 2 * N
    q = np.sqrt(2.0 * np.arange(M) + 1.0)  # (M)
    S = -0.5 * np.outer(q, q) * np.sign(np.subtract.outer(np.arange(M), np.arange(M)))  # (M M)
    w = np.linalg.eigvalsh(1j * S)  # (M) real; the spectrum of S is {i w}, symmetric about 0
    imag = np.sort(w[w > 0])  # (N) the positive frequencies
    return -0.5 + 1j * imag[:N]


def init_lambda(init: str, N: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """c(N): continuous-time eigenvalues, Re < 0."""
    n = np.arange(N)
    if init == "skew-hippo":
        return skew_hippo_eigenvalues(N)
    if init == "s4d-lin":
        return -0.5 + 1j * np.pi * n
    if init == "s4d-inv":
        return -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1)
    if init == "random":
        rng = rng or np.random.default_rng(0)
        return -rng.uniform(0.1, 1.0, N) + 1j * rng.uniform(0.0, np.pi * N, N)
    raise ConfigError(f"init {init!r} is not one of {', '.join(INITS)}")


def init_log_dt(H: int, dt_min: float, dt_max: float, rng: np.random.Generator) -> np.ndarray:
    """r(H): log dt drawn log-uniformly in [dt_min, dt_max] (S4, Gu et al. 2022)."""
    return rng.uniform(np.log(dt_min), np.log(dt_max), H)


def init_C(H: int, N: int, rng: np.random.Generator) -> np.ndarray:
    """c(H N): complex normal with unit variance (0.5 per component), as torch.randn(cfloat) in S4D."""
    return (rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))) * np.sqrt(0.5)
