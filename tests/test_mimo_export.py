"""LRU / S5 models: compression with the certified bound checked on the saved model, export to the step-graph
contract (BatchNorm folded), parity with model(x) over 2048 steps, the runtime, and the CLI end to end."""
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import edgessm
from edgessm.cli import main
from edgessm.compress import CompressSpec, compress_model
from edgessm.config import ModelConfig
from edgessm.errors import RankError
from edgessm.export import export_onnx
from edgessm.export import graph as graph_mod
from edgessm.model import SSMModel, layer_systems


def _model(layer: str, P: int = 12, H: int = 8, seed: int = 0) -> SSMModel:
    kw = dict(norm="batch", activation="gelu_tanh") if layer == "lru" else {}
    cfg = ModelConfig(d_input=2, d_output=3, d_model=H, n_layers=2, d_state=P, layer=layer, **kw)
    torch.manual_seed(seed)
    model = SSMModel(cfg)
    with torch.no_grad():
        model.train()
        for _ in range(3):  # BatchNorm running statistics away from (0, 1), so the fold is exercised
            model(2.0 * torch.randn(8, 30, 2) + 1.0)
    return model.eval()


@pytest.mark.parametrize("layer", ["lru", "s5"])
def test_compress_certified_bound_on_saved_model(layer):
    model = _model(layer)
    systems = layer_systems(model)
    new, reports = compress_model(model, CompressSpec(rank=5))
    assert [b.ssm.N for b in new.blocks] == [r.system.N for r in reports] and all(r.system.N <= 5 for r in reports)
    for orig, rep in zip(systems, reports):
        k = int(rep.reduction.order[0])
        err = rep.measured_hinf[0]  # ||G - G_saved||_inf, the saved float32 parameters
        assert err == pytest.approx(orig.error_system(layer_systems(new)[rep.layer]).hinf_norm(), rel=1e-9)
        assert rep.reduction.hsv[0][k] * (1 - 1e-4) <= err  # lower bound (float32 rounding of the saved model)
        assert rep.bound_holds().all()
        assert rep.to_dict()["bound_holds"]
    # energy / tol mean what they mean for a channel
    _, reps = compress_model(model, CompressSpec(tol=0.05))
    assert all(r.reduction.bound[0] <= 0.05 * r.gain[0] for r in reps)
    with pytest.raises(RankError, match="balanced"):
        compress_model(model, CompressSpec(rank=3, method="modal"))


@pytest.mark.parametrize("layer,P,dense", [("lru", 6, True), ("s5", 8, True), ("lru", 20, False)])
def test_export_parity_2048_steps_and_runtime(layer, P, dense, tmp_path):
    """Step graph vs model(x) and the float64 oracle states over 2048 steps (<= 1e-4), then the runtime."""
    from edgessm.runtime import StreamingSession

    model = _model(layer, P=P)
    assert (P <= graph_mod.MIMO_DENSE_MAX_P_OVER_H * model.config.d_model) == dense
    res = export_onnx(model, tmp_path / "m.onnx", verify_steps=2048)  # raises ExportError over 1e-4
    par = res.parity["step"]
    assert par["y"]["rel"] <= 1e-4 and all(v["rel"] <= 1e-4 for k, v in par.items() if k.startswith("present"))
    assert res.node_counts["step"]["ssm"] == [4 if dense else 9] * 2
    meta = res.metadata["step"]
    states = json.loads(meta["edgessm.states"])
    assert states[0]["shape"] == [2 * P]  # one real state vector per layer, shared by the channels
    norm = json.loads(meta["edgessm.normalisation"])  # the graph has no BatchNorm node: the metadata says why
    assert norm["norm"] == model.config.norm and norm["folded"] == (model.config.norm == "batch")
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(res.path).graph.node)
    # the runtime (numpy + onnxruntime only) streams the same outputs as model(x)
    x = np.random.default_rng(1).standard_normal((2, 300, 2)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    sess = StreamingSession(tmp_path / "m.onnx", provider="cpu", batch=2)
    got = np.stack([sess.step(x[:, t]) for t in range(x.shape[1])], 1)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_cli_train_compress_export_lru(tmp_path):
    """`edgessm train --layer lru` on mnist1d, compress with a checked bound, export, run on the runtime."""
    def run(*args):
        res = CliRunner().invoke(main, list(map(str, args)))
        assert res.exit_code == 0, res.output + repr(res.exception)
        return res

    ck, small, onnx_path = tmp_path / "m.safetensors", tmp_path / "s.safetensors", tmp_path / "s.onnx"
    run("train", "--task", "mnist1d", "-o", ck, "--layer", "lru", "--norm", "batch", "--activation", "gelu_tanh",
        "--d-model", "8", "--n-layers", "2", "--d-state", "10", "--epochs", "1", "--batch-size", "100",
        "--task-option", "num_samples=600", "--quiet", "--json")
    assert edgessm.load(ck).config.layer == "lru"
    out = json.loads(run("compress", ck, "--rank", 4, "-o", small, "--json").stdout)
    assert out["modes_out"][0] <= 4 and out["bounds_hold"]
    res = json.loads(run("export", "--onnx", small, "-o", onnx_path, "--verify-steps", 2048, "--json").stdout)
    assert res["parity"]["step"]["y"]["rel"] <= 1e-4
    from edgessm.runtime import StreamingSession

    sess = StreamingSession(onnx_path, provider="cpu", batch=1)
    y = sess.step(np.zeros((1, 1), np.float32))
    assert y.shape == (1, 10) and np.all(np.isfinite(y))


@pytest.mark.parametrize("layer", ["lru", "s5"])
def test_in_training_reduction_mimo(layer):
    """CompreSSM's protocol step on an LRU/S5 model: rank target, and the energy rule with its minimum drop."""
    from edgessm.compress import in_training_reducer
    from edgessm.config import TrainConfig

    model = _model(layer, P=12)
    new, event = in_training_reducer(model, TrainConfig(reduce_rank=4))
    assert [b.ssm.N for b in new.blocks] == [e["to"] for e in event["layers"]] and all(
        e["to"] <= 4 for e in event["layers"])
    x = torch.randn(2, 20, 2)
    with torch.no_grad():
        assert torch.isfinite(new.eval()(x)).all()
    same, ev = in_training_reducer(model, TrainConfig(reduce_energy=0.999999, reduce_min_drop=0.5))
    assert same is model and ev["layers"] == []  # keeping all the energy cannot halve a layer


def test_s5_blocks_survive_compression(tmp_path):
    """A reduced S5 layer whose size the init blocks do not divide still builds, saves and loads."""
    cfg = ModelConfig(d_input=2, d_output=3, d_model=8, n_layers=1, d_state=8, layer="s5", s5_blocks=4)
    torch.manual_seed(0)
    model = SSMModel(cfg).eval()
    new, reports = compress_model(model, CompressSpec(rank=3))
    assert new.blocks[0].ssm.N == reports[0].system.N
    edgessm.save(new, tmp_path / "s.safetensors")
    back = edgessm.load(tmp_path / "s.safetensors")
    h1 = layer_systems(back)[0].impulse_response(50)
    h2 = reports[0].system.impulse_response(50)
    assert np.abs(h1 - h2).max() <= 1e-5 * np.abs(h2).max()


def test_lru_checkpoint_round_trip_keeps_batchnorm_statistics(tmp_path):
    model = _model("lru")
    edgessm.save(model, tmp_path / "m.safetensors")
    back = edgessm.load(tmp_path / "m.safetensors").eval()
    assert torch.equal(back.blocks[0].norm.running_var, model.blocks[0].norm.running_var)
    x = torch.randn(2, 30, 2)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
