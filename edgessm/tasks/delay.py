"""Delayed recall of a noise signal: a streaming task whose state size is set by the task itself.

Each example is a Gaussian noise signal u of ``length`` steps, band-limited to ``bandwidth`` cycles
per step (0.5 = white), standardised to unit variance; the target at every step is the signal
``delay`` steps earlier, zero before the start:

    x: float32 (n, L, 1)    u_t
    y: float32 (n, L, 1)    u_{t - delay}  (0 for t < delay)

It is a per-step regression (the model predicts at every step; score: mean squared error, whose
value for predicting 0 is (L - delay) / L).

Why the state size matters here (unlike mnist1d, where small models match large ones): the target
is the pure delay z^-delay, an LTI map whose Hankel singular values are all 1, so nothing in it is
compressible. A linear state of n real numbers holds at most n linearly independent functions of
the past (a linear system's memory capacity is at most its state dimension, Jaeger 2002), and a
signal of bandwidth f over a window of k steps has about 2 f k degrees of freedom (the time-bandwidth
product, Slepian 1976). So recalling the signal ``delay`` steps back needs about
2 * bandwidth * delay real states (for white noise: one per step of delay), and the error must rise
once the state is smaller. ``minimal_real_states`` in the metadata records that count.

Generation is numpy only (PCG64 seeded by ``seed``, train and test drawn from one stream), a few
milliseconds for the defaults, so nothing is cached. Band limiting: white noise of twice the length
is masked to |f| <= bandwidth in the Fourier domain, which makes it a stationary process on a circle
of 2L samples, and its first L samples are kept: any two of them are nearer along the line than around
the circle, so their correlation is the band-limited kernel at their true lag.
"""
from __future__ import annotations


import numpy as np

from ..errors import TaskError
from .base import TaskData, check_int, check_task_bytes

__all__ = ["load_delay", "OPTIONS"]

OPTIONS = {"num_train": 1600, "num_test": 400, "length": 128, "delay": 48, "bandwidth": 0.5}
GENERATOR_VERSION = 1  # bump when the arrays produced for the same options change


def _signals(rng: np.random.Generator, n: int, L: int, bandwidth: float) -> np.ndarray:
    """r(n L): unit-variance Gaussian noise band-limited to |f| <= bandwidth (cycles per step)."""
    w = rng.standard_normal((n, 2 * L))
    if bandwidth < 0.5:
        f = np.fft.rfftfreq(2 * L)                       # (L+1,) cycles per step
        w = np.fft.irfft(np.fft.rfft(w, axis=1) * (f <= bandwidth), n=2 * L, axis=1)
        # the masked process is stationary with variance (kept bins) / (all bins): standardise by it,
        # not by the sample, so train and test share one scale. Kept bins of the full spectrum: DC once,
        # every other kept rfft bin twice (+f and -f); the Nyquist bin (f = 0.5) is never kept here.
        kept = 2 * np.count_nonzero(f <= bandwidth) - 1
        w = w / np.sqrt(kept / (2 * L))
    return w[:, :L]


def load_delay(seed: int = 0, num_train: int = 1600, num_test: int = 400, length: int = 128,
               delay: int = 48, bandwidth: float = 0.5) -> TaskData:
    num_train = check_int("delay", "num_train", num_train, 2, 1 << 22)
    num_test = check_int("delay", "num_test", num_test, 1, 1 << 22)
    L = check_int("delay", "length", length, 2, 1 << 20)
    k = check_int("delay", "delay", delay, 1, L - 1)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float, np.floating)) \
            or not 0.0 < float(bandwidth) <= 0.5:
        raise TaskError(f"delay bandwidth={bandwidth!r} must be a number in (0, 0.5] (cycles per step; 0.5 = white)")
    bandwidth = float(bandwidth)
    n = num_train + num_test
    # x and y float32 and their float64 working copies, the signal of twice the length and its spectrum
    # (peak measured with tracemalloc: about 55 bytes a step for bandwidth < 0.5; counted with a margin)
    check_task_bytes("delay", n * L * 64.0, f"num_train + num_test = {n} of length {L}")
    rng = np.random.default_rng([GENERATOR_VERSION, int(seed)])
    u = _signals(rng, n, L, bandwidth)                   # (n L)
    y = np.zeros_like(u)
    y[:, k:] = u[:, :-k]                                 # y_t = u_{t-k}
    x = u.astype(np.float32)[:, :, None]                 # (n L 1)
    y = y.astype(np.float32)[:, :, None]                 # (n L 1)
    meta = {
        "source": "generated locally (numpy PCG64), no download",
        "generator_version": GENERATOR_VERSION,
        "options": {"num_train": num_train, "num_test": num_test, "length": L, "delay": k, "bandwidth": bandwidth},
        "target": f"y_t = x_(t-{k}), 0 for t < {k}; per-step regression, score mean squared error",
        "mse_of_zero_prediction": (L - k) / L,
        "minimal_real_states": int(np.ceil(2 * bandwidth * k)),
    }
    return TaskData(
        name="delay", task_type="regression",
        x_train=x[:num_train], y_train=y[:num_train], x_test=x[num_train:], y_test=y[num_train:],
        len_train=None, len_test=None, d_input=1, d_output=1, vocab_size=0, seq_len=L, meta=meta,
    ).validate()
