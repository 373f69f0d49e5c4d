"""Square-root balanced truncation of diagonal SSM channels (and its time-limited variant).

Dimensions: H channels, N stored modes (input), n = 2N real coordinates, K Gramian factor
columns, k kept real order per channel, r stored modes per channel (output N = max r),
F frequencies, L horizon / impulse-response length.

Pipeline per channel (numpy float64, vectorised over channels; see gramians.py for the math):

1. the standard realisation (A, B, C A, D + 2 Re sum C B) of the real input-output map in
   doubled complex coordinates; closed-form Cauchy-like Gramians, factored P = F_P F_P^T,
   Q = F_Q F_Q^T (real coordinates) by generator-form complete-pivoting Cholesky;
2. Hankel singular values and square-root balanced truncation (Laub, Heath, Paige & Ward 1987;
   Tombs & Postlethwaite 1987): F_Q^T F_P = U S V^T, T = F_P V_k S_k^{-1/2},
   Ti = S_k^{-1/2} U_k^T F_Q^T, (A_r, B_r, C'_r) = (Ti A T, Ti B, C' T), a real order-k system;
3. re-diagonalisation (eig of A_r): a conjugate pair becomes one stored mode, a real eigenvalue a
   real mode (A real, C halved); back to the updated-state convention by C = C'_r / lambda,
   D = D' - 2 Re sum C B; checked against the real reduced system on its impulse response.

Error bounds (Enns 1984; Glover 1984): for a stable minimal system and sigma_k > sigma_{k+1},
the order-k balanced truncation is stable and sigma_{k+1} <= ||G - G_k||_inf <= 2 sum_{i>k} sigma_i.

Rank rule: a rank r counts STORED modes. For target r the kept real order k is the largest
k <= 2r whose re-diagonalised system has (#conjugate pairs + #real eigenvalues) <= r; the channel
is padded to r stored modes with inactive padding modes (A = 0.5, B = C = 0). The certified bound
uses the kept k.

Horizon-aware BT (Gawronski & Juang 1990): the L-step Gramians of the window y_0..y_{L-1}
replace the infinite ones; no stability guarantee and no bound, so the reduced system is checked
and the order lowered when it is unstable; the result carries the measured L-step operator error
``horizon_operator_error``. The policy of falling back to plain BT where that is better lives in
compress.py (``reduce_layer``), not in this engine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..errors import RankError
from ..parallel import map_chunks
from ..ssm import DiagonalSSM
from .gramians import (cauchy_real_factor, dense_pivoted_cholesky, doubled_realisation, horizon_gramian,
                       node_logs, real_gramian, real_rows)
from .norms import error_system, hinf_norm, horizon_operator_error
from .reduction import PADDING_A, Reduction, bound_floor, certificate_warnings, check_rank, check_selector, where

__all__ = ["balanced_truncation", "hankel_singular_values", "gramian_factors", "truncate_to_order",
           "HSV_NOISE_RTOL", "BALANCER_CHUNK"]

# HSVs below this fraction of sigma_1 are float64 noise of the factor product (errors ~ eps sigma_1):
# directions beyond it are never kept (keeping them would divide by sqrt(noise) in T and Ti).
HSV_NOISE_RTOL = 1e-13

# Re-diagonalisation check: the diagonal form may differ from the real balanced reduced system by at
# most this fraction of the certified bound plus RECON_ATOL_REL * sum|h| (the float64 floor, about
# 1e4 eps: eig of a k x k matrix with a moderately conditioned eigenvector matrix), measured as the
# l1 norm of the impulse-response difference over RECON_L samples (an upper estimate of the
# H-infinity difference within that window).
RECON_BOUND_FRACTION = 0.1
RECON_ATOL_REL = 1e-12
RECON_L = 128

# Channels per thread task (parallel.map_chunks): big enough to amortise numpy's per-call cost,
# small enough for the pivoted Cholesky's (h, N) temporaries to stay in cache.
BALANCER_CHUNK = 128



# ---- square-root balanced truncation -----------------------------------------------------------

@dataclass
class _Balancer:
    """Per-channel factors and SVD of the square-root method, and the real-coordinate realisation."""

    FP: np.ndarray  # r(H n K)
    FQ: np.ndarray  # r(H n K)
    U: np.ndarray | None  # r(H K K) (None when built for values only)
    S: np.ndarray  # r(H K) descending
    Vt: np.ndarray | None  # r(H K K)
    a: np.ndarray  # c(H N) mode nodes (real-coordinate A blocks)
    Breal: np.ndarray  # r(H n)
    Creal: np.ndarray  # r(H n) of the standard realisation (C' = C A)
    Dstd: np.ndarray  # r(H)

    @property
    def max_order(self) -> np.ndarray:
        """int (H): number of HSVs above the float64 noise floor (orders beyond it are never kept)."""
        s1 = self.S[:, :1]  # (H 1)
        return np.sum(self.S > HSV_NOISE_RTOL * s1, axis=1)


def gramian_factors(sys: DiagonalSSM, horizon: int | None):
    """The doubled realisation (alpha, beta, gamma c(H M), Dstd r(H)), the real-mode mask r(H N) and the
    Gramian factors FP, FQ r(H n K) of sys, zero-padded to a common K: what the SVD of FQ^T FP balances."""
    alpha, beta, gamma, Dstd = doubled_realisation(sys)  # (H M) x3, (H)
    real = sys.real_modes() | ~(sys.active_modes())  # (H N) inactive modes behave as (empty) real ones
    if horizon is None:
        logs = node_logs(sys)  # (H M) or None: Gramian denominators from log A where the layer keeps it
        FP = cauchy_real_factor(alpha, beta, real, log_alpha=logs)  # (H n K)
        FQ = cauchy_real_factor(np.conj(alpha), np.conj(gamma), real, log_alpha=None if logs is None else np.conj(logs))  # (H n K)
    else:
        # window y_0..y_{L-1}: its strictly causal part is the Toeplitz of h_1..h_{L-1} = C' A^{0..L-2} B,
        # so both Gramians sum L - 1 terms of the standard realisation
        P = real_gramian(horizon_gramian(alpha, beta, horizon - 1), real)  # (H n n)
        Q = real_gramian(horizon_gramian(np.conj(alpha), np.conj(gamma), horizon - 1), real)  # (H n n)
        FP, FQ = dense_pivoted_cholesky(P), dense_pivoted_cholesky(Q)  # (H n K)
    K = max(FP.shape[2], FQ.shape[2])
    FP = np.pad(FP, ((0, 0), (0, 0), (0, K - FP.shape[2])))
    FQ = np.pad(FQ, ((0, 0), (0, 0), (0, K - FQ.shape[2])))
    return alpha, beta, gamma, Dstd, real, FP, FQ


def truncate_to_order(sys: DiagonalSSM, order: int) -> tuple[DiagonalSSM, np.ndarray]:
    """The order-k square-root balanced truncation of every channel, re-diagonalised, without the rank rule.

    -> (system with k stored slots per channel, int (H) stored modes it uses: pairs + real eigenvalues).
    What the rank rule searches over: order k fits rank r when the count is <= r.
    """
    sys.check()
    bal = _balancer(sys, None)
    dg = _reduce_group(bal, np.arange(sys.H), int(order))
    return DiagonalSSM(dg.A, dg.B, dg.C, dg.D), dg.count


def _balancer(sys: DiagonalSSM, horizon: int | None, vectors: bool = True) -> _Balancer:
    """Factors, HSVs and (vectors=True) singular vectors of every channel of sys (one thread's chunk)."""
    alpha, beta, gamma, Dstd, real, FP, FQ = gramian_factors(sys, horizon)
    N = sys.N
    Mf = np.swapaxes(FQ, 1, 2) @ FP  # (H K K)
    if vectors:
        U, S, Vt = np.linalg.svd(Mf)  # (H K K), (H K), (H K K)
    else:  # gesdd without vectors is ~3x cheaper
        U, S, Vt = None, np.linalg.svd(Mf, compute_uv=False), None
    Breal = real_rows(beta[:, :, None], real)[:, :, 0].real  # (H n)
    Creal = real_rows(np.conj(gamma)[:, :, None], real)[:, :, 0].real  # (H n): C W^H = conj(W conj(C)^T)^T
    a = np.where(real, alpha[:, :N].real, alpha[:, :N])  # (H N)
    return _Balancer(FP, FQ, U, S, Vt, a, Breal, Creal, Dstd)


def _apply_A(a: np.ndarray, X: np.ndarray) -> np.ndarray:
    """r(h n k): the real block-diagonal A (2x2 rotations-scalings, 1x1 for real modes) times X r(h n k)."""
    N = a.shape[1]
    ar, ai = a.real[:, :, None], a.imag[:, :, None]  # (h N 1)
    re, im = X[:, :N], X[:, N:]  # (h N k)
    return np.concatenate([ar * re - ai * im, ai * re + ar * im], axis=1)


@dataclass
class _Diag:
    """Re-diagonalised reduced systems of a group of channels at one order k."""

    A: np.ndarray  # c(h k) stored modes (first `count` used)
    B: np.ndarray  # c(h k)
    C: np.ndarray  # c(h k) updated-state convention
    D: np.ndarray  # r(h)
    count: np.ndarray  # int (h) stored modes
    recon: np.ndarray  # r(h) l1 impulse-response difference diagonal vs real balanced (RECON_L samples)
    scale: np.ndarray  # r(h) l1 norm of the real balanced impulse response
    radius: np.ndarray  # r(h) spectral radius of the reduced system


def _markov(Ar: np.ndarray, Br: np.ndarray, Cr: np.ndarray, L: int) -> np.ndarray:
    """r(h L): Cr Ar^j Br for j = 0..L-1, by Krylov doubling (log2 L batched matmuls instead of L matvecs).

    V = [Br, Ar Br, ..., Ar^{m-1} Br] grows to [V, Ar^m V] with Ar^m squared each round. A stable
    reduced system keeps ||Ar^m|| bounded (in balanced coordinates Sigma^{-1/2} Ar Sigma^{1/2} is a
    contraction), so the squarings add rounding of the same size as the L sequential matvecs did.
    """
    V = Br[:, :, None]  # (h k m)
    P = Ar  # (h k k) Ar^m
    while V.shape[2] < L:
        V = np.concatenate([V, P @ V], axis=2)
        P = P @ P
    return (Cr[:, None, :] @ V[:, :, :L])[:, 0, :]  # (h L)


def _reduce_group(bal: _Balancer, idx: np.ndarray, k: int) -> _Diag:
    """Order-k square-root BT of channels idx, re-diagonalised and checked (module docstring steps 2-3)."""
    h = idx.size
    if k == 0:
        z = np.zeros((h, 0), np.complex128)
        return _Diag(z, z, z, bal.Dstd[idx], np.zeros(h, int), np.zeros(h), np.abs(bal.Dstd[idx]), np.zeros(h))
    S = bal.S[idx, :k]  # (h k)
    isq = 1.0 / np.sqrt(S)  # (h k)
    T = bal.FP[idx] @ (np.swapaxes(bal.Vt[idx, :k, :], 1, 2) * isq[:, None, :])  # (h n k)
    Ti = (np.swapaxes(bal.U[idx, :, :k], 1, 2) * isq[:, :, None]) @ np.swapaxes(bal.FQ[idx], 1, 2)  # (h k n)
    Ar = Ti @ _apply_A(bal.a[idx], T)  # (h k k)
    Br = np.einsum("hkn,hn->hk", Ti, bal.Breal[idx])  # (h k)
    Cr = np.einsum("hn,hnk->hk", bal.Creal[idx], T)  # (h k)
    lam, X = np.linalg.eig(Ar)  # (h k), (h k k)
    lam = lam.astype(np.complex128)
    X = X.astype(np.complex128)
    Bd = np.linalg.solve(X, Br.astype(np.complex128)[:, :, None])[:, :, 0]  # (h k)
    Cd = np.einsum("hk,hkj->hj", Cr, X)  # (h k)
    is_real = lam.imag == 0  # (h k) LAPACK returns exact zeros for real eigenvalues of a real matrix
    keep = is_real | (lam.imag > 0)  # (h k) one stored mode per pair, one per real eigenvalue
    Cd = np.where(is_real, Cd.real / 2.0, Cd)  # real modes store C halved (2 Re in the output)
    Bd = np.where(is_real, Bd.real, Bd)
    count = keep.sum(axis=1)  # (h)
    order = np.argsort(~keep, axis=1, kind="stable")  # (h k) kept modes first
    lam, Bd, Cd, keep = (np.take_along_axis(x, order, axis=1) for x in (lam, Bd, Cd, keep))
    safe = np.where(keep & (lam != 0), lam, 1.0)  # (h k)
    C = np.where(keep, Cd / safe, 0.0)  # (h k) C = C' / lambda (updated-state convention)
    Bs = np.where(keep, Bd, 0.0)  # (h k)
    A = np.where(keep, lam, PADDING_A)  # (h k)
    D = bal.Dstd[idx] - 2.0 * np.sum(C * Bs, axis=1).real  # (h)
    # check: impulse response of the diagonal form against the real balanced system (Ar, Br, Cr, D')
    L = RECON_L
    hb = np.empty((h, L))
    hb[:, 0] = bal.Dstd[idx]
    hb[:, 1:] = _markov(Ar, Br, Cr, L - 1)  # (h L-1)
    hd = DiagonalSSM(A, Bs, C, D).impulse_response(L)  # (h L)
    bad_zero = np.any(keep & (np.abs(lam) < 1e-300), axis=1)  # (h) lambda = 0 cannot carry C' / lambda
    recon = np.where(bad_zero, np.inf, np.sum(np.abs(hd - hb), axis=1))  # (h)
    return _Diag(A, Bs, C, D, count, recon, np.sum(np.abs(hb), axis=1),
                 np.max(np.where(keep, np.abs(lam), 0.0), axis=1))


def _tail_bound(S: np.ndarray, k: np.ndarray) -> np.ndarray:
    """r(H): 2 sum_{i>k} sigma_i (Enns 1984, Glover 1984)."""
    i = np.arange(S.shape[1])
    return 2.0 * np.sum(np.where(i[None, :] >= k[:, None], S, 0.0), axis=1)


@dataclass
class _Lowered:
    """Channels whose order the search lowered, by reason: {channel: steps}, and the worst value seen."""

    recon: dict[int, int] = field(default_factory=dict)
    unstable: dict[int, int] = field(default_factory=dict)
    worst_recon: float = 0.0  # largest reconstruction loss / allowance
    worst_unstable: float = 0.0  # largest |lambda|

    def merge(self, other: "_Lowered", offset: int) -> None:
        self.recon.update({c + offset: v for c, v in other.recon.items()})
        self.unstable.update({c + offset: v for c, v in other.unstable.items()})
        self.worst_recon = max(self.worst_recon, other.worst_recon)
        self.worst_unstable = max(self.worst_unstable, other.worst_unstable)

    def warnings(self, H: int, layer: object | None) -> list[str]:
        """One summary line per reason (a line per channel and order was hundreds of lines per layer)."""
        out = []
        for ch, text in ((self.recon, f"the re-diagonalised system lost more than allowed (worst {self.worst_recon:.3g}x the allowance)"),
                         (self.unstable, f"the reduced system was unstable (largest |lambda| {self.worst_unstable:.6g})")):
            if ch:
                listed = sorted(ch)[:8]
                out.append(f"{where(layer)}{len(ch)} of {H} channels (e.g. {listed}): {text}; "
                           f"order lowered by {sum(ch.values())} steps in all, {max(ch.values())} at most")
        return out


def _search_orders(bal: _Balancer, r: np.ndarray, k0: np.ndarray, horizon: int | None,
                   lowered: _Lowered) -> tuple[np.ndarray, dict[int, tuple[int, _Diag, int]]]:
    """Largest k <= k0 per channel meeting the rank rule, the reconstruction check and (horizon) stability.

    -> k (H), and per channel (group order k, index within that group's _Diag) for assembly; channels
    whose order had to be lowered are recorded in `lowered`.
    """
    k = np.minimum(k0, bal.max_order)  # (H)
    done: dict[int, tuple[int, _Diag, int]] = {}
    todo = np.arange(r.size)
    while todo.size:
        nxt = []
        for kk in np.unique(k[todo]):
            idx = todo[k[todo] == kk]
            dg = _reduce_group(bal, idx, int(kk))
            bound = _tail_bound(bal.S[idx], np.full(idx.size, kk))  # (h)
            floor = RECON_BOUND_FRACTION * bound + RECON_ATOL_REL * dg.scale  # (h)
            ok_rank = dg.count <= r[idx]
            ok_recon = dg.recon <= floor
            ok_stable = dg.radius < 1.0
            for j, hh in enumerate(idx):
                if ok_rank[j] and ok_recon[j] and ok_stable[j]:
                    done[int(hh)] = (int(kk), dg, j)
                    continue
                if ok_rank[j] and not ok_recon[j]:
                    lowered.recon[int(hh)] = lowered.recon.get(int(hh), 0) + 1
                    lowered.worst_recon = max(lowered.worst_recon, float(dg.recon[j] / max(floor[j], 1e-300)))
                elif ok_rank[j] and not ok_stable[j]:
                    lowered.unstable[int(hh)] = lowered.unstable.get(int(hh), 0) + 1
                    lowered.worst_unstable = max(lowered.worst_unstable, float(dg.radius[j]))
                k[hh] = kk - 1  # one order at a time: the eigenvalue structure changes with k
                nxt.append(hh)
        todo = np.array(sorted(nxt), dtype=int)
    return k, done


def _assemble(H: int, r_out: np.ndarray, done: dict, D_fallback: np.ndarray) -> DiagonalSSM:
    Nout = int(r_out.max())
    A = np.full((H, Nout), PADDING_A, np.complex128)  # (H r)
    B = np.zeros((H, Nout), np.complex128)  # (H r)
    C = np.zeros((H, Nout), np.complex128)  # (H r)
    D = np.array(D_fallback, dtype=np.float64)  # (H)
    for hh, (kk, dg, j) in done.items():
        c = int(dg.count[j])
        A[hh, :c], B[hh, :c], C[hh, :c] = dg.A[j, :c], dg.B[j, :c], dg.C[j, :c]
        D[hh] = dg.D[j]
    return DiagonalSSM(A, B, C, D)


@dataclass
class _Part:
    """Balanced truncation of one chunk of channels (``_bt_chunk``)."""

    system: DiagonalSSM  # (h, max r of the chunk)
    k: np.ndarray  # int (h) kept real order
    r: np.ndarray  # int (h) stored modes
    S: np.ndarray  # r(h K) HSVs
    max_order: np.ndarray  # int (h)
    lowered: _Lowered
    recon: np.ndarray  # r(h) accepted re-diagonalisation loss (l1 of the impulse-response difference)


def _bt_chunk(sys: DiagonalSSM, r: np.ndarray | None, energy: float | None, tol: float | None,
              gain: np.ndarray | None, horizon: int | None) -> _Part:
    """Square-root BT of a chunk of channels: factors, SVD, rank choice, order search, assembly."""
    H, N = sys.H, sys.N
    bal = _balancer(sys, horizon)
    if r is None:
        S = bal.S  # (H K)
        if energy is not None:
            frac = np.cumsum(S, axis=1) / np.maximum(S.sum(axis=1, keepdims=True), 1e-300)  # (H K)
            k_sel = 1 + np.argmax(frac >= float(energy) * (1 - 1e-15), axis=1)  # (H)
        else:
            tails = 2.0 * (S.sum(axis=1, keepdims=True) - np.cumsum(S, axis=1))  # (H K) bound at k = 1..K
            ok = np.concatenate([2.0 * S.sum(axis=1, keepdims=True), tails], axis=1) <= float(tol) * gain[:, None]
            k_sel = np.where(ok.any(axis=1), np.argmax(ok, axis=1), S.shape[1])  # (H)
        k_sel = np.minimum(k_sel, bal.max_order)
        r = np.ones(H, dtype=np.int64)
        for kk in np.unique(k_sel):
            idx = np.flatnonzero(k_sel == kk)
            r[idx] = np.maximum(_reduce_group(bal, idx, int(kk)).count, 1)
        r = np.minimum(r, N)
    lowered = _Lowered()
    k, done = _search_orders(bal, r, 2 * r, horizon, lowered)
    recon = np.zeros(H)  # (h)
    for hh, (_, dg, j) in done.items():
        recon[hh] = dg.recon[j]
    return _Part(_assemble(H, r, done, bal.Dstd), k, r, bal.S, bal.max_order, lowered, recon)


def _merge_parts(parts: list[_Part], N: int) -> tuple:
    """Chunks back to whole-layer arrays: system padded to the largest r, HSVs to 2N, channel indices offset."""
    Nout = max(pt.system.N for pt in parts)

    def padded(sy: DiagonalSSM, name: str, fill: complex) -> np.ndarray:  # (h Nout) inactive padding modes
        x = getattr(sy, name)
        return np.concatenate([x, np.full((sy.H, Nout - sy.N), fill, np.complex128)], axis=1)

    system = DiagonalSSM(np.concatenate([padded(pt.system, "A", PADDING_A) for pt in parts]),
                         np.concatenate([padded(pt.system, "B", 0.0) for pt in parts]),
                         np.concatenate([padded(pt.system, "C", 0.0) for pt in parts]),
                         np.concatenate([pt.system.D for pt in parts]))
    lowered = _Lowered()
    offset = 0
    for pt in parts:
        lowered.merge(pt.lowered, offset)
        offset += pt.system.H
    cat = lambda name: np.concatenate([getattr(pt, name) for pt in parts])  # noqa: E731
    return (system, cat("k"), cat("r"), np.concatenate([_pad(pt.S, 2 * N) for pt in parts]), cat("max_order"),
            lowered, cat("recon"))


def hankel_singular_values(sys: DiagonalSSM, *, horizon: int | None = None, layer: object | None = None) -> np.ndarray:
    """r(H 2N): Hankel singular values of each channel's real input-output map, descending, zero-padded.

    With horizon=L: the time-limited (L-step window) singular values instead.
    """
    sys.check(layer)
    _check_horizon(horizon, layer)
    parts = map_chunks(lambda sl: _pad(_balancer(sys.channel(sl), horizon, vectors=False).S, 2 * sys.N),
                       sys.H, BALANCER_CHUNK)  # (h 2N) each
    return np.concatenate(parts) if parts else np.zeros((0, 2 * sys.N))


def _pad(S: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((S.shape[0], n))
    m = min(n, S.shape[1])
    out[:, :m] = S[:, :m]
    return out


def _check_horizon(horizon: int | None, layer: object | None) -> None:
    if horizon is not None and (not isinstance(horizon, (int, np.integer)) or horizon < 2):
        raise RankError(f"{where(layer)}horizon must be an int >= 2 (the number of output steps of the window), got {horizon!r}")


def balanced_truncation(sys: DiagonalSSM, rank: int | np.ndarray | None = None, *, energy: float | None = None,
                        tol: float | None = None, horizon: int | None = None, measure: bool = True,
                        layer: object | None = None) -> Reduction:
    """Square-root balanced truncation of every channel, re-diagonalised into a DiagonalSSM.

    Exactly one selector: rank (int or int (H) array, stored modes, 1 <= r < N), energy e (smallest
    k with sum_{i<=k} sigma_i / sum sigma_i >= e, the cumulative HSV fraction of CompreSSM,
    arXiv 2510.02823, whose code sums sigma, not sigma^2), or tol t (smallest k with
    2 sum_{i>k} sigma_i <= t ||G||_inf). energy and tol choose k, then r = the stored modes of that
    order-k system, then the rank rule (which can only keep more). horizon=L: horizon-aware BT.
    measure: also compute ||G - G_r||_inf on a refined grid (costs about as much as the reduction).
    Channels are reduced in chunks on parallel.threads() threads; the result does not depend on it.
    """
    sys.check(layer)
    check_selector(rank, energy, tol, layer)
    _check_horizon(horizon, layer)
    H, N = sys.H, sys.N
    r_user = check_rank(rank, H, N, layer) if rank is not None else None
    gain = hinf_norm(sys) if tol is not None else None  # (H)
    parts = map_chunks(lambda sl: _bt_chunk(sys.channel(sl), None if r_user is None else r_user[sl], energy, tol,
                                            None if gain is None else gain[sl], horizon), H, BALANCER_CHUNK)
    red, k, r, hsv, max_order, lowered, recon = _merge_parts(parts, N)
    warnings = lowered.warnings(H, layer)
    full = sys.real_state_dims()  # (H)
    if horizon is None:
        bound, herr = _tail_bound(hsv, k), None
    else:
        # Time-limited BT is a heuristic: no bound and no stability guarantee (the order search above
        # lowers k until the reduced system is stable). What to do where it loses to plain BT is the
        # caller's policy (compress.reduce_layer keeps the better of the two per channel).
        bound, herr = np.full(H, np.nan), horizon_operator_error(sys, red, horizon)  # (H)
        no_stable = (k == 0) & (max_order > 0)  # (H) no stable horizon-aware order <= 2r at all
        if no_stable.any():
            warnings.append(f"{where(layer)}channels {np.flatnonzero(no_stable).tolist()}: no stable horizon-aware "
                            f"reduction at any order <= 2r")
    # the accepted re-diagonalisation loss is part of what is certified, not slack on top of it
    floor = bound_floor(sys, red) + recon  # (H)
    out = Reduction(red, k, r, hsv, full, bound, None, horizon, herr,
                    "balanced" if horizon is None else "balanced-horizon", warnings, floor)
    if not measure:
        return out
    measured = hinf_norm(error_system(sys, red))  # (H)
    gain = hinf_norm(sys) if gain is None else gain  # (H) already measured for a tol selector
    warnings = warnings + certificate_warnings(out, measured, gain, layer)
    return dataclasses.replace(out, measured_hinf=measured, warnings=warnings)
