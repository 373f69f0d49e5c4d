"""Checkpoint round trip and every way a user's file can be wrong (one-line CheckpointError)."""

import pytest
import torch

import edgessm
from edgessm.checkpoint import FORMAT_VERSION, read_metadata
from edgessm.config import ModelConfig
from edgessm.errors import CheckpointError
from edgessm.model import SSMModel


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = SSMModel(ModelConfig(d_model=8, n_layers=2, d_state=4, layer_d_state=[4, 3]))
    path = tmp_path / "m.safetensors"
    edgessm.save(model, path, provenance={"task": "mnist1d", "metrics": {"test_acc": 0.5}})
    return model, path


def test_roundtrip_config_weights_provenance(ckpt):
    model, path = ckpt
    loaded = edgessm.load(path)
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.provenance["task"] == "mnist1d" and loaded.provenance["metrics"]["test_acc"] == 0.5
    cfg, prov = read_metadata(path)
    assert cfg.layer_d_state == [4, 3] and prov["task"] == "mnist1d"
    assert not list(path.parent.glob("*.tmp"))  # no temp file left behind


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        edgessm.load(tmp_path / "nope.safetensors")


def test_truncated_file(ckpt, tmp_path):
    _, path = ckpt
    data = path.read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="(truncated|not a readable)"):
        edgessm.load(bad)


def test_not_safetensors(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        edgessm.load(bad)


def _write_raw(path, meta, tensors):
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=meta)


def test_foreign_safetensors(tmp_path):
    p = tmp_path / "foreign.safetensors"
    _write_raw(p, {"format": "pt"}, {"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="not an edgessm checkpoint"):
        edgessm.load(p)


def test_newer_format_version(ckpt, tmp_path):
    model, _ = ckpt
    p = tmp_path / "new.safetensors"
    _write_raw(p, {"edgessm.format_version": str(FORMAT_VERSION + 1), "edgessm.config": model.config.to_json()},
               {k: v.contiguous() for k, v in model.state_dict().items()})
    with pytest.raises(CheckpointError, match="upgrade edgessm"):
        edgessm.load(p)


def test_missing_tensor_and_nan(ckpt, tmp_path):
    model, _ = ckpt
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    meta = {"edgessm.format_version": str(FORMAT_VERSION), "edgessm.config": model.config.to_json()}
    p = tmp_path / "missing.safetensors"
    _write_raw(p, meta, {k: v for k, v in sd.items() if "decoder" not in k})
    with pytest.raises(CheckpointError, match="missing tensors.*decoder"):
        edgessm.load(p)
    sd["decoder.weight"][0, 0] = float("nan")
    p2 = tmp_path / "nan.safetensors"
    _write_raw(p2, meta, sd)
    with pytest.raises(CheckpointError, match="decoder.weight has NaN"):
        edgessm.load(p2)


def test_save_to_missing_folder_leaves_nothing(ckpt, tmp_path):
    model, _ = ckpt
    with pytest.raises(CheckpointError, match="does not exist"):
        edgessm.save(model, tmp_path / "no" / "such" / "m.safetensors")
