"""The MIMO diagonal system type: P complex modes shared by all channels (LRU, S5).

Dimensions: P stored modes, I input channels (H_in), O output channels (H_out), L length,
B batch, F frequencies, n real state numbers.

    x_k[p] = A[p] x_{k-1}[p] + sum_i B[p, i] u_k[i]                 complex state, x_{-1} = 0
    y_k[o] = c Re( sum_p C[o, p] x_k[p] ) + sum_i D[o, i] u_k[i]     real output

A c(P), B c(P I), C c(O P), D r(O I), c > 0 the output factor: c = 2 with conjugate-symmetric
storage (S5's conj_sym), c = 1 for the LRU (Orvieto et al. 2023), whose y = Re(C x) has no factor 2.
For real inputs u the two are the same family: c Re(C x) = (c/2) (C x + conj(C x)), so every stored
mode stands for the pole pair (A_p, conj A_p) with residues (c/2) C[:, p] B[p, :] and its conjugate:

    G(z) = D + (c/2) sum_p [ R_p z / (z - A_p) + conj(R_p) z / (z - conj A_p) ],   R_p = C[:, p] B[p, :]

(the output reads the updated state, as every reference codebase does). ``real_modes`` marks modes
whose A, B row and C column are all real: their state stays real, one real state number
(balanced truncation produces them); every other mode is two (Re and Im of x_p).

``logA`` c(P), optional, is log A known exactly from the layer's continuous parameters (LRU:
-exp(nu_log) + i exp(theta_log); S5: Delta * Lambda); Gramian denominators 1 - A_i conj A_j are then
formed as -expm1(logA_i + conj logA_j) without the cancellation of 1 - |A|^2 for slow modes.

Everything here is numpy float64 / complex128: the oracle side of every MIMO parity test. Method names
follow :class:`~edgessm.ssm.DiagonalSSM` where the meaning matches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .ssm import REAL_MODE_RTOL, as_batch

__all__ = ["MimoSSM"]


@dataclass(frozen=True)
class MimoSSM:
    """One MIMO diagonal system (module docstring). A c(P), B c(P I), C c(O P), D r(O I), c, logA c(P) | None."""

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray
    c: float = 2.0
    logA: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        A = np.atleast_1d(np.asarray(self.A, dtype=np.complex128))
        B = np.atleast_2d(np.asarray(self.B, dtype=np.complex128))
        C = np.atleast_2d(np.asarray(self.C, dtype=np.complex128))
        D = np.asarray(self.D, dtype=np.float64)
        if A.ndim != 1 or B.shape[0] != A.shape[0] or C.shape[1] != A.shape[0]:
            raise ValueError(f"MimoSSM: need A (P,), B (P, I), C (O, P); got {A.shape}, {B.shape}, {C.shape}")
        if D.ndim == 1:  # a diagonal skip (LRU, S5: D u per channel)
            if C.shape[0] != B.shape[1] or D.shape[0] != B.shape[1]:
                raise ValueError(f"MimoSSM: a vector D needs O = I = len(D); got D {D.shape}, B {B.shape}, C {C.shape}")
            D = np.diag(D)
        if D.shape != (C.shape[0], B.shape[1]):
            raise ValueError(f"MimoSSM: D must be (O, I) = {(C.shape[0], B.shape[1])}, got {D.shape}")
        if not self.c > 0:
            raise ValueError(f"MimoSSM: output factor c must be positive, got {self.c}")
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "B", B)
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "D", D)
        object.__setattr__(self, "c", float(self.c))
        if self.logA is not None:
            logA = np.atleast_1d(np.asarray(self.logA, dtype=np.complex128))
            if logA.shape != A.shape:
                raise ValueError(f"MimoSSM: logA must have shape {A.shape}, got {logA.shape}")
            object.__setattr__(self, "logA", logA)

    # ---- shape and structure -------------------------------------------------------------
    N = property(lambda self: self.A.shape[0], doc="P, the stored modes (DiagonalSSM's N)")
    n_in = property(lambda self: self.B.shape[1], doc="input channels")
    n_out = property(lambda self: self.C.shape[0], doc="output channels")

    def log_a(self) -> np.ndarray:
        """c(P): log A, the exact one when the layer supplied it."""
        return self.logA if self.logA is not None else np.log(self.A)

    def real_modes(self) -> np.ndarray:
        """bool (P): modes whose A, B row and C column are real (one real state number each)."""
        gap = np.maximum(-np.expm1(self.log_a().real), 0.0)  # (P) distance from the unit circle (ssm.REAL_MODE_RTOL)
        a_real = np.abs(self.A.imag) <= REAL_MODE_RTOL * gap
        return a_real & np.all(self.B.imag == 0, axis=1) & np.all(self.C.imag == 0, axis=0)

    def active_modes(self) -> np.ndarray:
        """bool (P): modes that reach the output (some C[o, p] B[p, i] != 0)."""
        return np.any(self.B != 0, axis=1) & np.any(self.C != 0, axis=0)

    def real_state_dims(self) -> np.int64:
        """Real state numbers of the real map's realisation: 2 per complex and 1 per real active mode."""
        per_mode = np.where(self.real_modes(), 1, 2)  # (P)
        return np.int64(np.sum(np.where(self.active_modes(), per_mode, 0)))  # a numpy scalar: .sum() as DiagonalSSM's

    def is_finite(self) -> bool:
        return bool(all(np.all(np.isfinite(m)) for m in (self.A, self.B, self.C, self.D)))

    def spectral_radius(self) -> np.float64:
        return np.float64(np.max(np.abs(self.A))) if self.N else np.float64(0.0)

    def is_stable(self) -> bool:
        return bool(np.all(np.abs(self.A) < 1.0))

    def one_minus(self) -> np.ndarray:
        """r(P): 1 - |A|, the distance from the unit circle (from the exact log A when it is kept)."""
        return -np.expm1(self.log_a().real)

    def sensitivity(self) -> np.ndarray:
        """r(1): first-order bound on ||G~ - G||_inf per unit relative perturbation of every A, B, C, D
        (DiagonalSSM.sensitivity with the residue's spectral norm ||C_p|| ||B_p|| and the factor c)."""
        g = np.maximum(self.one_minus(), 1e-300)  # (P)
        r = np.linalg.norm(self.C, axis=0) * np.linalg.norm(self.B, axis=1)  # (P) ||C_p B_p^T||_2
        per_mode = self.c * r * (np.abs(self.A) / g ** 2 + 2.0 / g)  # (P) a mode and its conjugate
        return np.array([np.sum(per_mode) + np.linalg.norm(self.D, 2)])

    def perturbation_bound(self, other: "MimoSSM") -> np.ndarray:
        """r(1): a rigorous bound on ||G_self - G_other||_inf for two systems with the same modes, mode by mode.

        As DiagonalSSM.perturbation_bound, with residues R_p = C_p B_p^T (Frobenius norm >= spectral norm):
        (c/2) sum over the mode and its conjugate of ||R - R'|| / g + ||R'|| |a - a'| / (g g'), plus ||D - D'||_2.
        """
        if (self.N, self.n_in, self.n_out) != (other.N, other.n_in, other.n_out) or self.c != other.c:
            raise ValueError("perturbation_bound needs systems of the same shape and output factor")
        g = np.maximum(self.one_minus(), 1e-300)  # (P)
        g2 = np.maximum(other.one_minus(), 1e-300)  # (P)
        R, R2 = self.residues(), other.residues()  # (P O I)
        dR = np.sqrt(np.sum(np.abs(R - R2) ** 2, axis=(1, 2)))  # (P)
        n2 = np.sqrt(np.sum(np.abs(R2) ** 2, axis=(1, 2)))  # (P)
        per_mode = self.c * (dR / g + n2 * np.abs(self.A - other.A) / (g * g2))  # (P)
        return np.array([np.sum(per_mode) + np.linalg.norm(self.D - other.D, 2)])

    def residues(self) -> np.ndarray:
        """c(P O I): R_p = C[:, p] B[p, :]."""
        return np.einsum("op,pi->poi", self.C, self.B)

    # ---- the real input-output map: the float64 oracle ---------------------------------
    def realify(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(A_r r(n n), B_r r(n I), C_r r(O n), D r(O I)): the real map x_k = A_r x_{k-1} + B_r u_k, y_k = C_r x_k + D u_k.

        A complex (or partly complex) mode gives the two states (Re x_p, Im x_p) with the rotation
        block [[Re a, -Im a], [Im a, Re a]]; a real mode one state. Inactive modes are dropped.
        """
        real, act = self.real_modes(), self.active_modes()
        blocksA, rowsB, colsC = [], [], []
        for p in np.flatnonzero(act):
            a, b, cc = self.A[p], self.B[p], self.c * self.C[:, p]
            if real[p]:
                blocksA.append(np.array([[a.real]]))
                rowsB.append(b.real[None])
                colsC.append(cc.real[:, None])
            else:
                blocksA.append(np.array([[a.real, -a.imag], [a.imag, a.real]]))
                rowsB.append(np.stack([b.real, b.imag]))
                colsC.append(np.stack([cc.real, -cc.imag], axis=1))
        n = sum(m.shape[0] for m in blocksA)
        Ar = np.zeros((n, n))
        i = 0
        for m in blocksA:
            Ar[i:i + m.shape[0], i:i + m.shape[0]] = m
            i += m.shape[0]
        Br = np.concatenate(rowsB, 0) if rowsB else np.zeros((0, self.n_in))
        Cr = np.concatenate(colsC, 1) if colsC else np.zeros((self.n_out, 0))
        return Ar, Br, Cr, self.D.copy()

    def impulse_response(self, L: int) -> np.ndarray:
        """r(O I L): h_0 = D + c Re(C B), h_k = c Re(C diag(A^k) B)."""
        k = np.arange(L)
        Ak = np.exp(self.log_a()[:, None] * k)  # (P L)
        Ak[:, 0] = 1.0  # A^0 = 1 also for A = 0
        h = self.c * np.einsum("op,pl,pi->oil", self.C, Ak, self.B).real  # (O I L)
        h[:, :, 0] += self.D
        return h

    def _tf(self, omega: np.ndarray, block: int = 128) -> np.ndarray:
        """c(F O I): G(e^{i omega}), frequency-major, as batched matrix products in blocks of frequencies."""
        z = np.exp(1j * np.atleast_1d(np.asarray(omega, dtype=np.float64)))  # (F)
        half = 0.5 * self.c
        out = np.empty((z.size, self.n_out, self.n_in), np.complex128)  # (F O I)
        Cc, Bc = np.conj(self.C), np.conj(self.B)
        for f0 in range(0, z.size, block):
            zf = z[f0:f0 + block, None]  # (f 1)
            w1 = half * zf / (zf - self.A[None])  # (f P)
            w2 = half * zf / (zf - np.conj(self.A)[None])  # (f P)
            out[f0:f0 + block] = (self.C[None] * w1[:, None, :]) @ self.B + (Cc[None] * w2[:, None, :]) @ Bc
        return out + self.D[None]

    def transfer_function(self, omega: np.ndarray) -> np.ndarray:
        """c(O I F): G(z) at z = exp(i omega) (module docstring; output reads the updated state)."""
        return np.moveaxis(self._tf(omega), 0, 2)

    def reference_recurrence(self, u: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The slow, obviously-correct oracle, complex128 step by step.

        u r(B L I) (or r(L I)) -> y r(B L O), final state c(B P). state: c(B P) or None (zeros).
        """
        u, squeeze = as_batch(u)  # (B L channels)
        Bsz, L, I = u.shape
        if I != self.n_in:
            raise ValueError(f"input has {I} channels, the system takes {self.n_in}")
        x = np.zeros((Bsz, self.N), np.complex128) if state is None else np.array(state, np.complex128)
        Bu = np.einsum("pi,bli->blp", self.B, u)  # (B L P)
        y = np.empty((Bsz, L, self.n_out))
        for k in range(L):
            x = self.A * x + Bu[:, k]  # (B P)
            y[:, k] = self.c * (x @ self.C.T).real  # (B O)
        y += np.einsum("oi,bli->blo", self.D, u)
        return (y[0], x[0]) if squeeze else (y, x)

    def convolve(self, u: np.ndarray) -> np.ndarray:
        """r(B L I) -> r(B L O): the same map as reference_recurrence by exact float64 FFT convolution."""
        u, squeeze = as_batch(u)  # (B L channels)
        L = u.shape[1]
        K = self.impulse_response(L)  # (O I L)
        n = 2 * L
        Uf = np.fft.rfft(u, n=n, axis=1)  # (B n/2+1 I)
        Kf = np.fft.rfft(K, n=n, axis=2)  # (O I n/2+1)
        Y = np.fft.irfft(np.einsum("bfi,oif->bfo", Uf, Kf), n=n, axis=1)[:, :L]  # (B L O)
        return Y[0] if squeeze else Y

    def sigma_max(self, omega: np.ndarray) -> np.ndarray:
        """r(F): the largest singular value of G(e^{i omega}), as sqrt of the top eigenvalue of the smaller Gram.

        eigvalsh's absolute error ~eps sigma_max^2 leaves sigma_max accurate to ~eps relative.
        """
        G = self._tf(omega)  # (F O I)
        Gh = np.conj(np.swapaxes(G, 1, 2))
        gram = G @ Gh if self.n_out <= self.n_in else Gh @ G  # (F m m)
        return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))

    def hinf_norm(self, n_grid: int = 1025, n_peaks: int = 8, n_refine: int = 12) -> float:
        """||G||_inf = max over omega in [0, pi] of sigma_max(G(e^{i omega})) (real map: symmetric in omega).

        The same peak search as the SISO channels' (``edgessm.reduce.norms.peak_gain``): the uniform grid,
        every pole frequency, zooms around the largest local maxima, and width-step ladders around the
        poles narrower than the grid, whose resonances a grid misses.
        """
        from .reduce.norms import peak_gain

        if self.n_in == 0 or self.n_out == 0:
            return 0.0

        def sigma(w: np.ndarray) -> np.ndarray:  # r(1 F) -> r(1 F), in chunks: G is (F O I) complex
            flat = np.ravel(w)
            return np.concatenate([self.sigma_max(flat[k:k + 1024]) for k in range(0, flat.size, 1024)]
                                  + [np.zeros(0)])[None]

        active = np.any(self.B != 0, axis=1) & np.any(self.C != 0, axis=0)  # (P) modes that reach y
        uniform = sigma(np.linspace(0.0, np.pi, n_grid)[None])  # (1 G)
        return float(peak_gain(lambda rows: sigma, self.A[None], active[None], uniform, n_grid, n_peaks, n_refine)[0])

    # ---- composition ------------------------------------------------------------------------
    def with_factor(self, c: float) -> "MimoSSM":
        """The same real map stored with output factor c (C rescaled by self.c / c)."""
        return MimoSSM(self.A, self.B, self.C * (self.c / c), self.D, c, self.logA)

    def concat_modes(self, other: "MimoSSM") -> "MimoSSM":
        """Parallel connection (outputs add) of two systems with the same inputs and outputs; D adds."""
        o = other.with_factor(self.c)
        logA = None if self.logA is None or o.logA is None else np.concatenate([self.logA, o.logA])
        return MimoSSM(np.concatenate([self.A, o.A]), np.concatenate([self.B, o.B], 0),
                       np.concatenate([self.C, o.C], 1), self.D + o.D, self.c, logA)

    def error_system(self, red: "MimoSSM") -> "MimoSSM":
        """G - G_r as one system (the parallel connection with the reduced output negated)."""
        r = red.with_factor(self.c)
        return self.concat_modes(MimoSSM(r.A, r.B, -r.C, -r.D, self.c, r.logA))

    def astuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.A, self.B, self.C, self.D
