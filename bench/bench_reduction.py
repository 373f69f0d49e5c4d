"""Benchmark: HSV + balanced truncation of a 6-layer x 512-channel x N=64 model vs python-control.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/bench_reduction.py [--repeats 3] [--subset 24] [--rank 16]

(one BLAS thread: on the shared 2-core machine, 2 BLAS threads against other jobs made batched
LAPACK calls 20-40x slower by oversubscription.) Two synthetic S4D-Lin workloads of the same size
(6 x 512 = 3072 channels, 64 stored modes, ZOH, complex normal C), differing in dt:
- init: dt log-uniform in [1e-3, 1e-1] (the S4 default): HSVs barely decay and the Gramians have
  full numerical rank 127: the worst case for cost;
- coarse: dt log-uniform in [0.05, 0.5]: poles further inside the disc and aliasing
  make the Gramians numerically rank deficient, so the factors stop early.
The cost is set by the Gramians' numerical rank K (pole geometry), not by C: a dense K x K SVD
per channel dominates. edgessm runs with 1 thread and with every CPU (EDGESSM_THREADS, channel
chunks on a thread pool); the H-infinity check of the result (what `edgessm compress` adds to
certify the bound) is timed separately.
python-control 0.10.2 has no discrete-time hsvd/balred (hsvd raises, balred hard-codes dico='C'),
so its balred (SLICOT AB09AD via slycot) runs on the bilinear equivalent (same HSVs), channel by
channel on a subset, and is extrapolated linearly to all channels. HSV accuracy of both against a
50-digit mpmath oracle on a small case. Medians of --repeats runs, taken side by side on a shared
machine: compare ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from edgessm.reduce import balanced_truncation, error_system, hankel_singular_values, hinf_norm  # noqa: E402
from edgessm.parallel import threads  # noqa: E402
from edgessm.ssm import DiagonalSSM, zoh  # noqa: E402


def workload(kind: str, H: int = 3072, N: int = 64, seed: int = 0) -> DiagonalSSM:
    rng = np.random.default_rng(seed)
    lam = np.broadcast_to(-0.5 + 1j * np.pi * np.arange(N), (H, N))
    lo, hi = (1e-3, 1e-1) if kind == "init" else (0.05, 0.5)
    dt = np.exp(rng.uniform(np.log(lo), np.log(hi), H))
    A, B = zoh(lam, dt, np.ones((H, N)))
    C = (rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))) * np.sqrt(0.5)
    return DiagonalSSM(A, B, C, rng.standard_normal(H))


def median_time(fn, repeats: int, n_threads: int | None = None) -> tuple[float, object]:
    """Median wall time of fn() over repeats, with EDGESSM_THREADS = n_threads (None: leave as is)."""
    old = os.environ.get("EDGESSM_THREADS")
    if n_threads is not None:
        os.environ["EDGESSM_THREADS"] = str(n_threads)
    try:
        times, out = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
    finally:
        if old is None:
            os.environ.pop("EDGESSM_THREADS", None)
        else:
            os.environ["EDGESSM_THREADS"] = old
    return statistics.median(times), out


def control_balred_time(sys: DiagonalSSM, channels: np.ndarray, orders: np.ndarray) -> float:
    import control
    from test_balanced import _real_ss

    total = 0.0
    for h, k in zip(channels, orders):
        A, B, C, D = _real_ss(sys, int(h))
        n = A.shape[0]
        t = time.perf_counter()
        Ai = np.linalg.inv(A + np.eye(n))
        csys = control.ss(Ai @ (A - np.eye(n)), np.sqrt(2) * Ai @ B, np.sqrt(2) * C @ Ai, D - C @ Ai @ B)
        control.balred(csys, int(k))
        total += time.perf_counter() - t
    return total


def accuracy() -> dict:
    import control
    from test_balanced import _real_ss, hsv_oracle, make

    sys = make("skew-hippo", 8, 1e-1, H=1, seed=1)
    o = hsv_oracle(sys, 0)
    ours = hankel_singular_values(sys)[0, :o.size]
    A, B, C, D = _real_ss(sys, 0)
    dsys = control.ss(A, B, C, D, True)
    ctrl = np.sort(np.sqrt(np.abs(np.linalg.eigvals(control.gram(dsys, "o") @ control.gram(dsys, "c")))))[::-1]
    n = A.shape[0]
    Ai = np.linalg.inv(A + np.eye(n))
    csys = control.ss(Ai @ (A - np.eye(n)), np.sqrt(2) * Ai @ B, np.sqrt(2) * C @ Ai, D - C @ Ai @ B)
    hsvd = np.asarray(control.hsvd(csys))
    rel = lambda x: float(np.max(np.abs(x - o) / o))  # noqa: E731
    return {"n": int(o.size), "sigma_min/sigma_1": float(o[-1] / o[0]), "edgessm": rel(ours),
            "control gram+eig (discrete)": rel(ctrl), "control hsvd (bilinear)": rel(hsvd)}


def cli_compress_time(rank: int, repeats: int) -> tuple[float, float]:
    """Wall time of `edgessm compress` (load, reduce every layer, H-infinity check, save) on a random
    6 x 512 x N=64 S4D-Lin model, with EDGESSM_THREADS=1 and with every CPU: what a user waits for."""
    import subprocess
    import tempfile

    from edgessm.checkpoint import save
    from edgessm.config import ModelConfig
    from edgessm.model import SSMModel

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "m.safetensors"
        save(SSMModel(ModelConfig(d_model=512, n_layers=6, d_state=64)), src)
        out = []
        for n in (1, threads()):
            env = dict(os.environ, EDGESSM_THREADS=str(n))
            cmd = ["edgessm", "compress", str(src), "--rank", str(rank), "-o", str(Path(d) / "s.safetensors")]
            out.append(median_time(lambda: subprocess.run(cmd, env=env, check=True, capture_output=True), repeats)[0])
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subset", type=int, default=24, help="channels for python-control (extrapolated)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--no-cli", action="store_true", help="skip timing `edgessm compress` on a 6 x 512 x 64 model")
    args = ap.parse_args()
    nt = threads()
    rows = []
    for kind in ("coarse", "init"):
        sys_ = workload(kind)
        t_hsv, hs = median_time(lambda: hankel_singular_values(sys_), args.repeats, 1)
        t_bt1, red = median_time(lambda: balanced_truncation(sys_, args.rank, measure=False), args.repeats, 1)
        t_btn, _ = median_time(lambda: balanced_truncation(sys_, args.rank, measure=False), args.repeats, nt)
        t_meas, _ = median_time(lambda: hinf_norm(error_system(sys_, red.system)), args.repeats, nt)
        sub = np.linspace(0, sys_.H - 1, args.subset).astype(int)
        t_ctrl = control_balred_time(sys_, sub, red.order[sub]) * sys_.H / args.subset
        rows.append((kind, int(np.median(np.sum(hs > 1e-13 * hs[:, :1], axis=1))), t_hsv, t_bt1, t_btn, t_meas, t_ctrl))
        print(rows[-1], flush=True)
    acc = accuracy()
    print(f"{'workload':<10}{'order':>6}{'HSV 1t [s]':>12}{'BT 1t [s]':>11}{f'BT {nt}t [s]':>11}{f'H-inf check {nt}t [s]':>22}"
          f"{'balred 1 core [s]':>19}{'ratio 1 core':>14}{f'ratio vs {nt}t':>14}")
    for kind, rk, th, tb1, tbn, tm, tc in rows:
        print(f"{kind:<10}{rk:>6}{th:>12.2f}{tb1:>11.2f}{tbn:>11.2f}{tm:>22.2f}{tc:>19.2f}{tc / tb1:>14.1f}{tc / tbn:>14.1f}")
    if not args.no_cli:
        c1, cn = cli_compress_time(args.rank, args.repeats)
        print(f"edgessm compress --rank {args.rank}, random 6 x 512 x N=64 model, whole command: "
              f"{c1:.2f} s with 1 thread, {cn:.2f} s with {nt}")
    print("HSV max relative error vs 50-digit mpmath (skew-hippo, dt=0.1, n=%d, sigma_min/sigma_1=%.1e):"
          % (acc["n"], acc["sigma_min/sigma_1"]))
    for k in ("edgessm", "control gram+eig (discrete)", "control hsvd (bilinear)"):
        print(f"  {k:<30}{acc[k]:.1e}")


if __name__ == "__main__":
    main()
