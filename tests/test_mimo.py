"""MimoSSM (the MIMO diagonal system's real map) and its balanced truncation, against independent oracles:
a dense real realisation, slycot's ab13dd H-infinity norm, scipy's dense Lyapunov Gramians, mpmath."""
import numpy as np
import pytest
import scipy.linalg as sl

from edgessm.errors import RankError, UnstableSystemError
from edgessm.mimo import MimoSSM
from edgessm.reduce.mimo_bt import mimo_balanced_truncation, mimo_hankel_singular_values


def random_system(seed: int, P: int = 10, I: int = 3, O: int = 2, c: float = 2.0, r=(0.5, 0.99), real_mode=True):
    rng = np.random.default_rng(seed)
    A = rng.uniform(*r, P) * np.exp(1j * rng.uniform(0, np.pi, P))
    if real_mode:
        A[0] = 0.7  # a real eigenvalue with complex B and C: two real states
        A[1] = -0.6
    B = rng.standard_normal((P, I)) + 1j * rng.standard_normal((P, I))
    C = rng.standard_normal((O, P)) + 1j * rng.standard_normal((O, P))
    return MimoSSM(A, B, C, rng.standard_normal((O, I)), c)


def real_recurrence(sys: MimoSSM, u: np.ndarray) -> np.ndarray:
    Ar, Br, Cr, D = sys.realify()
    x = np.zeros((u.shape[0], Ar.shape[0]))
    y = np.empty((u.shape[0], u.shape[1], D.shape[0]))
    for k in range(u.shape[1]):
        x = x @ Ar.T + u[:, k] @ Br.T
        y[:, k] = x @ Cr.T + u[:, k] @ D.T
    return y


@pytest.mark.parametrize("c", [1.0, 2.0])
def test_real_map_is_defined_once(c):
    """Recurrence, FFT convolution, dense real realisation and transfer function agree (float64 rounding)."""
    s = random_system(0, c=c)
    u = np.random.default_rng(1).standard_normal((2, 64, s.n_in))
    y, _ = s.reference_recurrence(u)
    scale = np.abs(y).max()
    assert np.abs(s.convolve(u) - y).max() <= 1e-12 * scale  # FFT rounding ~ eps log L
    assert np.abs(real_recurrence(s, u) - y).max() <= 1e-12 * scale
    Ar, Br, Cr, D = s.realify()
    assert Ar.shape[0] == s.real_state_dims() == 2 * s.N  # real A with complex B, C is still two states
    w = np.linspace(0.05, 3.1, 7)
    G = s.transfer_function(w)  # (O I F)
    for f, wf in enumerate(w):
        z = np.exp(1j * wf)
        Gd = D + z * Cr @ np.linalg.solve(z * np.eye(Ar.shape[0]) - Ar, Br)
        assert np.abs(G[:, :, f] - Gd).max() <= 1e-11 * np.abs(Gd).max()  # a dense solve, cond ~ 1/(1-|a|)


def test_factor_is_a_storage_convention():
    s = random_system(2, c=2.0)
    u = np.random.default_rng(3).standard_normal((1, 30, s.n_in))
    y1 = s.reference_recurrence(u)[0]
    y2 = s.with_factor(1.0).reference_recurrence(u)[0]
    assert np.abs(y1 - y2).max() <= 1e-13 * np.abs(y1).max()


def test_real_modes_count_one_state():
    A = np.array([0.9, 0.5 + 0.3j])
    B = np.array([[1.0, 2.0], [1 + 1j, 0.5j]])
    C = np.array([[0.5, 1 - 1j], [-1.0, 2.0]])
    s = MimoSSM(A, B, C, np.zeros((2, 2)), 1.0)
    assert s.real_modes().tolist() == [True, False]
    assert s.real_state_dims() == 3
    u = np.random.default_rng(0).standard_normal((1, 20, 2))
    assert np.abs(real_recurrence(s, u) - s.reference_recurrence(u)[0]).max() <= 1e-13


@pytest.mark.parametrize("seed,r", [(0, (0.5, 0.99)), (1, (0.99, 0.9995)), (2, (0.0, 0.6))])
def test_hinf_norm_matches_slycot(seed, r):
    """The peak search finds the same maximum singular value as SLICOT AB13DD (Hamiltonian method), slow modes included."""
    slycot = pytest.importorskip("slycot")
    s = random_system(seed, P=8, r=r)
    Ar, Br, Cr, D = s.realify()
    n = Ar.shape[0]
    # standard form of the updated-state map: C' = C A, D' = D + C B
    ref, _ = slycot.ab13dd("D", "I", "N", "D", n, s.n_in, s.n_out, Ar, np.eye(n), Br, Cr @ Ar, D + Cr @ Br)
    assert abs(s.hinf_norm() - ref) <= 1e-9 * ref  # both converge to the peak; ab13dd's tol is 1e-10


def _mp_hsv(s: MimoSSM, dps: int = 60) -> np.ndarray:
    """Oracle: HSVs of the real map from its dense real realisation's Gramians, all in mpmath."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = dps
    Ar, Br, Cr, D = s.realify()
    n = Ar.shape[0]
    # exact real blocks from exp(log A) when the system carries log A
    A = mp.matrix(n, n)
    i = 0
    for p in range(s.N):
        a = mp.exp(mp.mpc(complex(s.log_a()[p])))
        if s.real_modes()[p]:
            A[i, i] = a.real
            i += 1
        else:
            A[i, i], A[i, i + 1], A[i + 1, i], A[i + 1, i + 1] = a.real, -a.imag, a.imag, a.real
            i += 2
    Bm, Cm = mp.matrix(Br.tolist()), mp.matrix(Cr.tolist())  # H(z) = C (zI - A)^{-1} B, G = D + z H
    # Gramians by the doubling (squared Smith) iteration: P = sum_k A^k B B^T A^kT
    def gram(Am, Bq):
        X, Ak = Bq * Bq.T, Am
        for _ in range(40):  # 2^40 terms: (1 - |a|)^(2^40) underflows for |a| <= 1 - 1e-9
            X = X + Ak * X * Ak.T
            Ak = Ak * Ak
        return X
    Pg, Qg = gram(A, Bm), gram(A.T, Cm.T)
    ev = mp.eig(Pg * Qg, left=False, right=False)
    return np.array(sorted((float(mp.sqrt(abs(e))) for e in ev), reverse=True))


@pytest.mark.parametrize("case", ["slow", "clustered"])
def test_hsv_match_mpmath(case):
    """HSVs within 1e-8 relative of a 60-digit oracle for sigma >= 1e-12 sigma_1 (slow modes use the exact log A)."""
    rng = np.random.default_rng(5)
    if case == "slow":
        P, I, O = 7, 3, 2
        la = -np.geomspace(1e-4, 0.5, P) + 1j * np.linspace(0.01, 0.3, P)
    else:  # clustered nodes: HSVs fall to 1e-15
        P, I, O = 14, 2, 2
        la = -np.linspace(0.05, 0.5, P) + 1j * np.linspace(0.02, 0.2, P)
    B = rng.standard_normal((P, I)) + 1j * rng.standard_normal((P, I))
    C = rng.standard_normal((O, P)) + 1j * rng.standard_normal((O, P))
    s = MimoSSM(np.exp(la), B, C, np.zeros((O, I)), 1.0, la)
    ref = _mp_hsv(s)
    hs = mimo_hankel_singular_values(s)
    m = ref >= 1e-12 * ref[0]
    if case == "clustered":
        assert ref[-1] < 1e-12 * ref[0]  # the case really reaches the 1e-12 floor
    assert np.max(np.abs(hs[m] - ref[m]) / ref[m]) <= 1e-8


def test_hsv_match_dense_lyapunov():
    s = random_system(4, P=9)
    Ar, Br, Cr, D = s.realify()
    Cs = Cr  # the Hankel operator of H = (G - D) / z (mimo_bt docstring)
    Pg = sl.solve_discrete_lyapunov(Ar, Br @ Br.T)
    Qg = sl.solve_discrete_lyapunov(Ar.T, Cs.T @ Cs)
    ref = np.sqrt(np.sort(np.abs(np.linalg.eigvals(Pg @ Qg)))[::-1])
    hs = mimo_hankel_singular_values(s)
    assert np.max(np.abs(hs - ref)) <= 1e-10 * ref[0]  # dense Lyapunov: absolute errors ~ eps kappa sigma_1


@pytest.mark.parametrize("c", [1.0, 2.0])
@pytest.mark.parametrize("rank", [1, 3, 6])
def test_bt_bound_holds(c, rank):
    """sigma_{k+1} <= ||G - G_r||_inf <= 2 sum_{i>k} sigma_i, measured independently of the bound."""
    s = random_system(7, P=9, c=c)
    red = mimo_balanced_truncation(s, rank)
    k = int(red.order[0])
    assert red.system.N <= rank and k <= 2 * rank
    assert red.system.c == s.c
    assert np.array_equal(red.system.D, s.D)  # the layer's own (diagonal) D is kept exactly
    hs = red.hsv[0]
    err = s.error_system(red.system).hinf_norm()
    assert err == pytest.approx(red.measured_hinf[0], rel=1e-9)
    assert hs[k] * (1 - 1e-7) <= err <= red.bound[0] * (1 + 1e-7)  # peak search tolerance


def test_bt_handles_real_eigenvalues_and_is_exact_at_full_order():
    """A system with real modes; at order k = n the reduced system reproduces the map."""
    A = np.array([0.9, -0.5, 0.6 + 0.2j, 0.3 - 0.7j])
    rng = np.random.default_rng(0)
    B = rng.standard_normal((4, 2)) + 1j * rng.standard_normal((4, 2))
    B[:2] = B[:2].real
    C = rng.standard_normal((2, 4)) + 1j * rng.standard_normal((2, 4))
    C[:, :2] = C[:, :2].real
    s = MimoSSM(A, B, C, rng.standard_normal((2, 2)), 1.0)
    assert s.real_state_dims() == 6
    red = mimo_balanced_truncation(s, energy=1 - 1e-15)
    assert red.order[0] == 6 and red.system.real_state_dims() == 6
    u = rng.standard_normal((1, 40, 2))
    y = s.reference_recurrence(u)[0]
    assert np.abs(red.system.reference_recurrence(u)[0] - y).max() <= 1e-10 * np.abs(y).max()
    red3 = mimo_balanced_truncation(s, rank=2)
    # at most 2 stored modes; the real order counts a pair twice and a real eigenvalue once
    assert red3.system.N <= 2 and red3.order[0] == red3.system.real_state_dims()


def test_selectors():
    s = random_system(8, P=10)
    hs = mimo_hankel_singular_values(s)
    e = mimo_balanced_truncation(s, energy=0.8, measure=False)
    k = int(e.order[0])
    cum = np.cumsum(hs) / hs.sum()
    assert cum[k - 1] >= 0.8 > (cum[k - 2] if k > 1 else 0)
    t = mimo_balanced_truncation(s, tol=0.05, measure=False)
    assert t.bound[0] <= 0.05 * s.hinf_norm()
    with pytest.raises(RankError):
        mimo_balanced_truncation(s, rank=10)
    with pytest.raises(RankError):
        mimo_balanced_truncation(s, rank=2, energy=0.5)
    with pytest.raises(UnstableSystemError):
        mimo_balanced_truncation(MimoSSM(np.array([1.01, 0.5]), np.ones((2, 1)), np.ones((1, 2)), np.zeros((1, 1))), 1)


@pytest.mark.parametrize("center", [np.pi, 1.3, 0.0])
def test_hinf_norm_of_resonance_clusters_matches_slycot(center):
    """Several poles within a few widths, narrower than the grid (1 - |a| from 1e-5 to 3e-3): the peak of
    sigma_max lies between them, where neither a grid nor the pole frequencies sample it."""
    slycot = pytest.importorskip("slycot")
    rng = np.random.default_rng(int(center * 10) + 1)
    for _ in range(12):
        M = int(rng.integers(3, 7))
        w = 10 ** rng.uniform(-5, -2.5)
        ang = np.minimum(np.abs(center - w * np.cumsum(rng.uniform(0.2, 3, M)) + w * rng.uniform(0, 1)), np.pi)
        A = (1 - w * rng.uniform(0.5, 2, M)) * np.exp(1j * ang)
        B = rng.standard_normal((M, 2)) + 1j * rng.standard_normal((M, 2))
        C = rng.standard_normal((2, M)) + 1j * rng.standard_normal((2, M))
        s = MimoSSM(A, B, C, np.zeros((2, 2)), 1.0)
        Ar, Br, Cr, D = s.realify()
        n = Ar.shape[0]
        ref, _ = slycot.ab13dd("D", "I", "N", "D", n, 2, 2, Ar, np.eye(n), Br, Cr @ Ar, D + Cr @ Br)
        est = s.hinf_norm()
        # ab13dd's tol is 1e-10; every sample of the search is a true value of sigma_max, so never above
        assert ref * (1 - 1e-9) <= est <= ref * (1 + 1e-9), (est, ref)


def test_hinf_norm_of_a_layer_without_modes_is_its_feedthrough():
    D = np.array([[1.0, -2.0], [0.5, 3.0], [0.0, 1.0]])
    s = MimoSSM(np.zeros(0, complex), np.zeros((0, 2), complex), np.zeros((3, 0), complex), D, 1.0)
    assert s.hinf_norm() == pytest.approx(np.linalg.norm(D, 2), rel=1e-14)  # G(z) = D at every frequency
