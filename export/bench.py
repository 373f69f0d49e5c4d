"""Side-by-side numbers for docs/onnx.md: node counts, file sizes, parity and CPU latency of the forms.

    python -m edgessm.export.bench [--d-model 64 --layers 4 --d-state 32 --steps 4096 --chunk 64]

One run exports a randomly initialised model (seed 0) as: step graph for target "cpu" (elementwise
SSM) and "cuda" (Einsum SSM), fp32 and fp16, and a chunk graph; each verified over ``--steps``
steps; then times batch-1 steps of each on the onnxruntime CPU provider (1 thread, plain
session.run, interleaved rounds, median of the per-round p50s). Without a GPU these are CPU
numbers only: the GPU claim (fewer nodes -> fewer launches) is not measured here.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def markdown_table(head: list, rows: list) -> str:
    """A markdown table (the form docs/ keeps results in) of rows of already-formatted cells."""
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def write_json(path, obj) -> None:
    """The benchmark's raw numbers as JSON at ``path`` (nothing when path is None), for docs/data/."""
    if path:
        Path(path).write_text(json.dumps(obj, indent=1))


def interleaved_latency(sessions: dict, feeds: dict, rounds: int, calls: int,
                        warmup: int = 200) -> dict[str, tuple[float, float]]:
    """{name: (p50, p99)} in us: the median over rounds of each round's percentiles. Rounds interleave
    the sessions, so load on a shared machine hits every alternative alike (compare ratios)."""
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[k])
    p50: dict[str, list] = {k: [] for k in sessions}
    p99: dict[str, list] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            f, ts = feeds[k], np.empty(calls)
            for i in range(calls):
                t0 = time.perf_counter()
                s.run(None, f)
                ts[i] = time.perf_counter() - t0
            a, b = np.percentile(ts, [50, 99]) * 1e6
            p50[k].append(a)
            p99[k].append(b)
    return {k: (float(np.median(p50[k])), float(np.median(p99[k]))) for k in sessions}


def main(argv=None) -> dict:
    import torch

    from edgessm.config import ModelConfig
    from edgessm.model import SSMModel

    from .api import export_onnx
    from .verify import session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-state", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4096, help="parity steps")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--json", type=str, default=None, help="also write the results here")
    a = ap.parse_args(argv)

    torch.manual_seed(0)
    cfg = ModelConfig(d_model=a.d_model, n_layers=a.layers, d_state=a.d_state)  # mnist1d defaults otherwise
    model = SSMModel(cfg).eval()
    out: dict = {"config": cfg.to_dict(), "steps": a.steps, "variants": {}}
    sessions, feeds = {}, {}
    with tempfile.TemporaryDirectory() as d:
        variants = {
            "cpu fp32": dict(target="cpu"),
            "cuda fp32": dict(target="cuda"),
            "cpu fp16": dict(target="cpu", fp16=True),
            "cuda fp16": dict(target="cuda", fp16=True),
            "cuda fp32 opset20": dict(target="cuda", opset=20),
            f"chunk{a.chunk} fp32": dict(target="cpu", chunk=a.chunk),
        }
        for name, kw in variants.items():
            res = export_onnx(model, Path(d) / f"{name.replace(' ', '_')}.onnx", verify_steps=a.steps, **kw)
            kind = "chunk" if "chunk" in kw else "step"
            path = res.chunk_path if kind == "chunk" else res.path
            par = res.parity[kind]
            out["variants"][name] = {
                "nodes": res.node_counts[kind], "ort_optimized_nodes": res.ort_optimized_nodes[kind],
                "bytes": res.file_sizes[kind],
                "parity_rel": {k: v["rel"] for k, v in par.items()},
            }
            sess = session(path.read_bytes())
            shape = (1, a.chunk, cfg.d_input) if kind == "chunk" else (1, cfg.d_input)
            feeds[name] = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                           **{i.name: np.zeros((1, *i.shape[1:]), np.float32) for i in sess.get_inputs()[1:]}}
            sessions[name] = sess
        lat = {k: v[0] for k, v in interleaved_latency(sessions, feeds, a.rounds, a.calls, warmup=100).items()}
    for name, us in lat.items():
        v = out["variants"][name]
        v["cpu_p50_us_per_call"] = us
        v["cpu_p50_us_per_step"] = us / a.chunk if name.startswith("chunk") else us

    print(f"config: {a.layers} layers x H={a.d_model} x N={a.d_state}, d_input={cfg.d_input}, "
          f"d_output={cfg.d_output}; parity over {a.steps} steps, batch 2; latency batch 1, 1 thread")
    print("| graph | nodes | ssm nodes/layer | after ORT_ENABLE_ALL | bytes | rel err y | rel err states (max) "
          "| CPU p50 us/step |")
    print("|---|---|---|---|---|---|---|---|")
    for name, v in out["variants"].items():
        st = max(r for k, r in v["parity_rel"].items() if k.startswith("present_state"))
        print(f"| {name} | {v['nodes']['total']} | {v['nodes']['ssm'][0]} | {v['ort_optimized_nodes']} | "
              f"{v['bytes']:,} | {v['parity_rel']['y']:.2e} | {st:.2e} | {v['cpu_p50_us_per_step']:.1f} |")
    write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
