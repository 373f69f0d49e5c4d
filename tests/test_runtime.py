"""edgessm.runtime.StreamingSession against the float64 oracle of the fixture graphs (CPU provider).

The bound engine (IO binding, ping-pong state buffers) is the code path the CUDA provider runs;
here it runs with CPU buffers and is checked against plain session.run stepping.
"""
from __future__ import annotations

import numpy as np
import pytest
import test_runtime_graphs as fx

from edgessm.runtime import (RuntimeInputError, RuntimeModelError, RuntimeProviderError, StreamingSession,
                             measure_floor, measure_latency)


# float32 graph vs float64 oracle, O(1) activations, <= 40 steps of a stable 2-layer recurrence
RTOL = ATOL = 2e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return fx.save_models(tmp_path_factory.mktemp("rt"), {"plain": {}, "pool": {"pool": True}, "tokens": {"vocab": 11}})


def _cpu(path, **kw):
    return StreamingSession(path, provider="cpu", **kw)


@pytest.mark.parametrize("name", ["plain", "pool", "tokens"])
@pytest.mark.parametrize("io_binding", [True, False])
def test_step_by_step_equals_oracle(models, name, io_binding):
    p, path, _ = models[name]
    s = _cpu(path, io_binding=io_binding)
    xs = fx.make_inputs(p, 1, 20)
    ys = np.stack([s.step(xs[:, t]) for t in range(20)], axis=1)
    assert ys.dtype == np.float32 and ys.shape == (1, 20, p.d_output)
    np.testing.assert_allclose(ys, fx.reference(p, xs), rtol=RTOL, atol=ATOL)
    assert s.providers == ["CPUExecutionProvider"] and s.device == "cpu"
    assert list(s.steps) == [20]


def test_step_outputs_are_fresh_arrays(models):
    # a CPU OrtValue's numpy() is a view of the bound output buffer: step must hand back copies
    p, path, _ = models["plain"]
    s = _cpu(path)
    xs = fx.make_inputs(p, 1, 2)
    y0 = s.step(xs[:, 0])
    keep = y0.copy()
    s.step(xs[:, 1])
    np.testing.assert_array_equal(y0, keep)


def test_io_binding_ping_pong_equals_plain_run_exactly(models):
    p, path, _ = models["pool"]
    bound, plain = _cpu(path, batch=3), _cpu(path, batch=3, io_binding=False)
    xs = fx.make_inputs(p, 3, 15, seed=3)
    for t in range(15):  # odd count: ends on the second buffer set
        np.testing.assert_array_equal(bound.step(xs[:, t]), plain.step(xs[:, t]))
    sb, sp = bound.get_state(), plain.get_state()
    assert sorted(sb) == sorted(sp) == ["past_state.0", "past_state.1", "past_state.pool"]
    for k in sb:
        np.testing.assert_array_equal(sb[k], sp[k])
    assert np.abs(sb["past_state.0"]).max() > 0


@pytest.mark.parametrize("with_chunk", [False, True])
@pytest.mark.parametrize("io_binding", [True, False])
def test_run_equals_repeated_step(models, with_chunk, io_binding):
    p, path, chunk = models["plain"]
    s = _cpu(path, batch=2, io_binding=io_binding, chunk_path=chunk if with_chunk else None)
    ref = _cpu(path, batch=2)
    xs = fx.make_inputs(p, 2, 11, seed=5)  # 11 = 2 chunks of 4 + 3 single steps
    got = np.concatenate([s.run(xs[:, :6]), s.run(xs[:, 6:])], axis=1)  # state carries across run calls
    want = np.stack([ref.step(xs[:, t]) for t in range(11)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, fx.reference(p, xs), rtol=RTOL, atol=ATOL)
    assert (s.chunk_spec is not None) == with_chunk
    assert list(s.steps) == [11, 11]


def test_run_with_chunk_tokens_and_empty_sequence(models):
    p, path, chunk = models["tokens"]
    s = _cpu(path, chunk_path=chunk)
    xs = fx.make_inputs(p, 1, 9)
    np.testing.assert_allclose(s.run(xs), fx.reference(p, xs), rtol=RTOL, atol=ATOL)
    assert s.run(np.zeros((1, 0), np.int64)).shape == (1, 0, p.d_output)


def test_batch_streams_are_independent(models):
    p, path, _ = models["pool"]
    xs = fx.make_inputs(p, 2, 12, seed=7)
    s = _cpu(path, batch=2)
    both = s.run(xs)
    for b in range(2):
        single = _cpu(path).run(xs[b:b + 1])
        np.testing.assert_allclose(both[b:b + 1], single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(both[0], both[1])  # different inputs, different outputs


def test_reset_all_and_some_streams(models):
    p, path, _ = models["plain"]
    xs = fx.make_inputs(p, 2, 10, seed=8)
    s = _cpu(path, batch=2)
    first = s.run(xs)
    s.reset()
    np.testing.assert_array_equal(s.run(xs), first)  # from zero state again
    s.reset(streams=[1])
    assert list(s.steps) == [10, 0]
    again = s.run(xs)
    np.testing.assert_allclose(again[1], first[1], rtol=1e-6, atol=1e-7)  # stream 1 restarted
    cont = fx.reference(p, np.concatenate([xs, xs], axis=1))[0, 10:]     # stream 0 carried on
    np.testing.assert_allclose(again[0], cont, rtol=RTOL, atol=ATOL)
    assert not np.allclose(again[0], first[0], atol=1e-3)


def test_get_set_state_resumes_exactly(models):
    p, path, _ = models["pool"]
    xs = fx.make_inputs(p, 2, 16, seed=9)
    full = _cpu(path, batch=2).run(xs)
    s = _cpu(path, batch=2)
    s.run(xs[:, :7])
    ckpt = s.get_state()
    s.run(xs[:, 7:12])  # wander off, then restore
    s.set_state(ckpt)
    np.testing.assert_array_equal(s.run(xs[:, 7:]), full[:, 7:])
    # a fresh session (plain engine) resumes from the checkpoint too
    t = _cpu(path, batch=2, io_binding=False)
    t.set_state(ckpt)
    np.testing.assert_allclose(t.run(xs[:, 7:]), full[:, 7:], rtol=1e-6, atol=1e-7)


def test_state_of_one_stream_moves_between_sessions(models):
    p, path, _ = models["plain"]
    xs = fx.make_inputs(p, 2, 8, seed=10)
    a = _cpu(path, batch=2)
    a.run(xs[:, :5])
    one = a.get_state(streams=[1])
    assert one["past_state.0"].shape == (1, p.H, 2 * p.N)
    b = _cpu(path)
    b.set_state(one)
    np.testing.assert_allclose(b.run(xs[1:, 5:]), a.run(xs[:, 5:])[1:], rtol=1e-6, atol=1e-7)


def test_set_state_validation(models):
    p, path, _ = models["plain"]
    s = _cpu(path, batch=2)
    good = s.get_state()
    with pytest.raises(RuntimeInputError, match="missing \\['past_state.1'\\]"):
        s.set_state({"past_state.0": good["past_state.0"]})
    with pytest.raises(RuntimeInputError, match="'past_state.0': expected shape \\(2, 4, 6\\), got \\(1, 4, 6\\)"):
        s.set_state({**good, "past_state.0": good["past_state.0"][:1]})
    bad = {**good, "past_state.1": np.full_like(good["past_state.1"], np.nan)}
    with pytest.raises(RuntimeInputError, match="NaN"):
        s.set_state(bad)
    with pytest.raises(RuntimeInputError, match="streams 0..1"):
        s.reset(streams=[2])


@pytest.mark.parametrize("x, msg", [
    (np.zeros((3,), np.float32), r"input 'x': expected shape \(1, 3\) \(batch, d_input\), got \(3,\); add the batch axis"),
    (np.zeros((1, 5), np.float32), r"expected shape \(1, 3\).*got \(1, 5\); the model takes d_input=3"),
    (np.zeros((2, 3), np.float32), r"got \(2, 3\); this session has batch=1 streams; create it with batch=2"),
    (np.zeros((1, 3), np.int64), r"input 'x': expected float32 features, got int64; convert with x.astype"),
    (np.zeros((1, 3), np.complex64), r"expected float32 features, got complex64"),
])
def test_bad_step_input_is_one_line_typed_error(models, x, msg):
    _, path, _ = models["plain"]
    s = _cpu(path)
    with pytest.raises(RuntimeInputError, match=msg) as e:
        s.step(x)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_bad_inputs_other_cases(models):
    p, path, _ = models["plain"]
    s = _cpu(path, check_finite=True)
    with pytest.raises(RuntimeInputError, match="NaN"):
        s.step(np.array([[0.0, np.nan, 1.0]]))
    s.step(np.zeros((1, 3)))  # float64 is cast to the graph's float32
    with pytest.raises(RuntimeInputError, match=r"expected shape \(1, 7, 3\) \(batch, L, d_input\), got \(7, 3\)"):
        s.run(np.zeros((7, 3), np.float32))
    tp, tpath, _ = models["tokens"]
    t = _cpu(tpath)
    with pytest.raises(RuntimeInputError, match="expected integer token ids"):
        t.step(np.zeros((1,), np.float32))
    with pytest.raises(RuntimeInputError, match="token id 11 >= vocabulary size 11"):
        t.step(np.array([11]))
    assert t.step(np.array([3], np.int32)).shape == (1, 2)  # int32 ids are accepted


def test_model_errors(tmp_path, models):
    with pytest.raises(RuntimeModelError, match="model file not found: .*nope.onnx"):
        StreamingSession(tmp_path / "nope.onnx", provider="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \xff\xff\xff")
    with pytest.raises(RuntimeModelError, match="junk.onnx"):
        StreamingSession(junk, provider="cpu")
    for kind, msg in [("no_y", "no output named 'y'"), ("unpaired_state", "no matching output 'present_state.0'"),
                      ("dynamic_state", "non-static dims")]:
        path = fx.save_model(fx.bad_model(kind), tmp_path / f"{kind}.onnx")
        with pytest.raises(RuntimeModelError, match=msg):
            StreamingSession(path, provider="cpu")
    _, _, chunk = models["plain"]
    with pytest.raises(RuntimeModelError, match="is a chunk graph; pass the step graph"):
        StreamingSession(chunk, provider="cpu")
    _, step_path, _ = models["plain"]
    _, _, other_chunk = models["pool"]
    with pytest.raises(RuntimeModelError, match="states"):
        StreamingSession(step_path, provider="cpu", chunk_path=other_chunk)


def test_metadata_mismatch_is_a_model_error(tmp_path):
    p = fx.make_params()
    m = fx.build_model(p)
    for prop in m.metadata_props:
        if prop.key == "edgessm.states":
            prop.value = prop.value.replace("[4, 6]", "[4, 8]", 1)
    path = fx.save_model(m, tmp_path / "m.onnx")
    with pytest.raises(RuntimeModelError, match="edgessm.states says 'past_state.0' has shape \\[4, 8\\]"):
        StreamingSession(path, provider="cpu")


def test_metadata_is_optional_and_exposed(tmp_path, models):
    p = fx.make_params()
    path = fx.save_model(fx.build_model(p, metadata=False), tmp_path / "bare.onnx")
    s = _cpu(path)
    assert s.metadata == {} and s.state_names == ("past_state.0", "past_state.1")
    xs = fx.make_inputs(p, 1, 5)
    np.testing.assert_allclose(s.run(xs), fx.reference(p, xs), rtol=RTOL, atol=ATOL)
    _, full, _ = models["pool"]
    m = _cpu(full).metadata
    assert m["edgessm.graph"] == "step" and m["edgessm.states"][2]["input"] == "past_state.pool"


def test_provider_selection_is_never_silent(models):
    import onnxruntime as ort
    _, path, _ = models["plain"]
    s = StreamingSession(path)  # auto: whatever runs is reported
    assert s.providers == s._sess.get_providers() and s.providers[-1] == "CPUExecutionProvider"
    if s.providers[0] == "CPUExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers():
        assert s.fallback and "not loadable" in s.fallback  # GPU listed but not usable here: recorded
        with pytest.raises(RuntimeProviderError, match="requested CUDAExecutionProvider but onnxruntime could not load"):
            StreamingSession(path, provider="cuda")
        with pytest.raises(RuntimeProviderError, match="cuda_graph needs the CUDA provider"):
            StreamingSession(path, cuda_graph=True)
    with pytest.raises(RuntimeInputError, match="unknown provider 'rocm'"):
        StreamingSession(path, provider="rocm")
    with pytest.raises(RuntimeProviderError, match="cuda_graph needs the CUDA provider first"):
        StreamingSession(path, provider="cpu", cuda_graph=True)
    with pytest.raises(RuntimeInputError, match="batch must be a positive integer"):
        StreamingSession(path, provider="cpu", batch=0)


def test_provider_plans():
    from edgessm.runtime.providers import plan_providers
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    plan = plan_providers("auto", available=avail, trt_cache_dir=None)
    assert [n for n, _ in plan.providers] == avail and not plan.strict
    assert plan.providers[0][1]["trt_fp16_enable"] is True
    plan = plan_providers("auto", available=avail, cuda_graph=True)
    assert [n for n, _ in plan.providers] == avail[1:]  # TensorRT keeps one graph: skipped
    assert plan.providers[0][1]["enable_cuda_graph"] == "1"
    assert plan.providers[0][1]["use_tf32"] == "0"  # TF32 MatMuls miss the 1e-4 parity bar on Ampere+ GPUs
    assert plan_providers("cuda", available=avail, tf32=True).providers[0][1]["use_tf32"] == "1"
    plan = plan_providers("tensorrt", available=avail, trt_fp16=False)
    assert [n for n, _ in plan.providers] == avail and plan.strict
    assert plan.providers[0][1]["trt_fp16_enable"] is False and "trt_engine_cache_enable" not in plan.providers[0][1]
    assert [n for n, _ in plan_providers("auto", available=["CPUExecutionProvider"]).providers] == avail[2:]
    with pytest.raises(RuntimeProviderError, match="not in this onnxruntime build"):
        plan_providers("cuda", available=["CPUExecutionProvider"])


def test_trt_cache_option(tmp_path):
    from edgessm.runtime.providers import plan_providers
    plan = plan_providers("tensorrt", available=["TensorrtExecutionProvider", "CPUExecutionProvider"],
                          trt_cache_dir=str(tmp_path / "cache"))
    opts = plan.providers[0][1]
    assert opts["trt_engine_cache_enable"] is True and opts["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert (tmp_path / "cache").is_dir()


def test_latency_helpers(models):
    p, path, _ = models["plain"]
    s = _cpu(path)
    x = np.zeros((1, p.d_input), np.float32)
    st = measure_latency(s.step, x, n=50, warmup=5)
    assert st.n == 50 and 0 < st.min_us <= st.p50_us <= st.p90_us <= st.p99_us <= st.max_us
    assert st.steps_per_s == pytest.approx(1e6 / st.mean_us, rel=1e-6)
    fl = measure_floor(s, n=50, warmup=5)
    assert fl.n == 50 and fl.p50_us > 0


def _engine_with_graph_ids(path):
    """A bound engine on a CPU session with the CUDA-graph run options set (the CPU provider ignores
    gpu_graph_id): exercises the double-buffer / graph-id / self-check code that a GPU runs."""
    from edgessm.runtime.session import _BoundEngine
    s = _cpu(path, batch=2)
    eng = _BoundEngine(s._sess, s.spec, 2, "cpu", 0, cuda_graph=True)
    assert [ro.get_run_config_entry("gpu_graph_id") for ro in eng._run_options] == ["1", "2"]
    return s, eng


def test_graph_id_engine_steps_like_plain_and_self_check_passes(models):
    p, path, _ = models["plain"]
    s, eng = _engine_with_graph_ids(path)
    x = np.random.default_rng(0).standard_normal((2, p.d_input)).astype(np.float32)
    eng.check_cuda_graphs(x)
    assert all(np.all(v == 0) for v in eng.read_state().values())  # the check leaves a zero state
    plain = _cpu(path, batch=2, io_binding=False)
    xs = fx.make_inputs(p, 2, 7)
    for t in range(7):
        np.testing.assert_array_equal(eng.step(xs[:, t]), plain.step(xs[:, t]))


def test_cuda_graph_self_check_catches_a_graph_replayed_with_wrong_buffers(models):
    """Emulate an onnxruntime that ignores gpu_graph_id: one captured graph (parity 0's buffers) replayed
    for both directions, so the state stops advancing. The start-up check must refuse it."""
    p, path, _ = models["plain"]
    s, eng = _engine_with_graph_ids(path)
    real = eng._sess

    class OneGraphSession:
        def run_with_iobinding(self, binding, run_options=None):
            gid = run_options.get_run_config_entry("gpu_graph_id") if run_options is not None else ""
            real.run_with_iobinding(eng._bindings[0] if gid in ("1", "2") else binding, run_options)

    eng._sess = OneGraphSession()
    with pytest.raises(RuntimeProviderError, match="CUDA graph replay disagrees with eager execution"):
        eng.check_cuda_graphs(np.ones((2, p.d_input), np.float32))


def test_cuda_graph_needs_recent_onnxruntime(models, monkeypatch):
    import onnxruntime as ort
    _, path, _ = models["plain"]
    monkeypatch.setattr(ort, "__version__", "1.16.3")
    with pytest.raises(RuntimeProviderError, match="cuda_graph needs onnxruntime >= 1.18"):
        StreamingSession(path, provider="cpu", cuda_graph=True)
