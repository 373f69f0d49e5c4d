"""Test fixture for the runtime: small edgessm-contract ONNX graphs built with onnx.helper, and
their float64 numpy oracle. The other runtime test files import it (``import test_runtime_graphs as fx``:
pytest puts tests/ on sys.path) and build their graphs with ``save_models`` and inputs with ``make_inputs``.

The model (dimensions: B batch, L length, T chunk, H channels, N modes, V vocabulary):

    u = x W_in + b_in                 r(B H)   (or u = E[token] for a token model)
    per layer l (diagonal SSM, complex state as re/im halves of a real (H, 2N) tensor):
      s = A * s + B * u[..., None]    c(B H N) elementwise complex multiply, written with real ops
      v = 2 Re(sum_n C s) + D u       r(B H)   output reads the updated state (docs/architecture.md)
      u = tanh(v) + u                 r(B H)
    optional causal mean pool: state [sum u (H), count (1)], u = sum / count
    y = u W_out + b_out               r(B d_output)

The step graph does one step; the chunk graph unrolls T steps over the same state pairs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPSET = 17


@dataclass
class Params:
    d_input: int
    d_output: int
    H: int
    N: int
    layers: list = field(default_factory=list)  # dicts with A, B, C c(H N) and D r(H)
    W_in: np.ndarray | None = None               # r(d_input H)
    b_in: np.ndarray | None = None               # r(H)
    emb: np.ndarray | None = None                # r(V H), token models
    W_out: np.ndarray | None = None              # r(H d_output)
    b_out: np.ndarray | None = None              # r(d_output)
    pool: bool = False

    @property
    def tokens(self) -> bool:
        return self.emb is not None


def make_params(d_input=3, d_output=2, H=4, N=3, n_layers=2, pool=False, vocab=None, seed=0) -> Params:
    rng = np.random.default_rng(seed)
    p = Params(d_input=d_input, d_output=d_output, H=H, N=N, pool=pool)
    for _ in range(n_layers):
        radius = rng.uniform(0.5, 0.97, (H, N))                              # |A| < 1: stable
        A = radius * np.exp(1j * rng.uniform(0, np.pi, (H, N)))               # c(H N)
        B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))   # c(H N)
        C = (rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))) * 0.3
        D = rng.standard_normal(H)                                            # r(H)
        p.layers.append(dict(A=A, B=B, C=C, D=D))
    if vocab:
        p.emb = rng.standard_normal((vocab, H))
    else:
        p.W_in = rng.standard_normal((d_input, H)) / np.sqrt(d_input)
        p.b_in = 0.1 * rng.standard_normal(H)
    p.W_out = rng.standard_normal((H, d_output)) / np.sqrt(H)
    p.b_out = 0.1 * rng.standard_normal(d_output)
    return p


def make_inputs(p: Params, B: int, L: int, seed: int = 0) -> np.ndarray:
    """(B, L, d_input) float32 N(0, 1) features, or (B, L) int64 tokens uniform over the vocabulary."""
    rng = np.random.default_rng(seed)
    if p.tokens:
        return rng.integers(0, p.emb.shape[0], (B, L))
    return rng.standard_normal((B, L, p.d_input)).astype(np.float32)


def state_shapes(p: Params) -> dict[str, tuple]:
    shapes = {f"past_state.{i}": (p.H, 2 * p.N) for i in range(len(p.layers))}
    if p.pool:
        shapes["past_state.pool"] = (p.H + 1,)
    return shapes


# ------------------------------------------------------------------ float64 oracle
def reference(p: Params, xs: np.ndarray) -> np.ndarray:
    """xs (B, L, d_input) float or (B, L) int tokens -> ys (B, L, d_output) float64, zero initial state."""
    xs = np.asarray(xs)
    u = p.emb[xs] if p.tokens else xs.astype(np.float64) @ p.W_in + p.b_in     # (B L H)
    Bsz, L, H = u.shape
    for lay in p.layers:
        s = np.zeros((Bsz, H, p.N), np.complex128)                               # c(B H N)
        v = np.empty_like(u)
        for t in range(L):
            s = lay["A"] * s + lay["B"] * u[:, t, :, None]                       # c(B H N)
            v[:, t] = 2 * np.einsum("hn,bhn->bh", lay["C"], s).real + lay["D"] * u[:, t]
        u = np.tanh(v) + u
    if p.pool:
        u = np.cumsum(u, axis=1) / np.arange(1, L + 1)[None, :, None]            # causal mean
    return u @ p.W_out + p.b_out                                                 # (B L d_output)


# ------------------------------------------------------------------ ONNX builders
class _G:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.k = [], [], 0

    def name(self, base):
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, arr, dtype=np.float32, base="c"):
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), n))
        return n

    def op(self, op_type, inputs, base=None, outputs=None, **attrs):
        outs = outputs or [self.name(base or op_type.lower())]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if len(outs) == 1 else outs


def _step_body(g: _G, p: Params, x: str, past: dict[str, str], present: dict[str, str] | None) -> tuple[str, dict]:
    """Emit one step: returns (y name, {state input name: new state tensor name})."""
    if p.tokens:
        u = g.op("Gather", [g.const(p.emb), x], axis=0)                            # (B H)
    else:
        u = g.op("Add", [g.op("MatMul", [x, g.const(p.W_in)]), g.const(p.b_in)])    # (B H)
    new = {}
    ax2 = g.const([2], np.int64)
    split = g.const([p.N, p.N], np.int64)
    for i, lay in enumerate(p.layers):
        key = f"past_state.{i}"
        re, im = g.op("Split", [past[key], split], outputs=[g.name("re"), g.name("im")], axis=2)  # (B H N) x2
        uu = g.op("Unsqueeze", [u, ax2])                                            # (B H 1)
        Ar, Ai = g.const(lay["A"].real), g.const(lay["A"].imag)
        nre = g.op("Add", [g.op("Sub", [g.op("Mul", [Ar, re]), g.op("Mul", [Ai, im])]),
                           g.op("Mul", [g.const(lay["B"].real), uu])])
        nim = g.op("Add", [g.op("Add", [g.op("Mul", [Ar, im]), g.op("Mul", [Ai, re])]),
                           g.op("Mul", [g.const(lay["B"].imag), uu])])
        out = present[key] if present else None
        new[key] = g.op("Concat", [nre, nim], outputs=[out] if out else None, axis=2)  # (B H 2N)
        readout = g.op("Sub", [g.op("Mul", [g.const(2 * lay["C"].real), nre]),
                               g.op("Mul", [g.const(2 * lay["C"].imag), nim])])
        v = g.op("Add", [g.op("ReduceSum", [readout, ax2], keepdims=0), g.op("Mul", [g.const(lay["D"]), u])])
        u = g.op("Add", [g.op("Tanh", [v]), u])                                     # (B H)
    if p.pool:
        key = "past_state.pool"
        inc = np.zeros(p.H + 1)
        inc[-1] = 1.0
        padded = g.op("Pad", [u, g.const([0, 0, 0, 1], np.int64)])                 # (B H+1), last = 0
        out = present[key] if present else None
        acc = g.op("Add", [g.op("Add", [past[key], padded]), g.const(inc)],
                   outputs=[out] if out else None)                                  # [sum u, count]
        new[key] = acc
        s = g.op("Slice", [acc, g.const([0], np.int64), g.const([p.H], np.int64), g.const([1], np.int64)])
        c = g.op("Slice", [acc, g.const([p.H], np.int64), g.const([p.H + 1], np.int64), g.const([1], np.int64)])
        u = g.op("Div", [s, c])
    y = g.op("Add", [g.op("MatMul", [u, g.const(p.W_out)]), g.const(p.b_out)])    # (B d_output)
    return y, new


def _metadata(p: Params, kind: str, T: int | None) -> dict[str, str]:
    states = [{"input": k, "output": "present_state." + k.split(".", 1)[1], "shape": list(s), "dtype": "float32",
               "layout": "running [sum u (H), count]" if k.endswith("pool") else "(H, 2N): re | im of N complex modes"}
              for k, s in state_shapes(p).items()]
    meta = {
        "edgessm.format_version": "1",
        "edgessm.graph": kind,
        "edgessm.states": json.dumps(states),
        "edgessm.input": json.dumps({"name": "x", "dtype": "int64" if p.tokens else "float32",
                                     "shape": [] if p.tokens else [p.d_input], "meaning": "test features",
                                     **({"vocab_size": int(p.emb.shape[0])} if p.tokens else {})}),
        "edgessm.output": json.dumps({"name": "y", "shape": [p.d_output], "meaning": "test outputs"}),
        "edgessm.task": "fixture",
        "edgessm.precision": "fp32",
        "edgessm.opset": str(OPSET),
    }
    if T is not None:
        meta["edgessm.chunk"] = str(T)
    return meta


def build_model(p: Params, kind: str = "step", T: int = 4, batch="batch", metadata: bool = True):
    """The onnx.ModelProto of the step graph (kind="step") or the T-step chunk graph (kind="chunk")."""
    g = _G()
    shapes = state_shapes(p)
    x_elem = TensorProto.INT64 if p.tokens else TensorProto.FLOAT
    x_inner = [] if p.tokens else [p.d_input]
    past = {k: k for k in shapes}
    present = {k: "present_state." + k.split(".", 1)[1] for k in shapes}
    if kind == "step":
        x_dims = [batch, *x_inner]
        y, _ = _step_body(g, p, "x", past, present)
        g.op("Identity", [y], outputs=["y"])
        y_dims = [batch, p.d_output]
    else:
        x_dims = [batch, T, *x_inner]
        state = dict(past)
        ys = []
        for t in range(T):
            xt = g.op("Gather", ["x", g.const(t, np.int64)], axis=1)                # (B d_input) or (B,)
            last = t == T - 1
            y, state = _step_body(g, p, xt, state, present if last else None)
            ys.append(g.op("Unsqueeze", [y, g.const([1], np.int64)]))              # (B 1 d_output)
        g.op("Concat", ys, outputs=["y"], axis=1)                                   # (B T d_output)
        y_dims = [batch, T, p.d_output]
    inputs = [helper.make_tensor_value_info("x", x_elem, x_dims)]
    inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, [batch, *s]) for k, s in shapes.items()]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)]
    outputs += [helper.make_tensor_value_info(present[k], TensorProto.FLOAT, [batch, *s]) for k, s in shapes.items()]
    graph = helper.make_graph(g.nodes, f"edgessm_fixture_{kind}", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgessm-tests")
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, _metadata(p, kind, T if kind == "chunk" else None))
    onnx.checker.check_model(model)
    return model


def save_model(model, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def save_models(folder, sizes: dict, T: int = 4) -> dict:
    """{name: make_params kwargs} -> {name: (params, step graph path, T-step chunk graph path)} in folder."""
    out = {}
    for name, kw in sizes.items():
        p = make_params(**kw)
        out[name] = (p, save_model(build_model(p), folder / f"{name}.onnx"),
                     save_model(build_model(p, "chunk", T=T), folder / f"{name}.chunk.onnx"))
    return out


def bad_model(kind: str):
    """Graphs that break the contract in one way each."""
    F = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    if kind == "no_y":
        nodes = [helper.make_node("Identity", ["x"], ["out"])]
        ins, outs = [vi("x", F, ["batch", 3])], [vi("out", F, ["batch", 3])]
    elif kind == "unpaired_state":
        nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["past_state.0"], ["other"])]
        ins = [vi("x", F, ["batch", 3]), vi("past_state.0", F, ["batch", 2])]
        outs = [vi("y", F, ["batch", 3]), vi("other", F, ["batch", 2])]
    elif kind == "dynamic_state":
        nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["past_state.0"], ["present_state.0"])]
        ins = [vi("x", F, ["batch", 3]), vi("past_state.0", F, ["batch", "n"])]
        outs = [vi("y", F, ["batch", 3]), vi("present_state.0", F, ["batch", "n"])]
    else:
        raise ValueError(kind)
    m = helper.make_model(helper.make_graph(nodes, kind, ins, outs), opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


# ------------------------------------------------------------------ the fixture's own checks
def _ort_run_sequence(model, p: Params, xs: np.ndarray) -> np.ndarray:
    """Drive the step graph with plain onnxruntime session.run (no edgessm code)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    B = xs.shape[0]
    state = {k: np.zeros((B, *s), np.float32) for k, s in state_shapes(p).items()}
    names = ["y"] + ["present_state." + k.split(".", 1)[1] for k in state]
    ys = []
    for t in range(xs.shape[1]):
        out = sess.run(names, {"x": xs[:, t], **state})
        ys.append(out[0])
        state = dict(zip(state, out[1:]))
    return np.stack(ys, axis=1)


@pytest.mark.parametrize("kw", [dict(), dict(pool=True), dict(vocab=11)])
def test_fixture_step_graph_matches_float64_oracle(kw):
    p = make_params(**kw)
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 11, (2, 9)) if p.tokens else rng.standard_normal((2, 9, p.d_input)).astype(np.float32)
    got = _ort_run_sequence(build_model(p), p, xs)
    want = reference(p, xs)
    assert got.shape == want.shape == (2, 9, p.d_output)
    # float32 graph vs float64 oracle over 9 steps of a 2-layer net with O(1) values: ~1e-6 relative
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 0.1  # the outputs are not trivially zero


def test_floor_bytes_are_a_valid_onnx_model():
    from edgessm.runtime.latency import floor_model_bytes
    m = onnx.load_from_string(floor_model_bytes((5,)))
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Add"]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 5]
    import onnxruntime as ort
    s = ort.InferenceSession(floor_model_bytes((5,)), providers=["CPUExecutionProvider"])
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], 2 * x)
