"""Importing models trained with other codebases: source weights -> exact float64 DiagonalSSM per layer ->
an edgessm checkpoint, then a check of the result against the source's own formulas.

    import_model(path, family, ...)      -> (SSMModel, Imported)   the library call
    import_checkpoint(path, output, ...) -> dict                   what `edgessm import` runs: build, check, save
    check_import(model, imported, L)     -> dict                   kernel vs the source formula, conv vs step

Families: s4d (state-spaces/s4 models/s4/s4d.py and example.py's model), s4 (an S4Block with the diagonal
kernel), dss (ag1988/dss standalone DSS), s5 (lindermanlab/S5's S5SSM layer) and lru (CompreSSM's LRU model or
one LRULayer), each with the same ``read(tensors, options, prefix, path) -> Imported`` entry point and the format
readers in :mod:`edgessm.importers.formats`. S4D, S4 and DSS layers become S4D layers rebuilt from their float64
DiagonalSSM; LRU and S5 layers keep their own parametrisation (the family builds the model) and are checked
through their MimoSSM (impulse response r(O I L) against the source's formula).

A single layer imports as a model with encoder='none', decoder='none', residual=False and no norms: a checkpoint
holding just that layer (x (B L H) -> y (B L H)), which compress, export and the runtime accept like any other.
Someone with their own backbone keeps their other modules and swaps this layer for its ONNX step graph (or its
compressed torch layer): its state in and out is the only thing the backbone has to carry.
"""
from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import CheckpointError, ConfigError
from ._common import ImportError_, Imported, NotFound

__all__ = ["FAMILIES", "import_model", "import_checkpoint", "check_import", "source_options", "parse_sets", "summary",
           "ImportError_", "Imported"]

# family -> (module, entry point)
FAMILIES = {"s4d": ("s4", "read_s4d"), "s4": ("s4", "read_s4"), "dss": ("dss", "read_dss"),
            "s5": ("s5", "read"), "lru": ("lru", "read")}

# key endings that identify each family's layers (for a hint when --from names the wrong one)
_MARKS = {"s4d": ("kernel.log_A_real",), "s4": ("layer.kernel.inv_dt",), "dss": ("kernel.Lambda_log_neg_re", "kernel.W"),
          "s5": ("Lambda_re",), "lru": ("nu_log",)}

# The check's bar on a kernel recomputed from the stored (float32) parameters against the source's float64
# formula: float32 storage of Lambda, dt and C B rounds them by ~6e-8 relative, and the phase error grows with
# dt |Lambda| l; 1e-4 is ~100x what the fixtures measure and still far below any wrong convention (a sign, the
# factor 2 or the discretisation is an O(1) error).
KERNEL_BAR = 1e-4
# conv vs step of the imported model in float64: both exact, they differ by FFT rounding only.
STEP_BAR = 1e-9


def _reader(family: str):
    if family not in FAMILIES:
        raise ConfigError(f"--from {family!r} is not one of {', '.join(FAMILIES)}")
    mod, fn = FAMILIES[family]
    try:
        module = importlib.import_module(f"{__name__}.{mod}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{mod}":
            raise ConfigError(f"--from {family}: this edgessm has no {family} importer yet; upgrade edgessm") from None
        raise
    return getattr(module, fn)


def parse_sets(items) -> dict[str, Any]:
    """KEY=VALUE strings -> {key: value}; VALUE is read as JSON when it parses (numbers, true, null, "x"), else a string."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. --set disc=bilinear")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = {"None": None, "True": True, "False": False}.get(val, val)  # Python spellings; 'none' stays a string
    return out


def source_options(config: Optional[str | os.PathLike | dict] = None, sets: Optional[dict[str, Any]] = None,
                   length: Optional[int] = None) -> dict[str, Any]:
    """The source's constructor options from a config file (or dict) and KEY=VALUE overrides.

    A file may hold the constructor arguments themselves, or (like the fixtures' config.json) put them under
    "constructor_resolved" / "constructor"; "training_length_L" there (or --length) gives the length a
    length-normalised kernel (DSS softmax, S4 disc='dss') was trained at.
    """
    from .formats import json_or_yaml

    d: dict[str, Any] = {}
    if config is not None:
        raw = config if isinstance(config, dict) else json_or_yaml(config)
        if isinstance(raw.get("constructor_resolved"), dict) or isinstance(raw.get("constructor"), dict):
            d = {**(raw.get("constructor") or {}), **(raw.get("constructor_resolved") or {})}
        elif isinstance(raw.get("model"), dict) and isinstance(raw["model"].get("layer"), (dict, list)):
            # an s4-repo hydra run config (.hydra/config.yaml): the block's arguments are model.layer
            layer = raw["model"]["layer"]
            if isinstance(layer, list):
                if len(layer) != 1:
                    raise ImportError_(f"config {config}: model.layer lists {len(layer)} layer types; pass the one "
                                       "block's constructor arguments as a JSON object instead")
                layer = layer[0]
            d = {k: v for k, v in layer.items() if k != "_name_"}
        else:
            d = dict(raw)
        # unresolved hydra interpolations (${...}) are not values: leave them to the defaults
        d = {k: v for k, v in d.items() if not (isinstance(v, str) and v.startswith("${"))}
        if raw.get("training_length_L"):
            d["_length"] = int(raw["training_length_L"])
        if isinstance(raw.get("bn_state_key_map"), dict):  # the LRU fixture's map of eqx.nn.State keys
            d.setdefault("bn_state_key_map", raw["bn_state_key_map"])
    d.update(sets or {})
    if length is not None:
        d["_length"] = int(length)
    return d


def import_model(path: str | os.PathLike, family: str, options: Optional[dict[str, Any]] = None,
                 prefix: Optional[str] = None, state: Optional[str | os.PathLike] = None):
    """(SSMModel float32, Imported) from a source weights file; nothing is written.

    state: a second file of non-trainable buffers (``--state``: an LRU model's BatchNorm running statistics)."""
    import torch

    from ..model import model_from_systems
    from .formats import read_tensors

    from ..errors import EdgeSSMError
    from .formats import sniff

    read = _reader(family)
    tensors = read_tensors(path)
    if sniff(path) == "safetensors" and _is_edgessm(path):
        raise ImportError_(f"{path} is already an edgessm checkpoint; compress or export it directly")
    extra = {}
    if state is not None:
        if family != "lru":
            raise ImportError_(f"--state is the BatchNorm state of an LRU model; --from {family} has none, drop --state")
        extra["state"] = (str(state), read_tensors(state))
    try:
        imp: Imported = read(tensors, dict(options or {}), prefix, str(path), **extra)
    except NotFound as e:
        guess = [f for f, marks in _MARKS.items() if f != family and any(k.endswith(m) for k in tensors for m in marks)]
        raise ImportError_(f"{e}; {'the keys look like --from ' + ' or '.join(guess) if guess else 'is --from ' + family + ' right?'}") from None
    except EdgeSSMError:
        raise
    except KeyError as e:  # a tensor the family's layout needs is absent
        raise ImportError_(f"{path}: tensor {e} is missing for a {family} layer; is --from {family} (and --prefix) right?") from None
    except (ValueError, IndexError) as e:  # shapes that do not fit the family's layout
        raise ImportError_(f"{path}: the tensors do not have {family}'s shapes ({e}); is --from {family} right?") from None
    if imp.model is not None:  # LRU, S5: built in the layer's own parametrisation by the family
        return imp.model.float().eval(), imp
    weights = {k: torch.as_tensor(np.asarray(v, np.float64)).float() for k, v in imp.weights.items()}
    for i, layer in enumerate(imp.layers):
        weights[f"blocks.{i}.ssm.log_dt"] = torch.as_tensor(layer.log_dt).float()
    model = model_from_systems(imp.config, [l.system for l in imp.layers], weights, [l.lambdas for l in imp.layers])
    model.eval()
    return model, imp


def _is_edgessm(path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return "edgessm.format_version" in (f.metadata() or {})


def check_import(model, imp: Imported, L: int, seed: int = 0) -> dict[str, Any]:
    """The import check: per layer, the kernel recomputed from the stored parameters (float64 arithmetic) against
    the source's own formula in float64, and D; then the whole model's FFT convolution against its step loop
    (float64). Relative errors are max|diff| / max|reference|."""
    import torch

    from ..mimo import MimoSSM

    layers = []
    for i, (blk, src) in enumerate(zip(model.blocks, imp.layers)):
        mimo = isinstance(src.system, MimoSSM)
        with torch.no_grad():
            if mimo:  # (O I L) the stored layer's map, its float32 parameters evaluated in float64
                K = blk.ssm.to_system().impulse_response(L)
                K[:, :, 0] -= blk.ssm.to_system().D
            else:
                K = blk.ssm.kernel(L).numpy()  # (H L) from the float32-stored parameters
        K_src = src.kernel(L)  # (H L) or (O I L): the source's formula
        K_sys = src.system.impulse_response(L)  # the float64 system before storage (D at lag 0)
        D_src = np.diag(src.system.D) if mimo else src.system.D  # r(H): every family's skip is per channel
        if mimo:
            K_sys[:, :, 0] -= src.system.D
        else:
            K_sys[:, 0] -= src.system.D
        scale = max(float(np.max(np.abs(K_src))), 1e-300)
        D = blk.ssm.D.detach().double().numpy()
        layers.append({"layer": i, "H": src.system.n_out if mimo else src.system.H, "N": src.system.N,
                       "kernel_rel": float(np.max(np.abs(K - K_src))) / scale,
                       "kernel_rel_float64": float(np.max(np.abs(K_sys - K_src))) / scale,
                       "D_rel": float(np.max(np.abs(D - D_src)) / max(np.max(np.abs(D_src)), 1e-300))})
    m64 = copy.deepcopy(model).double().eval()
    cfg = model.config
    Lc = min(L, 256)
    g = torch.Generator().manual_seed(seed)
    if cfg.vocab_size > 0:  # a token model (an LRU with use_embedding): int64 ids (B L)
        x = torch.randint(0, cfg.vocab_size, (2, Lc), generator=g)
    else:
        x = torch.randn(2, Lc, cfg.d_input, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y_conv = m64(x)  # (B L O)
        state = [blk.ssm.init_state(2, torch.complex128) for blk in m64.blocks]  # c(B H N) or c(B P)
        if cfg.pooling == "mean":
            state.append(torch.zeros(2, cfg.d_output + 1, dtype=torch.float64))
        cache = [blk.ssm.step_params(torch.complex128) for blk in m64.blocks]
        ys = []
        for k in range(Lc):
            y, state = m64.step(x[:, k], state, cache)
            ys.append(y)
        y_step = torch.stack(ys, 1)
    step_rel = float((y_conv - y_step).abs().max() / y_conv.abs().max().clamp_min(1e-300))
    worst = max(l["kernel_rel"] for l in layers)
    return {"length": L, "layers": layers, "conv_vs_step_rel": step_rel, "kernel_bar": KERNEL_BAR,
            "step_bar": STEP_BAR, "passed": bool(worst <= KERNEL_BAR and step_rel <= STEP_BAR)}


def import_checkpoint(path: str | os.PathLike, output: str | os.PathLike, family: str,
                      options: Optional[dict[str, Any]] = None, prefix: Optional[str] = None,
                      length: Optional[int] = None, state: Optional[str | os.PathLike] = None) -> dict[str, Any]:
    """Import, check, and (only if the check passes) write ``output``; returns the check and the provenance."""
    from ..checkpoint import file_sha256, save

    src, out = Path(path), Path(output)
    for given in (src, Path(state) if state is not None else None):
        if given is not None and given.exists() and out.exists() and given.resolve() == out.resolve():
            raise CheckpointError(f"-o {out} is an input file; write the edgessm checkpoint to a new path")
    if out.suffix.lower() != ".safetensors":
        raise CheckpointError(f"-o {out}: an edgessm checkpoint is a .safetensors file; name it e.g. model.safetensors")
    model, imp = import_model(src, family, options, prefix, state)
    L = int(length or imp.exact_length or min(imp.max_length or 1024, 1024))
    check = check_import(model, imp, L)
    if not check["passed"]:
        worst = max(check["layers"], key=lambda l: l["kernel_rel"])
        raise ImportError_(f"import check failed, nothing written: layer {worst['layer']} kernel differs from the "
                           f"source formula by {worst['kernel_rel']:.2e} (bar {KERNEL_BAR:g}), conv vs step "
                           f"{check['conv_vs_step_rel']:.2e}; the weights do not match the {family} conventions "
                           "(check --from and --config)")
    prov = {"command": "import",
            "import": {"family": imp.family, "level": imp.level, "source": {"path": str(src), "sha256": file_sha256(src)},
                       **({"state": {"path": str(state), "sha256": file_sha256(state)}} if state is not None else {}),
                       "prefix": imp.prefix, "source_layout": imp.layout, "options": _jsonable(imp.options),
                       "assumed_defaults": imp.assumed, "exact_length": imp.exact_length,
                       "max_length": imp.max_length, "notes": imp.notes, "check": check}}
    trained_at = imp.exact_length or (options or {}).get("_length")
    if trained_at:  # the training length, when known: `compress --horizon auto` reads it
        prov["seq_len"] = int(trained_at)
    save(model, out, provenance=prov)
    return {"output": str(out), "family": imp.family, "level": imp.level, "prefix": imp.prefix, "layout": imp.layout,
            "config": model.config.to_dict(), "assumed_defaults": imp.assumed, "exact_length": imp.exact_length,
            "max_length": imp.max_length, "notes": imp.notes, "check": check}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple, dict)):
            out[k] = v if len(repr(v)) < 2000 else repr(v)[:2000]
        else:
            out[k] = repr(v)
    return out


def summary(r: dict[str, Any]) -> str:
    """The human view of an import: what was read, the check, what was assumed."""
    from ..report import table

    c = r["check"]
    rows = [[l["layer"], l["H"], l["N"], f"{l['kernel_rel']:.2e}", f"{l['kernel_rel_float64']:.2e}", f"{l['D_rel']:.1e}"]
            for l in c["layers"]]
    lines = [f"imported {r['family']} {r['level']}{' at ' + repr(r['prefix'].rstrip('.')) if r['prefix'] else ''} -> {r['output']}",
             f"check at L = {c['length']}: kernel vs the source's float64 formula (stored float32 | exact float64 map), "
             f"D; bar {c['kernel_bar']:g}",
             table(["layer", "H", "N", "kernel rel", "float64 map", "D rel"], rows),
             f"conv vs step (float64, L = {min(c['length'], 256)}): {c['conv_vs_step_rel']:.2e}  "
             f"{'PASS' if c['passed'] else 'FAIL'}"]
    if r.get("exact_length"):
        lines.append(f"exact at L = {r['exact_length']} only (the source normalises its kernel over L)")
    if r.get("max_length"):
        lines.append(f"matches the source for L <= {r['max_length']} (it truncates its kernel there; the stream does not)")
    if r.get("assumed_defaults"):
        lines.append("assumed upstream defaults (not in --config): " + ", ".join(r["assumed_defaults"]))
    lines += [f"note: {n}" for n in r.get("notes") or []]
    if r["level"] == "layer":
        lines.append(f"a layer checkpoint: x (B L H) -> y (B L H) (the source's layout was {r['layout']})")
    return "\n".join(lines)
