"""Importers (edgessm import): models and layers trained with state-spaces/s4 (s4d.py, S4Block) and ag1988/dss.

The fixtures in tests/data/ are the upstream code's own weights and outputs (copied from the team's fixtures
folder: see tests/data/README.md); every import is held to 1e-5 relative of the upstream float64 outputs. Options
the fixtures do not cover are tested against independent oracles built from each option's definition (a Van Loan
matrix exponential for ZOH, the dense bilinear formula, the explicit softmax normalisation), not against our own
formulas.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner

import edgessm
from edgessm.cli import main
from edgessm.errors import CheckpointError
from edgessm.importers import check_import, import_model, source_options
from edgessm.importers.formats import read_tensors, sniff

DATA = Path(__file__).parent / "data"
BAR = 1e-5  # the bar: <= 1e-5 relative of the float64 reference outputs


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def run(*args, ok=True):
    res = CliRunner().invoke(main, list(map(str, args)))
    if ok:
        assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def imported(family: str, fixture: str):
    return import_model(DATA / fixture / "state_dict.pt", family, source_options(DATA / fixture / "config.json"))


@torch.no_grad()
def forward(model, x: np.ndarray, layout: str, dtype=torch.float64) -> np.ndarray:
    """The edgessm model on a source-layout input, output in the source's layout."""
    m = model.to(dtype).eval()  # dropout off, as the upstream outputs were made
    t = torch.from_numpy(x).to(dtype)
    if layout == "B H L":
        return m(t.transpose(1, 2)).transpose(1, 2).double().numpy()
    return m(t).double().numpy()


# ---- the fixtures: what the upstream code computed -----------------------------------------------------
FIXTURES = [("s4d", "s4d-standalone", "model"), ("s4", "s4-block-diag", "layer"), ("dss", "dss", "layer")]


@pytest.mark.parametrize("family,fixture,level", FIXTURES)
def test_import_reproduces_upstream_outputs(family, fixture, level):
    model, imp = imported(family, fixture)
    x, ref = np.load(DATA / fixture / "inputs.npy"), np.load(DATA / fixture / "outputs.npy")
    ref32 = np.load(DATA / fixture / "outputs_f32.npy")
    assert imp.level == level and imp.assumed == []  # every option the math needs came from the config
    y64 = forward(model, x, imp.layout)
    y32 = forward(model, x, imp.layout, torch.float32)
    if level == "model":  # example.py's logits are pooled: the last step of edgessm's causal running mean
        y64, y32 = y64[:, -1], y32[:, -1]
    assert y64.shape == ref.shape
    assert rel(y64, ref) <= BAR
    # float32 (the parameters as stored, run as they train): within 5x the upstream's own float32 error
    assert rel(y32, ref) <= 5 * rel(ref32, ref) + 1e-7


def test_source_kernel_formulas_equal_upstream_kernels():
    # The import check compares against these formulas, so they must be the upstream's (both float64: 1e-12).
    for family, fixture, name in [("s4d", "s4d-standalone", "kernels.npy"), ("s4", "s4-block-diag", "kernels.npy"),
                                  ("dss", "dss", "kernel_formula_f64.npy")]:
        _, imp = imported(family, fixture)
        K = np.load(DATA / fixture / name)  # (layers or channels, H, L)
        for i, layer in enumerate(imp.layers):
            assert rel(layer.kernel(K.shape[-1]), K[i]) <= 1e-12, (family, i)


@pytest.mark.parametrize("family,fixture,level", FIXTURES)
def test_import_check_passes_and_measures_float32_storage(family, fixture, level):
    model, imp = imported(family, fixture)
    c = check_import(model.float(), imp, L=1024 if imp.exact_length is None else imp.exact_length)
    assert c["passed"] and c["conv_vs_step_rel"] <= 1e-12  # float64 conv vs step: FFT rounding only
    for layer in c["layers"]:
        assert layer["kernel_rel_float64"] <= 1e-12  # the map to a DiagonalSSM is exact
        assert layer["kernel_rel"] <= 1e-5  # float32 parameter storage over 1024 steps (measured <= 1.1e-6)


def test_s4d_prenorm_variant_has_no_final_norm():
    model, _ = import_model(DATA / "s4d-standalone" / "state_dict.pt", "s4d", {"prenorm": True})
    assert model.config.prenorm and not model.config.final_norm
    assert isinstance(model.norm_f, torch.nn.Identity)


# ---- the CLI and the whole chain ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_imports(tmp_path_factory):
    d = tmp_path_factory.mktemp("imports")
    out = {}
    for family, fixture, _ in FIXTURES:
        ck = d / f"{family}.safetensors"
        res = run("import", DATA / fixture / "state_dict.pt", "--from", family, "--config",
                  DATA / fixture / "config.json", "-o", ck, "--json")
        out[family] = (ck, json.loads(res.stdout))
    return d, out


@pytest.mark.parametrize("family,fixture,level", FIXTURES)
def test_cli_import_writes_checkpoint_with_provenance(cli_imports, family, fixture, level):
    _, out = cli_imports
    ck, res = out[family]
    assert res["check"]["passed"] and res["level"] == level
    m = edgessm.load(ck)
    prov = m.provenance["import"]
    assert prov["family"] == family and prov["source"]["path"].endswith("state_dict.pt")
    assert len(prov["source"]["sha256"]) == 64 and prov["check"]["passed"]
    if family == "dss":  # config.json records the training length: compress --horizon auto can use it
        assert m.provenance["seq_len"] == 40
    x, ref = np.load(DATA / fixture / "inputs.npy"), np.load(DATA / fixture / "outputs.npy")
    y = forward(m, x, res["layout"])
    assert rel(y[:, -1] if level == "model" else y, ref) <= BAR  # the saved file, reloaded


def test_cli_human_output_prints_the_check(tmp_path):
    res = run("import", DATA / "dss" / "state_dict.pt", "--from", "dss", "--set", "version=exp",
              "-o", tmp_path / "d.safetensors")
    assert "PASS" in res.output and "kernel rel" in res.output
    assert "assumed upstream defaults" in res.output and "activation='gelu'" in res.output


@pytest.mark.parametrize("family,fixture,level", FIXTURES)
def test_chain_import_export_runtime_matches_upstream(cli_imports, family, fixture, level):
    from edgessm.runtime import StreamingSession

    d, out = cli_imports
    ck, res = out[family]
    onnx_path = d / f"{family}.onnx"
    run("export", ck, "-o", onnx_path, "--verify-steps", 64, "--json")
    x, ref = np.load(DATA / fixture / "inputs.npy"), np.load(DATA / fixture / "outputs.npy")
    xs = x.transpose(0, 2, 1) if res["layout"] == "B H L" else x  # (B L D)
    s = StreamingSession(str(onnx_path), provider="cpu", batch=xs.shape[0])
    y = np.stack([s.step(np.ascontiguousarray(xs[:, k])) for k in range(xs.shape[1])], 1)  # (B L O)
    y = y[:, -1] if level == "model" else (y.transpose(0, 2, 1) if res["layout"] == "B H L" else y)
    # float32 step graph vs the float64 upstream: the float32 model's own error is 2e-7..3e-7; 1e-5 is the bar
    assert rel(y, ref) <= BAR


def compress_and_export(d: Path, name: str, ck: Path, rank: int) -> tuple[Path, Path]:
    """`edgessm compress --rank` then `export` from the CLI; asserts the bound and the export's parity bar."""
    small, onnx_path = d / f"{name}.r{rank}.safetensors", d / f"{name}.r{rank}.onnx"
    summary = json.loads(run("compress", ck, "--rank", rank, "-o", small, "--json").stdout)
    assert summary["modes_out"] == [rank] * len(summary["modes_out"]) and summary["bounds_hold"]
    exp = json.loads(run("export", small, "-o", onnx_path, "--verify-steps", 64, "--json").stdout)
    assert exp["parity"]["step"]["y@float64"]["rel"] <= 1e-4  # export's own bar, float32 graph vs float64 model
    return small, onnx_path


@pytest.mark.parametrize("family", ["s4d", "s4", "dss"])
def test_chain_compress_export_runtime(cli_imports, family):
    from edgessm.runtime import StreamingSession

    d, out = cli_imports
    ck, res = out[family]
    small, onnx_path = compress_and_export(d, family, ck, 4)
    m = edgessm.load(small).double().eval()
    cfg = m.config
    x = np.random.default_rng(0).standard_normal((2, 50, cfg.d_input)).astype(np.float32)
    s = StreamingSession(str(onnx_path), provider="cpu", batch=2)
    y = np.stack([s.step(x[:, k]) for k in range(50)], 1)
    with torch.no_grad():
        y_ref = m(torch.from_numpy(x).double()).numpy()
    assert rel(y, y_ref) <= 1e-4  # float32 runtime vs the compressed model in float64
    assert m.provenance["import"]["family"] == family  # compression keeps where the model came from


# ---- formats --------------------------------------------------------------------------------------------
def _state_dict():
    return torch.load(DATA / "s4d-standalone" / "state_dict.pt", weights_only=True)


def test_formats_are_read_by_content_and_agree(tmp_path):
    from safetensors.torch import save_file

    sd = _state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.bin"))  # a misleading name
    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in sd.items()})
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3, "hyper_parameters": {"lr": 0.01}},
               tmp_path / "w.ckpt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert sniff(tmp_path / "w.bin") == "safetensors" and sniff(tmp_path / "w.npz") == "npz"
    assert sniff(tmp_path / "w.ckpt") == "torch-zip" and sniff(tmp_path / "legacy.pt") == "torch-legacy"
    base = {k: v.numpy() for k, v in sd.items()}
    for name in ("w.bin", "w.npz", "legacy.pt"):
        got = read_tensors(tmp_path / name)
        assert sorted(got) == sorted(base) and all(np.array_equal(got[k], base[k]) for k in base)
    ck = read_tensors(tmp_path / "w.ckpt")  # Lightning: state_dict unwrapped, the model. prefix kept
    assert sorted(ck) == sorted(f"model.{k}" for k in base)
    model, imp = import_model(tmp_path / "w.ckpt", "s4d", {})  # the prefix is found
    assert imp.prefix == "model." and imp.level == "model"


def test_flax_msgpack_reader_matches_npz():
    # The S5 fixture ships the same parameters as flax msgpack and as path-keyed npz (for the S5/LRU importers).
    s5 = DATA / "s5"
    a, b = read_tensors(s5 / "params.msgpack"), read_tensors(s5 / "params.npz")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_msgpack_reader_refuses_garbage(tmp_path):
    (tmp_path / "x.msgpack").write_bytes(b"\x82\xa1a\xc7\x05\x63hello")  # map with an unknown extension type
    with pytest.raises(CheckpointError, match="not a readable msgpack"):
        read_tensors(tmp_path / "x.msgpack")


# ---- user errors: one line, exit 2, nothing written --------------------------------------------------
def _fails(*args, match: str, out: Path | None = None):
    res = run(*args, ok=False)
    assert res.exit_code == 2, res.output
    msg = res.output.strip()
    assert msg.startswith("error:") and "\n" not in msg and "Traceback" not in msg and match in msg, msg
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return msg


def test_foreign_files_given_to_compress_say_what_to_run(tmp_path):
    from safetensors.torch import save_file

    pt = DATA / "s4d-standalone" / "state_dict.pt"
    _fails("compress", pt, "--rank", 4, "-o", tmp_path / "o.safetensors",
           match="this is a PyTorch file: import it with `edgessm import")
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    _fails("compress", tmp_path / "w.npz", "--rank", 4, "-o", tmp_path / "o.safetensors", match="--from s5|lru")
    torch.save({"state_dict": _state_dict()}, tmp_path / "w.ckpt")
    _fails("export", tmp_path / "w.ckpt", "-o", tmp_path / "o.onnx", match="PyTorch Lightning checkpoint")
    save_file({k: v.contiguous() for k, v in _state_dict().items()}, str(tmp_path / "plain.safetensors"))
    _fails("info", tmp_path / "plain.safetensors", match="edgessm import")


class _NotATensor:
    pass


def test_unsafe_pickle_is_refused_with_the_resave_line(tmp_path):
    torch.save({"state_dict": _state_dict(), "obj": _NotATensor()}, tmp_path / "bad.ckpt")
    out = tmp_path / "o.safetensors"
    msg = _fails("import", tmp_path / "bad.ckpt", "--from", "s4d", "-o", out, match="weights_only", out=out)
    assert "_NotATensor" in msg and "m['state_dict'] if isinstance(m, dict) else m.state_dict()" in msg


def test_output_never_overwrites_the_input(tmp_path):
    src = tmp_path / "in.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _state_dict().items()}, str(src))
    before = src.read_bytes()
    _fails("import", src, "--from", "s4d", "-o", src, match="is the input file")
    assert src.read_bytes() == before


def _s4_block(**over) -> dict[str, torch.Tensor]:
    sd = torch.load(DATA / "s4-block-diag" / "state_dict.pt", weights_only=True)
    sd.update(over)
    return sd


@pytest.mark.parametrize("setting,match", [
    ("bidirectional=true", "no stream exists"),
    ("channels=2", "channels > 1"),
    ("disc=foh", "disc='foh'"),
    ("gate=2", "gate=2"),
    ("activation=silu", "activation='silu'"),
    ("dt_transform=tanhexp", "dt_transform='tanhexp'"),
    ("disc=dss", "--length"),
])
def test_s4_refuses_what_it_cannot_represent(tmp_path, setting, match):
    out = tmp_path / "o.safetensors"
    _fails("import", DATA / "s4-block-diag" / "state_dict.pt", "--from", "s4", "--config",
           DATA / "s4-block-diag" / "config.json", "--set", setting, "-o", out, match=match, out=out)


def test_s4_refuses_dplr_and_unstable_modes(tmp_path):
    sd = _s4_block(**{"layer.kernel.P": torch.zeros(1, 32, 32, 2)})
    torch.save(sd, tmp_path / "dplr.pt")
    _fails("import", tmp_path / "dplr.pt", "--from", "s4", "-o", tmp_path / "o.safetensors", match="mode='dplr'")
    sd = _s4_block()
    torch.save(sd, tmp_path / "none.pt")  # real_transform='none' on positive A_real: Re(A) = -A_real < 0 is fine...
    A_real = sd["layer.kernel.A_real"].clone()
    A_real[0, 0] = -0.1  # ...but one negative entry makes Re(A) = +0.1: a growing mode
    torch.save({**sd, "layer.kernel.A_real": A_real}, tmp_path / "grow.pt")
    _fails("import", tmp_path / "grow.pt", "--from", "s4", "--set", "real_transform=none",
           "-o", tmp_path / "o.safetensors", match="Re(A) >= 0")


def test_dss_refuses_growing_modes_and_needs_version_and_length(tmp_path):
    sd = torch.load(DATA / "dss" / "state_dict.pt", weights_only=True)
    _fails("import", DATA / "dss" / "state_dict.pt", "--from", "dss", "-o", tmp_path / "o.safetensors",
           match="--set version=")
    Lam = torch.stack([-torch.exp(sd.pop("kernel.Lambda_log_neg_re")), sd.pop("kernel.Lambda_im")], -1)  # (N 2)
    torch.save({**sd, "kernel.Lambda": Lam}, tmp_path / "softmax.pt")
    _fails("import", tmp_path / "softmax.pt", "--from", "dss", "-o", tmp_path / "o.safetensors", match="--length")
    Lam[3, 0] = 0.05
    torch.save({**sd, "kernel.Lambda": Lam}, tmp_path / "grow.pt")
    _fails("import", tmp_path / "grow.pt", "--from", "dss", "--length", 40, "-o", tmp_path / "o.safetensors",
           match="Re(Lambda) = 0.05 >= 0")


def test_several_layers_need_a_prefix(tmp_path):
    sd = _s4_block()
    both = {**{f"backbone.layers.0.{k}": v for k, v in sd.items()}, **{f"backbone.layers.1.{k}": v for k, v in sd.items()}}
    torch.save(both, tmp_path / "two.pt")
    _fails("import", tmp_path / "two.pt", "--from", "s4", "-o", tmp_path / "o.safetensors", match="pick one with --prefix")
    model, imp = import_model(tmp_path / "two.pt", "s4", source_options(DATA / "s4-block-diag" / "config.json"),
                              prefix="backbone.layers.1")
    assert imp.prefix == "backbone.layers.1."


# ---- options the fixtures do not cover, against independent oracles ----------------------------------------
def _zoh_oracle(A, B, dt, L):
    """Impulse response of x' = A x + B u by Van Loan's matrix exponential (one mode at a time): (L,) per mode."""
    M = np.zeros((2, 2), complex)
    M[0, 0], M[0, 1] = A * dt, B * dt
    E = scipy.linalg.expm(M)  # [[exp(A dt), int_0^dt exp(A s) ds B], [0, 1]]
    return E[0, 1] * E[0, 0] ** np.arange(L)


def _bilinear_oracle(A, B, dt, L):
    """SSMKernelDense.bilinear's definition on one mode: dA = (1 - dt A/2)^-1 (1 + dt A/2), dB = dt (1 - dt A/2)^-1 B."""
    dA = (1 + dt * A / 2) / (1 - dt * A / 2)
    return dt * B / (1 - dt * A / 2) * dA ** np.arange(L)


def _s4_synthetic(rng, H=4, N=3, S=2, dt_tie=True, is_real=False, dt_fast=False):
    shape = (H, 1) if dt_tie else (H, N)
    log_dt = rng.uniform(np.log(1e-3), np.log(1e-1), shape)
    sd = {"layer.D": torch.randn(1, H, dtype=torch.float64),
          "layer.kernel.inv_dt": torch.tensor(np.arcsinh(log_dt) if dt_fast else log_dt),  # dt_fast: sinh first
          "layer.kernel.A_real": torch.tensor(rng.uniform(-1.0, 0.5, (S, N))),
          "output_linear.0.weight": torch.randn(2 * H, H, dtype=torch.float64),
          "output_linear.0.bias": torch.randn(2 * H, dtype=torch.float64)}
    if is_real:
        sd["layer.kernel.B"] = torch.randn(1, S, N, dtype=torch.float64)
        sd["layer.kernel.C"] = torch.randn(1, H, N, dtype=torch.float64)
    else:
        sd["layer.kernel.A_imag"] = torch.tensor(rng.uniform(0, 30, (S, N)))
        sd["layer.kernel.B"] = torch.randn(1, S, N, 2, dtype=torch.float64)
        sd["layer.kernel.C"] = torch.randn(1, H, N, 2, dtype=torch.float64)
    return {k: v.float() for k, v in sd.items()}


@pytest.mark.parametrize("opts", [
    {"disc": "zoh"}, {"disc": "bilinear"}, {"disc": "zoh", "dt_transform": "softplus"},
    {"disc": "bilinear", "dt_tie": False}, {"disc": "zoh", "is_real": True}, {"disc": "zoh", "bandlimit": 0.5},
    {"disc": "zoh", "dt_fast": True, "real_transform": "softplus", "imag_transform": "exp"},
])
def test_s4_options_against_definitions(tmp_path, opts):
    rng = np.random.default_rng(1)
    H, N, S, L = 4, 3, 2, 64
    sd = _s4_synthetic(rng, H, N, S, dt_tie=opts.get("dt_tie", True), is_real=opts.get("is_real", False),
                       dt_fast=opts.get("dt_fast", False))
    if opts.get("imag_transform") == "exp":  # the stored parameter is then the log of the frequency
        sd["layer.kernel.A_imag"] = torch.log(sd["layer.kernel.A_imag"] + 0.1)
    torch.save(sd, tmp_path / "b.pt")
    o = {k: v for k, v in opts.items() if k != "dt_tie"}
    model, imp = import_model(tmp_path / "b.pt", "s4", {**o, "transposed": False})
    t = {k: v.double().numpy() for k, v in sd.items()}
    f = {"exp": np.exp, "softplus": lambda x: np.log1p(np.exp(x)), "none": lambda x: x}
    inv = np.sinh(t["layer.kernel.inv_dt"]) if opts.get("dt_fast") else t["layer.kernel.inv_dt"]
    dt = np.broadcast_to(f[opts.get("dt_transform", "exp")](inv), (H, N))
    K = np.zeros((H, L))
    for h in range(H):
        s = h % S  # n_ssm: channel h uses copy h % S
        for n in range(N):
            a_re = -f[opts.get("real_transform", "exp")](t["layer.kernel.A_real"][s, n])
            if opts.get("is_real"):
                A, B, C = a_re, t["layer.kernel.B"][0, s, n], t["layer.kernel.C"][0, h, n]
            else:
                A = a_re - 1j * f[opts.get("imag_transform", "none")](t["layer.kernel.A_imag"][s, n])
                B = complex(*t["layer.kernel.B"][0, s, n])
                C = complex(*t["layer.kernel.C"][0, h, n])
            if opts.get("bandlimit") and dt[h, n] * abs(np.imag(A)) / (2 * np.pi) >= opts["bandlimit"] / 2:
                continue
            oracle = _bilinear_oracle if opts["disc"] == "bilinear" else _zoh_oracle
            K[h] += 2 * (C * oracle(A, B, dt[h, n], L)).real  # conjugate pair: 2 Re
    with torch.no_grad():
        K_model = model.blocks[0].ssm.kernel(L).numpy()
    assert rel(K_model, K) <= 1e-5  # float32-stored parameters vs the float64 definition
    c = check_import(model, imp, L)
    assert c["passed"]


def test_s4_disc_dss_is_exact_at_its_length(tmp_path):
    rng = np.random.default_rng(2)
    sd = _s4_synthetic(rng)
    torch.save(sd, tmp_path / "b.pt")
    L = 50
    model, imp = import_model(tmp_path / "b.pt", "s4", {"disc": "dss", "_length": L})
    t = {k: v.double().numpy() for k, v in sd.items()}
    dt = np.exp(t["layer.kernel.inv_dt"])  # (H 1)
    A = (-np.exp(t["layer.kernel.A_real"]) - 1j * t["layer.kernel.A_imag"])[np.arange(4) % 2]  # (H N)
    CB = (t["layer.kernel.C"][0, ..., 0] + 1j * t["layer.kernel.C"][0, ..., 1]) * \
         (t["layer.kernel.B"][0, ..., 0] + 1j * t["layer.kernel.B"][0, ..., 1])[np.arange(4) % 2]
    # DSS's softmax normalisation written out: exp(dtA l) / (A sum_{k<L} exp(dtA k)), no factor 2
    E = np.exp(dt[:, :, None] * A[:, :, None] * np.arange(L))  # (H N L)
    K = np.einsum("hn,hnl->hl", CB / (A * E.sum(-1)), E).real
    with torch.no_grad():
        assert rel(model.blocks[0].ssm.kernel(L).numpy(), K) <= 1e-5
    assert imp.exact_length == L


def _dss_synthetic(rng, H=4, N=5, version="exp", sep=True):
    sd = {"D": torch.randn(1, H), "kernel.W": torch.randn(1, H, N, 2),
          "output_linear.weight": torch.randn(H, H), "output_linear.bias": torch.randn(H, 1),
          "kernel.log_dt": torch.tensor(rng.uniform(np.log(3e-2), np.log(1e-1), (H, 2) if sep else (H,))).float()}
    # |Re Lambda| dt L >= 0.6 keeps softmax's 1e-7 regulariser below 2e-6 relative (the oracle leaves it out)
    re, im = rng.uniform(-1, -0.5, N), rng.uniform(-20, 20, N)
    if version.startswith("exp"):
        sd["kernel.Lambda_log_neg_re"] = torch.tensor(np.log(-re)).float()
        sd["kernel.Lambda_log_im" if version == "exp-re-im" else "kernel.Lambda_im"] = \
            torch.tensor(np.log(np.abs(im)) if version == "exp-re-im" else im).float()
    else:
        sd["kernel.Lambda"] = torch.tensor(np.stack([re, im], -1)).float()
    return sd


@pytest.mark.parametrize("version,sep", [("exp", False), ("exp-re-im", True), ("exp-no-scale", True),
                                         ("softmax", True), ("clip", True), ("clip-no-scale", False)])
def test_dss_versions_against_definitions(tmp_path, version, sep):
    rng = np.random.default_rng(3)
    H, N, L = 4, 5, 40
    sd = _dss_synthetic(rng, H, N, version, sep)
    torch.save(sd, tmp_path / "d.pt")
    model, imp = import_model(tmp_path / "d.pt", "dss", {"version": version, "_length": L})
    t = {k: v.double().numpy() for k, v in sd.items()}
    if version.startswith("exp"):
        im = np.exp(t["kernel.Lambda_log_im"]) if version == "exp-re-im" else t["kernel.Lambda_im"]
        Lam = -np.exp(t["kernel.Lambda_log_neg_re"]) + 1j * im
    else:
        Lam = t["kernel.Lambda"][:, 0] + 1j * t["kernel.Lambda"][:, 1]
    dt = np.exp(t["kernel.log_dt"]).reshape(H, -1)  # (H 1|2)
    dtL = dt[:, :1] * Lam.real + 1j * dt[:, -1:] * Lam.imag  # (H N); one dt when not separate
    W = t["kernel.W"][0, ..., 0] + 1j * t["kernel.W"][0, ..., 1]
    E = np.exp(dtL[:, :, None] * np.arange(L))  # (H N L)
    if version == "softmax":  # the structured softmax of the DSS paper: normalise over the L kernel positions
        s = 1.0 / (Lam * E.sum(-1))
    elif version.endswith("no-scale"):
        s = np.ones_like(dtL)
    else:  # ZOH-like: (exp(dt Lambda) - 1) / Lambda
        s = (np.exp(dtL) - 1) / Lam
    K = np.einsum("hn,hnl->hl", W * s, E).real  # no factor 2: all N modes are stored
    with torch.no_grad():
        assert rel(model.blocks[0].ssm.kernel(L).numpy(), K) <= 1e-5
    assert check_import(model, imp, L)["passed"]
    assert (imp.exact_length == L) == (version == "softmax")


def test_weight_norm_output_linear_is_resolved(tmp_path):
    sd = _s4_block()
    W = sd.pop("output_linear.0.weight").double()
    g, v = 2.0 * W.norm(dim=1, keepdim=True), 3.0 * W  # weight_norm stores a length g and a direction v
    torch.save({**sd, "output_linear.0.weight_g": g.float(), "output_linear.0.weight_v": v.float()}, tmp_path / "wn.pt")
    model, _ = import_model(tmp_path / "wn.pt", "s4", source_options(DATA / "s4-block-diag" / "config.json"))
    # W = g v / ||v|| row by row: twice the original rows (float32 storage: 1e-6)
    assert torch.allclose(model.blocks[0].mixing[0].weight.double(), 2.0 * W, rtol=1e-6, atol=1e-6)


def test_model_from_systems_needs_every_weight():
    from edgessm.model import model_from_systems

    _, imp = imported("s4", "s4-block-diag")
    with pytest.raises(ValueError, match="missing weights"):
        model_from_systems(imp.config, [l.system for l in imp.layers], {})


def test_s4d_single_layer_import_reproduces_upstream_layer_output(tmp_path):
    # One S4D module out of example.py's model, as a user with their own backbone has it.
    sd = _state_dict()
    torch.save({k[len("s4_layers.0."):]: v for k, v in sd.items() if k.startswith("s4_layers.0.")}, tmp_path / "l.pt")
    model, imp = import_model(tmp_path / "l.pt", "s4d", {})
    assert imp.level == "layer" and imp.layout == "B H L" and model.config.encoder == "none"
    x = torch.from_numpy(np.load(DATA / "s4d-standalone" / "inputs.npy")[:2]).double()  # (B L 1)
    u = x @ sd["encoder.weight"].double().T + sd["encoder.bias"].double()  # layer 0's input (postnorm: encoder out)
    ref = np.load(DATA / "s4d-standalone" / "layer0_s4d_out.npy")  # (B H L) the S4D module's output upstream
    assert rel(forward(model, u.transpose(1, 2).numpy(), "B H L"), ref) <= BAR


@pytest.mark.parametrize("args", [["--fp16", "--chunk", "8"], ["--target", "cuda", "--chunk", "4"]])
def test_layer_checkpoint_exports_every_graph_form(cli_imports, args):
    d, out = cli_imports
    ck, _ = out["s4"]
    o = d / f"s4{'_'.join(args)}.onnx"
    res = json.loads(run("export", ck, "-o", o, "--verify-steps", 32, *args, "--json").stdout)
    assert set(res["parity"]) == {"step", "chunk"}  # export verified both graphs against the model (its own bars)


def test_wrong_family_missing_tensor_and_edgessm_input_are_one_line(tmp_path, cli_imports):
    _, out = cli_imports
    o = tmp_path / "o.safetensors"
    _fails("import", DATA / "dss" / "state_dict.pt", "--from", "s4", "-o", o, match="the keys look like --from dss", out=o)
    sd = _s4_block()
    del sd["layer.kernel.A_real"]
    torch.save(sd, tmp_path / "cut.pt")
    _fails("import", tmp_path / "cut.pt", "--from", "s4", "-o", o, match="'layer.kernel.A_real' is missing", out=o)
    _fails("import", out["s4"][0], "--from", "s4", "-o", o, match="already an edgessm checkpoint", out=o)
    _fails("import", DATA / "dss" / "state_dict.pt", "--from", "dss", "--set", "version", "-o", o, match="KEY=VALUE")


def test_s4d_parameters_map_one_to_one():
    # s4d.py's parametrisation is edgessm's S4D layer: the import must keep the trained numbers themselves
    # (the branch of Lambda = log(A)/dt included), not just an equivalent system.
    model, _ = imported("s4d", "s4d-standalone")
    sd = _state_dict()
    for i, blk in enumerate(model.blocks):
        for name in ("log_dt", "log_A_real", "A_imag"):
            assert torch.allclose(getattr(blk.ssm, name), sd[f"s4_layers.{i}.kernel.{name}"], rtol=1e-6, atol=1e-6), name
        assert torch.allclose(blk.ssm.C, sd[f"s4_layers.{i}.kernel.C"], rtol=1e-5, atol=1e-6)


def _layernorm(x, w, b, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def test_s4d_prenorm_model_against_a_numpy_transcription_of_example_py():
    # No upstream output exists for the prenorm variant, so this follows example.py's forward line by line in
    # numpy float64 (LayerNorm before the layer, residual, mean over L, decoder; no final norm), with each S4D
    # layer's kernel from the s4d.py formula the fixture test pinned to the upstream's kernels.
    from scipy.special import erf

    model, imp = import_model(DATA / "s4d-standalone" / "state_dict.pt", "s4d", {"prenorm": True})
    t = {k: v.double().numpy() for k, v in _state_dict().items()}
    x = np.load(DATA / "s4d-standalone" / "inputs.npy").astype(np.float64)  # (B L 1)
    L = x.shape[1]
    h = x @ t["encoder.weight"].T + t["encoder.bias"]  # (B L H)
    for i, layer in enumerate(imp.layers):
        z = _layernorm(h, t[f"norms.{i}.weight"], t[f"norms.{i}.bias"])  # prenorm
        K = layer.kernel(L)  # (H L)
        y = np.stack([[np.convolve(z[b, :, c], K[c])[:L] for c in range(z.shape[2])] for b in range(z.shape[0])], 0)
        y = y.transpose(0, 2, 1) + z * t[f"s4_layers.{i}.D"]  # (B L H)
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))  # exact GELU
        v = y @ t[f"s4_layers.{i}.output_linear.0.weight"][:, :, 0].T + t[f"s4_layers.{i}.output_linear.0.bias"]
        H = v.shape[-1] // 2
        h = h + v[..., :H] / (1 + np.exp(-v[..., H:]))  # GLU, residual
    ref = h.mean(1) @ t["decoder.weight"].T + t["decoder.bias"]  # (B O)
    assert rel(forward(model, x.astype(np.float32), imp.layout)[:, -1], ref) <= 1e-12  # float64 both ways


def test_s4_hydra_run_config_is_read(tmp_path):
    # The s4 repo saves each run's config as .hydra/config.yaml: the block's arguments sit under model.layer,
    # with unresolved ${...} interpolations that are not values.
    yaml = pytest.importorskip("yaml")
    layer = {"_name_": "s4", "d_state": 64, "mode": "diag", "disc": "zoh", "dt_transform": "exp", "init": "diag-lin",
             "real_transform": "exp", "imag_transform": "none", "bandlimit": None, "dt_fast": False,
             "activation": "gelu", "l_max": "${oc.select:dataset.__l_max,null}", "transposed": False}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {"_name_": "model", "layer": [layer]}}))
    opts = source_options(tmp_path / "config.yaml")
    assert "l_max" not in opts and opts["disc"] == "zoh" and "_name_" not in opts
    model, imp = import_model(DATA / "s4-block-diag" / "state_dict.pt", "s4", opts)
    assert imp.assumed == []
    x, ref = np.load(DATA / "s4-block-diag" / "inputs.npy"), np.load(DATA / "s4-block-diag" / "outputs.npy")
    assert rel(forward(model, x, imp.layout), ref) <= BAR


def test_dss_glu_postact_is_read_from_the_keys(tmp_path):
    rng = np.random.default_rng(4)
    sd = _dss_synthetic(rng, H=4, N=5, version="exp")
    del sd["output_linear.weight"], sd["output_linear.bias"]
    sd["output_linear.0.weight"], sd["output_linear.0.bias"] = torch.randn(8, 4), torch.randn(8, 1)
    torch.save(sd, tmp_path / "glu.pt")
    model, imp = import_model(tmp_path / "glu.pt", "dss", {"version": "exp"})
    assert model.config.mixing == "glu" and imp.options["postact"] == "glu"
    u = torch.randn(2, 30, 4, dtype=torch.float64)
    m = model.double().eval()
    with torch.no_grad():
        z = torch.nn.functional.gelu(m.blocks[0].ssm(u))  # conv + D u, activation
        v = z @ sd["output_linear.0.weight"].double().T + sd["output_linear.0.bias"].double()[:, 0]
        ref = v[..., :4] * torch.sigmoid(v[..., 4:])  # TransposedLinear + GLU over the channel axis
        assert torch.allclose(m(u), ref, rtol=1e-12, atol=1e-12)
