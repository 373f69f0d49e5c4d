"""Map CompreSSM's LRU weights (camail-official/compressm ``compressm/models/lru.py``) onto edgessm's LRU model.

Input: flat dicts of numpy arrays keyed as equinox's ``jax.tree_util.keystr`` writes the model's leaves
(``.blocks[0].lru.nu_log``, ...), the BatchNorm running statistics by name
(``blocks[0].norm.running_mean`` / ``running_var``) and the reference constructor arguments. The format
readers (npz, eqx) live elsewhere; this module only knows which array goes where.

Correspondence (reference -> edgessm), per block i:
    linear_encoder.{weight,bias}          -> encoder (nn.Linear(input_dim, H))
    blocks[i].norm running mean / var     -> blocks[i].norm (ChannelBatchNorm, no affine, eps 1e-5)
    blocks[i].lru.{nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D} -> blocks[i].ssm (same names)
    blocks[i].glu.w1, w2 (w1(x) * sigmoid(w2(x)))  -> blocks[i].mixing = Linear(H, 2H) + GLU: rows [w1; w2]
    linear_layer                          -> decoder; mean over L before it = our causal running mean
                                             after it (a linear map commutes with the mean)
The reference ends in softmax: softmax(model(x)[:, -1]) are its outputs.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import ConfigError

__all__ = ["lru_config", "lru_model_from_arrays", "load_lru_layer"]

_LAYER_KEYS = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D")


def lru_config(constructor: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of CompreSSM's LRU(**constructor) classifier (the CompreSSM block, inference mode)."""
    c = constructor
    if c.get("dual") or c.get("use_embedding") or not c.get("classification", True):
        raise ConfigError("only CompreSSM's single-input LRU classifier (dual=False, use_embedding=False, "
                          "classification=True) is mapped")
    return ModelConfig(d_input=int(c["input_dim"]), d_output=int(c["output_dim"]), d_model=int(c["hidden_dim"]),
                       n_layers=int(c["num_blocks"]), d_state=int(c["state_dim"]), layer="lru",
                       lru_r_min=float(c["r_min"]), lru_r_max=float(c["r_max"]), lru_max_phase=float(c["max_phase"]),
                       norm="batch", activation="gelu_tanh", mixing="glu", prenorm=True,
                       dropout=float(c.get("drop_rate", 0.0)), pooling="mean")


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
                          constructor: Mapping[str, Any]):
    """An SSMModel (eval mode) computing the reference LRU's logits at every step."""
    from ..model import SSMModel

    cfg = lru_config(constructor)
    model = SSMModel(cfg)
    _set(model.encoder.weight, _get(weights, ".linear_encoder.weight"), ".linear_encoder.weight")
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
