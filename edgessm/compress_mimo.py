"""Model-level compression of LRU / S5 models: one MIMO system per layer (reduce/mimo_bt.py).

compress.py dispatches here for MIMO layer families; the reports are compress.LayerReport with
per-layer arrays of length 1 (a MIMO layer is one system, not H channels), so the CLI, the report
file and the bound check are shared with the SISO path.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .compress import CompressSpec, LayerReport, _num
from .errors import RankError
from .reduce.mimo_bt import mimo_balanced_truncation
from .model import SSMModel, layer_systems, with_mimo_systems

__all__ = ["compress_mimo_model", "in_training_mimo"]


def compress_mimo_model(model: SSMModel, spec: CompressSpec) -> tuple[SSMModel, list[LayerReport]]:
    """LRU / S5: balanced truncation of each layer's real MIMO map (reduce/mimo_bt.py); one report row per layer."""
    systems = layer_systems(model)
    spec.validate(len(systems))
    if spec.method != "balanced" or spec.horizon not in (None, "none"):
        raise RankError(f"{model.config.layer} layers support --method balanced without --horizon only")
    reductions = [mimo_balanced_truncation(s, spec.layer_ranks.get(i, spec.rank),
                                           energy=None if i in spec.layer_ranks else spec.energy,
                                           tol=None if i in spec.layer_ranks else spec.tol, measure=False, layer=i)
                  for i, s in enumerate(systems)]
    new = with_mimo_systems(model, [r.system for r in reductions])
    reports = []
    for i, (orig, red, sv) in enumerate(zip(systems, reductions, layer_systems(new))):
        # the MIMO H-inf norm (largest singular value over frequency) of what is saved (float32 parameters)
        measured = np.array([orig.error_system(sv).hinf_norm()])
        reports.append(LayerReport(i, red, sv, measured, np.array([orig.hinf_norm()]), red.system.perturbation_bound(sv)))
    return new, reports


def in_training_mimo(model: SSMModel, cfg) -> tuple[SSMModel, dict[str, Any]]:
    """in_training_reducer for LRU / S5: the same rule per layer on the layer's real MIMO map (reduce/mimo_bt.py)."""
    if cfg.reduce_horizon is not None:
        raise RankError(f"{model.config.layer} layers: in-training reduction has no horizon-aware variant; "
                        "drop --reduce-horizon")
    new_systems, changed = [], []
    event: dict[str, Any] = {"energy": cfg.reduce_energy, "rank": cfg.reduce_rank, "layers": []}
    for i, sys in enumerate(layer_systems(model)):
        if cfg.reduce_rank is not None:
            if sys.N <= cfg.reduce_rank:
                new_systems.append(sys)
                continue
            red = mimo_balanced_truncation(sys, int(cfg.reduce_rank), measure=False, layer=i)
        else:
            try:
                red = mimo_balanced_truncation(sys, energy=cfg.reduce_energy, measure=False, layer=i)
            except RankError as e:  # no order re-diagonalises accurately: keep the layer, do not abort training
                event.setdefault("warnings", []).append(str(e))
                new_systems.append(sys)
                continue
            if not (red.system.N <= (1.0 - cfg.reduce_min_drop) * sys.N and red.system.N < sys.N):
                new_systems.append(sys)
                continue
        new_systems.append(red.system)
        changed.append(i)
        event["layers"].append({"layer": i, "from": sys.N, "to": int(red.system.N), "max_bound": _num(red.bound[0])})
    if not changed:
        return model, event
    return with_mimo_systems(model, new_systems), event
