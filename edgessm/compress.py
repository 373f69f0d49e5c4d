"""Model-level compression: reduce every SSM layer of a model, report and certify it.

The per-channel mathematics lives in :mod:`edgessm.reduce`; this module applies it to each layer,
rebuilds a normal (trainable, loadable, exportable) model from the reduced systems, measures the
error of what is actually saved (float32 parameters included) against the original float64 systems,
checks that every certified bound holds, and writes the checkpoint, report and plot atomically.

Also the in-training reducer (CompreSSM, Chahine et al. 2025): at evaluation points early in
training, layers whose Hankel-energy rank is clearly below their size are reduced.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from .reduce import (PADDING_A, Reduction, balanced_truncation, error_system, hinf_norm, horizon_operator_error,
                     modal_truncation, random_truncation)
from .errors import RankError, UnstableSystemError
from .model import SSMModel, diagonal_systems, with_diagonal_systems
from .provenance import derive
from .reduce.reduction import num_or_none
from .ssm import DiagonalSSM

__all__ = ["CompressSpec", "compress_model", "compress_checkpoint", "summary_table", "in_training_reducer",
           "LayerReport", "reduce_layer", "saved_reports"]

METHODS = ("balanced", "modal", "random")

# A certified bound "holds" on the saved model when its measured error is at most the bound plus its
# float64 floor (balanced.bound_floor) plus what storing the reduced system in float32 parameters can
# change (DiagonalSSM.perturbation_bound of the reduced against the saved system: rigorous, computed
# from both systems). Nothing gain-relative: a tolerance proportional to ||G||_inf let errors hundreds
# of times the bound pass on channels with a large gain.

@dataclass
class CompressSpec:
    rank: Optional[int] = None            # stored modes per channel, every layer
    energy: Optional[float] = None        # fraction of Hankel energy to keep per channel
    tol: Optional[float] = None           # certified bound / channel gain
    layer_ranks: dict[int, int] = field(default_factory=dict)  # per-layer rank overrides
    method: str = "balanced"              # balanced | modal | random
    horizon: Union[int, str, None] = None  # None (infinite), an int L, or "auto" (the task's sequence length)
    seed: int = 0                         # for method="random"

    def validate(self, n_layers: int) -> None:
        bad = [i for i in self.layer_ranks if not 0 <= i < n_layers]
        if bad:
            raise RankError(f"--layer-rank names layer(s) {bad}, the model has layers 0..{n_layers - 1}")
        given = [s for s in ("rank", "energy", "tol") if getattr(self, s) is not None]
        if len(given) > 1:
            raise RankError(f"give one of --rank, --energy, --tol (got {', '.join('--' + g for g in given)})")
        if not given and len(self.layer_ranks) < n_layers:
            raise RankError("say how much to keep: --rank R, --energy E (e.g. 0.999) or --tol T (e.g. 1e-3)")
        if self.method not in METHODS:
            raise RankError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.method != "balanced" and (self.energy is not None or self.tol is not None):
            raise RankError(f"--method {self.method} takes --rank only (energy/tol need Hankel singular values)")
        if self.method != "balanced" and self.horizon is not None:
            raise RankError("--horizon applies to --method balanced only")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise RankError(f"--energy must be in (0, 1] (1 keeps every direction above float64 noise), got {self.energy}")
        if self.tol is not None and not self.tol > 0:
            raise RankError(f"--tol must be > 0, got {self.tol}")


@dataclass
class LayerReport:
    layer: int
    reduction: Reduction
    system: DiagonalSSM              # what the saved model realises (float32 parameters)
    measured_hinf: np.ndarray        # r(H) ||G - G_saved||_inf per channel
    gain: np.ndarray                 # r(H) ||G||_inf per channel
    storage: np.ndarray              # r(H) bound on ||G_reduced - G_saved||_inf (float32 parameters)

    def certified(self) -> np.ndarray:
        """r(H): certified bound on ||G - G_saved||_inf: bound + float64 floor + float32 storage (NaN: none)."""
        return self.reduction.certified() + self.storage

    def is_certified(self) -> bool:
        """Whether this layer claims a certified bound on every channel (modal, random and horizon do not)."""
        return bool(np.all(np.isfinite(self.certified())))

    def bound_holds(self) -> np.ndarray:
        """bool (H): measured <= certified where a bound is claimed (True elsewhere)."""
        c = self.certified()
        return np.where(np.isfinite(c), self.measured_hinf <= c, True)

    def to_dict(self, full: bool = True) -> dict[str, Any]:
        """The one report format (Reduction.report) for the saved model: its measured error and storage bound."""
        return self.reduction.report(measured=self.measured_hinf, gain=self.gain, storage=self.storage,
                                     saved=self.system, layer=self.layer, full=full)


def _resolve_horizon(spec: CompressSpec, model: SSMModel) -> Optional[int]:
    h = spec.horizon
    if h is None or h == "none":
        return None
    if h == "auto":
        L = model.provenance.get("seq_len")
        if not L:
            raise RankError("--horizon auto needs the task's sequence length, which this checkpoint does not record; "
                            "pass it as an integer, e.g. --horizon 40")
        return int(L)
    try:
        L = int(h)
    except (TypeError, ValueError):
        raise RankError(f"--horizon must be an integer >= 2 or 'auto', got {h!r}") from None
    if L < 2:
        raise RankError(f"--horizon must be >= 2, got {L}")
    return L


def reduce_layer(sys: DiagonalSSM, *, rank=None, energy: Optional[float] = None, tol: Optional[float] = None,
                 horizon: Optional[int] = None, layer: object | None = None) -> Reduction:
    """Balanced truncation of one layer's system, with the horizon policy (no measurement).

    horizon=None: plain BT (certified). horizon=L: time-limited BT (Gawronski & Juang 1990) is a
    heuristic with no bound and no stability guarantee, and its order search lowers k until the
    reduced system is stable, which can cost more than the window saves (measured on trained mnist1d
    layers: it loses to plain BT in some channels at r >= 4). Plain BT at the same stored-mode budget
    is always stable and certified, so per channel this keeps whichever has the lower measured L-step
    error, the quantity horizon mode is asked to minimise; channels that kept plain BT keep its bound.
    """
    if horizon is None:
        return balanced_truncation(sys, rank, energy=energy, tol=tol, measure=False, layer=layer)
    red = balanced_truncation(sys, rank, energy=energy, tol=tol, horizon=horizon, measure=False, layer=layer)
    plain = balanced_truncation(sys, red.rank, measure=False, layer=layer) if np.all(red.rank < sys.N) else None
    if plain is None:  # a selector kept every mode somewhere: nothing to compare against
        return red
    e_plain = horizon_operator_error(sys, plain.system, horizon)  # (H)
    # ties (long windows: both are the same reduction up to rounding) keep the horizon result; the
    # margin 1e-9 is far above the SVD's rounding of the Toeplitz norm (~1e-15 relative)
    better = e_plain < red.horizon_error * (1.0 - 1e-9)  # (H)
    no_stable = (red.order == 0) & (red.hsv[:, 0] > 0)  # (H) no stable horizon-aware order <= 2r at all
    use = better | no_stable  # (H)
    if not use.any():
        return red
    warnings = list(red.warnings)
    if no_stable.any():
        warnings.append(f"layer {layer}: channels {np.flatnonzero(no_stable).tolist()}: used infinite-horizon balanced "
                        f"truncation (no stable horizon-aware reduction)")
    if (better & ~no_stable).any():
        warnings.append(f"layer {layer}: {int((better & ~no_stable).sum())} of {sys.H} channels: infinite-horizon "
                        f"balanced truncation had the lower {horizon}-step error and was used there")
    Nout = max(red.system.N, plain.system.N)
    pick = lambda a, b, fill: np.where(use[:, None], _pad_modes(b, Nout, fill), _pad_modes(a, Nout, fill))  # noqa: E731
    system = DiagonalSSM(pick(red.system.A, plain.system.A, PADDING_A), pick(red.system.B, plain.system.B, 0.0),
                         pick(red.system.C, plain.system.C, 0.0), np.where(use, plain.system.D, red.system.D))
    return dataclasses.replace(
        red, system=system, order=np.where(use, plain.order, red.order), bound=np.where(use, plain.bound, np.nan),
        floor=np.where(use, plain.floor, red.floor), horizon_error=np.where(use, e_plain, red.horizon_error),
        warnings=warnings)


def _pad_modes(x: np.ndarray, n: int, fill: complex) -> np.ndarray:
    """c(H n): x c(H m) padded with inactive modes (A = PADDING_A, B = C = 0) to n stored modes."""
    return np.concatenate([x, np.full((x.shape[0], n - x.shape[1]), fill, np.complex128)], axis=1)


def _reduce_layer(sys: DiagonalSSM, i: int, spec: CompressSpec, horizon: Optional[int]) -> Reduction:
    rank = spec.layer_ranks.get(i, spec.rank)  # the engine checks 0 < rank < N and names the layer
    if spec.method == "modal":
        return modal_truncation(sys, rank, measure=False, layer=i)
    if spec.method == "random":
        return random_truncation(sys, rank, seed=spec.seed + i, measure=False, layer=i)
    if rank is not None:
        return reduce_layer(sys, rank=rank, horizon=horizon, layer=i)
    return reduce_layer(sys, energy=spec.energy, tol=spec.tol, horizon=horizon, layer=i)


def _compress_siso(model: SSMModel, spec: CompressSpec) -> tuple[SSMModel, list[LayerReport]]:
    """S4D / DSS: balanced truncation (or a baseline) of every channel of every layer."""
    systems = diagonal_systems(model)
    spec.validate(len(systems))
    horizon = _resolve_horizon(spec, model)
    reductions = [_reduce_layer(s, i, spec, horizon) for i, s in enumerate(systems)]
    new = with_diagonal_systems(model, [r.system for r in reductions])
    saved = diagonal_systems(new)
    reports = saved_reports(systems, reductions, saved, lambda a, b: hinf_norm(error_system(a, b)), hinf_norm)
    return new, reports


def saved_reports(systems: list, reductions: list[Reduction], saved: list, error_norm, gain) -> list[LayerReport]:
    """One LayerReport per layer, measured on what is saved (float32 parameters included): error_norm(G, G_saved)
    and gain(G), r(H) each, in the family's own H-infinity norm; the storage bound between reduced and saved."""
    return [LayerReport(i, red, sv, error_norm(orig, sv), gain(orig), red.system.perturbation_bound(sv))
            for i, (orig, red, sv) in enumerate(zip(systems, reductions, saved))]


def compress_model(model: SSMModel, spec: CompressSpec) -> tuple[SSMModel, list[LayerReport]]:
    """Reduce every layer; returns the new model and per-layer reports (error of the saved model).

    The new model's provenance is derived from the old one's (task, classes, seq_len carried over) with
    the reduction summary, so a model compressed from Python exports with its task and bounds too.
    """
    from .model import is_mimo

    if is_mimo(model.config):  # LRU / S5: one MIMO system per layer (compress_mimo.py)
        from .compress_mimo import compress_mimo_model

        new, reports = compress_mimo_model(model, spec)
    else:
        new, reports = _compress_siso(model, spec)
    new.provenance = derive(model.provenance, "compress", reduction=reduction_summary(spec, model, new, reports))
    return new, reports


def reduction_summary(spec: CompressSpec, model: SSMModel, new: SSMModel, reports: list[LayerReport]) -> dict[str, Any]:
    """What a compressed model's provenance records (read by export's error_bounds and by info)."""
    s = _report_dict("", "", spec, model, new, reports, full=False)
    return {k: s[k] for k in ("method", "selector", "modes_in", "modes_out", "bounds_hold", "certified")} | {
        "layers": [{k: v for k, v in l.items() if k != "warnings"} for l in s["layers"]]}


def _report_dict(model_path: str, out_path: str, spec: CompressSpec, model: SSMModel, new: SSMModel,
                 reports: list[LayerReport], full: bool) -> dict[str, Any]:
    return {
        "input": str(model_path), "output": str(out_path), "method": spec.method,
        "selector": {"rank": spec.rank, "energy": spec.energy, "tol": spec.tol,
                     "layer_ranks": {str(k): v for k, v in spec.layer_ranks.items()}, "horizon": reports[0].reduction.horizon},
        "modes_in": [b.ssm.N for b in model.blocks], "modes_out": [b.ssm.N for b in new.blocks],
        "step_state_floats_in": sum(model.step_state_floats()), "step_state_floats_out": sum(new.step_state_floats()),
        "parameters_in": sum(p.numel() for p in model.parameters()),
        "parameters_out": sum(p.numel() for p in new.parameters()),
        "bounds_hold": all(bool(r.bound_holds().all()) for r in reports),
        "certified": all(r.is_certified() for r in reports),
        "layers": [r.to_dict(full) for r in reports],
    }


def compress_checkpoint(model_path: str, out_path: str, spec: CompressSpec, *, report_path: Optional[str] = None,
                        plot_path: Optional[str] = None) -> dict[str, Any]:
    """`edgessm compress`: load, reduce, verify bounds, write checkpoint (+ report, plot) atomically."""
    from .checkpoint import atomic_write, check_outputs, file_sha256, load, save

    # no output may be the input or another output (the CLI checks this too; the library call must not rely on it)
    check_outputs({"checkpoint": model_path}, {"-o": out_path, "--report": report_path, "--plot": plot_path})
    model = load(model_path)
    new, reports = compress_model(model, spec)
    summary = _report_dict(model_path, out_path, spec, model, new, reports, full=False)
    if not summary["bounds_hold"]:
        bad = [r.layer for r in reports if not r.bound_holds().all()]
        raise UnstableSystemError(f"layers {bad}: the measured error exceeds the certified bound; the reduced model "
                                  "was not written. Report this with the checkpoint; try a larger --rank meanwhile")
    prov = dict(new.provenance)  # compress_model derived it (task, classes, seq_len, the reduction summary)
    prov["parent"] = {"path": str(model_path), "sha256": file_sha256(model_path)}
    # the checkpoint first (save refuses a NaN model); the report and plot after it, and if either fails the
    # checkpoint goes too: never a report or plot for a checkpoint that was not written, nor the reverse
    save(new, out_path, provenance=prov)
    try:
        if report_path:
            full = _report_dict(model_path, out_path, spec, model, new, reports, full=True)
            with atomic_write(report_path, "report") as tmp:
                tmp.write_text(json.dumps(full, indent=1))
        if plot_path:
            plot_hsv(reports, plot_path)
    except BaseException:
        for p in (out_path, report_path):
            if p:
                Path(p).unlink(missing_ok=True)
        raise
    return summary


def _holds(l: dict[str, Any]) -> str:
    if l["bound_holds"] is None:
        return "no bound"
    if not l["bound_holds"]:
        return "NO"
    return "yes" if l.get("certified", True) else "yes (certified channels)"


def summary_table(s: dict[str, Any]) -> str:
    from .report import table

    def f(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.3g}"

    rows = [[l["layer"], l["method"] + (f" (L={l['horizon']})" if l.get("horizon") else ""),
             f"{l['modes_in']} -> {l['modes_out']}", f"{l['channel_rank_median']:g} / {l['channel_rank_max']}",
             f"{l['real_states_in']} -> {l['real_states_out']}",
             f(l["max_bound"]), f(l.get("max_floor")), f(l["max_measured_hinf"]), f(l["max_relative_error"]),
             f(l.get("max_horizon_error")), _holds(l), len(l["warnings"])]
            for l in s["layers"]]
    head = ["layer", "method", "modes/channel", "channel rank median/max", "real states (layer)", "max bound",
            "max floor", "max ||G-Gr||inf", "max rel err", "max L-step err", "bound holds", "warnings"]
    lines = [table(head, rows),
             f"step state: {s['step_state_floats_in']} -> {s['step_state_floats_out']} floats; "
             f"parameters: {s['parameters_in']:,} -> {s['parameters_out']:,}; written {s['output']}"]
    if s["selector"]["energy"] is not None or s["selector"]["tol"] is not None:
        lines.append("note: each layer keeps one size, its largest channel rank; channels that need fewer modes are "
                     "padded. Use --rank (or --layer-rank) for a fixed size.")
    for l in s["layers"]:
        lines += [f"warning: {w}" for w in l["warnings"][:4]]
    return "\n".join(lines)


def plot_hsv(reports: list[LayerReport], path: str) -> None:
    """HSV decay per layer (median and 10-90% band over channels, normalised by sigma_1) and the cut."""
    from .checkpoint import atomic_write
    from .errors import ConfigError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    n = len(reports)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False, sharey=True)
    for ax, rep in zip(axes[0], reports):
        hsv = rep.reduction.hsv  # (H 2N)
        norm = hsv / np.maximum(hsv[:, :1], 1e-300)
        norm = np.where(norm > 0, norm, np.nan)
        k = np.arange(1, norm.shape[1] + 1)
        with np.errstate(all="ignore"):
            med, lo, hi = (np.nanpercentile(norm, q, axis=0) for q in (50, 10, 90))
        ax.semilogy(k, med, color="C0", label="median channel")
        ax.fill_between(k, lo, hi, color="C0", alpha=0.25, label="10-90%")
        ax.axvline(float(np.median(rep.reduction.order)) + 0.5, color="C3", ls="--", label="kept (median)")
        ax.set_title(f"layer {rep.layer}: {rep.reduction.hsv.shape[1] // 2} -> {rep.system.N} modes", fontsize=9)
        ax.set_xlabel("real state index k")
        ax.set_ylim(1e-16, 2)
    axes[0][0].set_ylabel("sigma_k / sigma_1")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path, "plot") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def in_training_reducer(model: SSMModel, cfg) -> tuple[SSMModel, dict[str, Any]]:
    """CompreSSM step (Chahine et al. 2025) at an evaluation point early in training.

    With cfg.reduce_energy: a layer's energy rank is the largest per-channel rank that keeps that
    fraction of the Hankel energy (one N per layer); the layer is reduced when that rank is at most
    (1 - reduce_min_drop) of its size. With cfg.reduce_rank: every layer larger than the target is
    reduced to it. Returns (model, event), the same model object when nothing changes.
    """
    from .model import is_mimo

    if is_mimo(model.config):  # LRU / S5: one MIMO system per layer (compress_mimo.py)
        from .compress_mimo import in_training_mimo_reduce
        from .model import layer_systems, with_mimo_systems

        systems, rebuild, reduce = layer_systems(model), with_mimo_systems, in_training_mimo_reduce(model, cfg)
    else:
        systems, rebuild = diagonal_systems(model), with_diagonal_systems
        reduce = lambda sys, i, warnings, **sel: reduce_layer(sys, horizon=cfg.reduce_horizon, layer=i, **sel)  # noqa: E731
    new_systems, changed = [], []
    event: dict[str, Any] = {"energy": cfg.reduce_energy, "rank": cfg.reduce_rank, "layers": []}
    warnings: list[str] = []
    for i, sys in enumerate(systems):
        if cfg.reduce_rank is not None:
            red = reduce(sys, i, warnings, rank=int(cfg.reduce_rank)) if sys.N > cfg.reduce_rank else None
        else:
            red = reduce(sys, i, warnings, energy=cfg.reduce_energy)
            if red is not None and not (red.system.N <= (1.0 - cfg.reduce_min_drop) * sys.N and red.system.N < sys.N):
                red = None
        if red is None:  # this layer stays as it is
            new_systems.append(sys)
            continue
        new_systems.append(red.system)
        changed.append(i)
        event["layers"].append({"layer": i, "from": sys.N, "to": int(red.system.N),
                                "max_bound": num_or_none(np.nanmax(red.bound)) if np.any(np.isfinite(red.bound)) else None})
    if warnings:
        event["warnings"] = warnings
    if not changed:
        return model, event
    new = rebuild(model, new_systems)
    new.provenance = dict(model.provenance)
    return new, event
