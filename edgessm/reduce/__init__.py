"""Reduction of diagonal systems, split by job (numpy float64 throughout).

    gramians.py   closed-form Gramians of the real input-output map and their accurate factors
    balanced.py   the balanced-truncation engine: HSVs, square-root BT, re-diagonalisation, the bound
    baselines.py  modal truncation (LAST) and random mode selection
    norms.py      frequency response, H-infinity norm, L-step operator norm (the error measurements)
    mimo_bt.py    balanced truncation of a MIMO layer's real map (LRU, S5: one state shared by all channels)
    reduction.py  the Reduction result every reducer returns, shared checks, the bound's float64 floor

Policies that combine reducers (the horizon fallback, model-level certification) live in
edgessm/compress.py; this package reduces systems and measures them.
"""
from .balanced import BALANCER_CHUNK, HSV_NOISE_RTOL, balanced_truncation, gramian_factors, hankel_singular_values, truncate_to_order
from .baselines import modal_truncation, random_truncation
from .norms import (DENSE_TOEPLITZ_MAX, error_system, frequency_response, frequency_response_uniform, hinf_norm,
                    horizon_operator_error)
from .reduction import FLOOR_FACTOR, PADDING_A, Reduction, bound_floor, certificate_warnings

__all__ = ["balanced_truncation", "hankel_singular_values", "gramian_factors", "truncate_to_order", "modal_truncation",
           "random_truncation", "error_system", "frequency_response", "frequency_response_uniform", "hinf_norm",
           "horizon_operator_error", "Reduction", "bound_floor", "certificate_warnings", "PADDING_A", "FLOOR_FACTOR",
           "BALANCER_CHUNK", "HSV_NOISE_RTOL", "DENSE_TOEPLITZ_MAX"]
