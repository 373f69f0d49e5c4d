"""`make demo`: the main job end to end on the built-in mnist1d task, with the commands shown.

train (defaults) -> compress (balanced truncation, rank 8 of 32) -> finetune -> export --onnx
-> run the exported graph on the runtime (the whole test set as 1000 parallel streams, and a
latency benchmark beside the PyTorch eager step) -> one table.

Environment: DEMO_DIR (output folder, default demo_out), BIN (the venv's bin folder),
DEMO_FAST=1 (a 2-minute smoke version with fewer epochs, for CI of the demo itself).

``python scripts/demo.py latency`` runs only the last line (the latency comparison), three times, on an
untrained model of the demo's rank-8 shape (4 x 64 x 8): step latency does not depend on the weights.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("DEMO_DIR", "demo_out"))
BIN = Path(os.environ.get("BIN", Path(sys.executable).parent))
FAST = os.environ.get("DEMO_FAST") == "1"
RANK = 8


def sh(*args: str, capture: bool = False) -> str:
    print(f"\n$ {' '.join(shlex.quote(a) for a in args)}", flush=True)
    t = time.time()
    res = subprocess.run(args, check=False, text=True, stdout=subprocess.PIPE if capture else None)
    if res.returncode != 0:
        sys.exit(f"demo: step failed (exit {res.returncode}): {' '.join(args)}")
    print(f"  ({time.time() - t:.1f} s)", flush=True)
    return res.stdout if capture else ""


def edgessm(*args: str, capture: bool = False) -> str:
    return sh(str(BIN / "edgessm"), *args, capture=capture)


def torch_step_latency(ckpt: Path, n: int = 2000) -> float:
    """p50 us of the PyTorch eager step (model.step with its discretisation cached), batch 1, 1 thread."""
    import numpy as np
    import torch

    import edgessm

    torch.set_num_threads(1)
    model = edgessm.load(ckpt).eval()
    with torch.no_grad():
        state, cache = model.init_state(1), model.step_cache()
        x = torch.randn(1, model.config.d_input)
        times = []
        for i in range(n + 200):
            t = time.perf_counter_ns()
            _, state = model.step(x, state, cache)
            if i >= 200:
                times.append(time.perf_counter_ns() - t)
    return float(np.median(times)) / 1e3


def main() -> None:
    import numpy as np

    OUT.mkdir(parents=True, exist_ok=True)
    full, small, tuned, onnx = (OUT / n for n in ("full.safetensors", f"rank{RANK}.safetensors",
                                                   f"rank{RANK}-finetuned.safetensors", f"rank{RANK}.onnx"))
    ep_train = ["--epochs", "6"] if FAST else []
    ep_tune = ["--epochs", "3" if FAST else "10"]
    t0 = time.time()
    r_full = json.loads(edgessm("train", "--task", "mnist1d", "-o", str(full), *ep_train, "--json", capture=True))
    r_comp = json.loads(edgessm("compress", str(full), "--rank", str(RANK), "-o", str(small),
                                "--report", str(OUT / "compress-report.json"), "--json", capture=True))
    e_small = json.loads(edgessm("eval", str(small), "--task", "mnist1d", "--json", capture=True))
    r_tune = json.loads(edgessm("finetune", str(small), "--task", "mnist1d", "-o", str(tuned), *ep_tune,
                                "--json", capture=True))
    r_exp = json.loads(edgessm("export", "--onnx", str(tuned), "-o", str(onnx), "--json", capture=True))

    # the test set through the runtime: 1000 independent streams, 40 steps each
    from edgessm.tasks import load_task

    data = load_task("mnist1d")
    np.save(OUT / "mnist1d_test_x.npy", data.x_test)
    sh(sys.executable, "-m", "edgessm.runtime", str(onnx), "--input", str(OUT / "mnist1d_test_x.npy"),
       "--output", str(OUT / "runtime_y.npy"))
    y_rt = np.load(OUT / "runtime_y.npy")  # (B L O)
    rt_acc = float(np.mean(y_rt[:, -1].argmax(-1) == data.y_test))
    lat_line = latency_line(onnx, tuned)

    ssm_nodes = r_exp["node_counts"]["step"].get("total")
    rows = [
        ("full (trained)", r_full["test"], r_full["parameters"], r_full["step_state_floats"], str(full)),
        (f"balanced truncation to {RANK} modes", e_small["accuracy"], r_comp["parameters_out"],
         r_comp["step_state_floats_out"], str(small)),
        (f"+ finetune ({ep_tune[1]} epochs)", r_tune["test"], r_tune["parameters"], r_tune["step_state_floats"], str(tuned)),
        ("exported ONNX step graph, on the runtime", rt_acc, r_tune["parameters"], r_tune["step_state_floats"], str(onnx)),
    ]
    print("\n" + "=" * 100)
    print(f"edgessm demo: mnist1d (4000 train / 1000 test, length 40), {time.time() - t0:.0f} s in all")
    print("=" * 100)
    w = max(len(r[0]) for r in rows)
    print(f"{'model':<{w}}  {'test acc':>8}  {'params':>8}  {'state floats':>12}  file")
    for name, acc, params, state, path in rows:
        print(f"{name:<{w}}  {acc:>8.2%}  {params:>8,}  {state:>12,}  {path}")
    bounds = [l["max_bound"] for l in r_comp["layers"]]
    meas = [l["max_measured_hinf"] for l in r_comp["layers"]]
    print(f"\ncompression: certified H-inf bound per layer (max over channels) {['%.3g' % b for b in bounds]}, "
          f"measured {['%.3g' % m for m in meas]}, all bounds hold: {r_comp['bounds_hold']}")
    par = r_exp["parity"]["step"]
    st = max(v["rel"] for k, v in par.items() if k.startswith("present_state"))
    print(f"export: {ssm_nodes} nodes, {r_exp['file_sizes']['step']:,} bytes, parity y rel {par['y']['rel']:.1e}, "
          f"y@float64 rel {par['y@float64']['rel']:.1e}, states rel <= {st:.1e}")
    print(lat_line)


def latency_line(onnx: Path, ckpt: Path) -> str:
    """The runtime's step (its own --bench, one thread) beside the PyTorch eager step of the same model."""
    bench = json.loads(sh(sys.executable, "-m", "edgessm.runtime", str(onnx), "--bench", "3000", "--threads", "1",
                          "--json", capture=True))
    p50 = bench["step"]["p50_us"]
    floor_p50 = (bench.get("floor") or {}).get("p50_us")
    torch_p50 = torch_step_latency(ckpt)
    line = (f"step latency (batch 1, 1 thread, p50): runtime ({bench.get('engine', 'onnxruntime')} engine, "
            f"{bench['providers'][0]}) {p50:.1f} us")
    if floor_p50:
        line += f" (onnxruntime's one-node floor {floor_p50:.1f} us, {p50 / floor_p50:.1f}x)"
    return line + f"; PyTorch eager step {torch_p50:.1f} us ({torch_p50 / p50:.1f}x the runtime's)"


def latency_only(repeats: int = 3) -> None:
    """`python scripts/demo.py latency`: the demo's latency line on a rank-8-shaped model, ``repeats`` times."""
    import torch

    import edgessm
    from edgessm.config import ModelConfig
    from edgessm.export import export_onnx
    from edgessm.model import SSMModel

    OUT.mkdir(parents=True, exist_ok=True)
    ckpt, onnx = OUT / f"latency-rank{RANK}.safetensors", OUT / f"latency-rank{RANK}.onnx"
    torch.manual_seed(0)
    edgessm.save(SSMModel(ModelConfig(d_input=1, d_output=10, layer_d_state=[RANK] * 4)), ckpt)
    export_onnx(edgessm.load(ckpt), onnx, verify_steps=40)
    lines = [latency_line(onnx, ckpt) for _ in range(repeats)]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    latency_only() if sys.argv[1:] == ["latency"] else main()
