"""The result type every reducer returns, the checks every reducer shares, and the bound's float64 floor.

Dimensions: H channels, N stored modes (input), r stored modes per channel (output).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RankError
from ..ssm import DiagonalSSM

__all__ = ["Reduction", "PADDING_A", "FLOOR_FACTOR", "bound_floor", "certificate_warnings", "check_rank",
           "check_selector", "where"]

# Padding modes: inactive (B = C = 0) with A = 0.5: nonzero and != 1, because the model maps a
# stored mode back to Lambda = log(A) / dt.
PADDING_A = 0.5

# Float64 floor of the certified bound: the bound 2 sum_{i>k} sigma_i is exact for the exact balanced
# truncation of the exact system, and the computation perturbs both (Gramian factors, SVD, eig of the
# reduced matrix, and the H-infinity evaluation that checks it) by backward errors of a few ulp per
# parameter, growing with the order n. A relative perturbation eps of every A, B, C, D moves the map by
# at most eps * DiagonalSSM.sensitivity() (a closed-form first-order bound), and each of the n - k
# discarded HSVs can move by as much (Weyl's inequality for Hankel operators), so the floor is
# FLOOR_FACTOR * eps * n * (sensitivity(G) + sensitivity(G_r)). Not gain-relative: a channel whose
# poles sit near the circle or whose B, C span many decades gets a large floor, and when the floor
# reaches the channel's gain the certificate says nothing at working precision (reported as vacuous).
FLOOR_FACTOR = 4.0


@dataclass(frozen=True)
class Reduction:
    """Result of every reducer (same type always).

    system: the reduced DiagonalSSM, N = max(rank), channels padded with inactive modes.
    order: int (H) real state dimension kept; rank: int (H) stored modes used (<= system.N).
    hsv: r(H 2N_in) descending, zero-padded (the time-limited HSVs when horizon is set; NaN for
    the baselines, which do not compute them). full_order: int (H) real state count of the input.
    bound: r(H) the H-infinity bound 2 sum_{i>k} sigma_i (NaN where no certified bound exists:
    horizon-aware and baseline reductions). floor: r(H) its float64 floor (FLOOR_FACTOR); what is
    certified is ``certified() = bound + floor``. measured_hinf: r(H) measured ||G - G_r||_inf or None.
    horizon, horizon_error: L and the measured L-step operator error per channel, or None.
    """

    system: DiagonalSSM
    order: np.ndarray
    rank: np.ndarray
    hsv: np.ndarray
    full_order: np.ndarray
    bound: np.ndarray
    measured_hinf: np.ndarray | None
    horizon: int | None
    horizon_error: np.ndarray | None
    method: str
    warnings: list[str] = field(default_factory=list)
    floor: np.ndarray | None = None

    def certified(self) -> np.ndarray:
        """r(H): the certified H-infinity error bound with its float64 floor (NaN where none exists)."""
        return self.bound if self.floor is None else self.bound + self.floor

    def bound_holds(self, measured: np.ndarray | None = None) -> np.ndarray:
        """bool (H): measured (default measured_hinf) <= certified() where a bound is claimed, True elsewhere."""
        m = self.measured_hinf if measured is None else np.asarray(measured)
        if m is None:
            raise ValueError("bound_holds needs a measured error: reduce with measure=True or pass measured=")
        c = self.certified()
        return np.where(np.isfinite(c), m <= c, True)

    def report(self, *, measured: np.ndarray | None = None, gain: np.ndarray | None = None,
               storage: np.ndarray | None = None, saved: DiagonalSSM | None = None, layer: object | None = None,
               full: bool = True) -> dict[str, Any]:
        """The one report format (JSON-ready), for the API and for ``edgessm compress``.

        measured r(H): the error to certify (default measured_hinf: of ``system``; compress passes that
        of the saved model); gain r(H): ||G||_inf, for relative errors and the vacuity test; storage r(H):
        the bound on what float32 storage changed (added to the floor); saved: the system actually
        stored (default ``system``). bound_holds is None where the method claims no bound.
        """
        m = self.measured_hinf if measured is None else np.asarray(measured)
        st = np.zeros(self.bound.shape) if storage is None else np.asarray(storage)
        sy = self.system if saved is None else saved
        cert = self.certified() + st  # (H)
        claimed = np.isfinite(cert)  # (H)
        d: dict[str, Any] = {
            "layer": layer, "method": self.method, "horizon": self.horizon,
            "modes_in": int(self.hsv.shape[1] // 2), "modes_out": int(sy.N),
            "real_states_in": int(self.full_order.sum()), "real_states_out": int(sy.real_state_dims().sum()),
            # a layer keeps one N (the largest channel rank); energy/tol choose a rank per channel
            "channel_rank_median": float(np.median(self.rank)), "channel_rank_max": int(self.rank.max()),
            "max_bound": _max(self.bound), "max_certified": _max(cert),
            "max_floor": _max(self.floor + st) if self.floor is not None else None,
            "max_measured_hinf": None if m is None else num_or_none(np.max(m)),
            "max_relative_error": None if m is None or gain is None else num_or_none(np.max(m / np.maximum(gain, 1e-300))),
            "certified": bool(claimed.all()),
            # never "holds" for a method that claims no bound (modal, random, horizon-aware channels)
            "bound_holds": None if m is None or not claimed.any() else bool(np.all(np.where(claimed, m <= cert, True))),
            "warnings": self._own_warnings(gain, layer) + self._report_warnings(m, gain, st, sy, layer),
        }
        if self.horizon_error is not None:
            d["max_horizon_error"] = num_or_none(np.max(self.horizon_error))
        if full:
            lst = lambda x: None if x is None else [num_or_none(v) for v in np.asarray(x, float)]  # noqa: E731
            d["channels"] = {
                "rank": self.rank.tolist(), "order": self.order.tolist(), "full_order": self.full_order.tolist(),
                "bound": lst(self.bound), "floor": lst(None if self.floor is None else self.floor + st),
                "certified": lst(cert), "measured_hinf": lst(m), "gain": lst(gain),
                "hsv": [[num_or_none(v) for v in row[: max(1, int(n))]] for row, n in zip(self.hsv, self.full_order)],
            }
            if self.horizon_error is not None:
                d["channels"]["horizon_error"] = lst(self.horizon_error)
        return d

    def _own_warnings(self, gain, layer) -> list[str]:
        """The reduction's warnings, less the certificate lines its own measurement (measure=True) made when
        the report checks the certificate again: one verdict per channel, the report's."""
        if gain is None or self.floor is None or self.measured_hinf is None:
            return list(self.warnings)
        again = set(certificate_warnings(self, self.measured_hinf, gain, layer))
        return [w for w in self.warnings if w not in again]

    def _report_warnings(self, m, gain, storage, saved: DiagonalSSM, layer) -> list[str]:
        """What the numbers alone would not say: a failed or vacuous certificate, no bound, no reduction."""
        out = []
        if m is not None and gain is not None and self.floor is not None:
            out += certificate_warnings(dataclasses.replace(self, floor=self.floor + storage), m, gain, layer)
        if m is not None and not np.all(np.isfinite(self.certified())):
            none = ~np.isfinite(self.certified())  # (H)
            which = f"{int(none.sum())} of {none.size} channels have" if not none.all() else "the layer has"
            rel = "" if gain is None else f"; measured max relative error {float(np.max(m / np.maximum(gain, 1e-300))):.3g}"
            worse = gain is not None and np.any(m > gain)
            out.append(f"{where(layer)}{which} no certified bound (method {self.method}){rel}"
                       + (" (worse than removing the layer's SSM output)" if worse else ""))
        n_in = int(self.hsv.shape[1] // 2)
        if saved.N >= n_in:
            out.append(f"{where(layer)}nothing was reduced ({n_in} -> {saved.N} modes): the selector keeps every "
                       f"mode; use a smaller --energy, a larger --tol or --rank")
        return out


def num_or_none(v: Any) -> float | None:
    """A finite float, or None for NaN/Inf (JSON reports: null where no number exists)."""
    v = float(v)
    return v if np.isfinite(v) else None


def _max(x: np.ndarray | None) -> float | None:
    return None if x is None or not np.any(np.isfinite(x)) else num_or_none(np.nanmax(x))


def where(layer: object | None) -> str:
    return "" if layer is None else f"layer {layer}: "


def check_rank(rank: int | np.ndarray, H: int, N: int, layer: object | None) -> np.ndarray:
    r = np.asarray(rank)
    if r.dtype.kind not in "iu" and not (r.dtype.kind == "f" and np.all(np.isfinite(r)) and np.all(r == np.round(r))):
        raise RankError(f"{where(layer)}rank must be an int or an int array of shape ({H},), got {rank!r}")
    r = np.broadcast_to(r.astype(np.int64), (H,)) if r.ndim == 0 else r.astype(np.int64)
    if r.shape != (H,):
        raise RankError(f"{where(layer)}rank array must have shape ({H},) (one per channel), got {r.shape}")
    bad = (r <= 0) | (r >= N)
    if bad.any():
        h = int(np.flatnonzero(bad)[0])
        which = "" if np.ndim(rank) == 0 else f" for channel {h}"  # a scalar rank applies to every channel
        raise RankError(f"{where(layer)}rank {int(r[h])}{which} is out of range; "
                        f"use 1 <= rank <= {N - 1} (N = {N} stored modes; rank {N} would not reduce)")
    return np.array(r)


def check_selector(rank, energy, tol, layer) -> None:
    given = [name for name, v in (("rank", rank), ("energy", energy), ("tol", tol)) if v is not None]
    if len(given) != 1:
        raise RankError(f"{where(layer)}give exactly one of rank, energy, tol (got {', '.join(given) or 'none'})")
    if energy is not None and not (0.0 < float(energy) <= 1.0):
        raise RankError(f"{where(layer)}energy must lie in (0, 1] (fraction of sum of HSVs kept), got {energy!r}")
    if tol is not None and not (float(tol) > 0.0):
        raise RankError(f"{where(layer)}tol must be > 0 (bound relative to the channel's H-infinity gain), got {tol!r}")



def bound_floor(sys, red) -> np.ndarray:
    """r(H): float64 floor of the certified bound of reducing sys to red (FLOOR_FACTOR); DiagonalSSM or MimoSSM.

    Plus, for a DiagonalSSM, what reading its near-real pairs as real modes changes (``snapped``): the
    reducer balances that system, so the difference is bounded rigorously and added.
    """
    n = np.maximum(sys.real_state_dims(), 1)  # (H)
    floor = FLOOR_FACTOR * np.finfo(np.float64).eps * n * (sys.sensitivity() + red.sensitivity())
    if isinstance(sys, DiagonalSSM):
        floor = floor + sys.perturbation_bound(sys.snapped())
    return floor


def certificate_warnings(red: Reduction, measured: np.ndarray, gain: np.ndarray, layer: object | None) -> list[str]:
    """Plain lines for channels whose certificate failed (measured > certified) or says nothing (floor >= gain)."""
    out = []
    cert = red.certified()  # (H)
    bad = np.isfinite(cert) & ~(measured <= cert)  # (H) NaN measured counts as failed
    if bad.any():
        h = int(np.flatnonzero(bad)[np.argmax((measured / np.maximum(cert, 1e-300))[bad])])
        out.append(f"{where(layer)}{int(bad.sum())} of {red.system.H} channels FAIL the certificate: measured "
                   f"H-infinity error {measured[h]:.4g} > bound {red.bound[h]:.4g} + float64 floor {red.floor[h]:.3g} "
                   f"(channel {h}); the reduction is not certified")
    if red.floor is not None:
        vac = np.isfinite(cert) & (red.floor >= gain)  # (H)
        if vac.any():
            h = int(np.flatnonzero(vac)[0])
            out.append(f"{where(layer)}{int(vac.sum())} of {red.system.H} channels (e.g. {h}): the certificate is vacuous at "
                       f"float64 precision (floor {red.floor[h]:.3g} >= the channel's gain {gain[h]:.3g}); poles this close "
                       f"to the unit circle or B, C this badly scaled cannot be certified in float64")
    return out
