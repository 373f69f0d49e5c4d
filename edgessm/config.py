"""The config objects: ModelConfig (a model's shape, saved in every checkpoint and in the ONNX metadata)
and TrainConfig (the training loop's knobs, saved in provenance). No torch here: the CLI builds its
options from these dataclasses without loading torch.

The model is rebuilt from it (``SSMModel(ModelConfig.from_dict(d))``); nothing else defines shape.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
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
ENDS = ("linear", "none")
# what in-training reduction does with the Adam moments of the parameters it changes (TrainConfig)
REDUCE_MOMENTS = ("fresh", "index", "reset")

# Upper bounds are sanity limits that stop a typo or a hostile file from allocating gigabytes before
# anything can fail; the real check of a checkpoint is against its stored tensor shapes (checkpoint.py).
MAX_PARAMETERS = 1 << 30      # 4 GiB of float32 weights
MAX_HORIZON = 1 << 24         # L-step Gramians: past ~1.7e7 steps they equal the infinite ones for |A| < 1 - 1e-6
_MODEL_INTS = {"d_input": (1, 1 << 16), "d_output": (1, 1 << 16), "vocab_size": (0, 1 << 24),
               "d_model": (1, 1 << 16), "n_layers": (1, 1024), "d_state": (1, 1 << 14)}
_TRAIN_INTS = {"epochs": (1, 1 << 20), "batch_size": (1, 1 << 24), "seed": (0, 2**32 - 1), "eval_every": (1, 1 << 20),
               "reduce_every": (1, 1 << 20)}
# name: (lo, hi, lo excluded, hi excluded); hi None = any finite value
_TRAIN_REALS = {"lr": (0.0, None, True, False), "lr_ssm": (0.0, None, False, False),
                "weight_decay": (0.0, None, False, False), "warmup_frac": (0.0, 1.0, False, False),
                "grad_clip": (0.0, None, False, False), "val_frac": (0.0, 1.0, True, True),
                "reduce_until": (0.0, 1.0, True, False), "reduce_min_drop": (0.0, 1.0, False, True)}


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def one_of(owner: str, name: str, v: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in allowed:
        raise ConfigError(f"{owner}.{name}={_short(v)} is not one of {', '.join(allowed)}")
    return v


def integer(owner: str, name: str, v: Any, lo: int, hi: int) -> int:
    """An int in [lo, hi]: bools, strings and non-integral floats are refused (4.0 is read as 4)."""
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, numbers.Real)):
        raise ConfigError(f"{owner}.{name}={_short(v)} must be an integer in [{lo}, {hi}]")
    if not isinstance(v, numbers.Integral):
        if not math.isfinite(v) or v != int(v):
            raise ConfigError(f"{owner}.{name}={_short(v)} must be an integer in [{lo}, {hi}]")
    n = int(v)
    if not lo <= n <= hi:
        raise ConfigError(f"{owner}.{name}={n} is out of range: it must lie in [{lo}, {hi}]")
    return n


def real(owner: str, name: str, v: Any, lo: Optional[float], hi: Optional[float], *, lo_open: bool = False,
         hi_open: bool = False) -> float:
    """A finite float in the interval; bools and strings are refused."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ConfigError(f"{owner}.{name}={_short(v)} must be a finite number")
    x = float(v)
    bad = (lo is not None and (x < lo or (lo_open and x == lo))) or (hi is not None and (x > hi or (hi_open and x == hi)))
    if bad:
        span = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{')' if hi_open or hi is None else ']'}"
        raise ConfigError(f"{owner}.{name}={x!r} is out of range: it must lie in {span}")
    return x


def boolean(owner: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):  # JSON "false" (a string) would read as True: another architecture
        raise ConfigError(f"{owner}.{name}={_short(v)} must be true or false (a JSON boolean, not a string)")
    return v



def _field(default: Any, help: str) -> Any:
    """A config field whose ``help`` (field metadata) is what the CLI shows; the comment beside it says why."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    # input/output: d_input float features per step, or vocab_size > 0 for int64 tokens (B, L)
    d_input: int = _field(1, 'features per step of a float input')  # mnist1d is one scalar per step
    d_output: int = _field(10, 'outputs: classes or regression dims')  # mnist1d has 10 classes
    vocab_size: int = _field(0, '> 0: int64 token input with this vocabulary (an embedding encoder)')  # > 0: an embedding encoder on int64 tokens instead of a linear one
    # backbone: the 4 x 64 x 32 S4D, measured at 97.1% on mnist1d in 100 s on 2 cores
    d_model: int = _field(64, 'H channels')
    n_layers: int = _field(4, 'SSM blocks')  # SSM blocks; 4 reaches 97% on mnist1d
    d_state: int = _field(32, 'N complex modes per channel (S4D/DSS) or P modes per layer (LRU/S5)')  # N complex modes per channel (2N real state numbers)
    layer_d_state: Optional[list[int]] = _field(None, 'per-layer N after compression (overrides d_state)')
    layer: str = _field("s4d", '"s4d": per-channel Lambda (Gu et al. 2022); "dss": Lambda shared across channels (Gupta et al. 2022); "lru" (Orvieto et al. 2023), "s5" (Smith et al. 2023): MIMO, d_state modes shared by all channels')
    init: str = _field("s4d-lin", 'eigenvalue init of S4D/DSS: S4D-Lin is the S4D paper\'s default; "skew-hippo" is Ezoe & Sato\'s baseline')  # S4D-Lin is the S4D paper's default; "skew-hippo" is Ezoe & Sato's baseline
    dt_min: float = _field(1e-3, 'lower end of the log-uniform Delta range')  # log-uniform Delta range of S4/S4D
    dt_max: float = _field(1e-1, 'upper end of the log-uniform Delta range')
    # LRU ring init (CompreSSM's LRU defaults, which the LRU paper uses for long-range tasks): |lambda| in [r_min, r_max]
    lru_r_min: float = _field(0.9, 'LRU: lower edge of the init ring |lambda|')  # lower edge of the init ring |lambda| (memory >= 10 steps)
    lru_r_max: float = _field(0.999, 'LRU: upper edge of the init ring |lambda|')  # upper edge of the init ring (memory up to ~1000 steps)
    lru_max_phase: float = _field(6.28, 'LRU: arg(lambda) uniform on [0, max_phase]')  # arg(lambda) uniform on [0, max_phase]
    # S5 (d_state counts the STORED conjugate-symmetric modes: S5's ssm_size = 2 d_state)
    s5_blocks: int = _field(1, 'S5: HiPPO-LegS blocks of the init; d_state must divide by it')  # HiPPO-LegS blocks of the init (S5's --blocks); d_state must divide by it
    s5_discretization: str = _field("zoh", 'S5: "zoh" or "bilinear"')  # "zoh" (S5's default) or "bilinear"
    s5_step_rescale: float = _field(1.0, 'S5: multiplies every Delta (not trained)')  # multiplies every Delta (S5's change-of-resolution knob, not trained)
    # The CompreSSM LRU block is norm="batch", activation="gelu_tanh", mixing="glu" (BatchNorm with running
    # statistics, the tanh GELU of jax.nn.gelu); BatchNorm is per-step at inference, so the step graph folds it.
    # block: SSM -> D skip -> activation -> mixing -> dropout -> residual, pre-norm (S4 repo's default)
    activation: str = _field("gelu", 'after the SSM and D skip, before mixing')  # after the SSM and D skip, before mixing (S4D)
    mixing: str = _field("glu", 'output mixing of each block')  # GLU output mixing as in S4D's standalone model
    norm: str = _field("layer", 'per-block normalisation (batch: running statistics at inference)')  # LayerNorm works per step, so the step graph reproduces it exactly
    prenorm: bool = _field(True, 'norm before the SSM (true) or after the residual (false)')  # LayerNorm before the SSM (True) or after the residual (False)
    dropout: float = _field(0.0, 'dropout probability in [0, 1)')  # mnist1d at this size does not overfit badly; set 0.1 for larger tasks
    # what surrounds the blocks; the defaults are edgessm's own model, the others describe imported ones
    encoder: str = _field("linear", '"linear" (Embedding for tokens) or "none": the input is already (B L H), e.g. an imported layer')  # "linear": Linear(d_input, H) (Embedding when vocab_size > 0); "none": x is already (B L H), an imported layer for your own backbone
    decoder: str = _field("linear", '"linear" or "none": the output is the last block\'s H channels')  # "linear": Linear(H, d_output); "none": the output is the last block's H channels
    residual: bool = _field(True, 'add the block input to its output (false: the block output alone)')  # h + block(h); False: the block's output alone (an S4Block or DSS layer carries no residual)
    final_norm: bool = _field(True, 'with prenorm, a LayerNorm after the last block')  # with prenorm, a LayerNorm after the last block; s4's example.py prenorm S4Model has none
    # head: causal pooling so the step-by-step run reproduces the prediction at every step
    pooling: str = _field("mean", '"mean": causal running mean of the outputs; "last": per-step output; "none": sequence to sequence')  # "mean": running mean of decoder outputs; "last": per-step output; "none": seq2seq
    # mode: "classification" (cross-entropy on the pooled last valid step) or "regression" (MSE)
    task_type: str = _field("classification", '"classification" (cross-entropy) or "regression" (MSE); set from the task by train')  # or "regression" (MSE); set from the task by `edgessm train`

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Type and range of every field (a checkpoint's JSON is user input), then the size it implies."""
        for name, allowed in (("layer", LAYERS), ("init", INITS), ("mixing", MIXINGS), ("pooling", POOLINGS),
                              ("norm", NORMS), ("activation", ACTIVATIONS), ("encoder", ENDS), ("decoder", ENDS),
                              ("task_type", ("classification", "regression")), ("s5_discretization", S5_DISCRETIZATIONS)):
            one_of("config", name, getattr(self, name), allowed)
        for name, (lo, hi) in _MODEL_INTS.items():
            setattr(self, name, integer("config", name, getattr(self, name), lo, hi))
        for name in ("prenorm", "residual", "final_norm"):
            boolean("config", name, getattr(self, name))
        self.lru_r_min = real("config", "lru_r_min", self.lru_r_min, 0.0, 1.0)
        self.lru_r_max = real("config", "lru_r_max", self.lru_r_max, 0.0, 1.0)
        if not self.lru_r_min < self.lru_r_max:
            raise ConfigError(f"config needs 0 <= lru_r_min < lru_r_max <= 1, got {self.lru_r_min}, {self.lru_r_max}")
        self.lru_max_phase = real("config", "lru_max_phase", self.lru_max_phase, 0.0, 2 * math.pi + 1e-6)
        self.s5_blocks = integer("config", "s5_blocks", self.s5_blocks, 1, 1 << 14)
        self.s5_step_rescale = real("config", "s5_step_rescale", self.s5_step_rescale, 0.0, None, lo_open=True)
        if self.encoder == "none" and (self.vocab_size > 0 or self.d_input != self.d_model):
            raise ConfigError(f"config.encoder='none' feeds the input straight into the blocks, so it needs vocab_size=0 and "
                              f"d_input == d_model, got vocab_size={self.vocab_size}, d_input={self.d_input}, d_model={self.d_model}")
        if self.decoder == "none" and self.d_output != self.d_model:
            raise ConfigError(f"config.decoder='none' outputs the blocks' channels, so it needs d_output == d_model, "
                              f"got d_output={self.d_output}, d_model={self.d_model}")
        if self.layer_d_state is not None:
            if not isinstance(self.layer_d_state, (list, tuple)):
                raise ConfigError(f"config.layer_d_state={_short(self.layer_d_state)} must be a list of "
                                  f"{self.n_layers} positive sizes (or null)")
            if len(self.layer_d_state) != self.n_layers:
                raise ConfigError(f"config.layer_d_state must list {self.n_layers} positive sizes (one per layer), "
                                  f"got {len(self.layer_d_state)}")
            self.layer_d_state = [integer("config", f"layer_d_state[{i}]", n, *_MODEL_INTS["d_state"])
                                  for i, n in enumerate(self.layer_d_state)]
        self.dt_min = real("config", "dt_min", self.dt_min, 0.0, None, lo_open=True)
        self.dt_max = real("config", "dt_max", self.dt_max, 0.0, None, lo_open=True)
        if not self.dt_min <= self.dt_max:
            raise ConfigError(f"config needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        self.dropout = real("config", "dropout", self.dropout, 0.0, 1.0, hi_open=True)
        n = self.approx_parameters()
        if n > MAX_PARAMETERS:
            raise ConfigError(f"config implies ~{n:.3g} parameters, over the limit of {MAX_PARAMETERS:.3g} "
                              f"({4 * MAX_PARAMETERS / 2**30:.0f} GiB of float32); reduce d_model, d_state or n_layers")

    def approx_parameters(self) -> int:
        """Parameters the config implies, to within the small per-layer vectors: checked before anything is built."""
        H = self.d_model
        enc = (self.vocab_size if self.vocab_size > 0 else self.d_input) * H if self.encoder == "linear" else 0
        dec = H * self.d_output if self.decoder == "linear" else 0
        mix = {"glu": 2 * H * H, "linear": H * H, "none": 0}[self.mixing]
        ssm = sum(4 * H * self.n_modes(i) for i in range(self.n_layers))   # Lambda (re, im), C (re, im) per mode
        return enc + ssm + self.n_layers * (mix + 6 * H) + dec

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
        except RecursionError:
            raise ConfigError("model config JSON is nested too deeply to be a config") from None
        if not isinstance(d, dict):
            raise ConfigError("model config JSON must be an object")
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class TrainConfig:
    # optimisation (the measured mnist1d run: AdamW, SSM params at lr 1e-3 with no weight decay, 40 epochs)
    epochs: int = _field(40, 'training epochs')  # 97.1% on mnist1d with the default model
    batch_size: int = _field(50, 'examples per optimiser step')  # 4000 mnist1d examples -> 72 steps/epoch after the validation split
    lr: float = _field(1e-2, 'learning rate of the non-SSM weights')  # the non-SSM weights; small models on short sequences like a high lr
    lr_ssm: float = _field(1e-3, 'learning rate of Lambda and dt (no weight decay)')  # Lambda, dt: S4's value; larger destabilises the spectrum
    weight_decay: float = _field(0.01, 'AdamW decay of the non-SSM weights')  # AdamW decay of the non-SSM weights (the SSM group has none)
    warmup_frac: float = _field(0.05, 'fraction of steps of linear warm-up before the cosine decay')  # linear warm-up over the first 5% of steps, then cosine to 0
    grad_clip: float = _field(1.0, 'gradient-norm clip (0: off)')  # guards the first steps of a fresh spectrum
    seed: int = _field(0, 'model init, data order, validation split and task generator seed')  # model init, data order, validation split, and the task generator (seed 0 = the reference mnist1d draw)
    val_frac: float = _field(0.1, 'fraction of the training split held out for best-checkpoint selection')  # held out from the training split for best-checkpoint selection
    eval_every: int = _field(1, 'epochs between evaluations and best-checkpoint saves')  # epochs between evaluations (and best-checkpoint saves)
    threads: Optional[int] = _field(None, "torch intra-op threads (default: torch's)")  # torch intra-op threads (None: torch's default)
    device: str = _field("auto", '"auto" (cuda if available), "cpu", "cuda", "cuda:1"...')
    # in-training reduction (CompreSSM, Chahine et al. 2025): None disables it
    reduce_energy: Optional[float] = _field(None, 'in-training reduction: keep this fraction of the Hankel energy per layer')  # keep this fraction of the Hankel energy per layer
    reduce_rank: Optional[int] = _field(None, 'in-training reduction: reduce every layer to this many modes')  # or: reduce every layer to this many modes (a fixed target r)
    reduce_until: float = _field(0.1, 'in-training reduction only during this first fraction of training')  # only reduce during this first fraction of training
    reduce_min_drop: float = _field(0.1, 'reduce a layer only if its new size is at least this fraction smaller')  # reduce a layer only if the new size is at least 10% smaller
    # CompreSSM reduces at steps that are multiples of both its evaluation and its reduction interval; here
    # the evaluation points are epochs (eval_every), and reduction happens at those that are also multiples
    # of reduce_every
    reduce_every: int = _field(1, 'in-training reduction at evaluation points whose epoch is a multiple of this')
    reduce_horizon: Optional[int] = _field(None, 'in-training reduction with horizon-aware Gramians of this many steps')  # horizon-aware Gramians during in-training reduction
    # After balancing and re-diagonalisation a reduced layer's modes are new combinations of the old ones
    # with new eigenvalues, so the old Adam moments of its parameters describe coordinates that no longer
    # exist. "fresh": every parameter the reduction changed restarts its moments and bias correction; the
    # ones it left alone (same shape and values) keep theirs. "index": CompreSSM's practice, the old
    # moments cut to the first r entries of each shrunk axis. "reset": a new optimiser for every parameter.
    reduce_moments: str = _field("fresh", 'in-training reduction: Adam moments of the parameters a reduction changes: "fresh" (restart them), "index" (cut the old ones by index, as CompreSSM does), "reset" (restart every parameter)')

    def validate(self) -> None:
        """Type and range of every field: they come from the command line and from checkpoint provenance."""
        for name, (lo, hi) in _TRAIN_INTS.items():
            setattr(self, name, integer("train", name, getattr(self, name), lo, hi))
        for name, (lo, hi, lo_open, hi_open) in _TRAIN_REALS.items():
            setattr(self, name, real("train", name, getattr(self, name), lo, hi, lo_open=lo_open, hi_open=hi_open))
        if self.threads is not None:
            self.threads = integer("train", "threads", self.threads, 1, 4096)
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", self.device):
            raise ConfigError(f"train.device={_short(self.device)} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.reduce_energy is not None and self.reduce_rank is not None:
            raise ConfigError("give reduce_energy or reduce_rank, not both")
        if self.reduce_rank is not None:
            self.reduce_rank = integer("train", "reduce_rank", self.reduce_rank, 1, _MODEL_INTS["d_state"][1])
        if self.reduce_energy is not None:
            self.reduce_energy = real("train", "reduce_energy", self.reduce_energy, 0.0, 1.0, lo_open=True)
        if self.reduce_horizon is not None:
            self.reduce_horizon = integer("train", "reduce_horizon", self.reduce_horizon, 2, MAX_HORIZON)
        self.reduce_moments = one_of("train", "reduce_moments", self.reduce_moments, REDUCE_MOMENTS)
        if self.reduce_energy is not None or self.reduce_rank is not None:
            last = max(1, round(self.reduce_until * self.epochs))  # the training loop's reduction window
            if not any((e % self.eval_every == 0 or e == self.epochs) and e % self.reduce_every == 0
                       for e in range(1, last + 1)):
                raise ConfigError(f"in-training reduction would never run: no epoch up to {last} (reduce_until "
                                  f"{self.reduce_until:g} of {self.epochs}) is an evaluation point (eval_every "
                                  f"{self.eval_every}) and a multiple of reduce_every {self.reduce_every}; lower them "
                                  "or raise reduce_until")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
