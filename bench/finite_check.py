"""What the runtime's default per-step finiteness check costs: the same step graph, two sessions (check on,
the default; check off), timed in alternating blocks in one process so machine load hits both alike.

    OMP_NUM_THREADS=1 python bench/finite_check.py path/to/step.onnx [--blocks 40] [--steps 500]

Prints the median per-step latency of each and their difference; docs/latency.md keeps the result.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from edgessm.runtime import StreamingSession


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--steps", type=int, default=500)
    args = ap.parse_args()
    sessions = {"check (default)": StreamingSession(args.model, provider="cpu", threads=1),
                "no check": StreamingSession(args.model, provider="cpu", threads=1, check_finite=False)}
    spec = next(iter(sessions.values())).input
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, *spec.shape)).astype(spec.dtype) for _ in range(16)]
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():  # warm-up
        for i in range(200):
            s.step(xs[i % 16])
    for _ in range(args.blocks):
        for name, s in sessions.items():
            for i in range(args.steps):
                t = time.perf_counter_ns()
                s.step(xs[i % 16])
                times[name].append(time.perf_counter_ns() - t)
    med = {k: float(np.median(v)) / 1e3 for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<16} p50 {v:7.2f} us over {len(times[k])} steps")
    a, b = med["check (default)"], med["no check"]
    print(f"difference       {a - b:+.2f} us per step ({(a - b) / b:+.1%})")


if __name__ == "__main__":
    main()
