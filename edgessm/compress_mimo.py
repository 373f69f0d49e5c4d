"""Model-level compression of LRU / S5 models: one MIMO system per layer (reduce/mimo_bt.py).

compress.py dispatches here for MIMO layer families; the reports are compress.LayerReport with
per-layer arrays of length 1 (a MIMO layer is one system, not H channels), so the CLI, the report
file and the bound check are shared with the SISO path.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .compress import CompressSpec, LayerReport, saved_reports
from .errors import RankError
from .reduce.mimo_bt import mimo_balanced_truncation
from .model import SSMModel, layer_systems, with_mimo_systems

__all__ = ["compress_mimo_model", "in_training_mimo_reduce"]


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
    # the MIMO H-inf norm (largest singular value over frequency) of what is saved (float32 parameters)
    return new, saved_reports(systems, reductions, layer_systems(new), lambda a, b: np.array([a.error_system(b).hinf_norm()]),
                              lambda a: np.array([a.hinf_norm()]))


def in_training_mimo_reduce(model: SSMModel, cfg) -> Callable:
    """The per-layer step of compress.in_training_reducer for LRU / S5: MIMO BT of the layer's real map.

    A layer no order of which re-diagonalises accurately is kept (None, with a warning): a reduction
    point must not abort the training run.
    """
    if cfg.reduce_horizon is not None:
        raise RankError(f"{model.config.layer} layers: in-training reduction has no horizon-aware variant; "
                        "drop --reduce-horizon")

    def reduce(sys, i: int, warnings: list[str], **selector):
        try:
            return mimo_balanced_truncation(sys, measure=False, layer=i, **selector)
        except RankError as e:
            if "rank" in selector:
                raise
            warnings.append(str(e))
            return None

    return reduce
