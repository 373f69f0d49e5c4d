"""Fused step engine vs onnxruntime's step graph vs the one-node floor, side by side in one process.

    OMP_NUM_THREADS=1 python bench/bench_fused.py [--rounds 5] [--n 2000] [--json docs/data/latency_fused.json]

For each model (random weights, built with edgessm.SSMModel and exported with export_onnx) and batch
(1, 16, 256), the three engines run interleaved: every round times each of them once (n steps after a
warm-up, perf_counter_ns per call through StreamingSession.step), so a noisy neighbour on the shared
cores hits all three alike. Reported: the median over rounds of each engine's per-round p50, the
ratios fused/floor and onnxruntime/fused, and stream-steps/s (batch / p50). One thread everywhere,
plus the fused engine with --threads threads (batch-parallel) where the batch is large enough.
Also the process CPU time per step: on shared cores a call that lasts milliseconds is preempted
(its p50 includes waits for the CPU), so at batch 256 the CPU time is the steadier measure.

    OMP_NUM_THREADS=1 python bench/bench_fused.py --agreement      # the agreement table instead (~1 min)

--agreement: max relative difference of the fused engine vs onnxruntime and vs the float64 model
(edgessm.export.verify.reference), and of onnxruntime vs the float64 model, for every export case of
tests/test_fused.py (batch 3, 2,000 steps) and its 10^5-step models (batch 2; S4D, DSS, and LRU / S5 at
P = 6 and reduced by edgessm.compress.compress_model).

Models (--models picks some by label prefix, e.g. --models lru,s5): the 4 x 128 x 8 S4D whose step latency docs/latency.md tracks
(d_input 1, 10 classes, mean pooling, GLU, pre-LN), the mnist1d shape 4 x 64 x 8 (the default ModelConfig at
N = 8), and the MIMO blocks at H = 128: the CompreSSM LRU block (BatchNorm folded, tanh GELU, GLU) with P = 64
(the Gemm update form, P <= H) and P = 256 (the elementwise update form), and S5 (pre-LN, GELU, GLU) with P = 32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


LRU_BLOCK = dict(layer="lru", norm="batch", activation="gelu_tanh")
MODELS = [("4x128x8", dict(d_model=128, n_layers=4, d_state=8)),
          ("mnist1d 4x64x8", dict(d_model=64, n_layers=4, d_state=8)),
          ("lru 4x128 P=64", dict(d_model=128, n_layers=4, d_state=64, **LRU_BLOCK)),
          ("lru 4x128 P=256", dict(d_model=128, n_layers=4, d_state=256, **LRU_BLOCK)),
          ("s5 4x128 P=32", dict(d_model=128, n_layers=4, d_state=32, layer="s5"))]


def _export(cfg_kw: dict, path: str) -> None:
    import torch

    import edgessm
    from edgessm.config import ModelConfig
    from edgessm.export import export_onnx

    torch.manual_seed(0)
    model = edgessm.SSMModel(ModelConfig(d_input=1, d_output=10, **cfg_kw)).eval()
    export_onnx(model, path, verify=False)


def _sessions(path: str, batch: int, threads: int):
    from edgessm.runtime import StreamingSession
    from edgessm.runtime.latency import floor_model_bytes

    fused = StreamingSession(path, provider="cpu", batch=batch, threads=1, engine="fused")
    ort = StreamingSession(path, provider="cpu", batch=batch, threads=1, engine="onnxruntime")
    floor = StreamingSession(floor_model_bytes((1,)), provider="cpu", batch=batch, threads=1, engine="onnxruntime")
    out = {"floor": floor, "onnxruntime": ort, "fused": fused}
    if threads > 1 and batch >= 16 * threads:  # the C engine splits rows over threads from 16 rows a thread
        out[f"fused_{threads}t"] = StreamingSession(path, provider="cpu", batch=batch, threads=threads, engine="fused")
    return out


def _check_same(sessions, batch: int, steps: int = 200) -> float:
    """Max relative difference of the fused and onnxruntime outputs over ``steps`` random steps."""
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((batch, steps, 1)).astype(np.float32)
    a = sessions["fused"].run(xs)
    b = sessions["onnxruntime"].run(xs)
    for s in ("fused", "onnxruntime"):
        sessions[s].reset()
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def bench_one(path: str, batch: int, rounds: int, n: int, threads: int) -> dict:
    from edgessm.runtime.latency import measure_latency

    sess = _sessions(path, batch, threads)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((batch, 1)).astype(np.float32) for _ in range(16)]
    warm = max(20, n // 10)
    p50 = {k: [] for k in sess}
    cpu = {k: [] for k in sess}
    for _ in range(rounds):
        for name, s in sess.items():
            c0 = time.process_time()
            p50[name].append(measure_latency(s.step, xs, n=n, warmup=warm).p50_us)
            cpu[name].append((time.process_time() - c0) / (n + warm) * 1e6)
    med = {k: float(np.median(v)) for k, v in p50.items()}
    cpu_med = {k: float(np.median(v)) for k, v in cpu.items()}
    return {
        "batch": batch, "p50_us": med, "p50_us_per_round": p50,
        # process CPU time per step (all threads): what a call costs without the waits for the shared cores
        "cpu_us_per_step": cpu_med,
        "cpu_onnxruntime_over_fused": cpu_med["onnxruntime"] / cpu_med["fused"],
        "fused_over_floor": med["fused"] / med["floor"],
        "onnxruntime_over_floor": med["onnxruntime"] / med["floor"],
        "onnxruntime_over_fused": med["onnxruntime"] / med["fused"],
        "stream_steps_per_s": {k: batch / (v * 1e-6) for k, v in med.items()},
        "fused_vs_onnxruntime_rel_diff_200_steps": _check_same(sess, batch),
        "engine_note": sess["fused"].engine_note,
    }


def agreement() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import test_fused as T  # the export cases and helpers of the test file: one list of configurations

    print("| case | fused vs onnxruntime | fused vs float64 | onnxruntime vs float64 |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        runs = [(n, c, o, 3, 2000, None) for n, (c, o) in {**T.CASES, **T.FP16_CASES}.items()]
        runs += [(f"{layer} H=4 N={ranks}, 1e5 steps", dict(layer=layer, d_model=4, layer_d_state=ranks, d_input=1,
                                                             d_output=2), {}, 2, 100_000, None)
                 for layer, ranks in [("s4d", [8, 1]), ("dss", [2, 5])]]
        # the MIMO 1e5-step cases of the test file: P = 6 > H (elementwise update) and reduced by compress_model
        lru = dict(norm="batch", activation="gelu_tanh")
        runs += [(f"{layer} H=4 P=6{f' reduced to {r}' if r else ''}, 1e5 steps",
                  dict(layer=layer, d_model=4, d_state=6, d_input=1, d_output=2, **(lru if layer == "lru" else {})),
                  {}, 2, 100_000, r) for layer, r in [("lru", None), ("lru", 2), ("s5", None), ("s5", 3)]]
        for name, cfg, opts, batch, L, rank in runs:
            if rank is None:
                m, path = T._export(Path(d), f"m{len(name)}", cfg, opts)
            else:
                from edgessm.compress import CompressSpec, compress_model
                from edgessm.export import export_onnx

                m = compress_model(T._model(**cfg), CompressSpec(rank=rank))[0].eval()
                path = Path(d) / f"r{len(name)}.onnx"
                export_onnx(m, path, verify=False, **opts)
            xs = T._inputs(m.config, batch, L)
            f, o = T._pair(path, batch)
            yf, yo = f.run(xs), o.run(xs)
            ref = T.reference(m, xs)["y@float64"]
            print(f"| {name} | {T._rel(yf, yo):.1e} | {T._rel(yf, ref):.1e} | {T._rel(yo, ref):.1e} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000, help="timed steps per engine per round at batch 1 "
                    "(scaled down as 1/sqrt(batch) for larger batches)")
    ap.add_argument("--batches", default="1,16,256")
    ap.add_argument("--threads", type=int, default=2, help="also time the fused engine with this many threads "
                    "(batch-parallel) where the batch gives each thread 16 rows; 1: single-thread only")
    ap.add_argument("--agreement", action="store_true", help="print the agreement table (no timing)")
    ap.add_argument("--models", default=None, help="comma-separated label prefixes (default: all): "
                    + ", ".join(label for label, _ in MODELS))
    ap.add_argument("--json", default=None, help="write the results here (e.g. docs/data/latency_fused.json)")
    args = ap.parse_args(argv)
    if args.agreement:
        agreement()
        return 0
    import onnxruntime

    pick = [p.strip() for p in args.models.split(",")] if args.models else None
    models = [(label, kw) for label, kw in MODELS if pick is None or any(label.startswith(p) for p in pick)]
    batches = [int(b) for b in args.batches.split(",")]
    out = {"command": "OMP_NUM_THREADS=1 python bench/bench_fused.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "threads": 1, "rounds": args.rounds,
           "results": []}
    with tempfile.TemporaryDirectory() as d:
        for k, (label, kw) in enumerate(models):
            path = os.path.join(d, f"m{k}.onnx")
            _export(kw, path)
            for b in batches:
                n = max(100, int(args.n / np.sqrt(b)))
                r = bench_one(path, b, args.rounds, n, args.threads)
                r["model"], r["n"] = label, n
                out["results"].append(r)
                m = r["p50_us"]
                print(f"{label:>15} batch {b:>3}: floor {m['floor']:7.1f} us  onnxruntime {m['onnxruntime']:8.1f} us  "
                      f"fused {m['fused']:8.1f} us | fused/floor {r['fused_over_floor']:.2f}x  "
                      f"ort/fused {r['onnxruntime_over_fused']:.2f}x | stream-steps/s ort "
                      f"{r['stream_steps_per_s']['onnxruntime']:,.0f} fused {r['stream_steps_per_s']['fused']:,.0f} "
                      f"| rel diff {r['fused_vs_onnxruntime_rel_diff_200_steps']:.1e}"
                      + "".join(f" | {k} {v:.1f} us" for k, v in m.items() if k.startswith("fused_"))
                      + f" | cpu us/step ort {r['cpu_us_per_step']['onnxruntime']:.1f} fused {r['cpu_us_per_step']['fused']:.1f}"
                      f" ({r['cpu_onnxruntime_over_fused']:.2f}x)", flush=True)
    for r in out["results"]:
        if r["batch"] == batches[0]:
            print(f"{r['model']}: {r['engine_note']}")
    if args.json:
        p = Path(args.json)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        os.replace(tmp, p)
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
