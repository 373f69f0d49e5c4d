"""Balancing the real map (edgessm) vs the complex map (CompreSSM's code) on the layers of a trained LRU.

    OPENBLAS_NUM_THREADS=1 python bench/mimo_real_vs_complex.py CHECKPOINT [--ranks 32 16 8 4]

An LRU layer computes y = Re(C x) + D u: its real input-output map has the poles a_p AND conj(a_p).
CompreSSM balances the complex system (a, B, C) alone: complex Gramians P = a P a^H + B B^H,
Q = a^H Q a + C^H C, square-root truncation to r complex modes, re-diagonalised (complex eig), and the
layer keeps y = Re(C_r x). edgessm balances the conjugate-augmented real map (reduce/mimo_bt.py), r stored
modes. Both are scored by what the layer computes: ||G - G_r||_inf of the REAL map (MimoSSM.hinf_norm,
largest singular value over frequency), relative to ||G||_inf, per layer; plus edgessm's certified
bound 2 sum_{i>k} sigma_i for its own reduction.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np


def complex_map_bt(sys, r: int):
    """CompreSSM's reduction of (a, B, C) as a complex system (dense float64; P is small)."""
    from scipy.linalg import cholesky, svd

    from edgessm.mimo import MimoSSM

    a, B, C = sys.A, sys.B, sys.C
    den = 1.0 - a[:, None] * np.conj(a)[None, :]
    Pg = (B @ np.conj(B.T)) / den  # closed-form complex Stein solutions
    Qg = (np.conj(C.T) @ C) / np.conj(den)
    eye = 1e-14 * np.eye(a.size)
    Lp = cholesky(Pg + eye * np.trace(Pg).real, lower=True)
    Lq = cholesky(Qg + eye * np.trace(Qg).real, lower=True)
    U, s, Vh = svd(np.conj(Lq.T) @ Lp)
    si = 1.0 / np.sqrt(s[:r])
    T = Lp @ np.conj(Vh[:r]).T * si
    Ti = (si[:, None] * np.conj(U[:, :r]).T) @ np.conj(Lq.T)
    Ar, Br, Cr = Ti @ (a[:, None] * T), Ti @ B, C @ T
    lam, V = np.linalg.eig(Ar)
    return MimoSSM(lam, np.linalg.solve(V, Br), Cr @ V, sys.D, sys.c)


def main(argv=None) -> dict:
    import edgessm
    from edgessm.reduce.mimo_bt import mimo_balanced_truncation
    from edgessm.model import layer_systems

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--ranks", type=int, nargs="+", default=[32, 16, 8, 4])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    systems = layer_systems(edgessm.load(a.checkpoint))
    rows = []
    print("| layer | r (stored modes) | complex-map BT rel. error | real-map BT rel. error | real-map certified bound (rel.) |")
    print("|---|---|---|---|---|")
    for i, sys in enumerate(systems):
        gain = sys.hinf_norm()
        for r in a.ranks:
            cm = sys.error_system(complex_map_bt(sys, r)).hinf_norm() / gain
            red = mimo_balanced_truncation(sys, r)
            rm = red.measured_hinf[0] / gain
            rows.append({"layer": i, "r": r, "complex_map": cm, "real_map": rm, "bound": red.bound[0] / gain})
            print(f"| {i} | {r} | {cm:.3g} | {rm:.3g} | {red.bound[0] / gain:.3g} |")
    if a.json:  # temp file + rename: a killed run leaves no half-written JSON for a resuming driver to read
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, a.json)
    return {"rows": rows}


if __name__ == "__main__":
    main()
