"""LRU chunk graph beside its step graph (and a dense Toeplitz chunk form): nodes, bytes, CPU latency per step.

    OMP_NUM_THREADS=1 python bench/mimo_chunk_latency.py [--T 32 --rounds 7 --calls 100 --json out.json]
    OMP_NUM_THREADS=1 python bench/mimo_chunk_latency.py --slow-modes   # accuracy on slow modes instead

One randomly initialised 4-block LRU, H = 64 channels, P = 64 modes (CompreSSM's block: BatchNorm, GELU-tanh,
GLU; seed 0), exported once as the step graph (target cpu, fp32) and the T-step chunk graph, both parity-checked
over 256 steps by export_onnx. Beside them, for the design choice only, a chunk graph whose SSM is the dense
map [x0 | z_0..z_{T-1}] (2P + T H) -> [delta x | y_0..y_{T-1}] as one Gemm (the Toeplitz of H x H blocks
K_l = c Re(C a^l B)): built here from the same constants, checked against the shipped chunk graph.
Each graph is timed at batch 1 on onnxruntime's CPU provider, 1 thread, plain session.run (zero states),
interleaved rounds (export/bench.py), median of the per-round p50s; a chunk call is divided by T for the
per-step figure. Ratios are the robust number on a shared machine.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def _dense_chunk(g, z, X, X_out, blk, T):
    """The dense alternative: one Gemm over [X0 | z_0..z_{T-1}] with a (2P+TH)^2 matrix (float64 -> float32)."""
    from edgessm.export.lowering import cexpm1

    p = blk.ssm
    P, H = p.N, p.D.shape[0]
    logA = p.logA
    Bs = p.B * p.scale[None, :]  # (P H)
    n = 2 * P + T * H
    W = np.zeros((n, n))
    b = np.zeros(n)
    rot = lambda c: np.block([[np.diag(c.real), np.diag(c.imag)], [np.diag(-c.imag), np.diag(c.real)]])  # noqa: E731
    W[:2 * P, :2 * P] = rot(cexpm1(T * logA))  # x0 -> delta
    Bsh = p.B @ p.shift  # (P)
    for j in range(T):
        q = np.exp(logA * (T - 1 - j))[:, None] * Bs  # (P H) z_j -> delta
        W[2 * P + j * H:2 * P + (j + 1) * H, :P], W[2 * P + j * H:2 * P + (j + 1) * H, P:2 * P] = q.real.T, q.imag.T
        b[:P] += (np.exp(logA * (T - 1 - j)) * Bsh).real
        b[P:2 * P] += (np.exp(logA * (T - 1 - j)) * Bsh).imag
    for t in range(T):
        cols = slice(2 * P + t * H, 2 * P + (t + 1) * H)
        w = p.factor * p.C * np.exp(logA * (t + 1))[None, :]  # (H P) x0 -> y_t
        W[:P, cols], W[P:2 * P, cols] = w.real.T, -w.imag.T
        for j in range(t + 1):
            K = p.factor * (p.C * np.exp(logA * (t - j))[None, :]) @ Bs  # (H H) z_j -> y_t
            W[2 * P + j * H:2 * P + (j + 1) * H, cols] = K.real.T + (np.diag(p.D * p.scale) if j == t else 0)
            b[cols] += p.factor * ((p.C * np.exp(logA * (t - j))[None, :]) @ Bsh).real
        b[cols] += p.D * p.shift
    Z = g.op("Reshape", [z, g.ints([-1, T * H])])                               # (B TH)
    out = g.op("Gemm", [g.op("Concat", [X, Z], axis=1), g.const(W, name="W"), g.const(b, name="b")])  # (B 2P+TH)
    d, y = g.op("Split", [out, g.ints([2 * P, T * H])], n_out=2, axis=1)
    g.op("Add", [X, d], out=X_out)
    return g.op("Reshape", [y, g.ints([-1, T, H])])                             # (B T H)


def slow_modes(T: int = 32, chunks: int = 1024) -> dict:
    """One bare LRU layer (H = 8, P = 6, 1 - |a| in 5e-6..1e-5, phases on [0, 2 pi), seed 0) from a random
    non-zero state over chunks * T steps: the chunk graph and the step graph (runtime, onnxruntime engine)
    against MimoSSM.reference_recurrence (complex128); max-abs / max-ref relative errors."""
    import torch

    from edgessm.config import ModelConfig
    from edgessm.export import export_onnx
    from edgessm.model import SSMModel, layer_systems
    from edgessm.runtime import StreamingSession

    cfg = ModelConfig(d_input=8, d_output=8, d_model=8, n_layers=1, layer="lru", d_state=6, lru_r_min=0.99999,
                      lru_r_max=0.999995, encoder="none", decoder="none", mixing="none", activation="identity",
                      norm="none", residual=False, final_norm=False, pooling="none")
    torch.manual_seed(0)
    model = SSMModel(cfg).eval()
    system = layer_systems(model)[0]
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((1, 6)) + 1j * rng.standard_normal((1, 6))  # c(B P)
    xs = rng.standard_normal((1, chunks * T, 8)).astype(np.float32)
    ref_y, ref_x = system.reference_recurrence(xs.astype(np.float64), x0)
    ref_s = np.concatenate([ref_x.real, ref_x.imag], -1)
    out = {"one_minus_abs_a": system.one_minus().tolist(), "steps": chunks * T}
    with tempfile.TemporaryDirectory() as d:
        res = export_onnx(model, Path(d) / "m.onnx", chunk=T, verify=False)
        for name, chunk in ((f"chunk T={T}", res.chunk_path), ("step", None)):
            sess = StreamingSession(res.path, provider="cpu", chunk_path=chunk, engine="onnxruntime")
            sess.set_state({"past_state.0": np.concatenate([x0.real, x0.imag], -1).astype(np.float32)})
            ys = sess.run(xs)
            st = sess.get_state()["past_state.0"]
            out[name] = {"rel_y": float(np.abs(ys - ref_y).max() / np.abs(ref_y).max()),
                         "rel_state": float(np.abs(st - ref_s).max() / np.abs(ref_s).max())}
            print(f"{name}: y rel {out[name]['rel_y']:.2e}, final state rel {out[name]['rel_state']:.2e} "
                  f"over {chunks * T} steps")
    return out


def main(argv=None) -> dict:
    import torch

    from edgessm.config import ModelConfig
    from edgessm.export import export_onnx
    from edgessm.export import graph as _graph
    from edgessm.export.bench import interleaved_latency, markdown_table, write_json
    from edgessm.export.lowering import lower_model
    from edgessm.export.verify import optimized_node_count, session
    from edgessm.model import SSMModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--slow-modes", action="store_true", help="the slow-mode accuracy comparison instead")
    a = ap.parse_args(argv)
    if a.slow_modes:
        res = slow_modes(a.T)
        write_json(a.json, res)
        return res
    T, H = a.T, 64
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=H, n_layers=4, layer="lru", d_state=64, norm="batch", activation="gelu_tanh")
    model = SSMModel(cfg).eval()
    out, sessions, feeds = {}, {}, {}
    with tempfile.TemporaryDirectory() as d:
        res = export_onnx(model, Path(d) / "m.onnx", chunk=T, verify_steps=256)
        blobs = {"step": res.path.read_bytes(), f"chunk T={T} (per-mode MatMul, shipped)": res.chunk_path.read_bytes()}
        mp = lower_model(model)
        keep = _graph._ssm_chunk_mimo
        _graph._ssm_chunk_mimo = _dense_chunk
        try:
            dense = _graph.build_chunk_graph(mp, T).SerializeToString()
        finally:
            _graph._ssm_chunk_mimo = keep
        blobs[f"chunk T={T} (dense Toeplitz Gemm, alternative)"] = dense
        rng = np.random.default_rng(0)
        xs = rng.standard_normal((1, T, cfg.d_input)).astype(np.float32)
        ref = None
        for name, blob in blobs.items():
            sess = session(blob)
            step = name == "step"
            x = xs[:, 0] if step else xs
            feeds[name] = {"x": x, **{i.name: np.zeros((1, *i.shape[1:]), np.float32) for i in sess.get_inputs()[1:]}}
            sessions[name] = sess
            if not step:  # the two chunk forms compute the same map
                y = sess.run(None, feeds[name])[0]
                ref = y if ref is None else ref
                err = float(np.abs(y - ref).max() / np.abs(ref).max())
            import onnx  # noqa: PLC0415

            g = onnx.load_from_string(blob)
            out[name] = {"nodes": len(g.graph.node), "ort_optimized_nodes": optimized_node_count(blob),
                         "bytes": len(blob), "steps_per_call": 1 if step else T,
                         "rel_diff_to_shipped_chunk": None if step else err}
        out["parity"] = res.parity
        lat = interleaved_latency(sessions, feeds, a.rounds, a.calls, warmup=20)
    rows = []
    base = lat["step"][0]
    for name in sessions:
        v = out[name]
        v["cpu_p50_us_per_call"], v["cpu_p99_us_per_call"] = lat[name]
        v["cpu_p50_us_per_step"] = v["cpu_p50_us_per_call"] / v["steps_per_call"]
        v["step_over_this_per_step"] = base / v["cpu_p50_us_per_step"]
        rows.append([name, v["nodes"], v["ort_optimized_nodes"], f"{v['bytes']:,}", f"{v['cpu_p50_us_per_call']:.1f}",
                     f"{v['cpu_p50_us_per_step']:.2f}", f"{v['step_over_this_per_step']:.1f}"])
    print(markdown_table(["graph (4 x H=64 x P=64 LRU, batch 1)", "nodes", "after ORT_ENABLE_ALL", "bytes",
                          "CPU p50 us / call", "us / step", "step graph / this (per step)"], rows))
    print(f"chunk parity (256 steps): y rel {res.parity['chunk']['y']['rel']:.1e}, states rel max "
          f"{max(v['rel'] for k, v in res.parity['chunk'].items() if k.startswith('present')):.1e}")
    write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
