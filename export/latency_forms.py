"""Step-graph lowerings side by side on the onnxruntime CPU provider: nodes, p50/p99, ratio to the floor.

    OMP_NUM_THREADS=1 python -m edgessm.export.latency_forms [--d-model 128 --layers 4 --d-state 8]

Builds one randomly initialised model (seed 0; default block: prenorm LayerNorm, S4D delta form,
D skip, GELU, GLU, residual; final LayerNorm, decoder, mean pooling) and writes its step graph in
several lowerings: the exporter's "cpu" and "cuda" forms and the alternatives measured for
docs/latency.md (the earlier Gather swap, a per-channel batched MatMul, onnxruntime's contrib
SkipLayerNormalization). Every form is checked against the float64 oracle and ``model(x)``
(``--steps``, batch 2, ORT_ENABLE_ALL and ORT_DISABLE_ALL) and then timed at batch 1, 1 thread,
plain ``session.run``, interleaved rounds next to the floor (the one-node graph of
``edgessm.runtime.latency.floor_model_bytes`` on the same path): p50 and p99 are medians over the
rounds of each round's percentile. ``--design`` adds rows for lighter block designs (no LayerNorm,
no GLU, no pooling) to show what the architecture, not the lowering, costs.
"""
from __future__ import annotations

import argparse

import numpy as np
from onnx import helper

from edgessm.runtime.contract import OUTPUT_NAME, POOL_STATE, past_state, present_state

from . import graph as G
from .bench import interleaved_latency, write_json
from .lowering import step_elementwise, step_matrices

MS = "com.microsoft"


# ---- alternative SSM lowerings (not exported; kept here so the table can be re-measured) -------------
def _ssm_gather_swap(g, z, X, X_out, blk):
    """The first "cpu" form (12 nodes): swap by Gather along the last axis, delta by two Adds."""
    c = step_elementwise(blk.ssm)
    U = g.op("Unsqueeze", [z, g.ints([2])])
    Xs = g.op("Gather", [X, g.const(c["swap"], np.int64, "swap")], axis=2)
    d = g.op("Add", [g.op("Mul", [X, g.const(c["Ac"], name="A")]), g.op("Mul", [Xs, g.const(c["As"], name="A")])])
    d = g.op("Add", [d, g.op("Mul", [U, g.const(c["Bc"], name="B")])])
    Xn = g.op("Add", [X, d], out=X_out)
    y = g.op("ReduceSum", [g.op("Mul", [Xn, g.const(c["Cc"], name="C")]), g.ints([2])], keepdims=0)
    return g.op("Add", [y, g.op("Mul", [z, g.const(c["D"], name="D")])])


def _ssm_batched_matmul(g, z, X, X_out, blk):
    """(B H 1 2N+1) @ (H 2N+1 2N+1) -> [delta | y] (8 nodes), one batched MatMul over channels."""
    p = blk.ssm
    m = step_matrices(p)
    W = np.concatenate([m["M"], m["R"][:, :, None]], -1)
    X4 = g.op("Unsqueeze", [X, g.ints([2])])
    XU = g.op("Concat", [X4, g.op("Unsqueeze", [z, g.ints([2, 3])])], axis=3)
    d, y = g.op("Split", [g.op("MatMul", [XU, g.const(W, name="W")]), g.ints([2 * p.N, 1])], n_out=2, axis=3)
    g.op("Squeeze", [g.op("Add", [X4, d]), g.ints([2])], out=X_out)
    return g.op("Reshape", [y, g.ints([0, p.H])])


def build_form(mp, ssm="cpu", split_glu=True, skipln=False):
    """A step graph of ``mp`` with the chosen SSM lowering; skipln: residual Add + next LayerNorm as one
    com.microsoft SkipLayerNormalization (onnxruntime only)."""
    ssmf = {"cpu": G._ssm_step_elementwise, "cuda": G._ssm_step_matrix, "gather": _ssm_gather_swap,
            "bmm": _ssm_batched_matmul}[ssm]
    if not skipln:
        g = G._Builder(False, G.MIN_OPSET)
        h = G._blocks(g, mp, G._encode(g, mp, rank2=True), ssmf, rank2=True, split_glu=split_glu)
        g.section = "head"
        y = G._decode(g, mp, h, rank2=True)
    else:
        assert all(b.prenorm and b.norm is not None for b in mp.blocks) and mp.norm_f is not None
        g = G._Builder(False, G.MIN_OPSET)
        h = G._encode(g, mp, rank2=True)
        pending = None

        def norm(h, z, p):
            if z is None:
                return g.layernorm(h, p), h
            o = g.op("SkipLayerNormalization", [z, h, g.w(p.gamma), g.w(p.beta)], n_out=4, domain=MS, epsilon=p.eps)
            return o[0], o[3]
        for i, blk in enumerate(mp.blocks):
            g.section = f"block.{i}"
            u, h = norm(h, pending, blk.norm)
            g.section = f"block.{i}/ssm"
            y = ssmf(g, u, past_state(i), present_state(i), blk)
            g.section = f"block.{i}"
            a = g.activation(y, blk.activation)
            pending = g.glu_two_gemms(a, blk, mp.H) if split_glu else g.mixing(a, blk, True, mp.H)
        g.section = "head"
        v, _ = norm(h, pending, mp.norm_f)
        y = g.linear(v, mp.decoder, True, out=None if mp.pooling == "mean" else OUTPUT_NAME)
    if mp.pooling == "mean":
        g.section = "pool"
        O = mp.d_output
        m, c = g.op("Split", [past_state(POOL_STATE), g.ints([O, 1])], n_out=2, axis=1)
        c1 = g.op("Add", [c, g.const(1.0)])
        y = g.op("Add", [m, g.op("Div", [g.op("Sub", [y, m]), c1])], out=OUTPUT_NAME)
        g.op("Concat", [y, c1], out=present_state(POOL_STATE), axis=1)
    inputs, outputs = G._io(mp, ["batch"])
    model = G._finish(g, f"form_{ssm}", inputs, outputs, G.MIN_OPSET)
    if skipln:
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return model


def main(argv=None) -> dict:
    import torch

    from edgessm.config import ModelConfig
    from edgessm.model import SSMModel
    from edgessm.runtime.latency import floor_model_bytes

    from . import verify as V
    from .lowering import lower_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-state", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4096, help="parity steps (0: skip)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--design", action="store_true", help="add rows for lighter block designs")
    ap.add_argument("--json", type=str, default=None)
    a = ap.parse_args(argv)

    base = dict(d_model=a.d_model, n_layers=a.layers, d_state=a.d_state)
    models = {"default": ModelConfig(**base)}
    forms = {  # name -> (model, build_form kwargs)
        "cpu (Gather swap, Split GLU; before)": ("default", dict(ssm="gather", split_glu=False)),
        "cpu, swap as MatMul": ("default", dict(ssm="cpu", split_glu=False)),
        "cpu, swap as MatMul + GLU as 2 Gemms (= target cpu)": ("default", dict(ssm="cpu")),
        "  + SkipLayerNormalization (contrib)": ("default", dict(ssm="cpu", skipln=True)),
        "batched per-channel MatMul SSM": ("default", dict(ssm="bmm")),
        "cuda form (Einsum SSM)": ("default", dict(ssm="cuda", split_glu=False)),
    }
    if a.design:
        models["no LayerNorm"] = ModelConfig(**base, norm="none")
        models["no LN, Linear mixing, no pool"] = ModelConfig(**base, norm="none", mixing="linear", pooling="last")
        models["no LN, no mixing, no pool"] = ModelConfig(**base, norm="none", mixing="none", pooling="last")
        for k in list(models)[1:]:
            forms[f"design: {k} (target cpu)"] = (k, dict(ssm="cpu"))
    built, refs = {}, {}
    for k, cfg in models.items():
        torch.manual_seed(0)
        model = SSMModel(cfg).eval()
        built[k] = (model, lower_model(model))
        if a.steps:
            xs = V.make_input(cfg, batch=2, steps=a.steps, seed=0)
            refs[k] = (xs, V.reference(model, xs))
    out, sessions, feeds = {}, {}, {}
    for name, (mk, kw) in forms.items():
        g = build_form(built[mk][1], **kw)
        blob = g.SerializeToString()
        row = {"nodes": len(g.graph.node), "ort_nodes": V.optimized_node_count(blob)}
        if a.steps:
            xs, ref = refs[mk]
            errs = []
            for opt in (True, False):
                y, st = V.run_graphs(blob, xs, optimize=opt)
                got = {"y": y, **st}
                errs.append(max(v["rel"] for v in V.parity(got, ref).values()))
            row["max_rel_err"] = max(errs)
        out[name] = row
        s = V.session(blob)
        sessions[name] = s
        feeds[name] = {i.name: np.zeros((1, *i.shape[1:]), np.float32) for i in s.get_inputs()}
        feeds[name]["x"] = np.random.default_rng(0).standard_normal((1, built[mk][0].config.d_input)).astype(np.float32)
    sessions["floor (1 node)"] = V.session(floor_model_bytes((built["default"][0].config.d_input,)))
    feeds["floor (1 node)"] = {"x": np.ones((1, built["default"][0].config.d_input), np.float32)}
    out["floor (1 node)"] = {"nodes": 1, "ort_nodes": 1}
    lat = interleaved_latency(sessions, feeds, a.rounds, a.calls)
    fl = lat["floor (1 node)"][0]
    print(f"{a.layers} layers x H={a.d_model} x N={a.d_state}; batch 1, 1 thread, CPU provider, session.run; "
          f"p50/p99 = median over {a.rounds} interleaved rounds of {a.calls} calls"
          + (f"; max rel err over {a.steps} steps (batch 2, both optimisation levels)" if a.steps else ""))
    print("| graph | nodes | after ORT_ENABLE_ALL | p50 us | p99 us | p50 / floor | max rel err |")
    print("|---|---|---|---|---|---|---|")
    for name, row in out.items():
        row["p50_us"], row["p99_us"] = lat[name]
        row["ratio"] = row["p50_us"] / fl
        err = f"{row['max_rel_err']:.2e}" if "max_rel_err" in row else "-"
        print(f"| {name} | {row['nodes']} | {row['ort_nodes']} | {row['p50_us']:.1f} | {row['p99_us']:.1f} | "
              f"{row['ratio']:.1f}x | {err} |")
    write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
