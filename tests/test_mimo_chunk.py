"""The chunk graph of LRU / S5 models: T steps per call against the float64 model stepped from the same non-zero
state, the states it carries against the step graph's, the runtime's chunked prefill against a step-by-step stream,
the size refusal, and the CLI."""
import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgessm
from edgessm.cli import main
from edgessm.config import ModelConfig
from edgessm.errors import ExportError
from edgessm.export import export_onnx
from edgessm.export import graph as graph_mod
from edgessm.export.verify import session
from edgessm.model import SSMModel
from edgessm.runtime import StreamingSession

# fp32: weights rounded once to float32 (6e-8) and float32 activations through 2 blocks; a chunk sums at most
# 2T + 2 terms per state entry, so ~1e-6 relative is expected; 2e-5 is 10-20x margin and still catches any
# wrong power, sign or index (those are O(1) errors). fp16: weights and activations rounded to 11 bits
# (~5e-4 each) through LayerNorm / GELU / GLU of 2 blocks, the recurrence float32: export's own fp16 bar.
TOL = {"fp32": 2e-5, "fp16": 1e-2}

MODELS = {  # name -> (config overrides); H = 8 channels, 2 blocks
    "lru-dense": dict(layer="lru", d_state=6, norm="batch", activation="gelu_tanh"),  # P <= H: dense step update
    "lru-diag": dict(layer="lru", d_state=20, norm="batch", activation="gelu_tanh"),  # P > H: elementwise step update
    "s5": dict(layer="s5", d_state=8, pooling="last"),
    "lru-tokens": dict(layer="lru", d_state=6, vocab_size=11, pooling="none"),
    "s5-mean-layernorm": dict(layer="s5", d_state=10, pooling="mean", norm="layer"),
    "lru-bare": dict(layer="lru", d_state=12, encoder="none", decoder="none", d_input=8, d_output=8,
                     residual=False, final_norm=False, pooling="none", mixing="none"),
}


def _model(name: str, seed: int = 0) -> SSMModel:
    kw = dict(d_input=2, d_output=3, d_model=8, n_layers=2)
    kw.update(MODELS[name])
    cfg = ModelConfig(**kw)
    torch.manual_seed(seed)
    model = SSMModel(cfg)
    with torch.no_grad():
        model.train()
        for _ in range(3):  # BatchNorm running statistics away from (0, 1), so the fold is exercised
            x = (_inputs(cfg, 8, 30, seed + 1, torch_=True) if cfg.vocab_size
                 else 2.0 * torch.randn(8, 30, cfg.d_input) + 1.0)
            model(x)
    return model.eval()


def _inputs(cfg, B: int, L: int, seed: int, torch_: bool = False):
    rng = np.random.default_rng(seed)
    if cfg.vocab_size:
        x = rng.integers(0, cfg.vocab_size, (B, L)).astype(np.int64)
    else:
        x = rng.standard_normal((B, L, cfg.d_input)).astype(np.float32)
    return torch.from_numpy(x) if torch_ else x


class _Oracle:
    """The model in float64 stepped one step at a time (complex128 states, step constants in complex128)."""

    def __init__(self, model: SSMModel):
        self.m = copy.deepcopy(model).double().eval()
        self.cache = [blk.ssm.step_params(torch.complex128) for blk in self.m.blocks]
        self.mimo = [len(blk.ssm.state_shape) == 1 for blk in self.m.blocks]

    @torch.no_grad()
    def run(self, xs: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        ys = []
        for t in range(xs.shape[1]):
            x = torch.from_numpy(xs[:, t])
            y, state = self.m.step(x if x.dtype == torch.int64 else x.double(), state, self.cache)
            ys.append(y.numpy())
        return np.stack(ys, 1), state

    def to_graph(self, state: list) -> dict:
        """complex states -> the graph's real [Re | Im] float32 states (the pool state as it is)."""
        out = {}
        for i, s in enumerate(state):
            key = f"past_state.{i}" if i < len(self.m.blocks) else "past_state.pool"
            s = s.numpy()
            out[key] = (np.concatenate([s.real, s.imag], -1) if np.iscomplexobj(s) else s).astype(np.float32)
        return out

    def warm_state(self, B: int, seed: int) -> list:
        """A realistic non-zero state: 25 steps of random input from zero."""
        st = [s.to(torch.complex128) if s.is_complex() else s.double() for s in self.m.init_state(B)]
        return self.run(_inputs(self.m.config, B, 25, seed), st)[1]


def _rel(got, ref) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Step graph + chunk graphs (T = 1, 7, 32) per model, fp32, exported without the parity check (these tests
    are the check); the fp16 variants of two models at T = 7."""
    d = tmp_path_factory.mktemp("mimo_chunk")
    out = {}
    for name in MODELS:
        model = _model(name)
        for T in (1, 7, 32):
            res = export_onnx(model, d / f"{name}.{T}.onnx", chunk=T, verify=False)
            out[name, T, "fp32"] = (model, res)
    for name in ("lru-dense", "s5-mean-layernorm"):
        res = export_onnx(out[name, 7, "fp32"][0], d / f"{name}.fp16.onnx", chunk=7, fp16=True, verify=False)
        out[name, 7, "fp16"] = (out[name, 7, "fp32"][0], res)
    return out


CASES = ([(n, T, "fp32") for n in MODELS for T in (1, 7, 32)]
         + [("lru-dense", 7, "fp16"), ("s5-mean-layernorm", 7, "fp16")])


@pytest.mark.parametrize("name,T,precision", CASES, ids=[f"{n}-T{T}-{p}" for n, T, p in CASES])
def test_chunk_graph_against_float64_model_from_nonzero_state(exported, name, T, precision):
    """Several chunks from a warm state: y at every step and the states after every chunk against the float64
    model stepped step by step; the states also against the step graph driven over the same steps."""
    model, res = exported[name, T, precision]
    oracle = _Oracle(model)
    B, n_chunks = 2, max(3, 40 // T)
    state = oracle.warm_state(B, seed=3)
    xs = _inputs(model.config, B, n_chunks * T, seed=4)
    chunk, step = session(res.chunk_path.read_bytes()), session(res.path.read_bytes())
    names = [o.name for o in chunk.get_outputs()]
    feed_c = feed_s = oracle.to_graph(state)
    assert any(np.abs(v).max() > 0.1 for k, v in feed_c.items() if k != "past_state.pool")  # really non-zero
    tol = TOL[precision]
    for c in range(n_chunks):
        x = xs[:, c * T:(c + 1) * T]
        ref_y, state = oracle.run(x, state)
        ref = oracle.to_graph(state)
        outs = dict(zip(names, chunk.run(None, {"x": x, **feed_c})))
        assert outs["y"].shape == ref_y.shape
        assert _rel(outs["y"], ref_y) <= tol, (c, _rel(outs["y"], ref_y))
        for k in ref:
            got = outs["present_state." + k.split(".", 1)[1]]
            assert _rel(got, ref[k]) <= tol, (c, k, _rel(got, ref[k]))
        for t in range(T):  # the step graph over the same steps: the same states (the contract's layout)
            s_out = dict(zip([o.name for o in step.get_outputs()], step.run(None, {"x": x[:, t], **feed_s})))
            feed_s = {k.replace("present_", "past_"): v for k, v in s_out.items() if k != "y"}
        for k, v in feed_s.items():
            assert _rel(outs[k.replace("past_", "present_")], v) <= tol, (c, k)
        feed_c = {k.replace("present_", "past_"): v for k, v in outs.items() if k != "y"}


def test_slow_modes_over_many_chunks(tmp_path):
    """|a| within 1e-5 of 1 and phases under 1e-4 (a^32 = 1 - 3e-4, where the delta form matters), one bare LRU
    layer (the graph is the layer): 1024 chunks of 32 steps from a non-zero state against MimoSSM's complex128
    recurrence. The powers and a^T - 1 come from the exact log in float64; a float32 a^T (rounded to +-6e-8 near 1)
    biases every chunk's decay and measured 2.7e-5 here, the shipped graph 1.6e-6."""
    from edgessm.model import layer_systems

    cfg = ModelConfig(d_input=8, d_output=8, d_model=8, n_layers=1, layer="lru", d_state=6, lru_r_min=0.99999,
                      lru_r_max=0.999995, lru_max_phase=1e-4, encoder="none", decoder="none", mixing="none",
                      activation="identity", norm="none", residual=False, final_norm=False, pooling="none")
    torch.manual_seed(0)
    model = SSMModel(cfg).eval()
    system = layer_systems(model)[0]
    res = export_onnx(model, tmp_path / "m.onnx", chunk=32, verify=False)
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((1, 6)) + 1j * rng.standard_normal((1, 6))  # c(B P)
    xs = rng.standard_normal((1, 1024 * 32, 8)).astype(np.float32)
    ref_y, ref_x = system.reference_recurrence(xs.astype(np.float64), x0)
    sess = StreamingSession(res.path, provider="cpu", chunk_path=res.chunk_path, engine="onnxruntime")
    sess.set_state({"past_state.0": np.concatenate([x0.real, x0.imag], -1).astype(np.float32)})
    ys = sess.run(xs)
    # float32 rounding of the constants once and of the state at every chunk (measured 2.6e-7 on y, 1.6e-6 on
    # the state); 8e-6 leaves 5x margin and is a third of the float32-a^T error above
    assert _rel(ys, ref_y) <= 8e-6
    assert _rel(sess.get_state()["past_state.0"], np.concatenate([ref_x.real, ref_x.imag], -1)) <= 8e-6


def test_node_counts_and_weight_bytes(exported):
    """16 nodes per MIMO layer; the file holds the P (2T+2)^2 recurrence (not a (T H)^2 dense map) plus B and R."""
    for name in MODELS:
        model, res = exported[name, 32, "fp32"]
        assert res.node_counts["chunk"]["ssm"] == [graph_mod.MIMO_CHUNK_SSM_NODES] * 2 == [16, 16]
        P, H, T = model.config.d_state, model.config.d_model, 32
        ssm = 2 * 4 * (P * (2 * T + 2) ** 2 + H * 2 * P + 2 * P + (2 * P + H) * H + H)  # two layers, float32
        extra = res.file_sizes["step"] + (4 * T * T if model.config.pooling == "mean" else 0) + 20_000
        assert ssm <= res.file_sizes["chunk"] <= ssm + extra, (name, res.file_sizes)


@pytest.mark.parametrize("engine,io_binding", [("onnxruntime", True), ("onnxruntime", False), ("auto", True)])
def test_runtime_prefill_in_chunks_equals_step_stream(exported, engine, io_binding):
    """StreamingSession.run uses the chunk graph for whole chunks (5 chunks + 3 single steps here) and carries the
    state on: its outputs, its state and the next steps equal a step-only session's. With engine="auto" the fused
    C engine (step graphs only) may take the run instead; the result must not change."""
    model, res = exported["lru-diag", 7, "fp32"]
    xs = _inputs(model.config, 2, 5 * 7 + 3, seed=9)
    kw = dict(provider="cpu", batch=2, io_binding=io_binding, engine=engine)
    chunked = StreamingSession(res.path, chunk_path=res.chunk_path, **kw)
    plain = StreamingSession(res.path, provider="cpu", batch=2, engine="onnxruntime")
    assert chunked.chunk_spec is not None and chunked.chunk_spec.chunk == 7
    ys = chunked.run(xs)
    ref = np.stack([plain.step(xs[:, t]) for t in range(xs.shape[1])], 1)
    assert _rel(ys, ref) <= 1e-5  # float32 both ways, different summation order
    a, b = chunked.get_state(), plain.get_state()
    assert all(_rel(a[k], b[k]) <= 1e-5 for k in b)
    more = _inputs(model.config, 2, 9, seed=10)
    assert _rel(chunked.run(more), np.stack([plain.step(more[:, t]) for t in range(9)], 1)) <= 1e-5


def test_fused_engine_does_not_take_a_chunk_graph(exported):
    from edgessm.runtime.errors import RuntimeModelError
    from edgessm.runtime.fused import FusedUnavailable, plan_from_onnx

    _, res = exported["lru-dense", 7, "fp32"]
    with pytest.raises(FusedUnavailable, match="step graph"):
        plan_from_onnx(res.chunk_path.read_bytes())
    with pytest.raises(RuntimeModelError, match="chunk graph"):
        StreamingSession(res.chunk_path, provider="cpu")


def test_export_parity_check_passes_for_the_chunk_graph(tmp_path):
    """export_onnx's own check: the chunk graph through the runtime vs model(x) and the float64 oracle states."""
    res = export_onnx(_model("lru-dense"), tmp_path / "m.onnx", chunk=16, verify_steps=200)
    par = res.parity["chunk"]
    assert par["y"]["rel"] <= 1e-4 and all(v["rel"] <= 1e-4 for k, v in par.items() if k.startswith("present"))
    meta = res.metadata["chunk"]
    assert meta["edgessm.graph"] == "chunk" and meta["edgessm.chunk"] == "16"
    assert json.loads(meta["edgessm.states"]) == json.loads(res.metadata["step"]["edgessm.states"])


def test_chunk_too_large_is_refused_before_building(tmp_path):
    """P (2T+2)^2 float32 weights per layer: T = 4096 at P = 20 is 2 x 5.4 GB; refused in one line, nothing written."""
    model = _model("lru-diag")
    with pytest.raises(ExportError) as e:
        export_onnx(model, tmp_path / "m.onnx", chunk=4096)
    msg = str(e.value)
    assert "\n" not in msg and "--chunk 4096" in msg and "use --chunk" in msg
    t = int(msg.rsplit("use --chunk ", 1)[1].split()[0])
    assert 2 * 4 * 20 * (2 * t + 2) ** 2 <= 1 << 30 < 2 * 4 * 20 * (4 * t + 2) ** 2  # the largest power of 2 that fits
    assert list(tmp_path.iterdir()) == []


def test_cli_export_chunk_lru(tmp_path):
    ck = tmp_path / "m.safetensors"
    edgessm.save(_model("lru-dense"), ck)
    res = CliRunner().invoke(main, ["export", "--onnx", str(ck), "-o", str(tmp_path / "m.onnx"), "--chunk", "8",
                                    "--verify-steps", "64", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["parity"]["chunk"]["y"]["rel"] <= 1e-4 and (tmp_path / "m.chunk8.onnx").is_file()
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(main, ["export", "--onnx", str(ck), "-o", str(tmp_path / "n.onnx"), "--chunk", "100000"])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "use --chunk" in lines[0], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
