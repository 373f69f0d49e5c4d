"""The on-device script (python -m edgessm.runtime) in subprocesses, and the runtime's import
hygiene: it must run where torch / onnx / scipy / click cannot be imported, from the installed
package and from a plain copy of the runtime/ folder."""
from __future__ import annotations

import json
import os
import pathlib
import select
import shutil
import subprocess
import sys

import numpy as np
import pytest
import test_runtime_graphs as fx

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "onnx", "scipy", "click")


RTOL = ATOL = 2e-4  # float32 graph vs float64 oracle (see test_runtime.py)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fx.save_models(tmp_path_factory.mktemp("script"), {"m": {}})["m"]


@pytest.fixture(scope="module")
def blocker(tmp_path_factory):
    """A folder of stub modules that raise ImportError, put first on PYTHONPATH."""
    d = tmp_path_factory.mktemp("blocker")
    for name in BLOCKED:
        (d / f"{name}.py").write_text(  # record the attempt: a caught ImportError must not hide it
            f"import sys\nsys.__dict__.setdefault('blocked_import_attempts', []).append({name!r})\n"
            f"raise ImportError('{name} is blocked: the runtime must not import it')\n")
    return d


def _env(blocker=None):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if blocker is not None:
        env["PYTHONPATH"] = str(blocker)
    return env


def _script(*args, stdin=None, blocker=None, cwd=None, module="edgessm.runtime"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=_env(blocker), cwd=cwd or ROOT, timeout=120)


def _assert_one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_npy_in_npy_out(model, tmp_path):
    p, path, chunk = model
    xs = np.random.default_rng(0).standard_normal((13, p.d_input)).astype(np.float32)
    np.save(tmp_path / "x.npy", xs)
    r = _script(path, "--provider", "cpu", "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--chunk", chunk, "--json")
    assert r.returncode == 0, r.stderr
    ys = np.load(tmp_path / "y.npy")
    assert ys.shape == (13, p.d_output)  # no batch axis in, none out
    np.testing.assert_allclose(ys, fx.reference(p, xs[None])[0], rtol=RTOL, atol=ATOL)
    summary = json.loads(r.stdout)
    assert summary == {"output": str(tmp_path / "y.npy"), "steps": 13, "batch": 1, "providers": ["CPUExecutionProvider"]}
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temp file left


def test_batched_npy_to_stdout(model, tmp_path):
    p, path, _ = model
    xs = np.random.default_rng(1).standard_normal((2, 6, p.d_input)).astype(np.float32)
    np.save(tmp_path / "x.npy", xs)
    r = _script(path, "--provider", "cpu", "-i", tmp_path / "x.npy")
    assert r.returncode == 0, r.stderr
    rows = np.array([[float(v) for v in line.split(",")] for line in r.stdout.splitlines()])
    assert rows.shape == (6, 2 * p.d_output)  # one line per step: batch x d_output values
    want = fx.reference(p, xs)  # (2, 6, d_output)
    np.testing.assert_allclose(rows.reshape(6, 2, p.d_output).transpose(1, 0, 2), want, rtol=RTOL, atol=ATOL)


def test_csv_in_csv_out_with_header(model, tmp_path):
    p, path, _ = model
    xs = np.random.default_rng(2).standard_normal((7, p.d_input)).astype(np.float32)
    lines = ["a,b,c"] + [",".join(f"{v:.9g}" for v in row) for row in xs]
    lines.insert(3, "# a comment")
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    r = _script(path, "--provider", "cpu", "-i", tmp_path / "x.csv", "-o", tmp_path / "y.csv")
    assert r.returncode == 0, r.stderr
    got = np.loadtxt(tmp_path / "y.csv", delimiter=",", ndmin=2)
    assert got.shape == (7, p.d_output)
    np.testing.assert_allclose(got, fx.reference(p, xs[None])[0], rtol=RTOL, atol=ATOL)


def test_stdin_streams_each_output_before_the_next_input(model):
    """Write one line, read its output line, then write the next: proves per-step flushing."""
    p, path, _ = model
    xs = np.random.default_rng(3).standard_normal((5, p.d_input)).astype(np.float32)
    want = fx.reference(p, xs[None])[0]
    proc = subprocess.Popen([sys.executable, "-m", "edgessm.runtime", path, "--provider", "cpu", "-i", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT)
    try:
        for t, row in enumerate(xs):
            sep = "," if t % 2 else " "  # comma or whitespace separated
            proc.stdin.write(sep.join(f"{v:.9g}" for v in row) + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "no output line within 60 s: the script is not streaming"
            got = np.array([float(v) for v in proc.stdout.readline().split(",")])
            np.testing.assert_allclose(got, want[t], rtol=RTOL, atol=ATOL)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_stdin_to_npy_and_a_bad_line_leaves_no_file(model, tmp_path):
    p, path, _ = model
    r = _script(path, "--provider", "cpu", "-i", "-", "-o", tmp_path / "y.npy", "--batch", "2",
                stdin="1 2 3 4 5 6\n0,0,0,1,1,1\n")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npy").shape == (2, 2, p.d_output)  # --batch given: (B, L, d_output)
    r = _script(path, "--provider", "cpu", "-i", "-", "-o", tmp_path / "z.npy", stdin="1 2 3\n1 2\n")
    _assert_one_line_error(r, "stdin line 2: expected 3 values", "got 2")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["y.npy"]


def test_bench_json_fields(model):
    p, path, _ = model
    r = _script(path, "--provider", "cpu", "--bench", "200", "--warmup", "20", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["providers"] == ["CPUExecutionProvider"] and rep["batch"] == 1 and rep["threads"] == 1
    assert rep["n"] == 200 and rep["warmup"] == 20 and rep["io_binding"] is True and rep["cuda_graph"] is False
    for key in ("step", "floor"):
        st = rep[key]
        assert 0 < st["p50_us"] <= st["p90_us"] <= st["p99_us"] and st["steps_per_s"] > 0 and st["n"] == 200
    assert rep["step_over_floor_p50"] == pytest.approx(rep["step"]["p50_us"] / rep["floor"]["p50_us"])


def test_info(model):
    _, path, _ = model
    r = _script(path, "--provider", "cpu", "--info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert [s["input"] for s in info["states"]] == ["past_state.0", "past_state.1"]
    assert info["input"] == {"name": "x", "dtype": "float32", "shape": [3]}


def test_missing_model_exits_2_without_output(tmp_path, model):
    p, _, _ = model
    np.save(tmp_path / "x.npy", np.zeros((4, p.d_input), np.float32))
    r = _script(tmp_path / "nope.onnx", "--provider", "cpu", "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    _assert_one_line_error(r, "model file not found", "nope.onnx")
    assert not (tmp_path / "y.npy").exists()


def test_wrong_input_shape_exits_2_without_output(tmp_path, model):
    _, path, _ = model
    np.save(tmp_path / "x.npy", np.zeros((4, 5), np.float32))
    r = _script(path, "--provider", "cpu", "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    _assert_one_line_error(r, "input 'x'", "(1, 4, 3)", "got (1, 4, 5)", "d_input=3")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.npy"]  # no output, no temp file


def test_usage_errors_exit_2(model, tmp_path):
    _, path, _ = model
    _assert_one_line_error(_script(path, "--provider", "cpu"), "nothing to do")
    _assert_one_line_error(_script(path, "--provider", "cpu", "-i", "-", "-o", tmp_path / "y.txt", stdin=""),
                           "use a .npy or .csv file")
    _assert_one_line_error(_script(path, "--provider", "rocm", "--info"), "unknown provider 'rocm'")
    r = _script(path, "--provider", "cpu", "--cuda-graph", "--info")
    _assert_one_line_error(r, "cuda_graph needs the CUDA provider")


# ------------------------------------------------------------------ import hygiene
_DRIVER = """
import sys
import numpy as np
if {blocking!r}:
    for name in {blocked!r}:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(name + " imported although blocked: the blocker is not in effect")
    assert sys.blocked_import_attempts == list({blocked!r})
    sys.blocked_import_attempts.clear()
from {pkg} import StreamingSession, measure_floor
s = StreamingSession(sys.argv[1], provider="cpu")
y = s.step(np.zeros((1, 3), np.float32))
s.run(np.zeros((1, 4, 3), np.float32))
measure_floor(s, n=5, warmup=1)
leaked = [m for m in sys.modules if m.split(".")[0] in {blocked!r}]
assert not leaked, leaked
assert not getattr(sys, "blocked_import_attempts", []), sys.blocked_import_attempts
print("ok", y.shape)
"""


def test_runtime_leaves_torch_unimported_where_torch_exists(model, tmp_path):
    pytest.importorskip("torch")  # the real check: torch importable, yet never imported
    _, path, _ = model
    r = subprocess.run([sys.executable, "-c", _DRIVER.format(blocked=BLOCKED, pkg="edgessm.runtime", blocking=False),
                        path], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok (1, 2)", r.stderr


def test_installed_runtime_never_imports_torch(model, blocker, tmp_path):
    p, path, _ = model
    r = subprocess.run([sys.executable, "-c", _DRIVER.format(blocked=BLOCKED, pkg="edgessm.runtime", blocking=True), path],
                       capture_output=True, text=True, env=_env(blocker), cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok (1, 2)", r.stderr
    np.save(tmp_path / "x.npy", np.ones((3, p.d_input), np.float32))
    r = _script(path, "--provider", "cpu", "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--bench", "20",
                blocker=blocker, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npy").shape == (3, p.d_output)


def test_plain_copy_of_runtime_folder_runs(model, blocker, tmp_path):
    p, path, _ = model
    shutil.copytree(ROOT / "runtime", tmp_path / "edgessm_rt", ignore=shutil.ignore_patterns("__pycache__"))
    xs = np.random.default_rng(4).standard_normal((6, p.d_input)).astype(np.float32)
    np.save(tmp_path / "x.npy", xs)
    want = fx.reference(p, xs[None])[0]
    # as a package: python -m edgessm_rt
    r = _script(path, "--provider", "cpu", "-i", "x.npy", "-o", "y1.npy", blocker=blocker, cwd=tmp_path,
                module="edgessm_rt")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y1.npy"), want, rtol=RTOL, atol=ATOL)
    # as a directory script from elsewhere: python /path/edgessm_rt
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, str(tmp_path / "edgessm_rt"), path, "--provider", "cpu",
                        "-i", tmp_path / "x.npy", "-o", elsewhere / "y2.npy"],
                       capture_output=True, text=True, env=_env(blocker), cwd=elsewhere, timeout=120)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(elsewhere / "y2.npy"), want, rtol=RTOL, atol=ATOL)
    # the copy's API, with the blocked modules absent from sys.modules afterwards
    r = subprocess.run([sys.executable, "-c", _DRIVER.format(blocked=BLOCKED, pkg="edgessm_rt", blocking=True), path],
                       capture_output=True, text=True, env={**_env(blocker), "PYTHONPATH": f"{blocker}:{tmp_path}"},
                       cwd=elsewhere, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok (1, 2)", r.stderr
