"""Closed-form Gramians of diagonal SSM channels and their accurate factorisation.

Dimensions: H channels, N stored modes, M = 2N doubled complex coordinates (a mode and its
conjugate partner), K factor columns (numerical rank), n = 2N real coordinates.

The real input-output map of a channel (ssm.py conventions: output reads the updated state)
has Markov parameters h_0 = D + 2 Re(sum C B), h_k = 2 Re(sum C A^k B). It equals the standard
realisation (x_{k+1} = A x_k + B u_k, y_k = C' x_k + D' u_k) with C' = C A and
D' = D + 2 Re(sum C B). Everything here works on that standard realisation, written in doubled
complex coordinates: per channel a list of M states x_i with

    x_i <- alpha_i x_i + beta_i u,     y = sum_i gamma_i x_i + D' u,

where a complex mode n gives two states (a_n, s_n, rho_n / s_n) and (conj a_n, s_n, conj(rho_n / s_n)),
rho_n = C_n B_n A_n its residue and s_n = sqrt|rho_n| (a diagonal similarity that scales the
controllability and observability Gramians alike); a real mode (imag(A) == 0) gives ONE real state
with residue 2 Re(rho_n); padding or feedthrough-only modes (rho_n == 0) give beta = gamma = 0.
This doubled system is the real block-diagonal realisation after the unitary change of basis
z = W x (``real_coordinates``), so both have the same Gramians up to W and the same HSVs.

Gramians in closed form (Stein equations P - A P A^H = beta beta^H, Q - A^H Q A = gamma^H gamma):

    P_ij = beta_i conj(beta_j) / (1 - alpha_i conj(alpha_j))                      (Cauchy-like)
    Q_ij = conj(gamma_i) gamma_j / (1 - conj(alpha_i) alpha_j)

Factorisation: complete-pivoting (diagonal-pivoting) Cholesky computed on the fly from the
generators. A Schur complement of a displacement-rank-1 Cauchy-like matrix is again Cauchy-like
with the generator multiplied by the Blaschke factor of the pivot node,

    S_ij = beta_i' conj(beta_j') / (1 - alpha_i conj(alpha_j)),
    beta_i' = beta_i (alpha_i - alpha_p) / (1 - conj(alpha_p) alpha_i),

(the Schur algorithm for Pick matrices; Gohberg, Kailath, Olshevsky 1995; high relative accuracy
of GECP on Cauchy-like matrices: Demmel 1999), so every pivot and column is a product of
accurately computed factors, never a difference of large Gramian entries. Exact rank deficiency
(aliased, coinciding modes) gives exactly zero generators. A complex pivot mode is eliminated
together with its partner and the pair of columns is turned real by a closed-form 2x2 unitary
(``cauchy_real_factor``), so the factors are real with K = numerical rank columns. Cost O(N) per
pivot pair and channel, O(N K) in all, vectorised over channels (a loop over pivot steps).

Finite horizon (Gawronski & Juang 1990): the L-step Gramians P_L = sum_{k<L} A^k B B^H A^kH have
displacement rank 2, so they are formed densely and factored by the same pivoting on explicit
Schur complements.
"""
from __future__ import annotations

import numpy as np

from ..ssm import DiagonalSSM, cexpm1

__all__ = ["doubled_realisation", "node_logs", "cauchy_real_factor", "dense_pivoted_cholesky", "horizon_gramian",
           "real_rows", "real_gramian", "PIVOT_RTOL"]

# Pivoted Cholesky stops when the largest remaining pivot is below PIVOT_RTOL times the first one.
# A Gramian perturbation of relative size t moves sigma_i by about t sigma_1^2 / sigma_i (relative
# to sigma_i), so keeping sigma_i >= 1e-12 sigma_1 to 1e-8 relative needs t <~ 1e-32; the generator
# form computes such tiny pivots to high relative accuracy, so going that deep costs only time.
PIVOT_RTOL = 1e-34


def node_logs(sys: DiagonalSSM) -> np.ndarray | None:
    """c(H M): log alpha of ``doubled_realisation``'s nodes when sys keeps logA (else None).

    A real mode's node is Re A: its log is log|A| (+ i pi for a negative A). Slots whose node is 0
    (partners of real modes, inactive modes) get -inf, so every denominator 1 - 0 * b is 1.
    """
    if sys.logA is None:
        return None
    A, B, C = sys.A, sys.B, sys.C
    real = sys.real_modes()  # (H N)
    rho = C * B * A  # (H N)
    active_c = ~real & (rho != 0)  # (H N) the masks of doubled_realisation
    active_r = real & (2.0 * rho.real != 0)  # (H N)
    la_real = sys.logA.real + 1j * np.where(A.real < 0, np.pi, 0.0)  # (H N)
    zero = np.full(A.shape, -np.inf + 0j)  # (H N)
    mode = np.where(active_c, sys.logA, np.where(active_r, la_real, zero))  # (H N)
    part = np.where(active_c, np.conj(sys.logA), zero)  # (H N)
    return np.concatenate([mode, part], axis=1)


def doubled_realisation(sys: DiagonalSSM) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The standard realisation of sys in doubled complex coordinates (module docstring).

    -> alpha c(H M), beta c(H M), gamma c(H M), D' r(H). Index n is mode n, index N + n its partner
    (unused, beta = gamma = 0, alpha = 0, for real and inactive modes).
    """
    A, B, C, D = sys.astuple()
    H, N = A.shape
    real = sys.real_modes()  # (H N)
    rho = C * B * A  # (H N) residue of C' = C A
    rho_real = 2.0 * rho.real  # (H N) residue of a real mode's single real state
    active_c = ~real & (rho != 0)  # (H N)
    active_r = real & (rho_real != 0)  # (H N)
    s = np.sqrt(np.abs(np.where(real, rho_real, rho)))  # (H N) balanced split of the residue
    safe = np.where(s > 0, s, 1.0)  # (H N)
    alpha = np.zeros((H, 2 * N), np.complex128)  # (H M)
    beta = np.zeros((H, 2 * N), np.complex128)  # (H M)
    gamma = np.zeros((H, 2 * N), np.complex128)  # (H M)
    alpha[:, :N] = np.where(active_c, A, np.where(active_r, A.real, 0.0))
    alpha[:, N:] = np.where(active_c, np.conj(A), 0.0)
    beta[:, :N] = np.where(active_c | active_r, s, 0.0)
    beta[:, N:] = np.where(active_c, s, 0.0)
    gamma[:, :N] = np.where(active_c, rho / safe, np.where(active_r, rho_real / safe, 0.0))
    gamma[:, N:] = np.where(active_c, np.conj(rho / safe), 0.0)
    D_std = D + 2.0 * np.sum(C * B, axis=1).real  # (H)
    return alpha, beta, gamma, D_std


def _one_minus_products(la: np.ndarray | None, a: np.ndarray, lb: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """1 - a b, as -expm1(log a + log b) when both logs are known (no cancellation for slow poles)."""
    if la is None or lb is None:
        return 1.0 - a * b
    return -cexpm1(la + lb)


def cauchy_real_factor(alpha: np.ndarray, g: np.ndarray, real: np.ndarray, rtol: float = PIVOT_RTOL,
                       log_alpha: np.ndarray | None = None) -> np.ndarray:
    """F r(H 2N K): real factor F F^T of the real-coordinate Gramian of a conjugate-symmetric Cauchy-like matrix.

    alpha, g c(H M) in the doubled layout of ``doubled_realisation`` (entry N + n is the partner of
    complex mode n: conj alpha, conj g), real (H N) marks real modes. The doubled Gramian is
    P_ij = g_i conj(g_j) / (1 - alpha_i conj(alpha_j)); the real one is W P W^H (``real_rows``).

    Complete pivoting over modes; a complex pivot mode is eliminated together with its partner
    (x_p, then x_p-bar, two Cholesky columns l1, l2), a real one alone (l1, and a zero column).
    Partner generators stay the conjugates of the mode generators, so only the N mode generators
    are updated (by both Blaschke factors). The pair columns are made real by a 2x2 unitary:
    conj(L) = Pi L Z with Pi the partner swap and Z = [[conj c, s], [s, -c]] (c = l21 / l11,
    s = l22 / l11) symmetric unitary per pair; its Takagi factor X (Z = X X^T) gives W L X real.
    K = 2 x the number of pivot steps (the largest over channels; finished channels add zeros).
    log_alpha c(H M) (``node_logs``): the denominators 1 - a_i conj(a_j) then come from the logs.
    Works on whatever channels it is given, in the calling thread (balanced.py runs it per chunk on
    a thread pool). Temporaries are (H, N): chunks of ~128 channels keep them in cache.
    """
    H, M = alpha.shape
    N = M // 2
    rows = np.arange(H)
    a = alpha[:, :N].copy()  # (H N) mode nodes; partners are conj(a)
    la = None if log_alpha is None else log_alpha[:, :N]  # (H N) their logs, where known
    lac = None if la is None else np.conj(la)  # (H N)
    gm = np.array(g[:, :N], dtype=np.complex128)  # (H N) mode generators; partners are conj(gm)
    cplx = ~real  # (H N)
    one_minus = _one_minus_products(la, a, lac, np.conj(a)).real  # (H N) 1 - |a|^2
    d = (gm.real ** 2 + gm.imag ** 2) / one_minus  # (H N) diagonal of mode entries (= partner entries)
    d_first = d.max(axis=1)  # (H)
    live = d_first > 0  # (H)
    r2 = np.sqrt(0.5)
    w_m = np.where(real, 1.0, r2)  # (H N) weight of a mode row in the real row z_re (1 for a real mode)
    w_c = np.where(real, 0.0, r2)  # (H N) weight of its partner row (a real mode has none)
    F = np.zeros((H, 2 * N, 2 * N))  # (H 2N 2N) real factor, two columns per pivot step
    steps = 0
    for step in range(N):
        p = np.argmax(d, axis=1)  # (H)
        dp = d[rows, p]  # (H)
        live &= dp > rtol * d_first
        if not live.any():
            break
        steps = step + 1
        ap = a[rows, p][:, None]  # (H 1) pivot node
        lp = None if la is None else la[rows, p][:, None]  # (H 1) its log
        gp = gm[rows, p][:, None]  # (H 1) pivot generator
        pc = cplx[rows, p] & live  # (H) complex pivot: eliminate the pair
        inv = np.where(live, 1.0 / np.sqrt(np.where(live, dp, 1.0)), 0.0)[:, None]  # (H 1) 1 / l11
        # the four Cauchy denominators are two and their conjugates (conj is exact in IEEE):
        # 1 - conj(a_i) conj(a_p) = conj(1 - a_i a_p), 1 - conj(a_i) a_p = conj(1 - a_i conj a_p)
        r1 = 1.0 / _one_minus_products(la, a, None if lp is None else np.conj(lp), np.conj(ap))  # (H N)
        r2_ = 1.0 / _one_minus_products(la, a, lp, ap)  # (H N)
        # Blaschke factors B_w(z) = (z - w) / (1 - conj(w) z) of the pivot nodes a_p and conj(a_p) at the
        # mode nodes; at the partner nodes they are conj(b2) and conj(b1)
        b1 = (a - ap) * r1  # (H N)
        b2 = (a - np.conj(ap)) * r2_  # (H N)
        # second pivot: the partner x_p-bar, node conj(a_p), generator conj(g_p) B_{a_p}(conj a_p)
        opp = _one_minus_products(lp, ap, lp, ap)  # (H 1) 1 - a_p^2
        gq = np.conj(gp * (ap - np.conj(ap)) / opp)  # (H 1)
        dq = (gq.real ** 2 + gq.imag ** 2)[:, 0] / one_minus[rows, p]  # (H)
        ok2 = pc & (dq > 0)  # (H)
        inv2 = np.where(ok2, 1.0 / np.sqrt(np.where(ok2, dq, 1.0)), 0.0)[:, None]  # (H 1)
        # columns: l1 = P[:, p] / sqrt(dp) and l2 = S[:, p-bar] / sqrt(dq), at mode (m) and partner (c) rows
        g1 = gm * b1  # (H N) mode generators after eliminating x_p
        l1_m = gm * r1 * (np.conj(gp) * inv)  # (H N)
        l1_c = np.conj(gm * r2_ * (gp * inv))  # (H N)
        l2_m = g1 * r2_ * (np.conj(gq) * inv2)  # (H N)
        l2_c = np.conj(gm * b2 * r1 * (gq * inv2))  # (H N)
        # realify the pair: Takagi factor X of Z = [[conj c, s], [s, -c]] (Z = X X^T)
        c = np.where(pc, np.conj(gp * gp / opp)[:, 0] * inv[:, 0] ** 2, 0.0)  # (H) l21 / l11
        s = np.where(pc, np.sqrt(np.where(pc, dq, 0.0)) * inv[:, 0], 0.0)  # (H) l22 / l11
        phi = 0.5 * np.arctan2(s, c.real)  # (H) eigenvectors of Re Z = [[Re c, s], [s, -Re c]]
        rad = np.hypot(c.real, s)  # (H)
        e_plus = np.exp(0.5j * np.angle(rad - 1j * c.imag))  # (H)
        e_minus = np.exp(0.5j * np.angle(-rad - 1j * c.imag))  # (H)
        X = ((np.where(pc, np.cos(phi) * e_plus, 1.0), np.where(pc, np.sin(phi) * e_plus, 0.0)),
             (np.where(pc, -np.sin(phi) * e_minus, 0.0), np.where(pc, np.cos(phi) * e_minus, 1.0)))  # X[j] = (X_0j, X_1j)
        for j, (x0, x1) in enumerate(X):
            v_m = l1_m * x0[:, None] + l2_m * x1[:, None]  # (H N) column j of L X, mode rows
            v_c = l1_c * x0[:, None] + l2_c * x1[:, None]  # (H N) partner rows
            # rows to real coordinates z = W x: z_re = (x_n + x_{N+n}) / sqrt 2, z_im = i (x_{N+n} - x_n) / sqrt 2
            F[:, :N, 2 * step + j] = v_m.real * w_m + v_c.real * w_c
            F[:, N:, 2 * step + j] = (v_m.imag - v_c.imag) * w_c
        # generator update: both Blaschke factors for a pair, one for a real pivot, none when finished
        gm = np.where(pc[:, None], g1 * b2, np.where(live[:, None], g1, gm))  # (H N)
        d = (gm.real ** 2 + gm.imag ** 2) / one_minus  # (H N) Schur complement diagonal
        d[rows, p] = np.where(live, 0.0, d[rows, p])
    return F[:, :, :2 * steps]


def horizon_gramian(alpha: np.ndarray, g: np.ndarray, L: int) -> np.ndarray:
    """c(H M M): the L-term Gramian sum_{k<L} A^k g g^H A^kH = g_i conj(g_j) (1 - (alpha_i conj alpha_j)^L) / (1 - alpha_i conj alpha_j)."""
    prod = alpha[:, :, None] * np.conj(alpha[:, None, :])  # (H M M)
    geo = -np.expm1(L * np.log(prod + (prod == 0))) / (1.0 - prod)  # (H M M), log(1) = 0 where prod == 0
    geo = np.where(prod == 0, 1.0, geo)  # (H M M) 1 + 0 + ... when a node is 0
    return g[:, :, None] * np.conj(g[:, None, :]) * geo


def dense_pivoted_cholesky(P: np.ndarray, rtol: float = 1e-14) -> np.ndarray:
    """F r(H n K) with P ~ F F^T for symmetric PSD P r(H n n), by complete pivoting on explicit Schur complements.

    Used for the finite-horizon Gramians, which are not displacement-rank 1. Explicit Schur
    complements carry absolute errors ~ eps ||P||, so pivots below rtol * (first pivot) are noise
    and end the factorisation (unlike cauchy_real_factor, which resolves them).
    """
    H, n, _ = P.shape
    S = np.array(P, dtype=np.float64)  # (H n n)
    rows = np.arange(H)
    d = np.einsum("hii->hi", S).copy()  # (H n)
    d_first = d.max(axis=1)  # (H)
    live = d_first > 0  # (H)
    cols: list[np.ndarray] = []
    for _ in range(n):
        p = np.argmax(d, axis=1)  # (H)
        dp = d[rows, p]  # (H)
        live &= dp > rtol * d_first
        if not live.any():
            break
        scale = np.where(live, 1.0 / np.sqrt(np.where(live, dp, 1.0)), 0.0)[:, None]  # (H 1)
        col = S[rows, :, p] * scale  # (H n)
        cols.append(col)
        S -= col[:, :, None] * col[:, None, :]
        d = np.maximum(np.einsum("hii->hi", S), 0.0)  # (H n)
        d[rows, p] = 0.0
    if not cols:
        return np.zeros((H, n, 0))
    return np.stack(cols, axis=2)  # (H n K)


def real_rows(X: np.ndarray, real: np.ndarray) -> np.ndarray:
    """c(H M ...) -> c(H 2N ...): rows mapped from doubled complex to real coordinates, z = W x.

    Row n is Re and row N + n is Im of complex mode n: z_re = (x_n + x_{N+n}) / sqrt 2,
    z_im = (-i x_n + i x_{N+n}) / sqrt 2 (W unitary per pair). A real mode (real (H N) True) keeps
    z = x_n in row n and a zero row N + n.
    """
    N = real.shape[1]
    shape = real.shape + (1,) * (X.ndim - 2)
    r = real.reshape(shape)
    top, bot = X[:, :N], X[:, N:]
    z_re = np.where(r, top, (top + bot) / np.sqrt(2.0))
    z_im = np.where(r, 0.0, 1j * (bot - top) / np.sqrt(2.0))
    return np.concatenate([z_re, z_im], axis=1)


def real_gramian(P: np.ndarray, real: np.ndarray) -> np.ndarray:
    """r(H 2N 2N): W P W^H, the real-coordinate Gramian of a doubled complex Hermitian one c(H M M)."""
    WP = real_rows(P, real)  # (H 2N M)
    return real_rows(np.conj(np.swapaxes(WP, 1, 2)), real).real  # (H 2N 2N) = W (W P)^H = W P W^H
