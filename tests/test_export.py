"""ONNX export: step/chunk graphs reproduce model(x) at every step; contract, metadata, errors.

Parity is measured as max |graph - reference| / max |reference| over all steps (norm-wise relative).
Bars, with the reason next to each:
- FP32 = 1e-4: float32 rounding of a small network over 4,096 steps is ~1e-6 relative with the
  delta-form state (the layer-level 16k-step bar of tests/test_parity.py is the same 1e-4).
- FP16 = 1e-2: weights/activations rounded to 11 bits (~5e-4) through two blocks; the recurrence is float32.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch

from edgessm.config import ModelConfig
from edgessm.errors import ExportError
from edgessm.model import SSMModel, diagonal_systems, with_diagonal_systems
from edgessm.ssm import DiagonalSSM

ort = pytest.importorskip("onnxruntime")
from edgessm.export import export_onnx, read_metadata  # noqa: E402
from edgessm.export import graph as export_graph  # noqa: E402
from edgessm.export.verify import make_input  # noqa: E402

FP32 = 1e-4
FP16 = 1e-2

SMALL = dict(d_model=8, n_layers=2, d_state=4, d_input=3, d_output=5)


def _model(seed=0, **kw) -> SSMModel:
    torch.manual_seed(seed)
    return SSMModel(ModelConfig(**{**SMALL, **kw})).eval()


def _inputs(cfg, batch, steps, seed=1):
    """Random N(0, 1) features or uniform tokens (the exporter's own parity input)."""
    return make_input(cfg, batch, steps, seed)


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _zeros(sess, batch):
    return {a.name: np.zeros((batch, *a.shape[1:]), np.float32) for a in sess.get_inputs() if a.name != "x"}


def _run(sess, xs, T=None, state=None):
    """Drive a step graph (T=None) or a chunk graph with plain session.run; returns (ys, final state)."""
    names = [o.name for o in sess.get_outputs()]
    st = state if state is not None else _zeros(sess, xs.shape[0])
    ys, step = [], T or 1
    for t in range(0, xs.shape[1], step):
        out = sess.run(names, {"x": xs[:, t] if T is None else xs[:, t:t + T], **st})
        ys.append(out[0] if T else out[0][:, None])
        st = {n.replace("present_", "past_"): v for n, v in zip(names[1:], out[1:])}
    return np.concatenate(ys, 1), st


def _rel(got, ref):
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref)))


def _torch_ref(model, xs):
    with torch.no_grad():
        return model(torch.from_numpy(xs)).double().numpy()


# ---------------------------------------------------------------------------------------- parity
def test_step_graph_4096_steps_fp32_matches_model_and_oracle(tmp_path):
    model = _model(dt_min=1e-3, dt_max=1e-1)  # slow modes (dt = 1e-3): memory ~1e3 steps
    res = export_onnx(model, tmp_path / "m.onnx", verify_steps=64)
    xs = _inputs(model.config, 2, 4096)
    ys, st = _run(_session(res.path), xs)
    assert _rel(ys, _torch_ref(model, xs)) <= FP32
    # final layer-0 state against the complex128 oracle fed with the float64 model's layer inputs
    m64 = model.double()
    seen = []
    h = m64.blocks[0].ssm.register_forward_hook(lambda mod, a, o: seen.append(a[0].numpy()))
    with torch.no_grad():
        m64(torch.from_numpy(xs).double())
    h.remove()
    _, x = m64.blocks[0].ssm.to_diagonal().reference_recurrence(seen[0])  # c(B H N)
    assert _rel(st["past_state.0"], np.concatenate([x.real, x.imag], -1)) <= FP32
    np.testing.assert_array_equal(st["past_state.pool"][:, -1], 4096.0)  # step counter of the mean pool


def test_export_reports_parity_and_ort_optimisation_does_not_change_results(tmp_path):
    res = export_onnx(_model(), tmp_path / "m.onnx", verify_steps=200, chunk=8)
    for kind in ("step", "chunk"):
        par = res.parity[kind]
        assert {"y", "y@float64", "present_state.0", "present_state.1", "present_state.pool"} <= set(par)
        assert all(v["rel"] <= FP32 for k, v in par.items())
        # ORT_ENABLE_ALL fuses (Gelu, Gemm...) and may reorder float32 sums: rounding-level only
        assert par["ort_enable_all_vs_disable_all"]["rel"] <= 1e-6
    assert res.tolerance == FP32 and res.verify_steps == 200


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_fp16_graph_within_1e2_and_float32_boundary(tmp_path, target):
    model = _model()
    res = export_onnx(model, tmp_path / "m.onnx", fp16=True, target=target, verify_steps=64)
    sess = _session(res.path)
    assert all(a.type == "tensor(float)" for a in [*sess.get_inputs(), *sess.get_outputs()])
    m = onnx.load(res.path)
    dtypes = {i.name.split("/")[0]: i.data_type for i in m.graph.initializer if i.data_type in (1, 10)}
    assert dtypes["encoder"] == onnx.TensorProto.FLOAT16  # weights in half precision
    ssm_inits = [i for i in m.graph.initializer if "/ssm/" in i.name and i.data_type != onnx.TensorProto.INT64]
    assert ssm_inits and all(i.data_type == onnx.TensorProto.FLOAT for i in ssm_inits)  # recurrence in float32
    xs = _inputs(model.config, 2, 512)
    ys, _ = _run(sess, xs)
    err = _rel(ys, _torch_ref(model, xs))
    assert err <= FP16
    assert err > 1e-6  # it really is half precision inside
    assert read_metadata(res.path)["edgessm.precision"] == "fp16"


@pytest.mark.parametrize("T", [1, 16])
def test_chunk_graph_matches_step_graph_and_hands_state_over(tmp_path, T):
    model = _model()
    res = export_onnx(model, tmp_path / "m.onnx", chunk=T, verify_steps=64)
    assert res.chunk_path == tmp_path / f"m.chunk{T}.onnx" and res.chunk_path.is_file()
    xs = _inputs(model.config, 3, 96)
    ref = _torch_ref(model, xs)
    step, chunk = _session(res.path), _session(res.chunk_path)
    y_step, st_step = _run(step, xs)
    y_chunk, st_chunk = _run(chunk, xs, T)
    assert _rel(y_chunk, ref) <= FP32
    assert _rel(y_chunk, y_step) <= FP32
    for k in st_step:
        assert _rel(st_chunk[k], st_step[k]) <= FP32
    # same state contract: chunks for the first 64 steps, then the step graph carries on
    y_a, st = _run(chunk, xs[:, :64], T)
    y_b, _ = _run(step, xs[:, 64:], state=st)
    assert _rel(np.concatenate([y_a, y_b], 1), ref) <= FP32
    meta = read_metadata(res.chunk_path)
    assert meta["edgessm.graph"] == "chunk" and meta["edgessm.chunk"] == T


@pytest.mark.parametrize("batch", [1, 64])
def test_dynamic_batch(tmp_path, batch):
    model = _model()
    res = export_onnx(model, tmp_path / "m.onnx", target="cuda", verify_steps=32)
    sess = _session(res.path)
    assert sess.get_inputs()[0].shape[0] == "batch"
    xs = _inputs(model.config, batch, 40)
    ys, _ = _run(sess, xs)
    assert ys.shape == (batch, 40, 5)
    assert _rel(ys, _torch_ref(model, xs)) <= FP32


CONFIGS = [
    dict(layer="s4d", init="s4d-lin"),
    dict(layer="s4d", init="s4d-inv", pooling="last", mixing="linear"),
    dict(layer="s4d", init="random", pooling="none", mixing="none", activation="tanh", task_type="regression"),
    dict(layer="dss", init="skew-hippo"),
    dict(layer="dss", init="s4d-lin", prenorm=False, activation="relu"),
    dict(layer="s4d", init="skew-hippo", vocab_size=17, d_input=1),
    dict(layer="dss", init="random", vocab_size=9, d_input=1, pooling="last", prenorm=False, mixing="none"),
    dict(norm="none", activation="identity"),
    dict(norm="none", prenorm=False, mixing="linear"),
]


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_every_layer_init_pooling_mixing_and_tokens(tmp_path, cfg, target):
    model = _model(**cfg)
    res = export_onnx(model, tmp_path / "m.onnx", target=target, chunk=4, verify_steps=48)
    xs = _inputs(model.config, 2, 48)
    ref = _torch_ref(model, xs)
    assert _rel(_run(_session(res.path), xs)[0], ref) <= FP32
    assert _rel(_run(_session(res.chunk_path), xs, 4)[0], ref) <= FP32
    x_in = _session(res.path).get_inputs()[0]
    assert x_in.type == ("tensor(int64)" if model.config.vocab_size else "tensor(float)")


def test_per_layer_state_sizes_from_reduced_systems(tmp_path):
    model = _model(d_state=6, n_layers=3)
    small = [DiagonalSSM(s.A[:, :k], s.B[:, :k], s.C[:, :k], s.D) for s, k in zip(diagonal_systems(model), (2, 5, 1))]
    reduced = with_diagonal_systems(model, small).eval()
    assert reduced.config.layer_d_state == [2, 5, 1]
    res = export_onnx(reduced, tmp_path / "r.onnx", chunk=8, verify_steps=64)
    meta = read_metadata(res.path)
    assert [s["shape"] for s in meta["edgessm.states"][:3]] == [[8, 4], [8, 10], [8, 2]]
    assert meta["edgessm.ranks"] == [2, 5, 1]
    xs = _inputs(reduced.config, 2, 128)
    assert _rel(_run(_session(res.path), xs)[0], _torch_ref(reduced, xs)) <= FP32


def test_gelu_op_at_opset_20(tmp_path):
    model = _model()
    r17 = export_onnx(model, tmp_path / "a.onnx", opset=17, verify_steps=32)
    r20 = export_onnx(model, tmp_path / "b.onnx", opset=20, verify_steps=32)
    ops20 = [n.op_type for n in onnx.load(r20.path).graph.node]
    assert "Gelu" in ops20 and "Erf" not in ops20
    assert r20.node_counts["step"]["total"] == r17.node_counts["step"]["total"] - 2 * 4  # 5 erf-pattern nodes -> 1
    assert r20.parity["step"]["y"]["rel"] <= FP32


def test_cpu_step_lowering_swap_matmul_and_split_glu(tmp_path):
    """The cpu form: the [Im | Re] swap is a MatMul by an exact 0/1 permutation (no Gather, which is
    ~15x slower on the CPU provider), delta = Sum(3 products), GLU as two Gemms that onnxruntime turns
    into Gemm + FusedGemm(Sigmoid); the state it hands out is the cuda form's, bit for bit close."""
    model = _model(d_model=16, d_state=8)
    res = export_onnx(model, tmp_path / "m.onnx", verify_steps=64)
    m = onnx.load(res.path)
    ops = [n.op_type for n in m.graph.node]
    assert "Gather" not in ops and "Split" not in [n.op_type for n in m.graph.node if n.name.startswith("block")]
    ssm_ops = sorted(n.op_type for n in m.graph.node if n.name.startswith("block.0/ssm/"))
    assert ssm_ops == sorted(["Unsqueeze", "MatMul", "Mul", "Mul", "Mul", "Sum", "Add", "Mul", "ReduceSum", "Mul",
                              "Add"])
    swap = [i for i in m.graph.initializer if "/swap_" in i.name]
    assert len(swap) == 2  # one per layer
    P = onnx.numpy_helper.to_array(swap[0])
    assert np.array_equal(P, onnx.numpy_helper.to_array(swap[1]))
    assert set(np.unique(P)) == {0.0, 1.0} and np.all(P.sum(0) == 1) and np.all(P.sum(1) == 1)
    X = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    assert np.array_equal(X @ P, np.concatenate([X[..., 8:], X[..., :8]], -1))
    # onnxruntime fuses Erf-GELU (5 -> 1) and Gemm + Sigmoid (2 -> 1) per block
    assert res.ort_optimized_nodes["step"] == res.node_counts["step"]["total"] - 2 * (4 + 1)
    # the cpu and cuda step graphs advance the same state
    cuda = export_onnx(model, tmp_path / "c.onnx", target="cuda", verify_steps=64)
    xs = _inputs(model.config, 2, 256)
    y1, s1 = _run(_session(res.path), xs)
    y2, s2 = _run(_session(cuda.path), xs)
    assert np.max(np.abs(y1 - y2)) <= 1e-5 * np.max(np.abs(y2))
    for k in s1:
        assert np.max(np.abs(s1[k] - s2[k])) <= 1e-5 * np.max(np.abs(s2[k])), k


# ---------------------------------------------------------------------------------------- contract
def test_metadata_checker_and_node_counts(tmp_path):
    model = _model()
    model.provenance = {"task": "mnist1d", "reduction": {"hinf_bound": 0.01, "ranks": [4, 4]}}
    res = export_onnx(model, tmp_path / "m.onnx", chunk=8, verify_steps=32, source_sha256="ab" * 32)
    for path in (res.path, res.chunk_path):
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        assert m.opset_import[0].version == 17
        raw = {p.key: p.value for p in m.metadata_props}
        assert all(isinstance(v, str) for v in raw.values())
    meta = read_metadata(res.path)
    for key in ("format_version", "graph", "states", "input", "output", "task", "precision", "target", "ranks",
                "real_state_numbers", "error_bounds", "source_sha256", "config", "opset", "node_counts"):
        assert f"edgessm.{key}" in meta, key
    assert meta["edgessm.format_version"] == 1 and meta["edgessm.graph"] == "step"
    assert meta["edgessm.input"] == {"name": "x", "dtype": "float32", "shape": [3],
                                     "meaning": meta["edgessm.input"]["meaning"]}
    assert meta["edgessm.output"]["shape"] == [5] and "running mean" in meta["edgessm.output"]["meaning"]
    assert meta["edgessm.task"] == "mnist1d" and meta["edgessm.error_bounds"]["hinf_bound"] == 0.01
    assert meta["edgessm.source_sha256"] == "ab" * 32
    assert ModelConfig.from_dict(meta["edgessm.config"]) == model.config
    # S4D-Lin's first mode is real (Im Lambda = 0): 1 real number, the other 3 modes 2 each, per channel
    assert meta["edgessm.real_state_numbers"] == [int(s.real_state_dims().sum()) for s in diagonal_systems(model)]
    assert meta["edgessm.real_state_numbers"] == [8 * (1 + 2 * 3)] * 2
    states = meta["edgessm.states"]
    assert [s["input"] for s in states] == ["past_state.0", "past_state.1", "past_state.pool"]
    assert states[-1]["shape"] == [6] and all(s["dtype"] == "float32" and s["layout"] for s in states)
    # node counts: sections add up to the total, the SSM forms have the documented sizes
    for kind, c in res.node_counts.items():
        assert c["encoder"] + sum(c["blocks"]) + c["head"] + c["pool"] == c["total"]
        assert c["total"] == len(onnx.load(res.path if kind == "step" else res.chunk_path).graph.node)
    assert res.node_counts["step"]["ssm"] == [11, 11]
    assert meta["edgessm.node_counts"] == res.node_counts["step"]
    cuda = export_onnx(model, tmp_path / "c.onnx", target="cuda", verify_steps=32)
    assert cuda.node_counts["step"]["ssm"] == [5, 5]
    assert cuda.node_counts["step"]["total"] == res.node_counts["step"]["total"] - 2 * 6
    assert res.file_sizes["step"] == os.path.getsize(res.path)


def test_tokens_metadata_and_runtime_reads_the_contract(tmp_path):
    from edgessm.runtime import StreamingSession

    model = _model(vocab_size=11, d_input=1)
    res = export_onnx(model, tmp_path / "t.onnx", chunk=4, verify_steps=32)
    meta = read_metadata(res.path)
    assert meta["edgessm.input"]["dtype"] == "int64" and meta["edgessm.input"]["shape"] == []
    assert meta["edgessm.input"]["vocab_size"] == 11
    sess = StreamingSession(res.path, provider="cpu", batch=2, chunk_path=res.chunk_path)
    xs = _inputs(model.config, 2, 10)
    assert _rel(sess.run(xs), _torch_ref(model, xs)) <= FP32  # 2 chunks + 2 steps through the runtime


def test_export_from_checkpoint_path_hashes_it(tmp_path):
    import edgessm
    from edgessm.checkpoint import file_sha256

    ckpt = edgessm.save(_model(), tmp_path / "m.safetensors", provenance={"task": {"name": "mnist1d",
                                                                                   "classes": list("abcde")}})
    res = export_onnx(ckpt, tmp_path / "m.onnx", verify_steps=16)
    meta = read_metadata(res.path)
    assert meta["edgessm.source_sha256"] == file_sha256(ckpt)
    assert meta["edgessm.output"]["classes"] == list("abcde") and meta["edgessm.task"] == "mnist1d"


# ---------------------------------------------------------------------------------------- errors
def _no_onnx_files(folder):
    return [p for p in os.listdir(folder) if ".onnx" in p]


def test_unwritable_output_path_raises_and_leaves_nothing(tmp_path):
    model = _model()
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(model, tmp_path / "missing" / "m.onnx", verify_steps=8)
    with pytest.raises(ExportError, match="is a folder"):
        export_onnx(model, tmp_path, verify_steps=8)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root can write anywhere: then only the two cases above apply
            with pytest.raises(ExportError, match="not writable"):
                export_onnx(model, ro / "m.onnx", verify_steps=8)
            assert _no_onnx_files(ro) == []
    finally:
        ro.chmod(0o700)
    assert _no_onnx_files(tmp_path) == []


def test_failing_parity_raises_and_leaves_no_file(tmp_path, monkeypatch):
    real = export_graph.step_elementwise

    def perturbed(p):  # a wrong readout weight, as an exporter bug would produce
        c = real(p)
        c["Cc"] = c["Cc"] * 1.01
        return c

    monkeypatch.setattr(export_graph, "step_elementwise", perturbed)
    with pytest.raises(ExportError, match=r"parity check failed .* y: max abs [0-9.e-]+, rel [0-9.e-]+") as e:
        export_onnx(_model(), tmp_path / "m.onnx", chunk=4, verify_steps=32)
    assert "\n" not in str(e.value)
    assert _no_onnx_files(tmp_path) == []
    # verify=False skips the check (and writes the file)
    export_onnx(_model(), tmp_path / "m.onnx", verify=False)
    assert (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize("kw, match", [
    (dict(target="gpu"), "target 'gpu' is not one of cpu, cuda, tensorrt"),
    (dict(opset=13), "opset 13"),
    (dict(chunk=0), "chunk=0"),
    (dict(verify_steps=0), "verify_steps=0"),
])
def test_bad_options(tmp_path, kw, match):
    with pytest.raises(ExportError, match=match):
        export_onnx(_model(), tmp_path / "m.onnx", **kw)
    assert _no_onnx_files(tmp_path) == []


def test_unsupported_model_and_bad_metadata_file(tmp_path):
    with pytest.raises(ExportError, match="not an edgessm SSMModel"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    model = _model(activation="gelu")
    model.blocks[0].activation = torch.nn.GELU(approximate="tanh")
    with pytest.raises(ExportError, match="approximate='tanh'"):
        export_onnx(model, tmp_path / "m.onnx")
    model.blocks[0].activation = torch.nn.ReLU()
    with pytest.raises(ExportError, match="ReLU.*does not match config.activation='gelu'"):
        export_onnx(model, tmp_path / "m.onnx")
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError):
        read_metadata(tmp_path / "x.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_larger_model_4096_steps(tmp_path, target):
    model = _model(d_model=64, n_layers=4, d_state=32, d_input=1, d_output=10)
    res = export_onnx(model, tmp_path / "m.onnx", target=target, chunk=64, verify_steps=4096)
    assert res.parity["step"]["y"]["rel"] <= FP32 and res.parity["chunk"]["y"]["rel"] <= FP32
