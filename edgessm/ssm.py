"""The central type: a batch of discrete-time diagonal SISO systems, one per channel.

Dimensions: H channels, N stored modes per channel, L sequence length, B batch.

    x_k[h, n] = A[h, n] * x_{k-1}[h, n] + B[h, n] * u_k[h]          complex state, x_0 = 0
    y_k[h]    = 2 * Re( sum_n C[h, n] * x_k[h, n] ) + D[h] * u_k[h]  real output

A, B, C: complex128 (H, N); D: float64 (H,); stable means |A| < 1.

Conventions (docs/architecture.md):
- The output reads the *updated* state, as S4's step does, so the impulse response is
  h_0 = 2 Re(sum_n C_n B_n) + D and h_k = 2 Re(sum_n C_n A_n^k B_n) for k >= 1.
- Each stored mode stands for a conjugate pair (the ``2 Re``): N complex modes are 2N real
  state numbers. A mode whose A is real is a *real mode*: its state x_k is B * (a real
  sequence), so it is one real state number, not two. "Real" is judged against the distance
  from the unit circle, not against |A| (``real_modes``). Balanced truncation
  produces such modes, even from all-oscillatory channels; they are stored like any other mode, with A real and the
  factor 2 of the output folded into C (C_stored = C_real / 2).
- A padding mode (B = C = 0) contributes nothing; it keeps a layer's N uniform across
  channels after a per-channel reduction.

Everything here is numpy float64 / complex128: the oracle side of every parity test.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DiagonalSSM", "zoh", "cexpm1", "as_batch", "REAL_MODE_RTOL"]

# A mode is treated as real when |imag(A)| <= REAL_MODE_RTOL * (1 - |A|). Reading a pair a, conj(a)
# with angle theta as the one real mode |a| changes its impulse response 2 Re(rho a^k) by at most
# |rho| k theta |a|^k, i.e. by theta / (1 - |a|) of the pair's gain |rho| / (1 - |a|): the test is
# relative to the distance from the unit circle. A test relative to |A| (1e-12 |A|) misreads a slow
# pole, 1 - |a| = 1e-7 with theta = 1e-13, as real and throws away most of the pair's output.
# Eigenvalues that are real by construction (LAPACK on a real matrix, a real Lambda) have imag == 0.
REAL_MODE_RTOL = 1e-12


def zoh(Lambda: np.ndarray, dt: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order-hold discretisation of x' = Lambda x + B u, diagonal.

    Lambda: c(H N), dt: r(H) or r(H N), B: c(H N) -> (A_bar, B_bar) c(H N)
    A_bar = exp(dt Lambda), B_bar = (exp(dt Lambda) - 1) / Lambda * B   (S4D, Gu et al. 2022, eq. 4)
    """
    Lambda = np.asarray(Lambda, dtype=np.complex128)
    dt = np.asarray(dt, dtype=np.float64)
    if dt.ndim == 1:
        dt = dt[:, None]  # (H 1)
    dtL = dt * Lambda  # (H N)
    A_bar = np.exp(dtL)  # (H N)
    B_bar = np.expm1(dtL) / Lambda * np.asarray(B, dtype=np.complex128)  # (H N)
    return A_bar, B_bar


def cexpm1(z: np.ndarray) -> np.ndarray:
    """exp(z) - 1 for complex z without cancellation near 0 (numpy's expm1 is real-only).

    Re = expm1(x) cos y - 2 sin^2(y/2), Im = exp(x) sin y.
    """
    z = np.asarray(z, dtype=np.complex128)
    x, y = z.real, z.imag
    return (np.expm1(x) * np.cos(y) - 2.0 * np.sin(0.5 * y) ** 2) + 1j * (np.exp(x) * np.sin(y))


def as_batch(u) -> tuple[np.ndarray, bool]:
    """r(L C) or r(B L C) -> (r(B L C) float64, whether a batch axis was added): the oracles' input."""
    u = np.asarray(u, dtype=np.float64)
    return (u[None], True) if u.ndim == 2 else (u, False)


@dataclass(frozen=True)
class DiagonalSSM:
    """H independent diagonal SISO systems (one per channel) with N stored modes each.

    A, B, C: c(H N) complex128; D: r(H) float64. See the module docstring for the conventions.
    logA: c(H N) or None: log A where the layer has continuous parameters (dt * Lambda for ZOH).
    A = exp(logA) rounds A to float64, which moves a slow pole's 1 - |A| by eps / (1 - |A|) relative
    (2e-9 at |A| = 1 - 1e-7); the Gramian denominators 1 - a_i conj(a_j) = -expm1(log a_i + conj log a_j)
    and the distance from the circle are formed from logA when it is given (``one_minus``).
    """

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray
    logA: np.ndarray | None = None

    @classmethod
    def from_log(cls, logA: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray) -> "DiagonalSSM":
        """The system with A = exp(logA) that keeps logA (continuous parameters: logA = dt Lambda)."""
        logA = np.atleast_2d(np.asarray(logA, dtype=np.complex128))
        return cls(np.exp(logA), B, C, D, logA)

    def __post_init__(self) -> None:
        A = np.atleast_2d(np.asarray(self.A, dtype=np.complex128))
        B = np.atleast_2d(np.asarray(self.B, dtype=np.complex128))
        C = np.atleast_2d(np.asarray(self.C, dtype=np.complex128))
        D = np.atleast_1d(np.asarray(self.D, dtype=np.float64))
        if not (A.shape == B.shape == C.shape) or A.ndim != 2:
            raise ValueError(f"DiagonalSSM: A, B, C must share one (H, N) shape, got {A.shape}, {B.shape}, {C.shape}")
        if D.shape != (A.shape[0],):
            raise ValueError(f"DiagonalSSM: D must have shape (H,) = ({A.shape[0]},), got {D.shape}")
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "B", B)
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "D", D)
        if self.logA is not None:
            logA = np.atleast_2d(np.asarray(self.logA, dtype=np.complex128))
            if logA.shape != A.shape:
                raise ValueError(f"DiagonalSSM: logA must have A's shape {A.shape}, got {logA.shape}")
            object.__setattr__(self, "logA", logA)

    def one_minus(self) -> np.ndarray:
        """r(H N): 1 - |A|, the distance from the unit circle; -expm1(Re logA) when logA is kept."""
        if self.logA is not None:
            return -np.expm1(self.logA.real)
        return 1.0 - np.abs(self.A)

    # ---- shape and structure -------------------------------------------------------------
    H = property(lambda self: self.A.shape[0], doc="channels")
    N = property(lambda self: self.A.shape[1], doc="stored modes per channel")

    def real_modes(self) -> np.ndarray:
        """bool (H N): modes whose A is real (one real state number each); see REAL_MODE_RTOL."""
        gap = np.maximum(self.one_minus(), 0.0)  # (H N) distance from the unit circle
        return np.abs(self.A.imag) <= REAL_MODE_RTOL * gap

    def active_modes(self) -> np.ndarray:
        """bool (H N): modes that reach the output (B*C != 0); padding modes are inactive."""
        return (self.B * self.C) != 0

    def real_state_dims(self) -> np.ndarray:
        """int (H,): real state numbers per channel, counting 2 per complex and 1 per real active mode."""
        per_mode = np.where(self.real_modes(), 1, 2)  # (H N)
        return np.sum(np.where(self.active_modes(), per_mode, 0), axis=1)  # (H,)

    def check(self, layer: object | None = None, *, stable: bool = True) -> None:
        """The one validator of systems: UnstableSystemError naming the first bad channel (NaN/Inf, or |A| >= 1).

        layer names the layer in the message (an int or a string, or None). Shapes are checked on
        construction. stable=False checks finiteness only.
        """
        from .errors import UnstableSystemError

        where = "" if layer is None else (f"layer {layer}: " if not isinstance(layer, str) else f"{layer}: ")
        finite = (np.isfinite(self.A) & np.isfinite(self.B) & np.isfinite(self.C)).all(axis=1) & np.isfinite(self.D)  # (H)
        if not finite.all():
            h = int(np.flatnonzero(~finite)[0])
            raise UnstableSystemError(f"{where}channel {h} has NaN/Inf in A, B, C or D; use a finite model "
                                      f"(check the checkpoint or the training run)")
        if not stable:
            return
        rad = self.spectral_radius() if self.N else np.zeros(self.H)  # (H)
        if np.any(rad >= 1.0):
            h = int(np.flatnonzero(rad >= 1.0)[0])
            raise UnstableSystemError(f"{where}channel {h} has |A| = {rad[h]:.17g} >= 1 (unstable or marginal); "
                                      f"balanced truncation and export need |A| < 1: retrain with a stable "
                                      f"parametrisation or clip the eigenvalues")

    def is_finite(self) -> bool:
        return bool(np.all(np.isfinite(self.A)) and np.all(np.isfinite(self.B))
                    and np.all(np.isfinite(self.C)) and np.all(np.isfinite(self.D)))

    def spectral_radius(self) -> np.ndarray:
        """r(H): max |A| per channel."""
        return np.max(np.abs(self.A), axis=1)

    def sensitivity(self) -> np.ndarray:
        """r(H): first-order bound on ||G~ - G||_inf per unit relative perturbation of every A_n, B_n, C_n, D.

        With |z| = 1 and the updated-state output z C B / (z - A) per mode (and its conjugate),
        d/dA = z C B / (z - A)^2 is at most |C B| / (1 - |A|)^2 and d/dB, d/dC at most |C B| / (1 - |A|);
        a relative perturbation eps of each moves ||G||_inf by at most eps * sensitivity() (to first
        order; the factor 2 counts the conjugate partner, and bounds a real mode's 2 Re(C B) too).
        Floors of the error bound are eps * a size factor * sensitivity() (reduce/reduction.py).
        """
        gap = np.maximum(self.one_minus(), 1e-300)  # (H N)
        cb = np.abs(self.C * self.B)  # (H N)
        per_mode = 2.0 * cb * (np.abs(self.A) / gap ** 2 + 2.0 / gap)  # (H N)
        return np.sum(per_mode, axis=1) + np.abs(self.D)  # (H)

    def snapped(self) -> "DiagonalSSM":
        """The system as the reducers read it: modes judged real (``real_modes``) with A = Re A and C B = Re(C B)."""
        real = self.real_modes() & (self.A.imag != 0)  # (H N) only those whose reading changes anything
        if not real.any():
            return self
        safe_B = np.where(self.B != 0, self.B, 1.0)
        C = np.where(real, (self.C * self.B).real / safe_B, self.C)  # (H N) C' B = Re(C B)
        return DiagonalSSM(np.where(real, self.A.real + 0j, self.A), self.B, C, self.D)

    def perturbation_bound(self, other: "DiagonalSSM") -> np.ndarray:
        """r(H): a rigorous bound on ||G_self - G_other||_inf for two systems with the same (H, N), mode by mode.

        Per mode (rho = C B, |z| = 1, |z - a| >= 1 - |a|):
        rho / (z - a) - rho' / (z - a') = (rho - rho') / (z - a) + rho' (a - a') / ((z - a)(z - a')),
        so each mode and its conjugate differ by at most 2 (|rho - rho'| / g + |rho'| |a - a'| / (g g'))
        with g = 1 - |a|, g' = 1 - |a'|; D adds |D - D'|. Used for what float32 storage of a reduced
        model can change (compress.py), where the two systems are known exactly.
        """
        if (self.H, self.N) != (other.H, other.N):
            raise ValueError(f"perturbation_bound needs equal shapes, got {(self.H, self.N)} and {(other.H, other.N)}")
        g = np.maximum(self.one_minus(), 1e-300)  # (H N)
        g2 = np.maximum(other.one_minus(), 1e-300)  # (H N)
        rho, rho2 = self.C * self.B, other.C * other.B  # (H N)
        per_mode = 2.0 * (np.abs(rho - rho2) / g + np.abs(rho2) * np.abs(self.A - other.A) / (g * g2))  # (H N)
        return np.sum(per_mode, axis=1) + np.abs(self.D - other.D)  # (H)

    def is_stable(self) -> bool:
        return bool(np.all(np.abs(self.A) < 1.0))

    def channel(self, h: int | slice | np.ndarray) -> "DiagonalSSM":
        """The sub-batch of channels h (kept 2-D)."""
        idx = np.atleast_1d(np.arange(self.H)[h])
        return DiagonalSSM(self.A[idx], self.B[idx], self.C[idx], self.D[idx],
                           None if self.logA is None else self.logA[idx])

    # ---- input-output maps: the float64 oracle -------------------------------------------
    def impulse_response(self, L: int) -> np.ndarray:
        """r(H L): h_0 = 2 Re(sum C B) + D, h_k = 2 Re(sum C A^k B) (the convolution kernel incl. D)."""
        k = np.arange(L)
        Ak = np.exp(np.log(self.A.astype(np.complex128) + 0j)[:, :, None] * k)  # (H N L)
        Ak[:, :, 0] = 1.0  # A^0 = 1 also for padding modes with A = 0 (log 0 = -inf)
        h = 2.0 * np.einsum("hn,hnl->hl", self.C * self.B, Ak).real  # (H L)
        h[:, 0] += self.D
        return h

    def transfer_function(self, omega: np.ndarray) -> np.ndarray:
        """c(H F): G(z) = 2-Re-split transfer function of the real map at z = exp(i omega).

        The real map is y = sum over modes of C x + conj(C) conj(x); per mode the transfer
        function is z C B / (z - A) + z conj(C B) / (z - conj(A)) (output reads the updated state).
        """
        z = np.exp(1j * np.asarray(omega, dtype=np.float64))  # (F)
        CB = (self.C * self.B)[:, :, None]  # (H N 1)
        A = self.A[:, :, None]  # (H N 1)
        G = np.sum(z * CB / (z - A) + z * np.conj(CB) / (z - np.conj(A)), axis=1)  # (H F)
        return G + self.D[:, None]

    def reference_recurrence(self, u: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The slow, obviously-correct oracle: run the recurrence step by step in complex128.

        u: r(B L H) (or r(L H)) -> y: r(B L H), final state c(B H N). state: c(B H N) or None (zeros).
        """
        u, squeeze = as_batch(u)  # (B L channels)
        Bsz, L, H = u.shape
        if H != self.H:
            raise ValueError(f"input has {H} channels, the system has {self.H}")
        x = np.zeros((Bsz, self.H, self.N), np.complex128) if state is None else np.array(state, np.complex128)
        y = np.empty((Bsz, L, H), np.float64)
        for k in range(L):
            x = self.A * x + self.B * u[:, k, :, None]  # (B H N)
            y[:, k] = 2.0 * np.einsum("hn,bhn->bh", self.C, x).real + self.D * u[:, k]  # (B H)
        return (y[0], x[0]) if squeeze else (y, x)

    def convolve(self, u: np.ndarray) -> np.ndarray:
        """r(B L H) -> r(B L H): the same map as reference_recurrence, by exact float64 FFT convolution."""
        u, squeeze = as_batch(u)  # (B L channels)
        L = u.shape[1]
        K = self.impulse_response(L)  # (H L)
        n = 2 * L
        Y = np.fft.irfft(np.fft.rfft(u, n=n, axis=1) * np.fft.rfft(K.T, n=n, axis=0)[None], n=n, axis=1)[:, :L]
        return Y[0] if squeeze else Y

    # ---- misc -----------------------------------------------------------------------------
    def concat_modes(self, other: "DiagonalSSM") -> "DiagonalSSM":
        """Parallel connection (sum of outputs) of two systems on the same channels; D adds."""
        logA = None if self.logA is None or other.logA is None else np.concatenate([self.logA, other.logA], 1)
        return DiagonalSSM(np.concatenate([self.A, other.A], 1), np.concatenate([self.B, other.B], 1),
                           np.concatenate([self.C, other.C], 1), self.D + other.D, logA)

    def astuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.A, self.B, self.C, self.D
