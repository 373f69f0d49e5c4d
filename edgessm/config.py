"""The config objects: ModelConfig (a model's shape, saved in every checkpoint and in the ONNX metadata)
and TrainConfig (the training loop's knobs, saved in provenance). No torch here: the CLI builds its
options from these dataclasses without loading torch.

The model is rebuilt from it (``SSMModel(ModelConfig.from_dict(d))``); nothing else defines shape.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

from .errors import ConfigError

LAYERS = ("s4d", "dss", "lru", "s5")
INITS = ("skew-hippo", "s4d-lin", "s4d-inv", "random")
MIXINGS = ("glu", "linear", "none")
POOLINGS = ("mean", "last", "none")
NORMS = ("layer", "batch", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "tanh", "identity")
S5_DISCRETIZATIONS = ("zoh", "bilinear")


@dataclass
class ModelConfig:
    # input/output: d_input float features per step, or vocab_size > 0 for int64 tokens (B, L)
    d_input: int = 1            # mnist1d is one scalar per step
    d_output: int = 10          # mnist1d has 10 classes
    vocab_size: int = 0         # > 0: an embedding encoder on int64 tokens instead of a linear one
    # backbone: the 4 x 64 x 32 S4D that FACTS.md measured at 97.1% on mnist1d in 100 s on 2 cores
    d_model: int = 64           # H channels
    n_layers: int = 4           # SSM blocks; 4 reaches 97% on mnist1d (FACTS.md)
    d_state: int = 32           # N complex modes per channel (2N real state numbers)
    layer_d_state: Optional[list[int]] = None  # per-layer N after compression (overrides d_state)
    layer: str = "s4d"          # "s4d": per-channel Lambda (Gu et al. 2022); "dss": Lambda shared across channels (Gupta et al. 2022); "lru" (Orvieto et al. 2023), "s5" (Smith et al. 2023): MIMO, d_state modes shared by all channels
    init: str = "s4d-lin"       # S4D-Lin is the S4D paper's default; "skew-hippo" is Ezoe & Sato's baseline
    dt_min: float = 1e-3        # log-uniform Delta range of S4/S4D
    dt_max: float = 1e-1        # upper end of the log-uniform Delta range
    # LRU ring init (CompreSSM's LRU defaults, which the LRU paper uses for long-range tasks): |lambda| in [r_min, r_max]
    lru_r_min: float = 0.9      # lower edge of the init ring |lambda| (memory >= 10 steps)
    lru_r_max: float = 0.999    # upper edge of the init ring (memory up to ~1000 steps)
    lru_max_phase: float = 6.28  # arg(lambda) uniform on [0, max_phase]
    # S5 (d_state counts the STORED conjugate-symmetric modes: S5's ssm_size = 2 d_state)
    s5_blocks: int = 1          # HiPPO-LegS blocks of the init (S5's --blocks); d_state must divide by it
    s5_discretization: str = "zoh"  # "zoh" (S5's default) or "bilinear"
    s5_step_rescale: float = 1.0    # multiplies every Delta (S5's change-of-resolution knob, not trained)
    # The CompreSSM LRU block is norm="batch", activation="gelu_tanh", mixing="glu" (BatchNorm with running
    # statistics, the tanh GELU of jax.nn.gelu); BatchNorm is per-step at inference, so the step graph folds it.
    # block: SSM -> D skip -> activation -> mixing -> dropout -> residual, pre-norm (S4 repo's default)
    activation: str = "gelu"    # after the SSM and D skip, before mixing (S4D)
    mixing: str = "glu"         # GLU output mixing as in S4D's standalone model
    norm: str = "layer"         # LayerNorm works per step, so the step graph reproduces it exactly
    prenorm: bool = True        # LayerNorm before the SSM (True) or after the residual (False)
    dropout: float = 0.0        # mnist1d at this size does not overfit badly; set 0.1 for larger tasks
    # head: causal pooling so the step-by-step run reproduces the prediction at every step
    pooling: str = "mean"       # "mean": running mean of decoder outputs; "last": per-step output; "none": seq2seq
    # mode: "classification" (cross-entropy on the pooled last valid step) or "regression" (MSE)
    task_type: str = "classification"  # or "regression" (MSE); set from the task by `edgessm train`

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def one_of(name: str, allowed: tuple[str, ...]) -> None:
            v = getattr(self, name)
            if v not in allowed:
                raise ConfigError(f"config.{name}={v!r} is not one of {', '.join(allowed)}")
        one_of("layer", LAYERS)
        one_of("init", INITS)
        one_of("mixing", MIXINGS)
        one_of("pooling", POOLINGS)
        one_of("norm", NORMS)
        one_of("activation", ACTIVATIONS)
        one_of("s5_discretization", S5_DISCRETIZATIONS)
        if not 0 <= self.lru_r_min < self.lru_r_max <= 1:
            raise ConfigError(f"config needs 0 <= lru_r_min < lru_r_max <= 1, got {self.lru_r_min}, {self.lru_r_max}")
        if int(self.s5_blocks) < 1:
            raise ConfigError(f"config.s5_blocks must be a positive integer, got {self.s5_blocks!r}")
        if not self.s5_step_rescale > 0:
            raise ConfigError(f"config.s5_step_rescale must be > 0, got {self.s5_step_rescale}")
        if self.task_type not in ("classification", "regression"):
            raise ConfigError(f"config.task_type={self.task_type!r} is not one of classification, regression")
        for name in ("d_input", "d_output", "d_model", "n_layers", "d_state"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"config.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.layer_d_state is not None:
            self.layer_d_state = [int(n) for n in self.layer_d_state]
            if len(self.layer_d_state) != self.n_layers or min(self.layer_d_state) <= 0:
                raise ConfigError(f"config.layer_d_state must list {self.n_layers} positive sizes, got {self.layer_d_state}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"config needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    def n_modes(self, layer: int) -> int:
        """N (stored complex modes per channel) of layer i."""
        return self.layer_d_state[layer] if self.layer_d_state is not None else self.d_state

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}: the file was written by a newer edgessm; upgrade edgessm")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"model config is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError("model config JSON must be an object")
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class TrainConfig:
    # optimisation (the FACTS.md mnist1d run: AdamW, SSM params at lr 1e-3 with no weight decay, 40 epochs)
    epochs: int = 40              # the FACTS.md budget: 97.1% on mnist1d with the default model
    batch_size: int = 50          # 4000 mnist1d examples -> 72 steps/epoch after the validation split
    lr: float = 1e-2              # the non-SSM weights; small models on short sequences like a high lr
    lr_ssm: float = 1e-3          # Lambda, dt: S4's value; larger destabilises the spectrum
    weight_decay: float = 0.01    # AdamW decay of the non-SSM weights (the SSM group has none)
    warmup_frac: float = 0.05     # linear warm-up over the first 5% of steps, then cosine to 0
    grad_clip: float = 1.0        # guards the first steps of a fresh spectrum
    seed: int = 0                 # model init, data order, validation split, and the task generator (seed 0 = the reference mnist1d draw)
    val_frac: float = 0.1         # held out from the training split for best-checkpoint selection
    eval_every: int = 1           # epochs between evaluations (and best-checkpoint saves)
    threads: Optional[int] = None  # torch intra-op threads (None: torch's default)
    device: str = "auto"          # "auto" (cuda if available), "cpu", "cuda", "cuda:1"...
    # in-training reduction (CompreSSM, Chahine et al. 2025): None disables it
    reduce_energy: Optional[float] = None  # keep this fraction of the Hankel energy per layer
    reduce_rank: Optional[int] = None      # or: reduce every layer to this many modes (a fixed target r)
    reduce_until: float = 0.1     # only reduce during this first fraction of training
    reduce_min_drop: float = 0.1  # reduce a layer only if the new size is at least 10% smaller
    reduce_horizon: Optional[int] = None   # horizon-aware Gramians (issue 7) during in-training reduction

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lr <= 0 or self.lr_ssm < 0:
            raise ConfigError(f"learning rates must be positive, got lr={self.lr}, lr_ssm={self.lr_ssm}")
        if not 0 < self.val_frac < 1:
            raise ConfigError(f"val_frac must be in (0, 1), got {self.val_frac}")
        if self.reduce_energy is not None and self.reduce_rank is not None:
            raise ConfigError("give reduce_energy or reduce_rank, not both")
        if self.reduce_rank is not None and self.reduce_rank < 1:
            raise ConfigError(f"reduce_rank must be >= 1, got {self.reduce_rank}")
        if self.reduce_energy is not None and not 0 < self.reduce_energy < 1:
            raise ConfigError(f"reduce_energy must be in (0, 1), got {self.reduce_energy}")
        if not 0 < self.reduce_until <= 1:
            raise ConfigError(f"reduce_until must be in (0, 1], got {self.reduce_until}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
