"""The `edgessm` CLI end to end on a tiny model, and its contract for user errors:
one line on stderr, exit code 2, no traceback, no output file left behind."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgessm
from edgessm.cli import main

TINY = ["--d-model", "8", "--n-layers", "2", "--d-state", "6", "--epochs", "1", "--batch-size", "100",
        "--task-option", "num_samples=600", "--quiet"]


def run(*args, ok=True):
    res = CliRunner().invoke(main, list(map(str, args)))
    if ok:
        assert res.exit_code == 0, res.output + repr(res.exception)
    return res


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ck = d / "m.safetensors"
    res = run("train", "--task", "mnist1d", "-o", ck, *TINY, "--json")
    return d, ck, json.loads(res.stdout)  # --json: stdout holds the JSON alone (logs go to stderr)


def test_train_writes_checkpoint_with_provenance(trained):
    d, ck, out = trained
    assert ck.exists() and out["ranks"] == [6, 6] and 0.0 <= out["test"] <= 1.0
    m = edgessm.load(ck)
    assert m.provenance["task"] == "mnist1d" and m.provenance["seq_len"] == 40
    assert m.provenance["metrics"]["test"]["accuracy"] == pytest.approx(out["test"])


def test_compress_finetune_export_info_eval(trained):
    d, ck, _ = trained
    small = d / "s.safetensors"
    res = run("compress", ck, "--rank", 3, "-o", small, "--report", d / "r.json", "--json")
    summary = json.loads(res.stdout)
    assert summary["modes_out"] == [3, 3] and summary["bounds_hold"]
    report = json.loads((d / "r.json").read_text())
    ch = report["layers"][0]["channels"]
    assert len(ch["rank"]) == 8 and all(m <= b * (1 + 1e-6) + 1e-5 * g for m, b, g in
                                        zip(ch["measured_hinf"], ch["bound"], ch["gain"]))
    tuned = d / "t.safetensors"
    run("finetune", small, "--task", "mnist1d", "--task-option", "num_samples=600", "-o", tuned, "--epochs", 1,
        "--quiet", "--json")
    assert edgessm.load(tuned).provenance["parent"]["path"] == str(small)
    onnx_path = d / "t.onnx"
    res = run("export", "--onnx", tuned, "-o", onnx_path, "--verify-steps", 50, "--json")
    assert json.loads(res.stdout)["parity"]["step"]
    info = json.loads(run("info", onnx_path, "--json").stdout)
    assert info["kind"] == "onnx"
    info = json.loads(run("info", small, "--json").stdout)
    assert info["modes_per_layer"] == [3, 3] and info["provenance"]["reduction"]["bounds_hold"]
    ev = json.loads(run("eval", tuned, "--task", "mnist1d", "--task-option", "num_samples=600", "--json").stdout)
    assert 0.0 <= ev["accuracy"] <= 1.0 and ev["n"] == 120


@pytest.mark.parametrize("args,needle", [
    (["--rank", "6"], "rank 6 is out of range"),
    (["--rank", "0"], "rank 0 is out of range"),
    (["--energy", "1.5"], "--energy must be in"),
    (["--rank", "2", "--energy", "0.9"], "give one of"),
    (["--rank", "2", "--method", "modal", "--horizon", "40"], "--horizon applies"),
    (["--layer-rank", "7=2"], "layer(s) [7]"),
])
def test_compress_bad_ranks_exit_2_and_write_nothing(trained, args, needle):
    d, ck, _ = trained
    out = d / "never.safetensors"
    res = run("compress", ck, "-o", out, *args, ok=False)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_compress_marginal_layer_names_layer_and_channel(trained, tmp_path):
    d, ck, _ = trained
    m = edgessm.load(ck)
    with torch.no_grad():
        m.blocks[1].ssm.log_A_real[3, 2] = -200.0  # Re(Lambda) = -e^-200: |A| rounds to 1 (marginal)
    bad = tmp_path / "marginal.safetensors"
    edgessm.save(m, bad)
    res = run("compress", bad, "--rank", 3, "-o", tmp_path / "o.safetensors", ok=False)
    assert res.exit_code == 2 and "layer 1" in res.output and "channel 3" in res.output, res.output
    assert not (tmp_path / "o.safetensors").exists()


def test_horizon_auto_and_explicit(trained):
    d, ck, _ = trained
    res = run("compress", ck, "--rank", 3, "--horizon", "auto", "-o", d / "h.safetensors", "--json")
    s = json.loads(res.stdout)
    assert s["selector"]["horizon"] == 40 and s["layers"][0]["method"] == "balanced-horizon"


def test_subprocess_errors_are_one_line_exit_2(tmp_path):
    """Real processes: missing file, corrupt file, unwritable export path. No traceback, nothing written."""
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 100)
    cases = [
        ["compress", str(tmp_path / "missing.safetensors"), "--rank", "2", "-o", str(tmp_path / "o.safetensors")],
        ["export", "--onnx", str(bad), "-o", str(tmp_path / "o.onnx")],
        ["info", str(tmp_path / "nothing.onnx")],
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "edgessm.cli", *args], capture_output=True, text=True)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("o.*"))


def test_export_to_unwritable_path(trained, tmp_path):
    d, ck, _ = trained
    res = run("export", "--onnx", ck, "-o", tmp_path / "no" / "dir" / "m.onnx", ok=False)
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_eval_rejects_incompatible_task(trained):
    d, ck, _ = trained
    res = run("eval", ck, "--task", "listops", "--task-option", "num_train=50", "--task-option", "num_test=20",
              "--task-option", "max_len=64", "--task-option", "min_len=16", ok=False)
    assert res.exit_code == 2 and "use the task the model was trained on" in res.output


def test_in_training_reduction_records_schedule(tmp_path):
    ck = tmp_path / "r.safetensors"
    res = run("train", "--task", "mnist1d", "-o", ck, *TINY[:-1], "--epochs", "2", "--reduce-rank", "3",
              "--reduce-until", "0.5", "--quiet", "--json")
    out = json.loads(res.stdout)
    assert out["ranks"] == [3, 3]
    sched = edgessm.load(ck).provenance["rank_schedule"]
    assert sched[0]["ranks"] == [6, 6] and sched[1]["ranks"] == [3, 3] and sched[1]["epoch"] == 1


def test_in_training_reduction_that_reduces_nothing_says_so(tmp_path):
    res = run("train", "--task", "mnist1d", "-o", tmp_path / "r.safetensors", *TINY, "--reduce-energy", "0.9999999")
    assert "reduced no layer" in res.stderr
    assert edgessm.load(tmp_path / "r.safetensors").provenance["classes"] == [str(i) for i in range(10)]


def test_compress_messages_for_methods_without_a_bound(trained):
    d, ck, _ = trained
    res = run("compress", ck, "--rank", 2, "--method", "modal", "-o", d / "modal.safetensors", "--json")
    layers = json.loads(res.stdout)["layers"]
    assert all(l["bound_holds"] is None and l["certified"] is False for l in layers)
    assert all(any("no certified bound" in w for w in l["warnings"]) for l in layers)
