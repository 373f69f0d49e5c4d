"""Long streams: 10^6 steps through the exported step graph on the runtime vs a float64 reference.

Two checks (the runtime issue's bar: float32 within 1e-4 relative of float64 over 10^6 steps, no NaN;
fp16 export: report the error):

1. A linear network (one S4D block: no norm, identity activation, no mixing, per-step output) whose
   float64 oracle is exact: encoder -> DiagonalSSM.reference_recurrence -> residual -> decoder. Its
   ONNX graph contains the same SSM lowering as every model, so this measures the recurrence's
   float32 drift over a long stream (the only place where error can accumulate: everything else
   in a block is per-step). Error = max |y - y64| / rms(y64) over all steps, per 10^5-step window.
2. The default mnist1d architecture (4 blocks, LayerNorm, GELU, GLU, running-mean pooling) over the
   same stream: finite at every step (no NaN/Inf), and the running-mean output stays bounded.

    python bench/long_stream.py --steps 1000000 [--fp16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgessm.config import ModelConfig
from edgessm.export import export_onnx
from edgessm.model import SSMModel
from edgessm.runtime import StreamingSession

WINDOW = 100_000  # steps per error window (and per oracle chunk)


def linear_model(H: int, N: int, seed: int) -> SSMModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_input=1, d_output=1, d_model=H, n_layers=1, d_state=N, norm="none", prenorm=False,
                      activation="identity", mixing="none", pooling="none", task_type="regression")
    return SSMModel(cfg).eval()


def oracle_linear(model: SSMModel, u: np.ndarray) -> np.ndarray:
    """float64: y = dec(h + ssm(h)), h = enc(u); u (L, 1) -> y (L, 1). Exact for the linear network."""
    enc_w = model.encoder.weight.detach().double().numpy()[:, 0]  # (H)
    enc_b = model.encoder.bias.detach().double().numpy()  # (H)
    dec_w = model.decoder.weight.detach().double().numpy()  # (1 H)
    dec_b = model.decoder.bias.detach().double().numpy()  # (1)
    sys_ = model.blocks[0].ssm.to_diagonal()
    y = np.empty((u.shape[0], 1))
    x = np.zeros((1, sys_.H, sys_.N), np.complex128)
    for k0 in range(0, u.shape[0], WINDOW):
        h = u[k0:k0 + WINDOW, :1] * enc_w + enc_b  # (l H)
        z, x = sys_.reference_recurrence(h[None], x)  # (1 l H)
        y[k0:k0 + WINDOW] = (h + z[0]) @ dec_w.T + dec_b  # (l 1)
    return y


def run_runtime(onnx_path: Path, u: np.ndarray) -> tuple[np.ndarray, float]:
    """Step the graph through the runtime, one call per step; (L, d_output) outputs and seconds."""
    sess = StreamingSession(str(onnx_path), provider="cpu", threads=1)
    first = sess.step(u[:1])[0]  # (d_output)
    out = np.empty((u.shape[0], first.shape[0]), np.float32)
    out[0] = first
    t = time.perf_counter()
    for k in range(1, u.shape[0]):
        out[k] = sess.step(u[k:k + 1])[0]
    return out, time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--N", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp16", action="store_true", help="also run an fp16 export of the linear network")
    ap.add_argument("--skip-deep", action="store_true", help="skip the default-architecture NaN check")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    u = rng.standard_normal((a.steps, 1)).astype(np.float32)
    res: dict = {"steps": a.steps, "H": a.H, "N": a.N, "dt_range": [1e-3, 1e-1]}
    model = linear_model(a.H, a.N, a.seed)
    t = time.perf_counter()
    y64 = oracle_linear(model, u.astype(np.float64))
    res["oracle_seconds"] = round(time.perf_counter() - t, 1)
    rms = float(np.sqrt(np.mean(y64 ** 2)))
    with tempfile.TemporaryDirectory() as d:
        for prec in (["fp32", "fp16"] if a.fp16 else ["fp32"]):
            path = Path(d) / f"linear-{prec}.onnx"
            export_onnx(model, path, fp16=prec == "fp16", verify_steps=200)
            y, secs = run_runtime(path, u)
            err = np.abs(y.astype(np.float64) - y64)
            win = min(WINDOW, a.steps)
            windows = [float(err[k:k + win].max() / rms) for k in range(0, a.steps, win)]
            res[prec] = {"max_rel_err": float(err.max() / rms), "rel_err_per_window": windows,
                         "finite": bool(np.isfinite(y).all()), "seconds": round(secs, 1),
                         "us_per_step": round(1e6 * secs / a.steps, 1)}
            print(f"{prec}: max |y - y64| / rms(y64) = {res[prec]['max_rel_err']:.2e} over {a.steps} steps "
                  f"(first/last window {windows[0]:.2e} / {windows[-1]:.2e}), finite {res[prec]['finite']}, "
                  f"{res[prec]['us_per_step']} us/step", flush=True)
        if not a.skip_deep:
            torch.manual_seed(a.seed)
            deep = SSMModel(ModelConfig()).eval()
            path = Path(d) / "deep.onnx"
            export_onnx(deep, path, verify_steps=200)
            y, secs = run_runtime(path, u)
            res["deep"] = {"finite": bool(np.isfinite(y).all()), "max_abs_output": float(np.abs(y).max()),
                           "seconds": round(secs, 1)}
            print(f"default architecture: finite at every step {res['deep']['finite']}, "
                  f"max |y| {res['deep']['max_abs_output']:.3g}, {secs:.0f} s", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
