"""The fused C step engine (runtime/fused.py) against onnxruntime's step graph and the float64 oracle.

Bars, with the reason next to each (relative = max |a - b| / max |b| over all steps and streams):
- FUSED_VS_ORT = 1e-5 (fp32): both engines compute the same float32 graph; they differ only in the
  order of sums and in erf/exp implementations (~1e-7 each), which the stable recurrence does not grow.
- FUSED_VS_F64 = 1e-5 (fp32): the issue's bar; float32 rounding of the delta-form state over these
  lengths measures ~1e-6 (onnxruntime's own graph is within the same distance).
- The 1e5-step MIMO runs (LRU with |lambda| up to 0.999) keep the same 1e-5 bars: measured 1.7e-6 (y) and
  5.8e-6 (state) relative against float64, the float32 limit of a slow mode's delta-form state.
- FP16_VS_ORT = 2e-2: the same float16 weights, but onnxruntime rounds some node outputs to float16
  (11 bits, ~5e-4 a rounding) where the fused engine keeps float32 activations (export's fp16 bar).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgessm.config import ModelConfig
from edgessm.model import SSMModel

ort = pytest.importorskip("onnxruntime")
from edgessm.export import export_onnx  # noqa: E402
from edgessm.export.verify import reference  # noqa: E402
from edgessm.runtime import StreamingSession  # noqa: E402
from edgessm.runtime.errors import RuntimeInputError, RuntimeProviderError  # noqa: E402
from edgessm.runtime.fused import FusedEngine, FusedUnavailable, load_library, plan_from_onnx  # noqa: E402
from edgessm.runtime.onnx_reader import read_onnx  # noqa: E402
from edgessm.export.verify import make_input  # noqa: E402

import test_runtime_graphs as fx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FUSED_VS_ORT = 1e-5
FUSED_VS_F64 = 1e-5
FP16_VS_ORT = 2e-2

SMALL = dict(d_model=8, n_layers=2, d_state=4, d_input=3, d_output=5)

# every choice edgessm exports, each at least once (config, export options)
CASES = {
    "s4d-default": ({}, {}),
    "dss-postnorm-linear-relu-last": (dict(layer="dss", prenorm=False, mixing="linear", activation="relu",
                                           pooling="last"), {}),
    "no-norm-no-mixing-tanh-none": (dict(norm="none", mixing="none", activation="tanh", pooling="none"), {}),
    "tokens-identity": (dict(vocab_size=13, activation="identity"), {}),
    "per-layer-ranks-odd-H": (dict(d_model=20, n_layers=3, layer_d_state=[1, 3, 9]), {}),
    "cuda-target-matrix-form": (dict(prenorm=False), dict(target="cuda")),
    "opset20-gelu-op": ({}, dict(opset=20)),
    # LRU / S5 (MIMO blocks): the Gemm update form (P <= H) and the elementwise one (P > H), the folded
    # BatchNorm, the tanh GELU in both its node pattern and the opset-20 Gelu op
    "lru-batchnorm-gelu-tanh-gemm-form": (dict(layer="lru", norm="batch", activation="gelu_tanh"), {}),
    "lru-diag-form-P-over-H": (dict(layer="lru", norm="batch", activation="gelu_tanh", d_state=12), {}),
    "s5-postnorm-linear-mixing": (dict(layer="s5", prenorm=False, mixing="linear"), {}),
    "s5-diag-form-opset20-gelu-tanh": (dict(layer="s5", d_state=10, activation="gelu_tanh"), dict(opset=20)),
    "s5-tokens-no-mixing-cuda-target": (dict(layer="s5", vocab_size=11, mixing="none", activation="relu"),
                                        dict(target="cuda")),
    # imported single layers and s4's example.py models: no encoder / decoder / residual / final norm
    "bare-s4d-block": (dict(encoder="none", decoder="none", residual=False, d_input=8, d_output=8,
                            pooling="none"), {}),
    "bare-lru-no-residual": (dict(layer="lru", norm="batch", activation="gelu_tanh", encoder="none", d_input=8,
                                  residual=False, pooling="last"), {}),
    "no-final-norm-decoder-none": (dict(final_norm=False, decoder="none", d_output=8), {}),
}
FP16_CASES = {
    "fp16-cpu": ({}, dict(fp16=True)),
    "fp16-tensorrt-tokens": (dict(vocab_size=7, mixing="linear"), dict(fp16=True, target="tensorrt", opset=20)),
    "fp16-lru-diag-form": (dict(layer="lru", norm="batch", activation="gelu_tanh", d_state=12), dict(fp16=True)),
    "fp16-s5-bare": (dict(layer="s5", encoder="none", decoder="none", residual=False, d_input=8, d_output=8),
                     dict(fp16=True)),
}


def _model(seed=0, **kw) -> SSMModel:
    torch.manual_seed(seed)
    m = SSMModel(ModelConfig(**{**SMALL, **kw}))
    if m.config.norm == "batch":  # BatchNorm running statistics away from (0, 1), so the exporter's fold matters
        with torch.no_grad():
            m.train()
            for _ in range(3):
                x = (torch.randint(0, m.config.vocab_size, (8, 30)) if m.config.vocab_size
                     else 2.0 * torch.randn(8, 30, m.config.d_input) + 1.0)
                m(x)
    return m.eval()


def _inputs(cfg, batch, steps, seed=1):
    """Random N(0, 1) features or uniform tokens (the exporter's own parity input)."""
    return make_input(cfg, batch, steps, seed)


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def _export(tmp_path, name, cfg_kw, opts, seed=0):
    m = _model(seed, **cfg_kw)
    path = tmp_path / f"{name}.onnx"
    export_onnx(m, path, verify=False, **opts)
    return m, path


def _pair(path, batch, **kw):
    f = StreamingSession(path, provider="cpu", batch=batch, engine="fused", **kw)
    o = StreamingSession(path, provider="cpu", batch=batch, engine="onnxruntime", **kw)
    assert f.engine == "fused" and o.engine == "onnxruntime"
    return f, o


def _case(tmp_path, name, cases, batch, steps):
    """Export case ``name`` of ``cases``: (model, inputs (batch, steps), fused session, onnxruntime session)."""
    cfg_kw, opts = cases[name]
    m, path = _export(tmp_path, name, cfg_kw, opts)
    f, o = _pair(path, batch)
    return m, _inputs(m.config, batch, steps), f, o


@pytest.mark.parametrize("name", list(CASES))
def test_matches_onnxruntime_and_float64_oracle(tmp_path, name):
    m, xs, f, o = _case(tmp_path, name, CASES, 3, 400)
    yf = f.run(xs[:, :150])                                  # one C call for 150 steps ...
    yf = np.concatenate([yf, np.stack([f.step(xs[:, t]) for t in range(150, 400)], 1)], 1)  # ... then steps
    yo = o.run(xs)
    ref = reference(m, xs)
    assert _rel(yf, yo) < FUSED_VS_ORT
    assert _rel(yf, ref["y@float64"]) < FUSED_VS_F64
    sf, so_ = f.get_state(), o.get_state()
    assert set(sf) == set(so_)
    for k in sf:
        assert sf[k].dtype == np.float32 and sf[k].shape == so_[k].shape
        assert _rel(sf[k], so_[k]) < FUSED_VS_ORT, k
        if k in ref:                                         # the float64 oracle's final state
            assert _rel(sf[k], ref[k]) < FUSED_VS_F64, k


def test_reduced_systems_with_real_and_padded_modes(tmp_path):
    """What balanced truncation hands the exporter: per-layer N, real eigenvalues, and padded modes
    (B = C = 0) in channels that need fewer modes than their layer keeps."""
    from edgessm.model import diagonal_systems, with_diagonal_systems
    from edgessm.ssm import DiagonalSSM

    model = _model(d_state=6, n_layers=2)
    small = []
    for s, k in zip(diagonal_systems(model), (3, 5)):
        A, B, C = s.A[:, :k].copy(), s.B[:, :k].copy(), s.C[:, :k].copy()
        A[:, 0] = np.abs(A[:, 0])                            # a real mode in every channel
        A[::2, -1], B[::2, -1], C[::2, -1] = 0.5, 0.0, 0.0   # a padded mode in every other channel
        small.append(DiagonalSSM(A, B, C, s.D))
    reduced = with_diagonal_systems(model, small).eval()
    path = tmp_path / "r.onnx"
    export_onnx(reduced, path, verify=False)
    xs = _inputs(reduced.config, 2, 500)
    f, o = _pair(path, 2)
    yf = f.run(xs)
    assert _rel(yf, o.run(xs)) < FUSED_VS_ORT
    assert _rel(yf, reference(reduced, xs)["y@float64"]) < FUSED_VS_F64


@pytest.mark.parametrize("name", list(FP16_CASES))
def test_fp16_graphs_match_onnxruntime(tmp_path, name):
    m, xs, f, o = _case(tmp_path, name, FP16_CASES, 2, 200)
    assert "fp16" in f.engine_note
    assert _rel(f.run(xs), o.run(xs)) < FP16_VS_ORT


@pytest.mark.parametrize("layer,ranks", [("s4d", [8, 1]), ("dss", [2, 5])])
def test_hundred_thousand_steps(tmp_path, layer, ranks):
    """1e5 steps in one C call against the float64 oracle (the issue's length); onnxruntime over the first 2e4."""
    m, path = _export(tmp_path, layer, dict(layer=layer, d_model=4, layer_d_state=ranks, d_input=1, d_output=2), {})
    L = 100_000
    xs = _inputs(m.config, 2, L)
    f, o = _pair(path, 2)
    yf = f.run(xs)
    ref = reference(m, xs)
    assert _rel(yf, ref["y@float64"]) < FUSED_VS_F64
    for i in range(len(ranks)):
        assert _rel(f.get_state()[f"past_state.{i}"], ref[f"present_state.{i}"]) < FUSED_VS_F64
    n = 20_000
    assert _rel(yf[:, :n], o.run(xs[:, :n])) < FUSED_VS_ORT


@pytest.mark.parametrize("layer,P,rank", [
    ("lru", 6, 2),                                          # P > H: the elementwise update; rank 2: the Gemm one
    pytest.param("s5", 6, 3, marks=pytest.mark.slow),
])
@pytest.mark.parametrize("which", ["reduced", pytest.param("full", marks=pytest.mark.slow)])
def test_hundred_thousand_steps_mimo(tmp_path, layer, P, rank, which):
    """LRU / S5 at the trained rank and reduced by edgessm.compress.compress_model: 1e5 steps in one C call
    against the float64 oracle (output and both layers' states), onnxruntime over the first 2e4."""
    from edgessm.compress import CompressSpec, compress_model

    kw = dict(norm="batch", activation="gelu_tanh") if layer == "lru" else {}
    m = _model(layer=layer, d_model=4, d_state=P, d_input=1, d_output=2, **kw)
    if which == "reduced":
        m, _ = compress_model(m, CompressSpec(rank=rank))
        m = m.eval()
        assert [b.ssm.N for b in m.blocks] == [rank, rank]
    path = tmp_path / "m.onnx"
    export_onnx(m, path, verify=False)
    L = 100_000
    xs = _inputs(m.config, 2, L)
    f, o = _pair(path, 2)
    assert f.engine_note.count("mimo") == 1 and (f"P=[{rank}, {rank}]" if which == "reduced" else f"P=[{P}, {P}]") \
        in f.engine_note
    yf = f.run(xs)
    ref = reference(m, xs)
    assert _rel(yf, ref["y@float64"]) < FUSED_VS_F64
    for i in range(2):
        assert f.get_state()[f"past_state.{i}"].shape == (2, 2 * m.blocks[i].ssm.N)
        assert _rel(f.get_state()[f"past_state.{i}"], ref[f"present_state.{i}"]) < FUSED_VS_F64
    n = 20_000
    assert _rel(yf[:, :n], o.run(xs[:, :n])) < FUSED_VS_ORT


@pytest.mark.parametrize("cfg_kw", [{}, dict(layer="lru", norm="batch", activation="gelu_tanh")], ids=["s4d", "lru"])
def test_state_contract_matches_onnxruntime(tmp_path, cfg_kw):
    m, path = _export(tmp_path, "st", cfg_kw, {})
    xs = _inputs(m.config, 4, 60)
    f, o = _pair(path, 4)
    f.run(xs[:, :20]), o.run(xs[:, :20])
    # set_state with a state from elsewhere, for some streams only
    rng = np.random.default_rng(3)
    st = {k: (0.2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in f.get_state([1, 3]).items()}
    st["past_state.pool"][:, -1] = [2.0, 7.0]
    f.set_state(st, streams=[3, 1]), o.set_state(st, streams=[3, 1])
    np.testing.assert_array_equal(f.get_state([3, 1])["past_state.0"], st["past_state.0"])
    f.reset([0]), o.reset([0])
    assert np.all(f.get_state([0])["past_state.1"] == 0) and list(f.steps) == [0, 20, 20, 20]
    assert f.get_state()["past_state.1"].shape == o.get_state()["past_state.1"].shape
    assert _rel(f.run(xs[:, 20:]), o.run(xs[:, 20:])) < FUSED_VS_ORT
    for k, v in o.get_state().items():
        assert _rel(f.get_state()[k], v) < FUSED_VS_ORT
    # get_state returns copies: changing one does not touch the engine
    g = f.get_state()
    g["past_state.0"][:] = 1e3
    assert np.all(np.abs(f.get_state()["past_state.0"]) < 1e3)
    f.reset()
    assert all(np.all(v == 0) for v in f.get_state().values())


@pytest.mark.parametrize("cfg_kw", [{}, dict(layer="s5", d_state=10)], ids=["s4d", "s5"])
def test_deterministic_across_runs_and_thread_counts(tmp_path, cfg_kw):
    m, path = _export(tmp_path, "det", cfg_kw, {})
    xs = _inputs(m.config, 40, 30)                           # 40 rows: 2 threads get whole tiles each
    a = StreamingSession(path, provider="cpu", batch=40, engine="fused").run(xs)
    b = StreamingSession(path, provider="cpu", batch=40, engine="fused").run(xs)
    c = StreamingSession(path, provider="cpu", batch=40, engine="fused", threads=2).run(xs)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # a stream's result does not depend on the batch it runs in
    d = StreamingSession(path, provider="cpu", batch=1, engine="fused").run(xs[5:6])
    np.testing.assert_array_equal(a[5:6], d)


def test_auto_uses_fused_and_says_so(tmp_path):
    _, path = _export(tmp_path, "auto", {}, {})
    s = StreamingSession(path, provider="cpu")
    assert s.engine == "fused"
    assert "fused C step" in s.engine_note and "matches onnxruntime" in s.engine_note


def test_no_compiler_falls_back_to_onnxruntime(tmp_path, monkeypatch):
    m, path = _export(tmp_path, "nocc", {}, {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s = StreamingSession(path, provider="cpu", batch=2)
    assert s.engine == "onnxruntime" and "no C compiler" in s.engine_note
    xs = _inputs(m.config, 2, 50)
    assert _rel(s.run(xs), reference(m, xs)["y@float64"]) < 1e-4  # the fallback runs the same model
    with pytest.raises(RuntimeProviderError, match="no C compiler"):
        StreamingSession(path, provider="cpu", engine="fused")


def test_env_var_turns_the_fused_engine_off(tmp_path, monkeypatch):
    _, path = _export(tmp_path, "env", {}, {})
    monkeypatch.setenv("EDGESSM_ENGINE", "onnxruntime")
    assert StreamingSession(path, provider="cpu").engine == "onnxruntime"
    assert StreamingSession(path, provider="cpu", engine="fused").engine == "fused"  # explicit beats env
    monkeypatch.setenv("EDGESSM_ENGINE", "bogus")
    with pytest.raises(RuntimeInputError, match="EDGESSM_ENGINE"):
        StreamingSession(path, provider="cpu")
    with pytest.raises(RuntimeInputError, match="engine"):
        StreamingSession(path, provider="cpu", engine="tvm")


def test_unknown_graph_falls_back_with_the_reason(tmp_path):
    """A graph that is not an edgessm export (the runtime fixture's hand-built one) runs on onnxruntime."""
    _, path, _ = fx.save_models(tmp_path, {"m": {}})["m"]
    s = StreamingSession(path, provider="cpu")
    assert s.engine == "onnxruntime" and "fused engine unavailable" in s.engine_note
    with pytest.raises(RuntimeProviderError, match="fused engine cannot run"):
        StreamingSession(path, provider="cpu", engine="fused")


def test_coupled_mimo_update_falls_back_with_the_reason(tmp_path):
    """An LRU graph whose update Gemm couples two modes (not what the exporter writes, so not a block kind this
    engine has) runs on onnxruntime, and the session says why."""
    import onnx
    from onnx import numpy_helper

    _, path = _export(tmp_path, "coupled", dict(layer="lru", norm="batch", activation="gelu_tanh"), {})
    m = onnx.load(path)
    for init in m.graph.initializer:
        if init.name.startswith("block.0/ssm/M"):
            M = numpy_helper.to_array(init).copy()
            M[0, 1] = 0.01                                  # Re x_0 feeds the update of mode 1
            init.CopyFrom(numpy_helper.from_array(M, init.name))
    bad = tmp_path / "coupled2.onnx"
    onnx.save(m, bad)
    with pytest.raises(FusedUnavailable, match="not a diagonal"):
        plan_from_onnx(bad.read_bytes())
    s = StreamingSession(bad, provider="cpu", batch=2)
    assert s.engine == "onnxruntime" and "not a diagonal (per-mode) recurrence" in s.engine_note
    xs = _inputs(ModelConfig(**{**SMALL, "layer": "lru"}), 2, 10)
    assert s.run(xs).shape == (2, 10, SMALL["d_output"])


def test_verification_rejects_an_engine_that_disagrees(tmp_path):
    _, path = _export(tmp_path, "bad", {}, {})
    data = path.read_bytes()
    plan = plan_from_onnx(data)
    plan.weights[plan.desc[16 + 12]] += 0.5                  # block 0's first recurrence coefficient
    lib, _ = load_library()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    shapes = {a.name: tuple(a.shape[1:]) for a in sess.get_inputs() if a.name != "x"}
    eng = FusedEngine(plan, lib, shapes, batch=2)
    with pytest.raises(FusedUnavailable, match="disagrees with onnxruntime"):
        eng.verify(sess, "fp32")
    good = FusedEngine(plan_from_onnx(data), lib, shapes, batch=2)
    assert good.verify(sess, "fp32") < FUSED_VS_ORT


def test_unknown_block_kind_is_refused(tmp_path):
    _, path = _export(tmp_path, "kind", {}, {})
    data = path.read_bytes()
    plan = plan_from_onnx(data)
    plan.desc[16] = 7                                        # a block kind this C build does not have
    lib, _ = load_library()
    with pytest.raises(FusedUnavailable, match="block kind"):
        FusedEngine(plan, lib, {"past_state.0": (8, 8), "past_state.1": (8, 8), "past_state.pool": (6,)}, 1)


def test_build_is_cached_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, how = load_library()
    sos = list((tmp_path / "cache" / "edgessm" / "fused").glob("edgessm_fused_*.so"))
    assert len(sos) == 1 and "built" in how and str(sos[0]) in how
    _, how2 = load_library()
    assert "cached" in how2 or how2 == how                   # the same process reuses the loaded library


def test_damaged_cache_entry_is_rebuilt_and_unwritable_cache_still_builds(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, how = load_library()
    (so,) = (tmp_path / "cache" / "edgessm" / "fused").glob("edgessm_fused_*.so")
    bad = so.with_suffix(".bad")                             # a new file (the loaded one stays mapped)
    bad.write_bytes(b"not a shared object")
    os.replace(bad, so)
    (tmp_path / "cache2").symlink_to(tmp_path / "cache")      # the same folder under a new name: a new
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))  # look-up, as a new process would do
    lib, how = load_library()
    assert "built" in how and lib.esf_version() == 2 and so.read_bytes()[:4] == b"\x7fELF"
    if os.geteuid() != 0:  # root writes anywhere: the read-only case cannot be made here
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        monkeypatch.setenv("XDG_CACHE_HOME", str(ro))
        lib, how = load_library()
        assert "built" in how and str(ro) not in how


def test_unwritable_cache_builds_in_a_temporary_folder_it_removes(tmp_path, monkeypatch):
    import tempfile

    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go: mkdir fails, for root too")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    lib, how = load_library()
    assert "cache not writable" in how and lib.esf_version() == 2
    assert list(tmp.iterdir()) == []  # the temporary build folder is gone; the library stays loaded


def test_reader_matches_onnx(tmp_path):
    import onnx
    from onnx import numpy_helper

    _, path = _export(tmp_path, "rd", dict(vocab_size=5), dict(fp16=True))
    m = onnx.load(path)
    g = read_onnx(path.read_bytes())
    want = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert set(want) == set(g.initializers)
    for k, v in want.items():
        assert g.initializers[k].dtype == v.dtype and np.array_equal(g.initializers[k], v), k
    assert [n.op_type for n in m.graph.node] == [n.op for n in g.nodes]
    assert {p.key: p.value for p in m.metadata_props} == g.metadata


def test_reader_decodes_typed_fields_as_onnx_does():
    """Initializers written in the typed fields (float_data, int32_data, int64_data, double_data), not raw."""
    from onnx import TensorProto, helper, numpy_helper

    f16 = np.array([1.5, -2.0, 0.1], np.float16)
    inits = [helper.make_tensor("f", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, -4.5]),
             helper.make_tensor("h", TensorProto.FLOAT16, [3], f16.view(np.uint16).tolist()),
             helper.make_tensor("i", TensorProto.INT64, [2], [3, -4]),
             helper.make_tensor("d", TensorProto.DOUBLE, [2], [0.5, 7.0])]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="n")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    g = read_onnx(helper.make_model(graph).SerializeToString())
    for t in inits:
        want = numpy_helper.to_array(t)
        assert g.initializers[t.name].dtype == want.dtype and np.array_equal(g.initializers[t.name], want), t.name
    assert g.nodes[0].op == "Identity" and g.inputs == ["x"] and g.outputs == ["y"]


def test_cli_info_and_bench_name_the_engine(tmp_path):
    _, path = _export(tmp_path, "cli", {}, {})
    run = lambda *a: subprocess.run([sys.executable, "-m", "edgessm.runtime", str(path), "--provider", "cpu", *a],
                                    capture_output=True, text=True, cwd=ROOT, timeout=120)
    r = run("--info")
    assert r.returncode == 0 and "engine     fused: fused C step" in r.stdout, r.stderr
    r = run("--info", "--engine", "onnxruntime")
    assert r.returncode == 0 and "engine     onnxruntime" in r.stdout, r.stderr
    r = run("--bench", "50", "--json", "--no-floor")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["engine"] == "fused" and rep["step"]["p50_us"] > 0
