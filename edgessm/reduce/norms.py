"""Error norms of diagonal systems: frequency response, H-infinity norm, L-step operator norm.

Dimensions: H channels, N stored modes, F frequencies, L horizon / impulse-response length.
The map is real, so frequencies omega lie in [0, pi]; z = exp(i omega).
"""
from __future__ import annotations

import numpy as np

from ..parallel import map_chunks
from ..ssm import DiagonalSSM

__all__ = ["frequency_response", "frequency_response_uniform", "error_system", "hinf_norm",
           "horizon_operator_error", "peak_gain", "DENSE_TOEPLITZ_MAX"]

def frequency_response(sys: DiagonalSSM, omega: np.ndarray) -> np.ndarray:
    """c(H F): transfer function at per-channel frequencies omega r(H F) (ssm.transfer_function, batched).

    A mode and its conjugate share one division: z CB / (z - A) + z conj(CB) / (z - conj A)
    = z (2 Re(CB) z - 2 Re(CB conj A)) / ((z - A)(z - conj A)); the denominator stays a product of
    the two differences, so it keeps full relative accuracy next to a pole near the circle.
    """
    z = np.exp(1j * omega)[:, None, :]  # (H 1 F)
    CB = sys.C * sys.B  # (H N)
    A = sys.A[:, :, None]  # (H N 1)
    p = (2.0 * CB.real)[:, :, None]  # (H N 1)
    q = (2.0 * (CB * np.conj(sys.A)).real)[:, :, None]  # (H N 1)
    G = np.sum(z * (p * z - q) / ((z - A) * (z - np.conj(A))), axis=1)  # (H F)
    return G + sys.D[:, None]


def frequency_response_uniform(sys: DiagonalSSM, n_grid: int, block: int = 64) -> np.ndarray:
    """c(H n_grid): G at omega = linspace(0, pi, n_grid) exactly, by the FFT of the periodised impulse response.

    With P = 2 (n_grid - 1) samples, h~_t = sum_m h_{t + m P} = D [t = 0] + 2 Re(sum C B A^t / (1 - A^P))
    (t < P), and its DFT is G(e^{2 pi i j / P}). The powers A^t, t = b q + l, come from two short
    cumulative products and one batched matmul: h~_{bq+l} = 2 Re sum_n (w_n A_n^{bq}) A_n^l.
    Needs P % block == 0.
    """
    P = 2 * (n_grid - 1)
    Q = P // block
    A = sys.A.astype(np.complex128)  # (H N)
    H, N = A.shape
    nz = A != 0  # (H N) a mode with A = 0 only feeds h_0
    logA = np.log(np.where(nz, A, 1.0))  # (H N)
    w = sys.C * sys.B / np.where(nz, -np.expm1(P * logA), 1.0)  # (H N) CB / (1 - A^P), accurate near |A| = 1
    V = np.empty((H, N, block), np.complex128)  # (H N b)
    V[:, :, 0] = 1.0
    V[:, :, 1:] = A[:, :, None]
    np.cumprod(V, axis=2, out=V)  # A^l
    W = np.empty((H, N, Q), np.complex128)  # (H N Q)
    W[:, :, 0] = w
    W[:, :, 1:] = (V[:, :, -1] * A)[:, :, None]
    np.cumprod(W, axis=2, out=W)  # w A^(b q)
    ht = 2.0 * (np.swapaxes(W, 1, 2) @ V).real.reshape(H, P)  # (H P) ht[b q + l]
    ht[:, 0] += sys.D
    return np.fft.rfft(ht, axis=1)  # (H n_grid)


def error_system(sys: DiagonalSSM, red: DiagonalSSM) -> DiagonalSSM:
    """G - G_r as one DiagonalSSM (parallel connection with the reduced output negated)."""
    return sys.concat_modes(DiagonalSSM(red.A, red.B, -red.C, -red.D))


# Offsets, in pole widths, of the samples around every narrow pole (``_pole_ladders``): out to 8 widths,
# so that a peak between poles a few widths apart (where neither pole's own frequency is the maximum)
# has samples about a width apart around it for the zoom to start from.
_LADDER = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
_LADDER = np.concatenate([-_LADDER[::-1], _LADDER])


def _pole_ladders(angles: np.ndarray, width: np.ndarray, narrow: np.ndarray) -> np.ndarray:
    """r(h 12m): frequencies around every narrow pole (angles, widths r(h N), mask narrow), at width steps.

    A pole at angle theta with width w = -log|a| makes a resonance of half-width ~w; several within a
    few widths interfere, and the uniform grid sees none of them when w is below its spacing. Broad
    poles are resolved by the grid and get no ladder; channels with fewer narrow poles than the most
    repeat a pole's own angle (w = 0) as filler.
    """
    m = int(narrow.sum(axis=1).max())
    pick = np.argsort(~narrow, axis=1, kind="stable")[:, :m]  # (h m) narrow modes first
    th = np.take_along_axis(angles, pick, axis=1)  # (h m)
    wd = np.where(np.take_along_axis(narrow, pick, axis=1), np.take_along_axis(width, pick, axis=1), 0.0)  # (h m)
    return np.clip(th[:, :, None] + wd[:, :, None] * _LADDER, 0.0, np.pi).reshape(angles.shape[0], -1)  # (h 12m)


def _refine_peaks(evaluate, grid: np.ndarray, mag: np.ndarray, n_peaks: int, n_refine: int) -> np.ndarray:
    """r(h): max over the samples grid r(h F) (values mag) and zooms around their n_peaks largest local maxima.

    evaluate(w r(h F')) -> r(h F'): the gain (|G| or sigma_max) of each row's system at those frequencies.
    """
    h = grid.shape[0]
    order = np.argsort(grid, axis=1, kind="stable")  # (h F)
    grid, mag = np.take_along_axis(grid, order, axis=1), np.take_along_axis(mag, order, axis=1)
    best = mag.max(axis=1)  # (h)
    # the n_peaks largest LOCAL maxima: the largest samples alone cluster around one peak, and a
    # narrow resonance of the error system (between the grid points) can be higher than it
    ext = np.pad(mag, ((0, 0), (1, 1)), constant_values=-1.0)  # (h F+2)
    is_max = (mag >= ext[:, :-2]) & (mag >= ext[:, 2:])  # (h F)
    top = np.argsort(np.where(is_max, mag, -1.0), axis=1)[:, -n_peaks:]  # (h P)
    lo = np.take_along_axis(grid, np.maximum(top - 1, 0), axis=1)  # (h P)
    hi = np.take_along_axis(grid, np.minimum(top + 1, grid.shape[1] - 1), axis=1)  # (h P)
    t = np.linspace(0.0, 1.0, 9)  # (9)
    for _ in range(n_refine):
        w = lo[:, :, None] + (hi - lo)[:, :, None] * t  # (h P 9)
        m = evaluate(w.reshape(h, -1)).reshape(w.shape)  # (h P 9)
        best = np.maximum(best, m.max(axis=(1, 2)))
        j = np.argmax(m, axis=2)[:, :, None]  # (h P 1)
        step = ((hi - lo) / 8.0)[:, :, None]  # (h P 1) the new bracket is 2 spacings: / 4
        c = np.take_along_axis(w, j, axis=2)  # (h P 1)
        lo, hi = np.clip(c - step, 0, np.pi)[:, :, 0], np.clip(c + step, 0, np.pi)[:, :, 0]
    return best


def peak_gain(evaluator, A: np.ndarray, active: np.ndarray, mag_uniform: np.ndarray, n_grid: int,
              n_peaks: int, n_refine: int) -> np.ndarray:
    """r(h): the H-infinity norm of h systems by one search, for SISO channels and MIMO layers alike.

    evaluator(rows) -> evaluate(w r(len(rows) F)) -> r(len(rows) F): the gain of the given rows' systems
    (|G| of a channel, or sigma_max of a MIMO layer's matrix G). A c(h N): their poles; active bool (h N):
    the modes that reach the output; mag_uniform r(h n_grid): the gain on the uniform grid of [0, pi].

    Candidates: the uniform grid plus every pole's |angle| (resonances of poles near the circle), then
    n_refine rounds of zooming (9 points, bracket / 4) around the n_peaks largest local maxima; then, around
    every pole narrower than the grid, a second search on samples at steps of its width
    (``_pole_ladders``: clusters of resonances hide peaks between the poles), so that its peaks are not
    crowded out of (or into) the grid's n_peaks. A lower estimate of the true norm, converged to about
    (pi / n_grid) / 4^n_refine in omega, i.e. far below float64 resolution for 1 - |A| >= 1e-6.
    """
    h = A.shape[0]
    uniform = np.broadcast_to(np.linspace(0.0, np.pi, n_grid), (h, n_grid))  # (h G)
    angles = np.abs(np.angle(A))  # (h N)
    every = np.arange(h)
    ev = evaluator(every)
    grid = np.concatenate([uniform, angles], axis=1)  # (h F)
    mag = np.concatenate([mag_uniform, ev(angles)], axis=1)  # (h F)
    best = _refine_peaks(ev, grid, mag, n_peaks, n_refine)  # (h)
    width = -np.log(np.maximum(np.abs(A), 1e-300))  # (h N)
    narrow = (width < np.pi / (n_grid - 1)) & active  # (h N) poles the grid does not resolve
    rows = np.flatnonzero(narrow.any(axis=1))  # systems that have any
    if rows.size:
        ev_r = evaluator(rows)
        ladders = _pole_ladders(angles[rows], width[rows], narrow[rows])  # (h' F')
        best[rows] = np.maximum(best[rows], _refine_peaks(ev_r, ladders, ev_r(ladders), n_peaks, n_refine))
    return best


def hinf_norm(sys: DiagonalSSM, n_grid: int = 2049, n_peaks: int = 8, n_refine: int = 12,
              chunk: int = 128) -> np.ndarray:
    """r(H): max over omega of |G(e^{i omega})| per channel (``peak_gain``; the map is real, so omega in [0, pi]).

    The uniform grid is ``frequency_response_uniform`` (an FFT) when 2 (n_grid - 1) is a multiple of 64,
    else evaluated directly. Chunks of channels run on parallel.threads() threads.
    """
    def part(sl: slice) -> np.ndarray:
        s = sys.channel(sl)
        if (2 * (n_grid - 1)) % 64 == 0:
            G_u = frequency_response_uniform(s, n_grid)  # (h G)
        else:
            G_u = frequency_response(s, np.broadcast_to(np.linspace(0.0, np.pi, n_grid), (s.H, n_grid)))

        def evaluator(rows):
            sr = s if rows.size == s.H else s.channel(rows)
            return lambda w: np.abs(frequency_response(sr, w))
        return peak_gain(evaluator, s.A, s.active_modes(), np.abs(G_u), n_grid, n_peaks, n_refine)

    return np.concatenate(map_chunks(part, sys.H, chunk)) if sys.H else np.zeros(0)


def horizon_operator_error(sys: DiagonalSSM, red: DiagonalSSM, L: int) -> np.ndarray:
    """r(H): operator 2-norm of the L x L lower-triangular Toeplitz matrix of the impulse-response difference.

    The exact worst-case gain of G - G_r on inputs of length L (outputs over the same L steps): dense
    SVD for L <= DENSE_TOEPLITZ_MAX, Lanczos with FFT matvecs (converged to 1e-12 relative) above.
    """
    dh = sys.impulse_response(L) - red.impulse_response(L)  # (H L)
    if L > DENSE_TOEPLITZ_MAX:
        return np.array([_toeplitz_norm_lanczos(d) for d in dh])
    i = np.arange(L)
    lag = i[:, None] - i[None, :]  # (L L)
    T = np.where(lag >= 0, dh[:, np.maximum(lag, 0)], 0.0)  # (H L L)
    return np.linalg.svd(T, compute_uv=False)[:, 0]


# Above this L the dense SVD (O(L^3) per channel) gives way to Lanczos (svds) with FFT matvecs.
DENSE_TOEPLITZ_MAX = 1024


def _toeplitz_norm_lanczos(d: np.ndarray) -> float:
    """Largest singular value of the lower-triangular Toeplitz matrix of d r(L), by svds (tol 1e-12)."""
    from scipy.sparse.linalg import LinearOperator, svds

    L = d.size
    n = 2 * L
    D = np.fft.rfft(d, n)  # (n/2+1)
    mv = lambda u: np.fft.irfft(np.fft.rfft(np.ravel(u), n) * D, n)[:L]  # noqa: E731  causal convolution
    rmv = lambda u: np.fft.irfft(np.fft.rfft(np.ravel(u)[::-1], n) * D, n)[:L][::-1]  # noqa: E731  transpose
    op = LinearOperator((L, L), matvec=mv, rmatvec=rmv, dtype=np.float64)
    return float(svds(op, k=1, tol=1e-12, return_singular_vectors=False, random_state=0)[0])
