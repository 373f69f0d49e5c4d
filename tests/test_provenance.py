"""Provenance: one schema, carried by every writer, read by export, info and --horizon auto."""
from __future__ import annotations

import json

import pytest

import edgessm
from edgessm.compress import CompressSpec, compress_model
from edgessm.errors import CheckpointError
from edgessm.export import export_onnx, read_metadata
from edgessm.provenance import check_provenance, derive, task_classes


def _trained_like() -> edgessm.SSMModel:
    m = edgessm.SSMModel(edgessm.ModelConfig(d_model=4, n_layers=1, d_state=4, d_output=3))
    m.provenance = derive(None, "train", task="toy", classes=["a", "b", "c"], seq_len=16)
    return m


def test_python_api_compress_keeps_task_classes_seq_len_and_bounds(tmp_path):
    new, _ = compress_model(_trained_like(), CompressSpec(rank=2))
    p = new.provenance
    assert p["command"] == "compress" and p["task"] == "toy" and p["classes"] == ["a", "b", "c"] and p["seq_len"] == 16
    assert p["reduction"]["bounds_hold"] and len(p["reduction"]["layers"]) == 1
    edgessm.save(new, tmp_path / "c.safetensors")
    again = compress_model(edgessm.load(tmp_path / "c.safetensors"), CompressSpec(rank=1, horizon="auto"))[0]
    assert again.provenance["reduction"]["selector"]["horizon"] == 16  # --horizon auto read the carried seq_len
    export_onnx(tmp_path / "c.safetensors", tmp_path / "c.onnx", verify_steps=8)
    meta = read_metadata(tmp_path / "c.onnx")
    assert meta["edgessm.task"] == "toy" and meta["edgessm.output"]["classes"] == ["a", "b", "c"]
    assert meta["edgessm.error_bounds"]["method"] == "balanced"


def test_class_names_from_older_writers_are_found():
    assert task_classes({"task_meta": {"class_names": [0, 1]}}) == ["0", "1"]
    assert task_classes({"task": {"name": "t", "classes": ["x"]}}) == ["x"]
    assert task_classes({}) is None


@pytest.mark.parametrize("prov,key", [({"classes": "abc"}, "classes"), ({"import": [1]}, "import"),
                                      ({"seq_len": "40"}, "seq_len"), ({"parent": 3}, "parent")])
def test_malformed_provenance_is_one_line_naming_the_key(prov, key):
    with pytest.raises(CheckpointError, match=f"provenance {key}="):
        check_provenance(prov, "checkpoint m.safetensors")
    json.dumps(prov)  # the cases are JSON a user could write
