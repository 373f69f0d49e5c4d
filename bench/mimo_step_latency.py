"""MIMO (LRU, S5) step graph beside an S4D step graph of the same total state: nodes and CPU latency.

    OMP_NUM_THREADS=1 python bench/mimo_step_latency.py [--rounds 7 --calls 300]

Pairs of randomly initialised 4-block, H = 64 models (seed 0) with equal real state per layer:
an LRU with P modes (2P floats: one state for all channels) against an S4D with N = P / 64 modes per
channel (2 H N floats). Each is exported (step graph, target cpu, fp32, parity checked over 256 steps)
and timed at batch 1 on onnxruntime's CPU provider, 1 thread, plain session.run, interleaved rounds
(export/bench.py), median of the per-round p50s. Ratios are the robust number on a shared machine.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    import torch

    from edgessm.config import ModelConfig
    from edgessm.export import export_onnx
    from edgessm.export.bench import interleaved_latency, markdown_table, write_json
    from edgessm.export.verify import session
    from edgessm.model import SSMModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--json", type=str, default=None)
    a = ap.parse_args(argv)
    H = 64
    from edgessm.export import graph as _graph

    # (name, config, MIMO_DENSE_MAX_P_OVER_H): the same LRU in both MIMO update forms, side by side
    models = {
        "lru P=64 dense update (CompreSSM block)": dict(layer="lru", d_state=64, norm="batch", activation="gelu_tanh"),
        "lru P=64 elementwise update (CompreSSM block)": dict(layer="lru", d_state=64, norm="batch",
                                                              activation="gelu_tanh", _dense=0.0),
        "s5 P=64": dict(layer="s5", d_state=64),
        "s4d N=1": dict(layer="s4d", d_state=1),
        "lru P=1024 elementwise update (CompreSSM block)": dict(layer="lru", d_state=1024, norm="batch",
                                                                activation="gelu_tanh"),
        "lru P=1024 dense update (CompreSSM block)": dict(layer="lru", d_state=1024, norm="batch",
                                                          activation="gelu_tanh", _dense=1e9),
        "s4d N=16": dict(layer="s4d", d_state=16),
    }
    out, sessions, feeds = {}, {}, {}
    with tempfile.TemporaryDirectory() as d:
        for name, kw in models.items():
            kw = dict(kw)
            _graph.MIMO_DENSE_MAX_P_OVER_H = kw.pop("_dense", 1.0)
            torch.manual_seed(0)
            cfg = ModelConfig(d_model=H, n_layers=4, **kw)
            model = SSMModel(cfg).eval()
            res = export_onnx(model, Path(d) / f"m{len(out)}.onnx", verify_steps=256, opset=20)
            _graph.MIMO_DENSE_MAX_P_OVER_H = 1.0
            sess = session(res.path.read_bytes())
            feeds[name] = {"x": np.random.default_rng(0).standard_normal((1, cfg.d_input)).astype(np.float32),
                           **{i.name: np.zeros((1, *i.shape[1:]), np.float32) for i in sess.get_inputs()[1:]}}
            sessions[name] = sess
            out[name] = {"state_floats_per_layer": model.state_size()[0], "nodes": res.node_counts["step"]["total"],
                         "ssm_nodes_per_layer": res.node_counts["step"]["ssm"][0],
                         "ort_optimized_nodes": res.ort_optimized_nodes["step"],
                         "parity_rel_y": res.parity["step"]["y"]["rel"]}
        lat = interleaved_latency(sessions, feeds, a.rounds, a.calls, warmup=100)
    base = {"64": lat["s4d N=1"][0], "1024": lat["s4d N=16"][0]}
    rows = []
    for name, v in out.items():
        v["cpu_p50_us"], v["cpu_p99_us"] = lat[name]
        v["ratio_to_s4d"] = v["cpu_p50_us"] / base["1024" if ("1024" in name or "N=16" in name) else "64"]
        rows.append([name, v["state_floats_per_layer"], v["nodes"], v["ssm_nodes_per_layer"], v["ort_optimized_nodes"],
                     f"{v['parity_rel_y']:.1e}", f"{v['cpu_p50_us']:.1f}", f"{v['ratio_to_s4d']:.2f}"])
    print(markdown_table(["model", "state floats / layer", "nodes", "SSM nodes / layer", "after ORT_ENABLE_ALL",
                          "parity y (256 steps)", "CPU p50 us", "/ S4D same state"], rows))
    write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
