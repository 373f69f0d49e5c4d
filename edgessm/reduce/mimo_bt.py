"""Balanced truncation of the REAL input-output map of a MIMO diagonal system (LRU, S5).

Dimensions: P stored modes, I inputs, O outputs, M doubled complex coordinates (2 per complex mode,
1 per real mode), n = M real coordinates, K Gramian factor columns, k kept real order, r stored modes.

Why the real map: the layer computes y = c Re(C x) + D u, whose poles are A_p AND conj(A_p).
Balancing the complex map (A, B, C) alone, as CompreSSM's code does, reduces a different operator;
its truncation error is not bounded by the HSVs of what the layer computes. Here every stored mode is
doubled into (A_p, B_p, (c/2) C_p) and its conjugate partner (ssm.py's convention for SISO channels),
a similarity of the real realisation, and that system is balanced.

Which Hankel operator: the layer's map reads the updated state, G(z) = D + z H(z) with
H(z) = C_d (zI - A_d)^{-1} B_d the strictly proper map of (A, B, C) in doubled coordinates. On the
unit circle |z| = 1, so ||G - G_r||_inf = ||H - H_r||_inf for G_r = D + z H_r: balancing H (Gramians
of (A, B, C), as CompreSSM does for its complex map) certifies G with the same bounds, keeps the
layer's own diagonal D exactly and needs no division by the reduced eigenvalues. (balanced.py
balances the standard form (A, B, C A) of SISO channels instead; the two HSV sets differ by the
factor A in C, negligibly for slow modes.)

Pipeline (numpy float64):
1. doubled coordinates: alpha c(M), beta = B_d c(M I), gamma = C_d c(O M) (C_d carries c/2).
2. closed-form Gramians: P_ij = (beta beta^H)_ij / (1 - alpha_i conj alpha_j) and
   Q_ij = (gamma^H gamma)_ij / (1 - conj alpha_i alpha_j), Cauchy-like of displacement rank I
   (resp. O), not 1. Denominators are -expm1(log alpha_i + conj log alpha_j) from the layer's exact
   log A (LRU: -exp(nu_log) + i exp(theta_log); S5: Delta Lambda) where it has one.
3. factorisation P = L L^H by the generator (Schur) algorithm for Cauchy-like matrices with
   complete pivoting (Gohberg, Kailath & Olshevsky 1995; Kailath & Sayed 1995): at each pivot the
   generator is rotated by a Householder reflection so that the pivot row has one nonzero entry;
   the Schur complement is then Cauchy-like with that column multiplied by the Blaschke factor
   (alpha_i - alpha_p) / (1 - conj(alpha_p) alpha_i) and the other columns unchanged. Pivots and
   columns are products of accurately computed factors, never differences of large Gramian entries,
   so HSVs far below sigma_1 keep their relative accuracy. The complex factor is mapped to real
   coordinates z = W x (W unitary per conjugate pair) and split F = [Re(W L), Im(W L)], a real
   factor of the real Gramian W P W^H.
4. square-root BT (Laub, Heath, Paige & Ward 1987): F_Q^T F_P = U S V^T, T = F_P V_k S_k^{-1/2},
   Ti = S_k^{-1/2} U_k^T F_Q^T, a real order-k system (Ti A_z T, Ti B_z, C_z T), D unchanged.
5. re-diagonalisation: eig of the real A_r; a conjugate pair becomes one stored mode (Im > 0), a real
   eigenvalue a real mode (A, B, C real); checked against the real reduced system on its Markov
   parameters C A^j B.

Error bounds (Enns 1984; Glover 1984): for sigma_k > sigma_{k+1}, sigma_{k+1} <= ||G - G_k||_inf
<= 2 sum_{i>k} sigma_i, with ||.||_inf the largest singular value over frequency.

Selectors mean what they mean for an S4D channel (balanced.py): rank r counts stored modes (the kept
real order is the largest k <= 2r whose diagonal form has <= r stored modes); energy e is the smallest
k with sum_{i<=k} sigma_i / sum sigma_i >= e (CompreSSM's cumulative HSV fraction); tol t the smallest
k with 2 sum_{i>k} sigma_i <= t ||G||_inf.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import RankError, UnstableSystemError
from ..mimo import MimoSSM
from .balanced import HSV_NOISE_RTOL
from .gramians import PIVOT_RTOL
from .reduction import Reduction, bound_floor, certificate_warnings, check_selector, where

__all__ = ["doubled", "gramian_factor", "mimo_hankel_singular_values",
           "mimo_balanced_truncation"]

# Pivot and HSV-noise thresholds are the SISO engine's (gramians.PIVOT_RTOL, balanced.HSV_NOISE_RTOL: the
# same reasoning). Re-diagonalisation check (as balanced.py, with a 10x looser float64 term: the MIMO
# eigenvector matrices couple all P modes): l1 impulse-response difference over RECON_L steps within
# RECON_BOUND_FRACTION of the certified bound plus RECON_ATOL_REL of sum |h| (the float64 floor of an
# eigendecomposition of a k x k matrix with a moderately conditioned eigenvector matrix).
RECON_BOUND_FRACTION = 0.1
RECON_ATOL_REL = 1e-11
RECON_L = 128


# A MIMO reduction returns the one Reduction type (reduce/reduction.py) with per-channel arrays of length 1:
# a MIMO layer is one system, not H channels.


# ---- 1. doubled standard realisation --------------------------------------------------------

@dataclass(frozen=True)
class _Doubled:
    alpha: np.ndarray   # c(M) nodes
    log_alpha: np.ndarray  # c(M)
    beta: np.ndarray    # c(M I)
    gamma: np.ndarray   # c(O M) C in doubled coordinates (the c/2 split included)
    W: np.ndarray       # c(M M) z = W x, real coordinates
    n_complex: int


def doubled(sys: MimoSSM) -> _Doubled:
    """The standard realisation of sys's real map in doubled complex coordinates (module docstring)."""
    act, real = sys.active_modes(), sys.real_modes()
    la = sys.log_a()
    half = 0.5 * sys.c
    al, lal, be, ga = [], [], [], []
    Wrows: list[tuple[int, int, str]] = []
    for p in np.flatnonzero(act):
        a, l, b, cp = sys.A[p], la[p], sys.B[p], sys.C[:, p]
        if real[p]:
            al.append(a.real); lal.append(l); be.append(b.real); ga.append(sys.c * cp.real)
            Wrows.append((len(al) - 1, -1, "r"))
        else:
            al += [a, np.conj(a)]; lal += [l, np.conj(l)]
            be += [b, np.conj(b)]; ga += [half * cp, half * np.conj(cp)]
            Wrows.append((len(al) - 2, len(al) - 1, "c"))
    M = len(al)
    W = np.zeros((M, M), np.complex128)
    row, s = 0, np.sqrt(0.5)
    for i, j, kind in Wrows:
        if kind == "r":
            W[row, i] = 1.0
            row += 1
        else:  # z1 = (x + xbar) / sqrt 2 = sqrt 2 Re x, z2 = -i (x - xbar) / sqrt 2 = sqrt 2 Im x
            W[row, i], W[row, j] = s, s
            W[row + 1, i], W[row + 1, j] = -1j * s, 1j * s
            row += 2
    return _Doubled(np.array(al, np.complex128), np.array(lal, np.complex128),
                    np.array(be, np.complex128).reshape(M, sys.n_in),
                    np.array(ga, np.complex128).reshape(M, sys.n_out).T, W,
                    sum(1 for _, _, k in Wrows if k == "c"))


# ---- 2./3. closed-form Gramian, generator-form pivoted Cholesky ------------------------------

def gramian_factor(alpha: np.ndarray, log_alpha: np.ndarray, G: np.ndarray, rtol: float = PIVOT_RTOL) -> np.ndarray:
    """L c(M K) with L L^H = P, P_ij = (G G^H)_ij / (1 - alpha_i conj alpha_j); alpha, log_alpha c(M), G c(M m).

    Complete pivoting on the generator (module docstring, step 3); exactly rank-deficient P (coinciding
    modes) gives exactly zero pivots and ends early.
    """
    M = alpha.size
    G = np.array(G, dtype=np.complex128)
    den = -np.expm1(log_alpha[:, None] + np.conj(log_alpha)[None, :])  # (M M) 1 - alpha_i conj alpha_j
    # alpha_i - alpha_p = alpha_p expm1(log alpha_i - log alpha_p): no cancellation for close modes
    num = alpha[None, :] * np.expm1(log_alpha[:, None] - log_alpha[None, :])  # (M M) [i, p] = alpha_i - alpha_p
    dd = den.diagonal().real.copy()  # (M) 1 - |alpha_i|^2 > 0
    d = np.sum(np.abs(G) ** 2, axis=1) / dd  # (M) Schur complement diagonal
    d_first = d.max() if M else 0.0
    cols = []
    done = np.zeros(M, bool)
    for _ in range(M):
        p = int(np.argmax(np.where(done, -1.0, d)))
        if done[p] or not d[p] > rtol * d_first or d_first == 0:
            break
        # Householder: g_p H = (beta, 0, ..., 0) with H = I - 2 w w^H
        y = np.conj(G[p])  # (m) column form of the pivot row
        ny = np.linalg.norm(y)
        ph = y[0] / abs(y[0]) if y[0] != 0 else 1.0
        v = y.copy()
        v[0] += ph * ny  # v = y - beta e1 with beta = -ph |y| (no cancellation)
        nv = np.linalg.norm(v)
        if nv > 0:
            w = v / nv  # (m)
            G -= 2.0 * np.outer(G @ w, np.conj(w))  # (M m)
        g0 = G[:, 0].copy()  # (M) the only column with a nonzero at row p
        gp = g0[p]
        cols.append(g0 * np.conj(gp) / den[:, p] / np.sqrt(d[p]))  # (M) P[:, p] / sqrt(P_pp)
        G[:, 0] = g0 * num[:, p] / den[:, p]  # Blaschke factor of node alpha_p
        G[p] = 0.0
        done[p] = True
        d = np.sum(np.abs(G) ** 2, axis=1) / dd
    if not cols:
        return np.zeros((M, 0), np.complex128)
    return np.stack(cols, axis=1)  # (M K)


def _real_factor(W: np.ndarray, L: np.ndarray) -> np.ndarray:
    """r(n 2K): F F^T = W L L^H W^H (real because the Gramian is), F = [Re(W L), Im(W L)]."""
    WL = W @ L  # (n K)
    return np.concatenate([WL.real, WL.imag], axis=1)


def _factors(sys: MimoSSM):
    dbl = doubled(sys)
    Lp = gramian_factor(dbl.alpha, dbl.log_alpha, dbl.beta)  # (M Kp)
    # Q_ij = (gamma^H gamma)_ij / (1 - conj alpha_i alpha_j): nodes conj alpha, generator gamma^H
    Lq = gramian_factor(np.conj(dbl.alpha), np.conj(dbl.log_alpha), np.conj(dbl.gamma.T))  # (M Kq)
    return dbl, _real_factor(dbl.W, Lp), _real_factor(dbl.W, Lq)


def mimo_hankel_singular_values(sys: MimoSSM) -> np.ndarray:
    """r(n): Hankel singular values of the real map, descending (n = sys.real_state_dims())."""
    _, FP, FQ = _factors(sys)
    n = FP.shape[0]
    if FP.shape[1] == 0 or FQ.shape[1] == 0:
        return np.zeros(n)
    s = np.linalg.svd(FQ.T @ FP, compute_uv=False)
    return np.concatenate([s, np.zeros(max(0, n - s.size))])[:n]


# ---- 4./5. square-root BT and re-diagonalisation -----------------------------------------------

def _real_system(dbl: _Doubled):
    """(A_z r(n n), B_z r(n I), C_z r(O n)) in real coordinates z = W x."""
    W = dbl.W
    Az = W @ (dbl.alpha[:, None] * np.conj(W.T))  # W diag(alpha) W^H
    Bz = W @ dbl.beta
    Cz = dbl.gamma @ np.conj(W.T)
    return Az.real, Bz.real, Cz.real


def _markov_real(A, B, C, L):
    """r(L O I): Markov parameters C A^j B, j < L, of H."""
    h = np.empty((L, C.shape[0], B.shape[1]))
    X = B
    for j in range(L):
        h[j] = C @ X
        X = A @ X
    return h


def _diagonalise(Ar, Br, Cr, D, c):
    """The order-k real system as a MimoSSM (module docstring, step 5) -> (sys, stored modes)."""
    lam, V = np.linalg.eig(Ar)  # real Ar: real eigenvalues have exactly zero imaginary part
    Vi = np.linalg.inv(V)
    Bm = Vi @ Br  # (k I)
    Cm = Cr @ V  # (O k)
    keepA, keepB, keepC = [], [], []
    for j in range(lam.size):
        if lam[j].imag > 0:  # one stored mode per pair; its partner (conj) is implied by c Re
            b, cc = Bm[j], Cm[:, j] * (2.0 / c)
        elif lam[j].imag == 0:  # real eigenvalue: make B and C real (the residue C B^T is real)
            b, cc = Bm[j], Cm[:, j]
            k0 = np.argmax(np.abs(b))
            ph = b[k0] / abs(b[k0]) if b[k0] != 0 else 1.0
            b, cc = (b / ph).real, (cc * ph).real / c
        else:
            continue
        s = np.sqrt(max(np.linalg.norm(cc), 1e-300) / max(np.linalg.norm(b), 1e-300))  # balance |B| and |C|
        keepA.append(lam[j].real if lam[j].imag == 0 else lam[j])
        keepB.append(b * s)
        keepC.append(cc / s)
    A = np.array(keepA, np.complex128)
    B = np.array(keepB, np.complex128).reshape(A.size, Br.shape[1])
    C = np.array(keepC, np.complex128).reshape(A.size, Cr.shape[0]).T
    red = MimoSSM(A, B, C, D, c)
    return red, A.size


def _select_k(S: np.ndarray, rank, energy, tol, gain) -> int:
    n = S.size
    if rank is not None:
        return min(2 * int(rank), n)
    if energy is not None:
        cum = np.cumsum(S) / max(S.sum(), 1e-300)
        return int(min(n, np.searchsorted(cum, energy - 1e-15) + 1))
    tail = 2.0 * (S.sum() - np.cumsum(S))  # tail[k-1] = 2 sum_{i>k} sigma_i
    ok = np.flatnonzero(tail <= tol * gain)
    return int(ok[0] + 1) if ok.size else n


def mimo_balanced_truncation(sys: MimoSSM, rank: int | None = None, *, energy: float | None = None,
                             tol: float | None = None, measure: bool = True, layer=None) -> Reduction:
    """Square-root balanced truncation of the real map, re-diagonalised (same factor c); one selector."""
    check_selector(rank, energy, tol, layer)  # the one rule for rank / energy / tol (reduction.py)
    if not sys.is_finite():
        raise UnstableSystemError(f"{where(layer)}the system has non-finite parameters; it cannot be reduced")
    if not sys.is_stable():
        raise UnstableSystemError(f"{where(layer)}the system is unstable (max |A| = {sys.spectral_radius():.6g} >= 1); "
                                  "balanced truncation needs |A| < 1")
    if rank is not None and not (isinstance(rank, (int, np.integer)) and 1 <= rank < sys.N):
        raise RankError(f"{where(layer)}rank must be an int with 1 <= rank < {sys.N} (the stored modes), got {rank!r}")
    dbl, FP, FQ = _factors(sys)
    n = FP.shape[0]
    U, S, Vt = np.linalg.svd(FQ.T @ FP, full_matrices=False)
    S = np.concatenate([S, np.zeros(max(0, n - S.size))])[:n]
    usable = int(np.sum(S > HSV_NOISE_RTOL * S[0])) if n and S[0] > 0 else 0
    gain = sys.hinf_norm() if tol is not None else None
    k = min(_select_k(S, rank, energy, tol, gain), usable)
    r_cap = rank if rank is not None else None
    Az, Bz, Cz = _real_system(dbl)
    scale = float(np.sum(np.abs(_markov_real(Az, Bz, Cz, RECON_L))))
    warnings: list[str] = []
    while k >= 1:
        si = 1.0 / np.sqrt(S[:k])
        T = FP @ Vt[:k].T * si[None, :]  # (n k)
        Ti = (U[:, :k] * si[None, :]).T @ FQ.T  # (k n)
        Ar, Br, Cr = Ti @ Az @ T, Ti @ Bz, Cz @ T
        red, r = _diagonalise(Ar, Br, Cr, sys.D, sys.c)
        if r_cap is not None and r > r_cap:
            k -= 1
            continue
        bound = 2.0 * S[k:].sum()
        dbl_r = doubled(red)
        h_diag = _markov_real(*_real_system(dbl_r), RECON_L)
        recon = float(np.sum(np.abs(h_diag - _markov_real(Ar, Br, Cr, RECON_L))))
        if recon <= RECON_BOUND_FRACTION * bound + RECON_ATOL_REL * scale and red.is_stable():
            break
        warnings.append(f"{where(layer)}order {k}: the diagonal form missed the balanced system by {recon:.3g}; "
                        "order lowered")
        k -= 1
    if k < 1:
        raise RankError(f"{where(layer)}no reduced order >= 1 satisfies the selector and re-diagonalises "
                        "accurately; keep more modes")
    red = MimoSSM(red.A, red.B, red.C, red.D, sys.c, np.log(red.A))
    hsv = np.zeros(2 * sys.N)
    hsv[:min(S.size, 2 * sys.N)] = S[:2 * sys.N]  # zero-padded to 2N like the SISO engine's (reports read N from it)
    # the accepted re-diagonalisation loss is part of what is certified, not slack on top of it
    out = Reduction(red, np.array([k]), np.array([red.N]), hsv[None], np.array([sys.real_state_dims()]),
                    np.array([2.0 * S[k:].sum()]), None, None, None, "balanced", warnings,
                    bound_floor(sys, red) + recon)
    if not measure:
        return out
    measured = np.array([sys.error_system(red).hinf_norm()])
    gain = sys.hinf_norm() if gain is None else gain  # already measured for a tol selector
    warnings = warnings + certificate_warnings(out, measured, np.array([gain]), layer)
    return dataclasses.replace(out, measured_hinf=measured, warnings=warnings)
