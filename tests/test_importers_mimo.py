"""Importers for the MIMO families (edgessm import --from s5 | lru): lindermanlab/S5's S5SSM layer and CompreSSM's
LRU classifier (or one of its LRULayers).

The fixtures in tests/data/s5 and tests/data/lru are the upstream code's own weights and float64 outputs (copied
from the team's fixtures folder: tests/data/README.md). Every fixture is imported from the CLI and held to 1e-5
relative of those outputs. Options the fixtures do not cover (bilinear, conj_sym=False, clip_eigs, step_rescale)
are tested against oracles built from each option's definition: a per-mode Van Loan matrix exponential for ZOH,
the dense bilinear formula, and a complex128 recurrence written out here, not against the importer's formulas.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

import edgessm
from edgessm.importers import check_import, import_model, source_options

from test_importers import BAR, DATA, compress_and_export, rel, run  # noqa: E402  the SISO importer tests' helpers and bar

S5, LRU = DATA / "s5", DATA / "lru"


def fails(*args, match: str, out: Path | None = None):
    res = run(*args, ok=False)
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert match in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    if out is not None:
        assert not out.exists()  # nothing half-written


@torch.no_grad()
def forward(model, x: np.ndarray, dtype=torch.float64) -> np.ndarray:
    m = model.to(dtype).eval()  # dropout off, as the upstream outputs were made
    return m(torch.from_numpy(x).to(dtype)).double().numpy()


def probs(model, x, dtype=torch.float64) -> np.ndarray:
    """CompreSSM's LRU outputs: softmax of the mean-pooled logits = softmax of edgessm's last step."""
    return torch.softmax(torch.from_numpy(forward(model, x, dtype)[:, -1]), -1).numpy()


# ---- every fixture through the CLI --------------------------------------------------------------------
# name: (CLI arguments after FILE, input, reference output, upstream float32 output or None, level)
CASES = {
    "s5-npz": ([S5 / "params.npz", "--from", "s5", "--config", S5 / "config.json"], "s5", "layer"),
    "s5-msgpack": ([S5 / "params.msgpack", "--from", "s5", "--config", S5 / "config.json"], "s5", "layer"),
    # the raw eqx.nn.State keys, mapped by config.json's bn_state_key_map
    "lru-model": ([LRU / "weights.npz", "--from", "lru", "--config", LRU / "config.json", "--state",
                   LRU / "bn_state.npz"], "lru", "model"),
    # the same keys without a map: read in equinox's State order
    "lru-model-nomap": ([LRU / "weights.npz", "--from", "lru", "--state", LRU / "bn_state.npz"], "lru", "model"),
    # named statistics
    "lru-model-named": ([LRU / "weights.npz", "--from", "lru", "--state", LRU / "bn_state_readable.npz"], "lru", "model"),
    "lru0": ([LRU / "weights.npz", "--from", "lru", "--prefix", ".blocks[0].lru"], "lru0", "layer"),
}


def _io(kind: str):
    if kind == "s5":
        return np.load(S5 / "inputs.npy"), np.load(S5 / "outputs.npy"), np.load(S5 / "outputs_f32.npy")
    if kind == "lru":
        return np.load(LRU / "inputs.npy"), np.load(LRU / "outputs.npy"), np.load(LRU / "outputs_f32.npy")
    return np.load(LRU / "lru0_inputs.npy"), np.load(LRU / "lru0_outputs.npy"), None


@pytest.fixture(scope="module")
def cli_imports(tmp_path_factory):
    d = tmp_path_factory.mktemp("mimo_imports")
    out = {}
    for name, (args, _, _) in CASES.items():
        ck = d / f"{name}.safetensors"
        res = run("import", *args, "-o", ck, "--json")
        out[name] = (ck, json.loads(res.stdout))
    return d, out


@pytest.mark.parametrize("name", list(CASES))
def test_cli_import_reproduces_upstream_outputs(cli_imports, name):
    _, out = cli_imports
    ck, res = out[name]
    args, kind, level = CASES[name]
    assert res["check"]["passed"] and res["level"] == level and res["family"] == args[2]
    for layer in res["check"]["layers"]:
        # float64 map vs the source formula: exact; the weights are float32 already, so storage adds nothing
        assert layer["kernel_rel_float64"] <= 1e-12 and layer["kernel_rel"] <= 1e-12 and layer["D_rel"] == 0
    assert res["check"]["conv_vs_step_rel"] <= 1e-12  # float64 FFT vs float64 step loop: rounding only
    m = edgessm.load(ck)  # the saved file, reloaded
    prov = m.provenance["import"]
    assert prov["family"] == args[2] and prov["source"]["path"].endswith(Path(args[0]).name)
    assert len(prov["source"]["sha256"]) == 64 and prov["check"]["passed"]
    if "--state" in map(str, args):
        assert len(prov["state"]["sha256"]) == 64 and prov["state"]["path"].endswith(".npz")
    x, ref, ref32 = _io(kind)
    y64 = probs(m, x) if level == "model" else forward(m, x)
    assert y64.shape == ref.shape and rel(y64, ref) <= BAR
    if ref32 is not None:  # float32, as it trains: within 5x the upstream's own float32 error
        y32 = probs(m, x, torch.float32) if level == "model" else forward(m, x, torch.float32)
        assert rel(y32, ref) <= 5 * rel(ref32, ref) + 1e-7


def test_cli_human_output_prints_the_check(tmp_path):
    res = run("import", LRU / "weights.npz", "--from", "lru", "--state", LRU / "bn_state.npz",
              "-o", tmp_path / "m.safetensors")
    assert "PASS" in res.output and "kernel rel" in res.output and "imported lru model" in res.output
    assert "equinox's leaf order" in res.output  # how the State was read is said
    res = run("import", S5 / "params.npz", "--from", "s5", "-o", tmp_path / "s.safetensors")
    # S5SSM has no default discretization (s5/train.py passes zoh): assumed, and said so
    assert "assumed upstream defaults" in res.output and "discretization='zoh'" in res.output


def test_source_formulas_equal_the_upstream_discretisation_and_outputs():
    """The check compares against these formulas, so they must be the upstream's (float64: 1e-12)."""
    _, imp = import_model(S5 / "params.npz", "s5", source_options(S5 / "config.json"))
    disc, sys = np.load(S5 / "discrete.npz"), imp.layers[0].system
    assert np.abs(sys.A - disc["Lambda_bar"]).max() <= 1e-12 and np.abs(sys.B - disc["B_bar"]).max() <= 1e-12
    for (path, fam, kw), (x, ref) in [((S5 / "params.npz", "s5", {}), _io("s5")[:2]),
                                       ((LRU / "weights.npz", "lru", {"prefix": ".blocks[0].lru"}), _io("lru0")[:2])]:
        _, imp = import_model(path, fam, {}, **kw)
        L = x.shape[1]
        K = imp.layers[0].kernel(L)  # (O I L) the source formula
        # causal convolution y_k = sum_l K_l u_(k-l) + D u_k, written out
        y = np.zeros((x.shape[0], L, K.shape[0]))
        for k in range(L):
            y[:, k] = np.einsum("oil,bli->bo", K[:, :, : k + 1], x[:, k::-1].astype(np.float64))
        y += x.astype(np.float64) * np.diag(imp.layers[0].system.D)
        assert rel(y, ref) <= 1e-12, fam


# ---- S5 options against their definitions -----------------------------------------------------------------
def _s5_oracle(params: dict, u: np.ndarray, disc: str, conj_sym: bool, step_rescale: float, clip: bool) -> np.ndarray:
    """S5SSM's output from the definitions: per state p a scalar continuous system x' = lam x + B_p u, discretised
    by the Van Loan exponential (ZOH) or the dense bilinear formula, run as a complex128 recurrence."""
    lam_re = params["Lambda_re"].astype(np.float64)
    lam = (np.minimum(lam_re, -1e-4) if clip else lam_re) + 1j * params["Lambda_im"].astype(np.float64)  # (P)
    B, C = params["B"].astype(np.float64), params["C"].astype(np.float64)
    Bt = B[..., 0] + 1j * B[..., 1]  # (P H)
    Ct = C[..., 0] + 1j * C[..., 1]  # (H P)
    dt = step_rescale * np.exp(params["log_step"][:, 0].astype(np.float64))  # (P)
    a, g = np.empty_like(lam), np.empty_like(lam)
    for p in range(lam.size):
        if disc == "zoh":  # expm([[lam, 1], [0, 0]] dt) = [[e^(lam dt), int_0^dt e^(lam s) ds], [0, 1]]
            E = scipy.linalg.expm(np.array([[lam[p], 1.0], [0.0, 0.0]]) * dt[p])
            a[p], g[p] = E[0, 0], E[0, 1]
        else:  # bilinear: (1 - dt/2 lam)^-1 (1 + dt/2 lam), (1 - dt/2 lam)^-1 dt
            a[p] = (1 + dt[p] / 2 * lam[p]) / (1 - dt[p] / 2 * lam[p])
            g[p] = dt[p] / (1 - dt[p] / 2 * lam[p])
    Bb = g[:, None] * Bt  # (P H)
    x = np.zeros((u.shape[0], lam.size), np.complex128)
    ys = []
    for k in range(u.shape[1]):
        x = a * x + u[:, k].astype(np.float64) @ Bb.T  # (B P)
        y = (x @ Ct.T).real  # (B H)
        ys.append((2 * y if conj_sym else y) + params["D"].astype(np.float64) * u[:, k])
    return np.stack(ys, 1)


@pytest.mark.parametrize("opts", [{"discretization": "bilinear"}, {"conj_sym": False},
                                  {"step_rescale": 0.25, "discretization": "zoh"},
                                  {"discretization": "bilinear", "step_rescale": 3.0, "conj_sym": False}])
def test_s5_options_against_definitions(tmp_path, opts):
    params = dict(np.load(S5 / "params.npz"))
    u = np.load(S5 / "inputs.npy")
    full = {"discretization": "zoh", "conj_sym": True, "step_rescale": 1.0, "clip_eigs": False, **opts}
    sets = [f"--set={k}={json.dumps(v)}" for k, v in full.items()]
    ck = tmp_path / "s5.safetensors"
    res = json.loads(run("import", S5 / "params.npz", "--from", "s5", *sets, "-o", ck, "--json").stdout)
    assert res["check"]["passed"] and res["assumed_defaults"] == []
    want = _s5_oracle(params, u, full["discretization"], full["conj_sym"], full["step_rescale"], False)
    assert rel(forward(edgessm.load(ck), u), want) <= 1e-10  # float64 model vs float64 oracle


def test_s5_clip_eigs_is_applied_and_without_it_growing_modes_are_refused(tmp_path):
    params = dict(np.load(S5 / "params.npz"))
    params["Lambda_re"] = params["Lambda_re"].copy()
    params["Lambda_re"][:3] = [1e-3, 0.0, -1e-6]  # right of -1e-4: clip_eigs moves them to -1e-4
    np.savez(tmp_path / "p.npz", **params)
    o = tmp_path / "o.safetensors"
    fails("import", tmp_path / "p.npz", "--from", "s5", "-o", o, match="do not decay", out=o)
    res = json.loads(run("import", tmp_path / "p.npz", "--from", "s5", "--set", "clip_eigs=true", "-o", o,
                         "--json").stdout)
    assert res["check"]["passed"] and any("clip_eigs" in n for n in res["notes"])
    u = np.load(S5 / "inputs.npy")
    assert rel(forward(edgessm.load(o), u), _s5_oracle(params, u, "zoh", True, 1.0, True)) <= 1e-10


def test_s5_layer_inside_a_bigger_flax_tree_needs_its_prefix(tmp_path):
    params = dict(np.load(S5 / "params.npz"))
    tree = {f"encoder/layers_{i}/seq/{k}": v for i in range(2) for k, v in params.items()}
    tree["encoder/encoder/kernel"] = np.ones((1, 16), np.float32)
    np.savez(tmp_path / "m.npz", **tree)
    o = tmp_path / "o.safetensors"
    fails("import", tmp_path / "m.npz", "--from", "s5", "-o", o, match="pick one with --prefix", out=o)
    res = json.loads(run("import", tmp_path / "m.npz", "--from", "s5", "--prefix", "encoder/layers_1/seq/",
                         "-o", o, "--json").stdout)
    assert res["prefix"] == "encoder/layers_1/seq/"
    x, ref, _ = _io("s5")
    assert rel(forward(edgessm.load(o), x), ref) <= BAR


@pytest.mark.parametrize("setting,match", [
    ("bidirectional=true", "non-causal"), ("discretization=euler", "discretization='euler' is not supported"),
    ("C_init=orthogonal", "C_init='orthogonal' is not supported"), ("H=8", "weights have H=16"),
    ("step_rescale=0", "must be positive")])
def test_s5_refuses_what_it_cannot_represent(tmp_path, setting, match):
    o = tmp_path / "o.safetensors"
    fails("import", S5 / "params.npz", "--from", "s5", "--set", setting, "-o", o, match=match, out=o)


def test_non_finite_weights_are_refused(tmp_path):
    params = dict(np.load(S5 / "params.npz"))
    params["D"] = params["D"].copy()
    params["D"][3] = np.nan
    np.savez(tmp_path / "p.npz", **params)
    fails("import", tmp_path / "p.npz", "--from", "s5", "-o", tmp_path / "o.safetensors", match="D has non-finite")
    w = dict(np.load(LRU / "weights.npz"))
    w[".blocks[0].lru.nu_log"] = np.full_like(w[".blocks[0].lru.nu_log"], -800.0)  # |Lambda| rounds to 1
    np.savez(tmp_path / "w.npz", **w)
    fails("import", tmp_path / "w.npz", "--from", "lru", "--prefix", ".blocks[0].lru", "-o", tmp_path / "o.safetensors",
          match="|Lambda| = 1")


def test_s5_bidirectional_keys_are_refused(tmp_path):
    params = dict(np.load(S5 / "params.npz"))
    C = params.pop("C")
    np.savez(tmp_path / "b.npz", C1=C, C2=C, **params)
    fails("import", tmp_path / "b.npz", "--from", "s5", "-o", tmp_path / "o.safetensors", match="non-causal")


# ---- LRU: the BatchNorm state and what is refused ------------------------------------------------------------
def test_lru_model_needs_its_batchnorm_state(tmp_path):
    o = tmp_path / "o.safetensors"
    fails("import", LRU / "weights.npz", "--from", "lru", "-o", o, match="pass --state bn_state.npz", out=o)
    # the state of some other model (wrong shapes) or a file that is not a State
    np.savez(tmp_path / "bad.npz", **{"[<flat index 1>][0]": np.zeros(8, np.float32),
                                      "[<flat index 1>][1]": np.ones(8, np.float32)})
    fails("import", LRU / "weights.npz", "--from", "lru", "--state", tmp_path / "bad.npz", "-o", o,
          match="not the 2 (mean, var) pairs", out=o)
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    fails("import", LRU / "weights.npz", "--from", "lru", "--state", tmp_path / "other.npz", "-o", o,
          match="neither blocks[i].norm.running_mean/var nor an eqx.nn.State key", out=o)
    fails("import", S5 / "params.npz", "--from", "s5", "--state", LRU / "bn_state.npz", "-o", o,
          match="--from s5 has none", out=o)
    fails("import", LRU / "weights.npz", "--from", "lru", "--state", LRU / "bn_state.npz", "-o", LRU / "bn_state.npz",
          match="-o")  # an input is never overwritten


def test_lru_state_orders_agree_and_statistics_enter_the_model():
    """The named, mapped and equinox-ordered readings give the same model; the statistics are not the init 0/1."""
    opts = source_options(LRU / "config.json")
    models = [import_model(LRU / "weights.npz", "lru", o, state=LRU / s)[0] for o, s in
              [(opts, "bn_state.npz"), ({}, "bn_state.npz"), ({}, "bn_state_readable.npz")]]
    named = np.load(LRU / "bn_state_readable.npz")
    for m in models:
        for i, blk in enumerate(m.blocks):
            assert np.array_equal(blk.norm.running_mean.numpy(), named[f"blocks[{i}].norm.running_mean"])
            assert np.array_equal(blk.norm.running_var.numpy(), named[f"blocks[{i}].norm.running_var"])
    assert np.abs(named["blocks[0].norm.running_mean"]).max() > 1e-3


@pytest.mark.parametrize("setting,match", [("dual=true", "DualHead"), ("classification=false", "tanh"),
                                           ("use_embedding=true", "use_embedding=True but the weights have a")])
def test_lru_refuses_what_it_cannot_represent(tmp_path, setting, match):
    o = tmp_path / "o.safetensors"
    fails("import", LRU / "weights.npz", "--from", "lru", "--state", LRU / "bn_state.npz", "--set", setting,
          "-o", o, match=match, out=o)


def _lru_reference(w: dict, bn: dict, x: np.ndarray) -> np.ndarray:
    """CompreSSM's LRU.__call__ in inference mode, transcribed in numpy float64 (one loop per step): the class
    probabilities (B O). x: float features (B L D), or int token ids (B L 1) with an Embedding encoder."""
    f = lambda k: w[k].astype(np.float64)
    if ".linear_encoder.bias" in w:
        h = x.astype(np.float64) @ f(".linear_encoder.weight").T + f(".linear_encoder.bias")  # (B L H)
    else:
        h = f(".linear_encoder.weight")[x[..., 0]]  # (B L H) eqx.nn.Embedding
    i = 0
    while f".blocks[{i}].lru.nu_log" in w:
        p = f".blocks[{i}]."
        mean, var = (bn[f"blocks[{i}].norm.running_{s}"].astype(np.float64) for s in ("mean", "var"))
        z = (h - mean) / np.sqrt(var + 1e-5)  # BatchNorm, inference mode
        lam = np.exp(-np.exp(f(p + "lru.nu_log")) + 1j * np.exp(f(p + "lru.theta_log")))  # (N)
        Bn = (f(p + "lru.B_re") + 1j * f(p + "lru.B_im")) * np.exp(f(p + "lru.gamma_log"))[:, None]  # (N H)
        C = f(p + "lru.C_re") + 1j * f(p + "lru.C_im")  # (H N)
        s, ys = np.zeros((h.shape[0], lam.size), np.complex128), []
        for k in range(h.shape[1]):
            s = lam * s + z[:, k] @ Bn.T
            ys.append((s @ C.T).real + f(p + "lru.D") * z[:, k])
        y = np.stack(ys, 1)  # (B L H)
        g = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))  # jax.nn.gelu, approximate=True
        a = g @ f(p + "glu.w1.weight").T + f(p + "glu.w1.bias")
        b = g @ f(p + "glu.w2.weight").T + f(p + "glu.w2.bias")
        h = h + a / (1 + np.exp(-b))  # GLU, dropout off, residual
        i += 1
    logits = h.mean(1) @ f(".linear_layer.weight").T + f(".linear_layer.bias")  # (B O)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_lru_embedding_encoder_against_a_numpy_transcription(tmp_path):
    w, bn = dict(np.load(LRU / "weights.npz")), dict(np.load(LRU / "bn_state_readable.npz"))
    x, ref, _ = _io("lru")
    assert rel(_lru_reference(w, bn, x), ref) <= 1e-12  # the transcription is the upstream model
    # use_embedding=True: eqx.nn.Embedding(vocab, H), weight (vocab H), no bias; tokens (L, 1)
    rng = np.random.default_rng(0)
    w[".linear_encoder.weight"] = rng.standard_normal((7, 16)).astype(np.float32)
    del w[".linear_encoder.bias"]
    np.savez(tmp_path / "tok.npz", **w)
    ck = tmp_path / "tok.safetensors"
    res = json.loads(run("import", tmp_path / "tok.npz", "--from", "lru", "--state", LRU / "bn_state.npz",
                         "-o", ck, "--json").stdout)
    assert res["check"]["passed"] and res["config"]["vocab_size"] == 7
    tokens = rng.integers(0, 7, size=(3, 40, 1))
    m = edgessm.load(ck).double().eval()
    with torch.no_grad():
        y = torch.softmax(m(torch.from_numpy(tokens[..., 0]))[:, -1], -1).numpy()
    assert rel(y, _lru_reference(w, bn, tokens)) <= 1e-12  # float64 model vs float64 transcription
    fails("import", tmp_path / "tok.npz", "--from", "lru", "--state", LRU / "bn_state.npz", "--set",
          "use_embedding=false", "-o", tmp_path / "o.safetensors", match="no .linear_encoder.bias")


def test_lru_reduced_blocks_of_different_sizes_import(tmp_path):
    """A model CompreSSM reduced in training has its own state_dim per block: block 1 cut to 20 modes."""
    w = dict(np.load(LRU / "weights.npz"))
    keep = 20
    for k in ("nu_log", "theta_log", "gamma_log", "B_re", "B_im"):
        w[f".blocks[1].lru.{k}"] = w[f".blocks[1].lru.{k}"][:keep]
    for k in ("C_re", "C_im"):
        w[f".blocks[1].lru.{k}"] = w[f".blocks[1].lru.{k}"][:, :keep]
    np.savez(tmp_path / "w.npz", **w)
    model, imp = import_model(tmp_path / "w.npz", "lru", {}, state=LRU / "bn_state.npz")
    assert [b.ssm.N for b in model.blocks] == [32, keep] and model.config.layer_d_state == [32, keep]
    c = check_import(model, imp, 512)
    assert c["passed"] and [l["N"] for l in c["layers"]] == [32, keep]


def test_wrong_family_is_named(tmp_path):
    o = tmp_path / "o.safetensors"
    fails("import", S5 / "params.npz", "--from", "lru", "-o", o, match="the keys look like --from s5", out=o)
    fails("import", LRU / "weights.npz", "--from", "s5", "-o", o, match="the keys look like --from lru", out=o)


# ---- the whole chain: import -> compress -> export -> runtime ------------------------------------------------
@pytest.mark.parametrize("name", ["lru-model", "s5-npz", "lru0"])
def test_chain_import_export_runtime_matches_upstream(cli_imports, name):
    from edgessm.runtime import StreamingSession

    d, out = cli_imports
    ck, _ = out[name]
    _, kind, level = CASES[name]
    onnx_path = d / f"{name}.onnx"
    run("export", ck, "-o", onnx_path, "--verify-steps", 64, "--json")
    x, ref, _ = _io(kind)
    s = StreamingSession(str(onnx_path), provider="cpu", batch=x.shape[0])
    y = np.stack([s.step(np.ascontiguousarray(x[:, k])) for k in range(x.shape[1])], 1)  # (B L O)
    if level == "model":
        y = torch.softmax(torch.from_numpy(y[:, -1]).double(), -1).numpy()
    # float32 step graph vs the float64 upstream: the float32 model's own error is ~2e-7..7e-7; 1e-5 is the bar
    assert rel(y, ref) <= BAR


@pytest.mark.parametrize("name", ["lru-model", "s5-npz"])
def test_chain_compress_export_runtime(cli_imports, name):
    from edgessm.runtime import StreamingSession

    d, out = cli_imports
    ck, _ = out[name]
    small, onnx_path = compress_and_export(d, name, ck, 8)
    m = edgessm.load(small).double().eval()
    assert [b.ssm.N for b in m.blocks] == [8] * len(m.blocks)
    x = np.random.default_rng(0).standard_normal((2, 50, m.config.d_input)).astype(np.float32)
    s = StreamingSession(str(onnx_path), provider="cpu", batch=2)
    y = np.stack([s.step(x[:, k]) for k in range(50)], 1)
    with torch.no_grad():
        y_ref = m(torch.from_numpy(x).double()).numpy()
    assert rel(y, y_ref) <= 1e-4  # float32 runtime vs the compressed model in float64
    assert m.provenance["import"]["family"] == name.split("-")[0]  # compression keeps where the model came from
