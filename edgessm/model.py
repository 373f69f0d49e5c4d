"""The deep diagonal-SSM model, built from one :class:`~edgessm.config.ModelConfig`.

Dimensions: B batch, L length, H = d_model channels, N_i modes of layer i, O = d_output.

    x (B L d_input) | tokens (B L)
      -> encoder: Linear(d_input, H) | Embedding(vocab, H) | none         (B L H)
      -> n_layers x Block:                                                (B L H)
           z = Norm(h)                 (LayerNorm, or BatchNorm with running statistics at inference;
                                        prenorm; postnorm applies it after the residual)
           z = SSM(z) + D z            (S4D, DSS, LRU or S5 layer, FFT conv / step)
           z = dropout(activation(z))
           z = dropout(mixing(z))      (GLU: Linear(H, 2H) + GLU; or Linear(H, H); or none)
           h = h + z                   (residual=False: h = z)
      -> final LayerNorm (prenorm, final_norm)                            (B L H)
      -> decoder Linear(H, O) | none                                      (B L O)
      -> pooling: "mean" = causal running mean over steps; "last"/"none" = per-step output

encoder='none', decoder='none', residual=False and norm='none' leave the bare SSM block(s): that is how an
imported single layer (an S4Block or DSS layer for someone's own backbone) is held, compressed and exported.

Every operation is causal and per-step except the SSM, so ``step`` (one time step, explicit state)
reproduces ``forward`` at every step. A classification prediction is the output at the last valid step.

Step state (``init_state``): one complex64 tensor per SSM layer, c(B H N_i) for a SISO layer (S4D,
DSS) and c(B P_i) for a MIMO one (LRU, S5: one state shared by all channels), then, for mean pooling,
r(B O+1) float32 holding [running mean (O), steps seen (1)].

The CompreSSM LRU block (Chahine et al. 2025) is norm="batch", activation="gelu_tanh", mixing="glu":
h + dropout(GLU(dropout(GELU(LRU(BatchNorm(h)))))), no final norm.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .layers import SSM_PARAM_NAMES, build_layer
from .mimo import MimoSSM
from .ssm import DiagonalSSM

__all__ = ["SSMModel", "Block", "diagonal_systems", "with_diagonal_systems", "model_from_systems", "layer_systems",
           "with_mimo_systems", "is_mimo", "make_activation"]

_ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU,
                "tanh": nn.Tanh, "identity": nn.Identity}


def make_activation(name: str) -> nn.Module:
    """The module of config.activation ``name`` (the one table; the export checks a block's module against it)."""
    return _ACTIVATIONS[name]()

MIMO_LAYERS = ("lru", "s5")


def is_mimo(cfg: ModelConfig) -> bool:
    """True for layer families whose P modes are shared by all channels (one MimoSSM per layer)."""
    return cfg.layer in MIMO_LAYERS


class ChannelBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel axis of r(B L H) or r(B H) (statistics over batch and L in training).

    CompreSSM's eqx BatchNorm (mode "ema"): no affine, eps 1e-5, running statistics
    m <- 0.99 m + 0.01 batch (torch momentum 0.01). torch's running variance averages the unbiased batch
    variance, eqx's the biased one (a factor n / (n - 1), n = B L); inference uses the stored statistics.
    """

    def __init__(self, H: int):
        super().__init__(H, eps=1e-5, momentum=0.01, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "layer":
        return nn.LayerNorm(cfg.d_model)
    if cfg.norm == "batch":
        return ChannelBatchNorm(cfg.d_model)
    return nn.Identity()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, i: int):
        super().__init__()
        H = cfg.d_model
        self.prenorm = cfg.prenorm
        self.residual = cfg.residual
        self.norm = _norm(cfg)
        self.ssm = build_layer(cfg, i)
        self.activation = make_activation(cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.mixing == "glu":
            self.mixing: nn.Module = nn.Sequential(nn.Linear(H, 2 * H), nn.GLU(dim=-1))
        elif cfg.mixing == "linear":
            self.mixing = nn.Linear(H, H)
        else:
            self.mixing = nn.Identity()

    def _after_ssm(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = self.dropout(self.activation(z))  # (... H)
        z = self.dropout(self.mixing(z))  # (... H)
        h = h + z if self.residual else z
        return h if self.prenorm else self.norm(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """r(B L H) -> r(B L H)."""
        z = self.norm(h) if self.prenorm else h
        return self._after_ssm(h, self.ssm(z))

    def step(self, h: torch.Tensor, x: torch.Tensor, params=None) -> tuple[torch.Tensor, torch.Tensor]:
        """h r(B H), x c(B H N) (MIMO: c(B P)) -> (h_next r(B H), x_next)."""
        z = self.norm(h) if self.prenorm else h
        z, x = self.ssm.step(z, x, params)
        return self._after_ssm(h, z), x


class SSMModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        H = cfg.d_model
        if cfg.encoder == "none":
            self.encoder: nn.Module = nn.Identity()
        else:
            self.encoder = nn.Embedding(cfg.vocab_size, H) if cfg.vocab_size > 0 else nn.Linear(cfg.d_input, H)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layers)])
        self.norm_f = nn.LayerNorm(H) if (cfg.prenorm and cfg.norm == "layer" and cfg.final_norm) else nn.Identity()
        self.decoder = nn.Linear(H, cfg.d_output) if cfg.decoder == "linear" else nn.Identity()
        self.provenance: dict = {}  # task, metrics, reduction summary...; saved in the checkpoint metadata

    # ---- training mode ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x r(B L d_input) float or int64 tokens (B L) -> r(B L O) per-step outputs."""
        h = self.encoder(x)  # (B L H)
        for block in self.blocks:
            h = block(h)  # (B L H)
        y = self.decoder(self.norm_f(h))  # (B L O)
        if self.config.pooling == "mean":
            steps = torch.arange(1, y.shape[1] + 1, device=y.device, dtype=y.dtype)  # (L)
            y = torch.cumsum(y, dim=1) / steps[:, None]  # (B L O) causal running mean
        return y

    # ---- step mode -------------------------------------------------------------------------
    def init_state(self, batch: int) -> list[torch.Tensor]:
        state = [blk.ssm.init_state(batch) for blk in self.blocks]  # c(B H N_i) or c(B P_i) each
        if self.config.pooling == "mean":
            state.append(torch.zeros(batch, self.config.d_output + 1, device=self.device))  # (B O+1)
        return state

    def step_cache(self) -> list:
        """Each layer's step constants (``layer.step_params()``: the delta-form a = A_bar - 1 as a float-float
        pair, B_bar, C), computed once for a run of ``step`` calls."""
        return [blk.ssm.step_params() for blk in self.blocks]

    def step(self, x_t: torch.Tensor, state: list[torch.Tensor], cache: Optional[list] = None
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One time step. x_t r(B d_input) or int64 (B,) -> (y_t r(B O), next_state). Pure: state in, state out."""
        cache = cache if cache is not None else self.step_cache()
        h = self.encoder(x_t)  # (B H)
        nxt = []
        for block, x, params in zip(self.blocks, state, cache):
            h, x = block.step(h, x, params)  # (B H), (B H N)
            nxt.append(x)
        y = self.decoder(self.norm_f(h))  # (B O)
        if self.config.pooling == "mean":
            pool = state[len(self.blocks)]  # (B O+1)
            mean, count = pool[:, :-1], pool[:, -1:] + 1.0  # (B O), (B 1)
            y = mean + (y - mean) / count  # running mean update, stable for long streams
            nxt.append(torch.cat([y, count], dim=1))
        return y, nxt

    # ---- parameters ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.blocks[0].ssm.D.device  # every model has an SSM layer; encoder and decoder may be absent

    def ssm_parameters(self) -> list[nn.Parameter]:
        """Lambda and dt parameters (own learning rate, no weight decay, as in S4)."""
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] in SSM_PARAM_NAMES]

    def other_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] not in SSM_PARAM_NAMES]

    def state_size(self) -> list[int]:
        """Real state numbers per layer: 2 per active complex mode, 1 per real mode, 0 per padding mode
        (DiagonalSSM.real_state_dims / MimoSSM.real_state_dims). The step graph carries 2 floats per stored
        complex state number: ``step_state_floats``."""
        return [int(np.sum(s.real_state_dims())) for s in layer_systems(self)]

    def step_state_floats(self) -> list[int]:
        """Floats per layer in the step state as the graph and ``step`` carry it (2 per stored complex number)."""
        return [2 * math.prod(blk.ssm.state_shape) for blk in self.blocks]


def diagonal_systems(model: SSMModel) -> list[DiagonalSSM]:
    """Each SSM layer's discretised system, float64 (the input of compression, export and parity tests)."""
    return [blk.ssm.to_diagonal() for blk in model.blocks]


def with_diagonal_systems(model: SSMModel, systems: list[DiagonalSSM]) -> SSMModel:
    """A new S4D model equal to ``model`` except that layer i realises ``systems[i]`` (any N_i).

    Keeps every non-SSM weight and each layer's dt; DSS layers become S4D layers because a
    reduced system's eigenvalues are per channel.
    """
    if len(systems) != len(model.blocks):
        raise ValueError(f"expected {len(model.blocks)} systems, got {len(systems)}")
    cfg = model.config.replace(layer="s4d", layer_d_state=[s.N for s in systems])
    new = SSMModel(cfg).to(model.device)
    own = {k: v for k, v in model.state_dict().items() if ".ssm." not in k}
    missing, _ = new.load_state_dict(own, strict=False)
    if any(".ssm." not in k for k in missing):  # only SSM tensors may differ; they are set below
        raise RuntimeError(f"with_diagonal_systems: non-SSM weights missing: {missing}")
    for i, (blk_new, blk_old, sys) in enumerate(zip(new.blocks, model.blocks, systems)):
        with torch.no_grad():
            blk_new.ssm.log_dt.copy_(blk_old.ssm.log_dt)
        blk_new.ssm.load_diagonal(sys, layer=i)
    return new


def model_from_systems(config: ModelConfig, systems: list[DiagonalSSM], weights: dict[str, torch.Tensor],
                       lambdas: Optional[list] = None) -> SSMModel:
    """A float32 S4D model built from per-layer discrete systems and its non-SSM weights, with no template model.

    config: the model's shape (layer and d_state are taken from ``systems``: layer i gets N_i = systems[i].N).
    weights: every non-SSM tensor of the model under its SSMModel state-dict name (encoder.weight,
      blocks.0.mixing.0.weight, ...), plus optionally ``blocks.{i}.ssm.log_dt`` r(H): the dt each layer keeps
      (default dt = 1). Nothing else: a missing or unknown name is an error, never silently left at its init.
    lambdas: optional c(H N_i) per layer, the source's continuous eigenvalues. ZOH fixes Lambda from A = exp(dt Lambda)
      only modulo 2 pi i / dt; this picks the branch nearest the source's, so the stored A_imag stays the trained one.

    The map is exact in float64; storing the parameters in float32 rounds them (the caller measures that).
    """
    if len(systems) != config.n_layers:
        raise ValueError(f"model_from_systems: config has {config.n_layers} layers, got {len(systems)} systems")
    Ns = [s.N for s in systems]
    if any(s.H != config.d_model for s in systems):
        raise ValueError(f"model_from_systems: every system needs H = d_model = {config.d_model}, got {[s.H for s in systems]}")
    cfg = config.replace(layer="s4d", d_state=Ns[0], layer_d_state=None if len(set(Ns)) == 1 else Ns)
    model = SSMModel(cfg)
    own = {k: v for k, v in model.state_dict().items() if ".ssm." not in k}
    dts = {k: v for k, v in weights.items() if ".ssm." in k}
    missing = sorted(set(own) - set(weights))
    unknown = sorted(set(weights) - set(own) - {f"blocks.{i}.ssm.log_dt" for i in range(cfg.n_layers)})
    if missing or unknown:
        raise ValueError(f"model_from_systems: missing weights {missing[:4]}, unknown weights {unknown[:4]}")
    for k, v in own.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ValueError(f"model_from_systems: {k} has shape {tuple(weights[k].shape)}, the model needs {tuple(v.shape)}")
    model.load_state_dict({**{k: torch.as_tensor(weights[k]) for k in own},
                           **{k: v for k, v in model.state_dict().items() if ".ssm." in k}})
    for i, (blk, sys) in enumerate(zip(model.blocks, systems)):
        with torch.no_grad():
            log_dt = dts.get(f"blocks.{i}.ssm.log_dt")
            blk.ssm.log_dt.copy_(torch.as_tensor(log_dt) if log_dt is not None else torch.zeros(cfg.d_model))
        blk.ssm.load_diagonal(sys, layer=i)
        with torch.no_grad():
            if lambdas is not None and lambdas[i] is not None:
                dt = blk.ssm.dt().numpy()[:, None]  # (H 1) as stored (float32 rounded, then float64)
                wrap = 2 * np.pi / dt  # (H 1) the branch spacing of Im(Lambda)
                im = blk.ssm.A_imag.double().numpy()  # (H N)
                shift = np.round((np.asarray(lambdas[i]).imag - im) / wrap) * wrap  # (H N)
                blk.ssm.A_imag.copy_(torch.from_numpy(im + shift))
            # C from the Lambda as stored (branch and float32 rounding included): B_bar = expm1(dt Lambda) / Lambda
            # depends on Lambda itself, not only on A = exp(dt Lambda), and only C B_bar = C_sys B_sys may stay.
            Lam = blk.ssm.lambda_()  # c(H N) complex128
            B_bar = torch.expm1(Lam * blk.ssm.dt()[:, None]) / Lam  # (H N)
            C_model = torch.from_numpy(sys.C * sys.B) / B_bar  # (H N)
            blk.ssm.C.copy_(torch.view_as_real(C_model).to(blk.ssm.C))
    return model


def layer_systems(model: SSMModel) -> list[Union[DiagonalSSM, MimoSSM]]:
    """Each SSM layer's float64 system: a DiagonalSSM (SISO layers) or a MimoSSM (LRU, S5)."""
    return [blk.ssm.to_system() if is_mimo(model.config) else blk.ssm.to_diagonal() for blk in model.blocks]


def with_mimo_systems(model: SSMModel, systems: list[MimoSSM]) -> SSMModel:
    """A new model of the same MIMO family equal to ``model`` except that layer i realises ``systems[i]`` (any P_i).

    Keeps every non-SSM weight (BatchNorm statistics included); an S5 layer keeps its old mean Delta.
    """
    if not is_mimo(model.config):
        raise ValueError("with_mimo_systems takes an LRU or S5 model; use with_diagonal_systems")
    if len(systems) != len(model.blocks):
        raise ValueError(f"expected {len(model.blocks)} systems, got {len(systems)}")
    cfg = model.config.replace(layer_d_state=[s.N for s in systems])
    new = SSMModel(cfg).to(model.device)
    own = {k: v for k, v in model.state_dict().items() if ".ssm." not in k}
    missing, _ = new.load_state_dict(own, strict=False)
    if any(".ssm." not in k for k in missing):
        raise RuntimeError(f"with_mimo_systems: non-SSM weights missing: {missing}")
    for i, (blk_new, blk_old, sys) in enumerate(zip(new.blocks, model.blocks, systems)):
        if cfg.layer == "s5":
            blk_new.ssm.load_system(sys, layer=i, delta=blk_old.ssm.mean_delta())
        else:
            blk_new.ssm.load_system(sys, layer=i)
    new.provenance = dict(model.provenance)
    return new
