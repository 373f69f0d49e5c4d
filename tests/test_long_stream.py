"""Long streams through the runtime (the runtime issue's bar), by bench/long_stream.py.

A linear one-block network has an exact float64 oracle, so float32 drift of the exported recurrence
over a long stream is measured directly. Bar: max |y - y64| / rms(y64) <= 1e-4 (float32: the state's
rounding random-walks over a mode's memory, ~1e-6 measured; a systematic drift would grow with L and
show in the last window). fp16 export: reported, bar 1e-2 (half-precision weights, fp32 recurrence).
"""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "long_stream.py"


def _bench():
    spec = importlib.util.spec_from_file_location("long_stream", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_long_stream_short_version():
    """5 x 10^4 steps (fast): the same bars; the drift check along the stream is in the slow test."""
    res = _bench().main(["--steps", "50000", "--fp16", "--skip-deep"])
    assert res["fp32"]["finite"] and res["fp32"]["max_rel_err"] <= 1e-4
    assert res["fp16"]["finite"] and res["fp16"]["max_rel_err"] <= 1e-2


@pytest.mark.slow
def test_million_steps():
    res = _bench().main(["--steps", "1000000", "--fp16"])
    w = res["fp32"]["rel_err_per_window"]
    assert res["fp32"]["finite"] and res["fp32"]["max_rel_err"] <= 1e-4
    assert w[-1] <= 10 * w[0] + 1e-7  # no growth along the stream
    assert res["fp16"]["finite"] and res["fp16"]["max_rel_err"] <= 1e-2
    assert res["deep"]["finite"]
