"""Conv mode and step mode of every layer against the float64 oracle (DiagonalSSM.convolve).

The bar: over L = 16,384 steps in float32, max |y - y_oracle| / rms(y_oracle) <= 1e-4 for
every init, N in {4, 64, 256}, dt across [1e-3, 1e-1]. Why 1e-4 is the right size: the float32 state
accumulates rounding over a mode's memory 1/(dt |Re Lambda|) (1e4 steps at dt = 1e-3), and the
systematic part scales like eps * |Im Lambda / Re Lambda| (~1e3 here); eps = 6e-8 puts the worst case
near 5e-5 with the delta-form step (see S4DLayer.step_params). conv/step divergence is a known failure
of S4 implementations; this file proves we don't have it.
"""
import numpy as np
import pytest
import torch

from edgessm.layers import DSSLayer, S4DLayer
from edgessm.ssm import DiagonalSSM

L = 16384
H = 6  # channels, each with its own dt spread log-uniformly over [1e-3, 1e-1] (endpoints included)
BAR = 1e-4


def _rel_max_err(y, y_ref):
    return float(np.max(np.abs(y - y_ref)) / np.sqrt(np.mean(y_ref ** 2)))


def _layer(cls, init, N, seed=0):
    lay = cls(H, N, init, 1e-3, 1e-1, seed=seed)
    with torch.no_grad():
        lay.log_dt.copy_(torch.linspace(np.log(1e-3), np.log(1e-1), H))
    return lay


def _run_step(lay, u):
    with torch.no_grad():
        params, x = lay.step_params(), lay.init_state(u.shape[0])
        ys = torch.empty_like(u)
        for k in range(u.shape[1]):
            ys[:, k], x = lay.step(u[:, k], x, params)
    return ys.numpy()


@pytest.mark.parametrize("init", ["skew-hippo", "s4d-lin", "s4d-inv", "random"])
@pytest.mark.parametrize("N", [4, 64, 256])
def test_s4d_conv_and_step_match_float64_oracle(init, N):
    torch.manual_seed(0)
    lay = _layer(S4DLayer, init, N)
    u = torch.randn(1, L, H)
    y_ref = lay.to_diagonal().convolve(u.double().numpy())  # float64 oracle of the same parameters
    with torch.no_grad():
        y_conv = lay(u).numpy()
    e_conv, e_step = _rel_max_err(y_conv, y_ref), _rel_max_err(_run_step(lay, u), y_ref)
    assert e_conv <= BAR, f"conv mode: {e_conv:.2e}"
    assert e_step <= BAR, f"step mode: {e_step:.2e}"


@pytest.mark.parametrize("init", ["skew-hippo", "s4d-lin"])
def test_dss_conv_and_step_match_float64_oracle(init):
    torch.manual_seed(1)
    lay = _layer(DSSLayer, init, 64)
    u = torch.randn(1, L, H)
    y_ref = lay.to_diagonal().convolve(u.double().numpy())
    with torch.no_grad():
        y_conv = lay(u).numpy()
    assert _rel_max_err(y_conv, y_ref) <= BAR
    assert _rel_max_err(_run_step(lay, u), y_ref) <= BAR


def test_oracle_convolution_equals_reference_recurrence():
    """The two float64 oracles agree to rounding (1e-12: float64 FFT error ~ 1e-15 * log L, margin 1000x)."""
    rng = np.random.default_rng(0)
    N = 8
    A = np.exp(-rng.uniform(0.01, 0.5, (3, N)) + 1j * rng.uniform(0, np.pi, (3, N)))
    sys = DiagonalSSM(A, rng.standard_normal((3, N)) + 0j, rng.standard_normal((3, N)) + 1j * rng.standard_normal((3, N)),
                      rng.standard_normal(3))
    u = rng.standard_normal((2, 500, 3))
    y1, _ = sys.reference_recurrence(u)
    assert _rel_max_err(sys.convolve(u), y1) < 1e-12


@pytest.mark.parametrize("cls", [S4DLayer, DSSLayer])
def test_to_and_from_diagonal_roundtrip(cls):
    """load_diagonal(to_diagonal()) reproduces the impulse response (float32 parameters: rtol 1e-5)."""
    torch.manual_seed(2)
    lay = cls(4, 16, "s4d-lin", 1e-3, 1e-1, seed=3)
    sys = lay.to_diagonal()
    other = cls(4, 16, "random", 1e-3, 1e-1, seed=4)
    with torch.no_grad():
        other.log_dt.copy_(lay.log_dt)
    other.load_diagonal(sys)
    h, h2 = sys.impulse_response(200), other.to_diagonal().impulse_response(200)
    assert np.max(np.abs(h - h2)) <= 1e-5 * np.max(np.abs(h))


def test_load_diagonal_rejects_unstable_and_nan():
    from edgessm.errors import UnstableSystemError
    lay = S4DLayer(2, 4, "s4d-lin", seed=0)
    sys = lay.to_diagonal()
    A = sys.A.copy()
    A[1, 2] = 1.01
    with pytest.raises(UnstableSystemError, match="channel 1"):
        lay.load_diagonal(DiagonalSSM(A, sys.B, sys.C, sys.D), layer=3)
    C = sys.C.copy()
    C[0, 0] = np.nan
    with pytest.raises(UnstableSystemError, match="NaN"):
        lay.load_diagonal(DiagonalSSM(sys.A, sys.B, C, sys.D))


def test_real_negative_eigenvalue_maps_back():
    """A reduced system may have a real negative A: Lambda = (log|A| + i pi)/dt realises it."""
    lay = S4DLayer(1, 2, "s4d-lin", seed=0)
    sys = DiagonalSSM(np.array([[-0.6 + 0j, 0.3 + 0.4j]]), np.array([[1.0 + 0j, 0.5 - 0.2j]]),
                      np.array([[0.25 + 0j, 1.0 + 1.0j]]), np.array([0.1]))
    lay.load_diagonal(sys)
    h, h2 = sys.impulse_response(50), lay.to_diagonal().impulse_response(50)
    assert np.max(np.abs(h - h2)) <= 1e-5 * np.max(np.abs(h))
