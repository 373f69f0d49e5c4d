"""LRU training forward: FFT over modes (LRULayer.forward) vs a log-depth parallel scan, side by side.

    OMP_NUM_THREADS=2 python bench/mimo_forward.py [--reps 5]

Forward + backward of one LRU layer (H = 64, P = 64, batch 50: the mnist1d setting) at L = 40, 256,
1024; median wall time over reps (interleaved), and the max deviation of each from the float64
oracle (MimoSSM.convolve) relative to max |y|. The scan is Hillis-Steele on the states,
x[l] += a^d x[l - d] for d = 1, 2, 4, ... with a^d from the exact log a (float32 state, complex64).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def scan_forward(layer, u):
    """The same map as LRULayer.forward by a log-depth scan over L (complex64 state)."""
    L = u.shape[1]
    la = layer.log_a()  # (P) float64
    x = torch.einsum("ph,blh->blp", layer.b_bar().to(torch.complex64), u.to(torch.complex64))  # (B L P)
    d = 1
    while d < L:
        ad = torch.exp(la * d).to(torch.complex64)  # (P) a^d
        x = torch.cat([x[:, :d], x[:, d:] + ad * x[:, :-d]], 1)
        d *= 2
    y = layer.factor * torch.einsum("hp,blp->blh", layer.c_mat().to(torch.complex64), x).real
    return y + u * layer.D


def main(argv=None):
    from edgessm.layers_mimo import LRULayer

    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    layer = LRULayer(64, 64, seed=0)
    sys = layer.to_system()
    print("| L | FFT fwd+bwd ms | scan fwd+bwd ms | scan / FFT | FFT err | scan err |")
    print("|---|---|---|---|---|---|")
    for L in (40, 256, 1024):
        u = torch.randn(50, L, 64)
        ref = sys.convolve(u.double().numpy())
        times = {"fft": [], "scan": []}
        errs = {}
        for _ in range(a.reps):
            for name, fn in (("fft", layer.forward), ("scan", lambda v: scan_forward(layer, v))):
                layer.zero_grad()
                t0 = time.perf_counter()
                y = fn(u)
                y.square().mean().backward()
                times[name].append(time.perf_counter() - t0)
                errs[name] = float(np.abs(y.detach().double().numpy() - ref).max() / np.abs(ref).max())
        f, s = np.median(times["fft"]) * 1e3, np.median(times["scan"]) * 1e3
        print(f"| {L} | {f:.1f} | {s:.1f} | {s / f:.2f} | {errs['fft']:.1e} | {errs['scan']:.1e} |")


if __name__ == "__main__":
    main()
