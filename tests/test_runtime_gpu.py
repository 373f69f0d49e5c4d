"""The runtime on a real GPU: CUDA provider, IO binding with device-resident state, CUDA graphs.

Skipped unless onnxruntime's CUDA provider actually runs a session here (CI and the development
machines have no GPU). On a machine with one: ``make test-gpu`` (or ``pytest -m gpu``); the
recipe for the lent H100 is in docs/jetson.md. The CPU tests (test_runtime.py) cover the same
engine with CPU buffers; these check what only a GPU can: that the state really lives on the
device, that the two captured graphs replay the right buffers over long streams, and that the
numbers match the CPU provider and the float64 oracle.
"""
from __future__ import annotations

import numpy as np
import pytest
import test_runtime_graphs as fx

from edgessm.runtime import StreamingSession

pytestmark = pytest.mark.gpu


def _cuda_runs() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    from edgessm.runtime import floor_model_bytes
    try:  # listed is not enough: a build without its CUDA libraries falls back to the CPU silently
        s = ort.InferenceSession(floor_model_bytes((4,)), providers=["CUDAExecutionProvider"])
    except Exception:
        return False
    return s.get_providers()[0] == "CUDAExecutionProvider"


if not _cuda_runs():
    pytest.skip("onnxruntime's CUDA provider does not run here", allow_module_level=True)


# float32 graph vs float64 oracle, O(1) activations, <= 40 steps of a stable 2-layer recurrence
# (the CPU tests' bar; GPU kernels reorder sums but stay within float32 rounding of it)
RTOL = ATOL = 2e-4
# CUDA vs CPU provider on the same float32 graph: different kernels and summation orders, so not
# bitwise; float32 rounding (6e-8) amplified by <= a few hundred steps of a contractive recurrence
PROVIDER_RTOL, PROVIDER_ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return fx.save_models(tmp_path_factory.mktemp("gpu"), {
        "plain": {}, "pool": {"pool": True}, "tokens": {"vocab": 11},
        "wide": dict(d_input=8, d_output=10, H=128, N=16, n_layers=4, seed=1, pool=True)})


def _cuda(path, **kw):
    s = StreamingSession(path, provider="cuda", **kw)
    assert s.providers[0] == "CUDAExecutionProvider" and not s.fallback
    return s


@pytest.mark.parametrize("name", ["plain", "pool", "tokens"])
@pytest.mark.parametrize("mode", ["plain", "bound", "cuda_graph"])
def test_cuda_steps_equal_float64_oracle(models, name, mode):
    p, path, _ = models[name]
    kw = {"plain": dict(io_binding=False), "bound": {}, "cuda_graph": dict(cuda_graph=True)}[mode]
    s = _cuda(path, batch=2, **kw)
    assert s.device == "cuda" and not s.tf32
    xs = fx.make_inputs(p, 2, 21)  # odd: ends on the second buffer set / second captured graph
    ys = np.stack([s.step(xs[:, t]) for t in range(21)], axis=1)
    np.testing.assert_allclose(ys, fx.reference(p, xs), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch", [1, 7])
def test_cuda_graph_long_stream_equals_eager_binding_and_cpu(models, batch):
    # 500 steps alternate the two captured graphs 250 times each: a replay that read or wrote the
    # wrong buffer set would desynchronise the state within a step or two
    p, path, _ = models["wide"]
    graph, eager, cpu = _cuda(path, batch=batch, cuda_graph=True), _cuda(path, batch=batch), \
        StreamingSession(path, provider="cpu", batch=batch)
    assert graph.cuda_graph and not eager.cuda_graph
    xs = fx.make_inputs(p, batch, 500, seed=4)
    for t in range(500):
        g, e, c = graph.step(xs[:, t]), eager.step(xs[:, t]), cpu.step(xs[:, t])
        np.testing.assert_array_equal(g, e)  # same kernels, same buffers' contents: bitwise
        np.testing.assert_allclose(g, c, rtol=PROVIDER_RTOL, atol=PROVIDER_ATOL)
    sg, sc = graph.get_state(), cpu.get_state()
    for k in sg:
        # states reach |x| ~ 1e2 after 500 steps, and their rounding error scales with the largest entry,
        # not with each entry: relative to max |state| (the export's parity measure), same bar as y
        assert np.abs(sg[k] - sc[k]).max() <= PROVIDER_RTOL * np.abs(sc[k]).max(), k
    assert np.abs(sg["past_state.0"]).max() > 1e-3


def test_cuda_graph_reset_and_set_state_write_into_the_captured_buffers(models):
    p, path, _ = models["pool"]
    xs = fx.make_inputs(p, 3, 16, seed=9)
    full = StreamingSession(path, provider="cpu", batch=3).run(xs)
    s = _cuda(path, batch=3, cuda_graph=True)
    s.run(xs[:, :7])
    ckpt = s.get_state()
    s.run(xs[:, 7:12])
    s.set_state(ckpt)  # must land in the buffers the graphs were captured with
    np.testing.assert_allclose(s.run(xs[:, 7:]), full[:, 7:], rtol=PROVIDER_RTOL, atol=PROVIDER_ATOL)
    s.reset(streams=[1])
    again = s.run(xs)
    np.testing.assert_allclose(again[1], full[1], rtol=PROVIDER_RTOL, atol=PROVIDER_ATOL)
    s.reset()
    np.testing.assert_allclose(s.run(xs), full, rtol=PROVIDER_RTOL, atol=PROVIDER_ATOL)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_chunk_graph_on_cuda(models, cuda_graph):
    p, path, chunk = models["plain"]
    s = _cuda(path, batch=2, chunk_path=chunk, cuda_graph=cuda_graph)
    xs = fx.make_inputs(p, 2, 11, seed=5)
    got = np.concatenate([s.run(xs[:, :6]), s.run(xs[:, 6:])], axis=1)
    np.testing.assert_allclose(got, fx.reference(p, xs), rtol=RTOL, atol=ATOL)


def test_batch_256_streams_on_cuda_graph(models):
    p, path, _ = models["wide"]
    xs = fx.make_inputs(p, 256, 30, seed=6)
    got = _cuda(path, batch=256, cuda_graph=True).run(xs)
    want = StreamingSession(path, provider="cpu", batch=256).run(xs)
    np.testing.assert_allclose(got, want, rtol=PROVIDER_RTOL, atol=PROVIDER_ATOL)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_exported_model_on_cuda_matches_float64_model(tmp_path, target):
    torch = pytest.importorskip("torch")
    from edgessm.config import ModelConfig
    from edgessm.model import SSMModel
    from edgessm.export import export_onnx
    from edgessm.export.verify import make_input, reference

    torch.manual_seed(0)
    model = SSMModel(ModelConfig(d_input=1, d_output=10, d_model=64, n_layers=4, d_state=16)).eval()
    res = export_onnx(model, tmp_path / "m.onnx", target=target)
    xs = make_input(model.config, batch=2, steps=300, seed=1)
    ref = reference(model, xs)["y@float64"]  # (B L O)
    s = _cuda(res.path, batch=2, cuda_graph=True)
    got = s.run(xs)
    # the export bar: float32 step graph within 1e-4 of the float64 model, relative to max |y|
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
