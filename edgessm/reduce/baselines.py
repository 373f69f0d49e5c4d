"""Baselines for balanced truncation: modal truncation (LAST) and random mode selection.

Dimensions: H channels, N stored modes, r kept modes per channel.
"""
from __future__ import annotations

import numpy as np

from ..ssm import DiagonalSSM
from .norms import error_system, hinf_norm
from .reduction import PADDING_A, Reduction, check_rank

__all__ = ["modal_truncation", "random_truncation"]

def _truncate_modes(sys: DiagonalSSM, keep: np.ndarray, r: np.ndarray, method: str, measure: bool) -> Reduction:
    """Keep the stored modes where keep (H N) is True (at most r per channel), pad to max r."""
    H = sys.H
    Nout = int(r.max())
    order = np.argsort(~keep, axis=1, kind="stable")[:, :Nout]  # (H r) kept modes first
    kept = np.take_along_axis(keep, order, axis=1)  # (H r)
    A = np.where(kept, np.take_along_axis(sys.A, order, axis=1), PADDING_A)  # (H r)
    B = np.where(kept, np.take_along_axis(sys.B, order, axis=1), 0)  # (H r)
    C = np.where(kept, np.take_along_axis(sys.C, order, axis=1), 0)  # (H r)
    red = DiagonalSSM(A, B, C, sys.D)
    measured = hinf_norm(error_system(sys, red)) if measure else None
    return Reduction(red, red.real_state_dims(), kept.sum(axis=1), np.full((H, 2 * sys.N), np.nan),
                     sys.real_state_dims(), np.full(H, np.nan), measured, None, None, method, [])


def modal_truncation(sys: DiagonalSSM, rank: int | np.ndarray, *, measure: bool = True,
                     layer: object | None = None) -> Reduction:
    """Keep the r stored modes with the largest H-infinity contribution (LAST, arXiv 2411.02824).

    Score of a complex mode: the pair's gain bound 2 |C B| / (1 - |A|) (|z C B / (z - A)| peaks at
    |C B| / (1 - |A|)); of a real mode: |2 Re(C B)| / (1 - |A|). No certified bound (bound = NaN);
    measured_hinf is measured when measure=True.
    """
    sys.check(layer)
    r = check_rank(rank, sys.H, sys.N, layer)
    CB = sys.C * sys.B  # (H N)
    score = np.where(sys.real_modes(), np.abs(2.0 * CB.real), 2.0 * np.abs(CB)) / (1.0 - np.abs(sys.A))  # (H N)
    rank_of = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1)  # (H N) 0 = best
    keep = (rank_of < r[:, None]) & sys.active_modes()  # (H N)
    return _truncate_modes(sys, keep, r, "modal", measure)


def random_truncation(sys: DiagonalSSM, rank: int | np.ndarray, *, seed: int = 0, measure: bool = True,
                      layer: object | None = None) -> Reduction:
    """Keep r active stored modes per channel chosen uniformly at random (seeded). bound = NaN."""
    sys.check(layer)
    r = check_rank(rank, sys.H, sys.N, layer)
    rng = np.random.default_rng(seed)
    score = np.where(sys.active_modes(), rng.random(sys.A.shape), -1.0)  # (H N)
    rank_of = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1)  # (H N)
    keep = (rank_of < r[:, None]) & sys.active_modes()  # (H N)
    return _truncate_modes(sys, keep, r, "random", measure)
