"""What a GPU would do for the reduction's floor: the batched dense SVD of the 6 x 512 x N = 64 workload.

    python bench/gpu_svd_floor.py [--repeats 5] [--json out.json]

The CPU engine's floor on this workload (docs/bench_reduction.md) is LAPACK's SVD of one
(K x K) = (127 x 127) factor product per channel, 3072 channels: 2.9 s values-only and 7.3 s with
vectors on one core of the 2-core development machine. This script builds exactly those matrices
(edgessm's Gramian factors of bench_reduction.py's "init" workload, on the CPU), then times
``torch.linalg.svd`` / ``torch.linalg.svdvals`` in float64 on the GPU (cuSOLVER), each cuSOLVER
driver that runs, with the host-to-device copy timed separately, and checks the singular values
against numpy's on the CPU. It measures the SVD stage only: the Gramian factors and the
re-diagonalisation still run on the CPU in edgessm; this says whether moving the floor to a GPU
could bring the whole reduction near the sub-second mark.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_reduction import workload  # noqa: E402

from edgessm.reduce import BALANCER_CHUNK, gramian_factors  # noqa: E402


def factor_products(kind: str = "init", chunk: int = BALANCER_CHUNK) -> np.ndarray:
    """(3072 K K) float64: FQ^T FP per channel, padded to the largest K, as the engine (edgessm.reduce.balanced) forms it."""
    sys_ = workload(kind)
    out = []
    for lo in range(0, sys_.H, chunk):
        *_, FP, FQ = gramian_factors(sys_.channel(slice(lo, lo + chunk)), None)  # (h n K) each
        out.append(np.swapaxes(FQ, 1, 2) @ FP)
    K = max(m.shape[1] for m in out)
    return np.concatenate([np.pad(m, ((0, 0), (0, K - m.shape[1]), (0, K - m.shape[2]))) for m in out])


def timed(fn, repeats: int, sync) -> list[float]:
    fn()
    sync()  # warm-up (cuSOLVER handles, workspace)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return ts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--drivers", default="default,gesvd",
                    help="cuSOLVER drivers to time (default = torch's choice); gesvdj and gesvda also exist, "
                         "but gesvdj did not finish one call within a minute on an H100 for this batch")
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device: this script measures the GPU SVD", file=sys.stderr)
        return 2
    t = time.perf_counter()
    M = factor_products()
    t_factors = time.perf_counter() - t
    print(f"workload: {M.shape[0]} channels, K = {M.shape[1]}; CPU factors in {t_factors:.1f} s", flush=True)
    S_ref = np.linalg.svd(M[:256], compute_uv=False)  # numpy/LAPACK on 256 channels: the accuracy check
    sync = torch.cuda.synchronize
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "channels": M.shape[0],
           "K": M.shape[1], "cpu_factor_s": t_factors, "rows": []}
    h2d = timed(lambda: torch.from_numpy(M).cuda(), a.repeats, sync)
    res["h2d_s"] = statistics.median(h2d)
    Md = torch.from_numpy(M).cuda()
    for driver in [None if d == "default" else d for d in a.drivers.split(",") if d]:
        for what in ["svdvals", "svd"]:
            if what == "svdvals":
                fn = lambda: torch.linalg.svdvals(Md, driver=driver)  # noqa: E731
            else:
                fn = lambda: torch.linalg.svd(Md, full_matrices=False, driver=driver)  # noqa: E731
            try:
                ts = timed(fn, a.repeats, sync)
                S = (fn() if what == "svdvals" else fn()[1])[:256].cpu().numpy()
                err = float(np.max(np.abs(S - S_ref) / S_ref[:, :1]))  # relative to sigma_1 per channel
            except Exception as e:  # a driver cuSOLVER/torch does not offer for this shape
                res["rows"].append({"driver": driver or "default", "what": what, "error": str(e).splitlines()[0]})
                print(f"{driver or 'default':8s} {what:8s} failed: {str(e).splitlines()[0]}", flush=True)
                continue
            row = {"driver": driver or "default", "what": what, "median_s": statistics.median(ts), "times_s": ts,
                   "max_err_vs_lapack_rel_sigma1": err}
            res["rows"].append(row)
            print(f"{row['driver']:8s} {what:8s} {row['median_s'] * 1e3:9.1f} ms   max |dS|/sigma_1 vs LAPACK {err:.1e}",
                  flush=True)
    print(f"host-to-device copy of the {M.nbytes / 1e6:.0f} MB batch: {res['h2d_s'] * 1e3:.1f} ms")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
