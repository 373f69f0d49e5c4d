"""Map CompreSSM's LRU weights (camail-official/compressm ``compressm/models/lru.py``) onto edgessm's LRU model.

Input: flat dicts of numpy arrays keyed as equinox's ``jax.tree_util.keystr`` writes the model's leaves
(``.blocks[0].lru.nu_log``, ...), the BatchNorm running statistics by name
(``blocks[0].norm.running_mean`` / ``running_var``) and the reference constructor arguments. The format
readers (npz, eqx) live elsewhere; this module only knows which array goes where.

Correspondence (reference -> edgessm), per block i:
    linear_encoder.{weight,bias}          -> encoder (nn.Linear(input_dim, H)); use_embedding: weight (vocab H)
                                             -> nn.Embedding (tokens (B L), the reference's (L 1) squeezed)
    blocks[i].norm running mean / var     -> blocks[i].norm (ChannelBatchNorm, no affine, eps 1e-5)
    blocks[i].lru.{nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D} -> blocks[i].ssm (same names)
    blocks[i].glu.w1, w2 (w1(x) * sigmoid(w2(x)))  -> blocks[i].mixing = Linear(H, 2H) + GLU: rows [w1; w2]
    linear_layer                          -> decoder; mean over L before it = our causal running mean
                                             after it (a linear map commutes with the mean)
The reference ends in softmax: softmax(model(x)[:, -1]) are its outputs.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import ConfigError

__all__ = ["lru_config", "lru_model_from_arrays", "load_lru_layer", "read"]

_LAYER_KEYS = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D")


def lru_config(constructor: Mapping[str, Any], layer_d_state: Optional[list[int]] = None) -> ModelConfig:
    """The ModelConfig of CompreSSM's LRU(**constructor) classifier (the CompreSSM block, inference mode).

    layer_d_state: each block's N when they differ (a model CompreSSM reduced in training)."""
    c = constructor
    if c.get("dual") or not c.get("classification", True):
        raise ConfigError("only CompreSSM's single-input LRU classifier (dual=False, classification=True) is mapped")
    vocab = int(c["vocab_size"]) if c.get("use_embedding") else 0
    return ModelConfig(d_input=int(c["input_dim"]), vocab_size=vocab, d_output=int(c["output_dim"]), d_model=int(c["hidden_dim"]),
                       n_layers=int(c["num_blocks"]), d_state=int(c["state_dim"]), layer="lru",
                       lru_r_min=float(c["r_min"]), lru_r_max=float(c["r_max"]), lru_max_phase=float(c["max_phase"]),
                       norm="batch", activation="gelu_tanh", mixing="glu", prenorm=True, final_norm=False,
                       dropout=float(c.get("drop_rate", 0.0)), pooling="mean",
                       layer_d_state=None if layer_d_state is None or len(set(layer_d_state)) == 1 else list(layer_d_state))


def _get(d: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in d:
        raise ConfigError(f"LRU weights: missing array {key!r} (have e.g. {sorted(d)[:3]})")
    return np.asarray(d[key])


def _set(param: torch.Tensor, value: np.ndarray, key: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ConfigError(f"LRU weights: {key!r} has shape {value.shape}, the model expects {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(param))


def load_lru_layer(layer, weights: Mapping[str, np.ndarray], prefix: str) -> None:
    """Copy ``{prefix}.nu_log`` ... into an LRULayer (prefix e.g. '.blocks[0].lru')."""
    for k in _LAYER_KEYS:
        _set(getattr(layer, k), _get(weights, f"{prefix}.{k}"), f"{prefix}.{k}")


def lru_model_from_arrays(weights: Mapping[str, np.ndarray], bn_stats: Mapping[str, np.ndarray],
                          constructor: Mapping[str, Any], layer_d_state: Optional[list[int]] = None):
    """An SSMModel (eval mode) computing the reference LRU's logits at every step."""
    from ..model import SSMModel

    cfg = lru_config(constructor, layer_d_state)
    model = SSMModel(cfg)
    _set(model.encoder.weight, _get(weights, ".linear_encoder.weight"), ".linear_encoder.weight")
    if cfg.vocab_size == 0:  # eqx.nn.Embedding has no bias
        _set(model.encoder.bias, _get(weights, ".linear_encoder.bias"), ".linear_encoder.bias")
    for i, blk in enumerate(model.blocks):
        load_lru_layer(blk.ssm, weights, f".blocks[{i}].lru")
        _set(blk.norm.running_mean, _get(bn_stats, f"blocks[{i}].norm.running_mean"), f"blocks[{i}].norm.running_mean")
        _set(blk.norm.running_var, _get(bn_stats, f"blocks[{i}].norm.running_var"), f"blocks[{i}].norm.running_var")
        lin = blk.mixing[0]
        w = np.concatenate([_get(weights, f".blocks[{i}].glu.w1.weight"), _get(weights, f".blocks[{i}].glu.w2.weight")])
        b = np.concatenate([_get(weights, f".blocks[{i}].glu.w1.bias"), _get(weights, f".blocks[{i}].glu.w2.bias")])
        _set(lin.weight, w, f".blocks[{i}].glu.w1/w2.weight")
        _set(lin.bias, b, f".blocks[{i}].glu.w1/w2.bias")
    _set(model.decoder.weight, _get(weights, ".linear_layer.weight"), ".linear_layer.weight")
    _set(model.decoder.bias, _get(weights, ".linear_layer.bias"), ".linear_layer.bias")
    model.provenance = {"imported_from": "camail-official/compressm LRU"}
    return model.eval()


# ---- `edgessm import --from lru`: the whole CompreSSM LRU classifier, or one LRULayer ---------------------
# LRU(...)'s constructor arguments (compressm/models/lru.py). The sizes come from the weights (a reduced model has
# its own state_dim per block); r_min, r_max, max_phase only shape the init and drop_rate is off at inference.
_DEFAULTS = {"classification": True, "output_step": 1, "r_min": 0.9, "r_max": 0.999, "max_phase": 6.28,
             "drop_rate": 0.1, "use_embedding": False, "vocab_size": None, "dual": False}
_FLAT = re.compile(r"^\[<flat index (\d+)>\](?:\[(\d+)\])?$")  # keystr of an eqx.nn.State leaf


def _source_layer(t: Mapping[str, np.ndarray], p: str):
    """The LRULayer at prefix p in float64: (SourceLayer, its parameters by name)."""
    from ..mimo import MimoSSM
    from ._common import SourceLayer

    v = {k: np.asarray(t[p + k], np.float64) for k in _LAYER_KEYS}
    N, H = v["B_re"].shape
    for k, shp in (("nu_log", (N,)), ("theta_log", (N,)), ("gamma_log", (N,)), ("B_im", (N, H)), ("C_re", (H, N)),
                   ("C_im", (H, N)), ("D", (H,))):
        if v[k].shape != shp:
            raise ValueError(f"{p}{k} has shape {v[k].shape}, an LRULayer with N={N}, H={H} stores {shp}")
    from ._common import ImportError_

    for k, a in v.items():
        if not np.all(np.isfinite(a)):
            raise ImportError_(f"lru: {p}{k} has non-finite values (NaN or inf); the training diverged, "
                               "export an earlier checkpoint")
    if np.any(np.exp(v["nu_log"]) == 0):  # |Lambda| = exp(-exp(nu_log)) rounds to 1: a mode that never decays
        raise ImportError_(f"lru: {p}nu_log has modes with |Lambda| = 1 (nu_log < -745); a stream of them "
                           "does not forget; these weights cannot be imported as a stable layer")
    # LRULayer.__call__: Lambda = exp(-exp(nu_log) + i exp(theta_log)), B_norm = (B_re + i B_im) exp(gamma_log)
    log_lam = -np.exp(v["nu_log"]) + 1j * np.exp(v["theta_log"])  # (N)
    lam = np.exp(log_lam)  # (N)
    B_norm = (v["B_re"] + 1j * v["B_im"]) * np.exp(v["gamma_log"])[:, None]  # (N H)
    C = v["C_re"] + 1j * v["C_im"]  # (H N)
    system = MimoSSM(lam, B_norm, C, v["D"], 1.0, log_lam)  # y = Re(C x) + D u: no factor 2

    def kernel(L: int) -> np.ndarray:  # (H H L): Re(C Lambda^l B_norm), the associative scan unrolled
        return np.einsum("op,pl,pi->oil", C, lam[:, None] ** np.arange(L), B_norm).real

    return SourceLayer(system, None, kernel), v


def _bn_stats(state: Optional[tuple[str, Mapping[str, np.ndarray]]], weights: Mapping[str, np.ndarray], n: int, H: int,
              key_map: Optional[Mapping[str, str]]) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Each block's BatchNorm running (mean r(H), var r(H)) from --state, and notes.

    Read by name (``blocks[i].norm.running_mean`` / ``running_var``), or from the raw eqx.nn.State keys
    (``[<flat index k>][0|1]``): by the config's ``bn_state_key_map`` when given, else by equinox's order, in which
    the State's indices follow the model's leaves (block 0's first_time flag, block 0's (mean, var), block 1's ...).
    """
    from ._common import ImportError_

    if state is None:
        if any(k.endswith(".norm.running_mean") for k in weights):
            state = ("the weights file", weights)
        else:
            raise ImportError_("lru: the BatchNorm running statistics are not in the weights (their .norm.*.init are "
                               "the initial buffers); pass --state bn_state.npz, the model's eqx.nn.State saved "
                               "like the weights (README 'Import your model')")
    where, s = state
    named = {k.lstrip("."): np.asarray(v) for k, v in s.items()}
    means, vars_, notes = [], [], []
    if all(f"blocks[{i}].norm.running_mean" in named and f"blocks[{i}].norm.running_var" in named for i in range(n)):
        means = [named[f"blocks[{i}].norm.running_mean"] for i in range(n)]
        vars_ = [named[f"blocks[{i}].norm.running_var"] for i in range(n)]
        flags = [named.get(f"blocks[{i}].norm.first_time") for i in range(n)]
    else:
        flat = {}
        for k, v in s.items():
            m = _FLAT.match(k)
            if m is None:
                raise ImportError_(f"lru: --state {where} key {k!r} is neither blocks[i].norm.running_mean/var nor an "
                                   "eqx.nn.State key ([<flat index k>]...); save the model's State with keystr keys")
            flat.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(v)
        if key_map:  # "[<flat index 1>][0]": "blocks[0].norm running mean ..."
            pos = {}
            for k, what in key_map.items():
                m, b = _FLAT.match(k), re.match(r"blocks\[(\d+)\]\.norm running (mean|var)", str(what))
                if m and b:
                    pos[(int(b.group(1)), b.group(2))] = (int(m.group(1)), m.group(2))
            try:
                means = [flat[pos[(i, "mean")][0]][pos[(i, "mean")][1]] for i in range(n)]
                vars_ = [flat[pos[(i, "var")][0]][pos[(i, "var")][1]] for i in range(n)]
            except KeyError:
                raise ImportError_(f"lru: bn_state_key_map does not name a running mean and var for each of the {n} "
                                   f"blocks present in --state {where}") from None
            flags = [None] * n
            notes.append("BatchNorm statistics read by the config's bn_state_key_map")
        else:
            pairs = [k for k in sorted(flat) if set(flat[k]) == {"0", "1"}]
            singles = [k for k in sorted(flat) if set(flat[k]) == {None}]
            if len(pairs) != n or len(singles) not in (0, n) or len(pairs) + len(singles) != len(flat):
                raise ImportError_(f"lru: --state {where} holds {len(flat)} State entries, not the {n} (mean, var) "
                                   f"pairs and first_time flags of {n} BatchNorm blocks; pass the model's own State "
                                   "or name the arrays blocks[i].norm.running_mean / running_var")
            means, vars_ = [flat[k]["0"] for k in pairs], [flat[k]["1"] for k in pairs]
            flags = [flat[k][None] for k in singles] if singles else [None] * n
            notes.append("BatchNorm statistics read from the eqx.nn.State in equinox's leaf order "
                         "(block i: first_time flag, then (mean, var))")
    for i in range(n):
        for name, a in (("mean", means[i]), ("var", vars_[i])):
            if np.asarray(a).shape != (H,):
                raise ImportError_(f"lru: block {i}'s BatchNorm running {name} has shape {np.asarray(a).shape}, "
                                   f"the block has H={H} channels; is --state this model's State?")
        if not np.all(np.asarray(vars_[i]) >= 0):
            raise ImportError_(f"lru: block {i}'s BatchNorm running var has negative entries; is --state this "
                               "model's State (mean and var swapped)?")
        if flags[i] is not None and bool(np.asarray(flags[i])):
            notes.append(f"block {i}'s BatchNorm never ran in training (first_time=True): its statistics are "
                         "the initial ones, as the source uses them")
    return [np.asarray(a) for a in means], [np.asarray(a) for a in vars_], notes


def read(tensors: Mapping[str, np.ndarray], options: dict[str, Any], prefix, path: str, state=None):
    """CompreSSM's LRU classifier (no prefix, ``.linear_encoder`` present) or one LRULayer (``--prefix``) -> Imported."""
    from ..model import SSMModel
    from ._common import Imported, ImportError_, Options, find_prefixes, pick_prefix

    opts = Options(options, _DEFAULTS, "lru")
    found = find_prefixes(tensors, "nu_log")
    if prefix is None and ".linear_encoder.weight" in tensors and found:
        level = "model"
    else:
        level = "layer"
        if state is not None:
            raise ImportError_("lru: --state is for the whole model's BatchNorm; a single LRULayer has none")
        p = pick_prefix(found, prefix, "LRULayer (a nu_log parameter)", path)
    if level == "layer":
        src, v = _source_layer(tensors, p)
        H, N = v["D"].shape[0], v["nu_log"].shape[0]
        cfg = ModelConfig(d_input=H, d_output=H, d_model=H, n_layers=1, d_state=N, layer="lru",
                          activation="identity", mixing="none", norm="none", prenorm=True, dropout=0.0,
                          pooling="none", task_type="regression", encoder="none", decoder="none",
                          residual=False, final_norm=False)
        model = SSMModel(cfg)
        with torch.no_grad():
            for k in _LAYER_KEYS:
                _set(getattr(model.blocks[0].ssm, k), np.asarray(tensors[p + k]), p + k)
        return Imported("lru", "layer", cfg, [src], {}, opts.effective(), opts.assumed, layout="B L H", prefix=p,
                        notes=["an LRULayer alone: y = Re(C x) + D u (BatchNorm, GELU, GLU and the residual live "
                               "in the block, in your backbone)"], model=model.eval())
    # the whole model
    if opts.get("dual", math=False):
        raise ImportError_("lru: dual=True compares two sequences through a DualHead; edgessm models map one "
                           "stream to one output, import each LRULayer with --prefix instead")
    if not opts.get("classification", math=False):
        raise ImportError_("lru: classification=False subsamples every output_step steps and ends in tanh, which "
                           "edgessm's head has no counterpart for; import each LRULayer with --prefix instead")
    # eqx.nn.Linear has a bias, eqx.nn.Embedding none: the keys say which encoder it is
    embedding = ".linear_encoder.bias" not in tensors
    if opts.has("use_embedding") and bool(opts.given["use_embedding"]) != embedding:
        raise ImportError_(f"lru: --config says use_embedding={opts.given['use_embedding']!r} but the weights have "
                           f"{'no' if embedding else 'a'} .linear_encoder.bias (an eqx.nn.{'Embedding' if embedding else 'Linear'}); "
                           "pass the config of this model")
    blocks = sorted({int(m.group(1)) for k in tensors for m in [re.match(r"^\.blocks\[(\d+)\]\.lru\.nu_log$", k)] if m})
    if not blocks:
        raise ImportError_(f"{path}: no .blocks[i].lru.nu_log keys beside .linear_encoder; save the whole LRU with "
                           "keystr keys, or pick one layer with --prefix")
    if blocks != list(range(len(blocks))):
        raise ImportError_(f"{path}: LRU blocks {blocks} are not numbered 0..{len(blocks) - 1}")
    for i in blocks:
        if f".blocks[{i}].norm.weight" in tensors or f".blocks[{i}].norm.bias" in tensors:
            raise ImportError_("lru: a BatchNorm with channelwise_affine=True is not CompreSSM's block "
                               "(channelwise_affine=False); edgessm's LRU block has no affine norm")
    layers = [_source_layer(tensors, f".blocks[{i}].lru.") for i in blocks]
    W_enc = np.asarray(tensors[".linear_encoder.weight"])  # (H d_input), Embedding: (vocab H)
    W_dec = np.asarray(tensors[".linear_layer.weight"])  # (O H)
    H = W_dec.shape[1]
    if W_enc.ndim != 2 or W_enc.shape[1 if embedding else 0] != H:
        raise ValueError(f".linear_encoder.weight has shape {W_enc.shape}, the blocks have H={H}")
    Ns = [v["nu_log"].shape[0] for _, v in layers]
    c = {"num_blocks": len(blocks), "input_dim": 1 if embedding else W_enc.shape[1], "output_dim": W_dec.shape[0],
         "hidden_dim": H, "use_embedding": embedding, "vocab_size": W_enc.shape[0] if embedding else None,
         "state_dim": Ns[0], "r_min": opts.get("r_min", math=False), "r_max": opts.get("r_max", math=False),
         "max_phase": opts.get("max_phase", math=False), "drop_rate": opts.get("drop_rate", math=False)}
    key_map = options.get("bn_state_key_map")
    means, vars_, bn_notes = _bn_stats(state, tensors, len(blocks), H, key_map if isinstance(key_map, dict) else None)
    bn = {}
    for i in blocks:
        bn[f"blocks[{i}].norm.running_mean"], bn[f"blocks[{i}].norm.running_var"] = means[i], vars_[i]
    model = lru_model_from_arrays(tensors, bn, c, layer_d_state=Ns)
    model.provenance = {}
    notes = ["CompreSSM LRU: BatchNorm (running statistics, eps 1e-5) -> LRU -> tanh GELU -> GLU -> residual per "
             "block, mean over L -> linear; the source's softmax is left out: softmax(y[:, -1]) are its outputs"]
    if embedding:
        notes.append("token input: the reference's (L, 1) token ids are edgessm's int64 (B, L)")
    return Imported("lru", "model", model.config, [s for s, _ in layers], {}, opts.effective(), opts.assumed,
                    layout="B L (tokens)" if embedding else "B L D", prefix="", notes=notes + bn_notes, model=model.eval())
