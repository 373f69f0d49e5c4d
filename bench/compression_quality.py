"""Compression quality of a trained model, layer by layer: certified bound vs measured H-infinity error.

Dimensions: H channels, N modes per channel, r kept stored modes, k kept real order.

For every SSM layer of a checkpoint and every r in --ranks (default 1..N-1), per channel h:
  balanced truncation (edgessm.reduce.balanced_truncation): the certified Enns/Glover bound
  2 sum_{i>k} sigma_i, the lower bound sigma_{k+1}, and the measured ||G_h - G_h,r||_inf;
  modal truncation (largest 2|CB|/(1-|A|), LAST): the measured ||G_h - G_h,r||_inf.
All errors are divided by the channel's gain ||G_h||_inf (relative errors); the plot shows the
median over channels and the max (shaded band = min..max over channels for measured BT).
At a few table ranks it also reports horizon-aware BT (--horizon L) by the L-step operator error,
next to plain BT's L-step error on the same window.

    python bench/compression_quality.py runs/paper_claims_mnist1d/full_s0.safetensors

Second mode, step latency and size of full vs compressed checkpoints, measured side by side (the rounds
alternate between models so machine noise hits all of them alike): the PyTorch eager step
(model.step with model.step_cache(), batch 1, 1 thread) vs the edgessm runtime on the onnxruntime CPU
provider (`python -m edgessm.runtime M.onnx --bench N --json --threads 1 --provider cpu` after
`edgessm export --onnx`):

    python bench/compression_quality.py latency full.safetensors bt_r8.safetensors --steps 3000 --rounds 3

On a GPU machine add the eager step on the GPU and the runtime on the CUDA provider, with and without
CUDA graphs, in the same rounds (runtime configurations are NAME[@EXPORT_TARGET]):

    python bench/compression_quality.py latency full.safetensors bt_r8.safetensors --torch-devices cpu,cuda \\
        --runtimes cpu,cuda,cuda-graph,cuda-graph@cpu
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from edgessm.compress import reduce_layer
from edgessm.reduce import balanced_truncation, hinf_norm, horizon_operator_error, modal_truncation
from edgessm.checkpoint import load
from edgessm.model import diagonal_systems


def layer_curves(sys, ranks: list[int]) -> dict:
    gain = hinf_norm(sys)  # r(H)
    out = {"gain": gain.tolist(), "ranks": ranks, "bt_bound": [], "bt_lower": [], "bt_measured": [], "modal_measured": [],
           "bt_order": [], "bt_seconds": [], "bound_violations": 0, "lower_violations": 0}
    for r in ranks:
        t0 = time.perf_counter()
        bt = balanced_truncation(sys, r)
        out["bt_seconds"].append(time.perf_counter() - t0)
        md = modal_truncation(sys, r)
        S = bt.hsv  # r(H 2N) descending
        lower = S[np.arange(sys.H), np.minimum(bt.order, S.shape[1] - 1)]  # sigma_{k+1} (0-based index k)
        meas = bt.measured_hinf
        # tolerance: hinf_norm is a refined-grid lower estimate; 1e-9 relative covers float64 noise of the bound sums
        out["bound_violations"] += int(np.sum(meas > bt.bound * (1 + 1e-9) + 1e-12))
        out["lower_violations"] += int(np.sum(meas < lower * (1 - 1e-6) - 1e-12))
        out["bt_bound"].append((bt.bound / gain).tolist())
        out["bt_lower"].append((lower / gain).tolist())
        out["bt_measured"].append((meas / gain).tolist())
        out["modal_measured"].append((md.measured_hinf / gain).tolist())
        out["bt_order"].append(bt.order.tolist())
    return out


def summarise(c: dict) -> dict:
    """Per-rank min / median / max over channels (the per-channel arrays would make the JSON ~1 MB)."""
    out = {k: c[k] for k in ("ranks", "bt_seconds", "bound_violations", "lower_violations")}
    out["gain"] = {"min": float(np.min(c["gain"])), "median": float(np.median(c["gain"])), "max": float(np.max(c["gain"]))}
    for key in ("bt_bound", "bt_lower", "bt_measured", "modal_measured", "bt_order"):
        v = np.array(c[key], float)  # (ranks H)
        out[key] = {"min": np.round(v.min(axis=1), 6).tolist(), "median": np.round(np.median(v, axis=1), 6).tolist(),
                    "max": np.round(v.max(axis=1), 6).tolist()}
    return out


def horizon_rows(sys, ranks: list[int], L: int) -> list[dict]:
    rows = []
    for r in ranks:
        bt = balanced_truncation(sys, r, measure=False)
        hb = reduce_layer(sys, rank=r, horizon=L)  # with compress's fallback policy, as `edgessm compress --horizon`
        e_bt = horizon_operator_error(sys, bt.system, L)
        rows.append({"r": r, "L": L, "bt_Lstep_median": float(np.median(e_bt)), "bt_Lstep_max": float(e_bt.max()),
                     "hbt_Lstep_median": float(np.median(hb.horizon_error)), "hbt_Lstep_max": float(hb.horizon_error.max()),
                     "hbt_warnings": len(hb.warnings)})
    return rows


def plot(layers: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(layers)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    for i, (ax, c) in enumerate(zip(axes, layers)):
        r = np.array(c["ranks"])
        med = lambda key: np.median(np.array(c[key]), axis=1)  # noqa: E731  (over channels)
        mx = lambda key: np.max(np.array(c[key]), axis=1)  # noqa: E731
        ax.semilogy(r, med("bt_bound"), "C0--", label="BT certified bound 2Σσ (median)")
        ax.semilogy(r, med("bt_measured"), "C0-", label="BT measured (median)")
        ax.fill_between(r, np.min(np.array(c["bt_measured"]), axis=1), mx("bt_measured"), color="C0", alpha=0.15,
                        label="BT measured (min..max)")
        ax.semilogy(r, med("bt_lower"), "C2:", label="σ_{k+1} lower bound (median)")
        ax.semilogy(r, med("modal_measured"), "C3-", label="modal measured (median)")
        ax.semilogy(r, mx("modal_measured"), "C3:", lw=0.8, label="modal measured (max)")
        ax.set_title(f"layer {i}", fontsize=9)
        ax.set_xlabel("kept modes r")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("||G - G_r||_inf / ||G||_inf")
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def torch_step_times(model, n: int, warmup: int = 200, device: str = "cpu") -> np.ndarray:
    """us per eager step, batch 1 (torch threads set by the caller).

    On a GPU the step takes x from the host and hands y back to it (``y.cpu()`` waits for the
    step's kernels), the same IO the runtime's step pays; the state stays on the device.
    """
    import torch

    model = model.to(device)
    with torch.no_grad():
        state, cache = model.init_state(1), model.step_cache()
        x = torch.randn(1, model.config.d_input)  # (B=1 d_input), host
        t = np.empty(n)
        for i in range(n + warmup):
            t0 = time.perf_counter_ns()
            y, state = model.step(x.to(device), state, cache)
            y.cpu()
            if i >= warmup:
                t[i - warmup] = (time.perf_counter_ns() - t0) / 1e3
    return t


# runtime configurations: name -> (provider, extra runtime flags, default export target)
RUNTIMES = {"cpu": ("cpu", [], "cpu"), "cuda": ("cuda", [], "cuda"), "cuda-graph": ("cuda", ["--cuda-graph"], "cuda")}


def _runtime_config(spec: str) -> tuple[str, str, list[str], str]:
    """'cuda-graph' or 'cuda-graph@cpu' (NAME[@EXPORT_TARGET]) -> (label, provider, flags, target)."""
    name, _, target = spec.partition("@")
    if name not in RUNTIMES:
        raise SystemExit(f"--runtimes: unknown {name!r}; choose from {', '.join(RUNTIMES)} (optionally @cpu|@cuda)")
    provider, flags, default_target = RUNTIMES[name]
    target = target or default_target
    return f"{name}@{target}", provider, flags, target


def _machine() -> dict:
    import platform

    import onnxruntime
    import torch
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def latency_main(argv: list[str]) -> None:
    import subprocess
    import sys
    import tempfile

    import torch

    from edgessm.export import export_onnx

    ap = argparse.ArgumentParser(prog="compression_quality.py latency")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-devices", default="cpu", help="comma list: cpu, cuda (eager model.step on each)")
    ap.add_argument("--runtimes", default="cpu",
                    help="comma list of NAME[@TARGET], NAME in cpu, cuda, cuda-graph; TARGET the export form "
                         "(cpu: elementwise, cuda: fewest nodes; default cpu for cpu, cuda for the GPU ones)")
    ap.add_argument("--out", default="docs/data/latency_mnist1d.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    devices = [d for d in a.torch_devices.split(",") if d]
    runtimes = [_runtime_config(r) for r in a.runtimes.split(",") if r]
    tmp = Path(tempfile.mkdtemp(prefix="edgessm_lat_"))
    info = {}
    for m in a.models:
        model = load(m).eval()
        n_par = sum(p.numel() for p in model.parameters())
        info[m] = {"model": m, "ranks": [blk.ssm.N for blk in model.blocks], "parameters": n_par,
                   "parameter_bytes_fp32": 4 * n_par, "checkpoint_bytes": os.path.getsize(m),
                   "state_floats": sum(model.step_state_floats()), "state_bytes_fp32": 4 * sum(model.step_state_floats()),
                   "onnx": {}, "torch": {d: [] for d in devices}, "runtime": {lab: [] for lab, *_ in runtimes}}
        for target in sorted({t for *_, t in runtimes}):
            path = tmp / f"{Path(m).stem}.{target}.onnx"
            res = export_onnx(model, path, target=target)
            info[m]["onnx"][target] = {"path": str(path), "bytes": res.file_sizes["step"],
                                       "nodes": res.node_counts["step"]["total"]}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for _ in range(a.rounds):  # rounds alternate models and configurations: noise hits all alike
        for m in a.models:
            for d in devices:
                t = torch_step_times(load(m).eval(), a.steps, device=d)
                info[m]["torch"][d].append({"p50_us": float(np.percentile(t, 50)), "p99_us": float(np.percentile(t, 99))})
            for label, provider, flags, target in runtimes:
                out = subprocess.run([sys.executable, "-m", "edgessm.runtime", info[m]["onnx"][target]["path"],
                                      "--bench", str(a.steps), "--json", "--threads", "1", "--provider", provider,
                                      *flags], check=True, capture_output=True, text=True, env=env).stdout
                b = json.loads(out)
                info[m]["runtime"][label].append({"p50_us": b["step"]["p50_us"], "p99_us": b["step"]["p99_us"],
                                                  "floor_p50_us": (b.get("floor") or {}).get("p50_us"),
                                                  "providers": b["providers"]})
    rows = []
    for m, d in info.items():
        med = lambda runs, k: float(np.median([x[k] for x in runs]))  # noqa: E731  (median over rounds)
        d["torch_median"] = {dev: {k: med(r, k) for k in ("p50_us", "p99_us")} for dev, r in d["torch"].items()}
        d["runtime_median"] = {lab: {k: med(r, k) for k in ("p50_us", "p99_us", "floor_p50_us")}
                               for lab, r in d["runtime"].items()}
        rows.append(d)
    base = rows[0]
    cols = [("torch " + dev, lambda d, dev=dev: d["torch_median"][dev]) for dev in devices] + \
           [("rt " + lab, lambda d, lab=lab: d["runtime_median"][lab]) for lab, *_ in runtimes]
    print(f"{'model':28s} {'ranks':14s} {'params':>7s} {'state B':>8s} " + " ".join(f"{c:>20s}" for c, _ in cols))
    for d in rows:
        print(f"{Path(d['model']).name:28s} {str(d['ranks']):14s} {d['parameters']:7d} {d['state_bytes_fp32']:8d} "
              + " ".join(f"{f(d)['p50_us']:9.1f}/{f(d)['p99_us']:9.1f}" for _, f in cols))
    print("p50 / p99 us per step, medians over rounds. Versus the first model (p50):")
    for d in rows:
        print(f"{Path(d['model']).name:28s} " + " ".join(f"{f(d)['p50_us'] / f(base)['p50_us']:20.2f}" for _, f in cols))
    for dev in devices:  # the speed-up of each runtime configuration over the eager step, same model (p50)
        print(f"torch {dev} / runtime (p50):")
        for d in rows:
            t = d["torch_median"][dev]["p50_us"]
            print(f"{Path(d['model']).name:28s} " + " ".join(
                f"{lab}: {t / d['runtime_median'][lab]['p50_us']:.2f}x" for lab, *_ in runtimes))
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    res = {"steps": a.steps, "rounds": a.rounds, "torch_threads": 1, "git": rev, "machine": _machine(),
           "command": "python bench/compression_quality.py latency " + " ".join(argv), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")


def main() -> None:
    import sys
    if len(sys.argv) > 1 and sys.argv[1] == "latency":
        return latency_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--ranks", default=None, help="comma list; default 1..N-1")
    ap.add_argument("--table-ranks", default="1,2,4,8,16,24")
    ap.add_argument("--horizon", type=int, default=40)
    ap.add_argument("--out", default="docs/data/compression_quality_mnist1d.json")
    ap.add_argument("--plot", default="docs/figures/bound_vs_measured.png")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    model = load(a.model)
    systems = diagonal_systems(model)
    N = systems[0].N
    ranks = [int(x) for x in a.ranks.split(",")] if a.ranks else list(range(1, N))
    table_ranks = [int(x) for x in a.table_ranks.split(",") if int(x) < N]
    t0 = time.perf_counter()
    layers, hrows = [], []
    for i, sys in enumerate(systems):
        c = layer_curves(sys, ranks)
        layers.append(c)
        hrows.append(horizon_rows(sys, table_ranks, a.horizon))
        print(f"layer {i}: {len(ranks)} ranks, bound violations {c['bound_violations']}, "
              f"lower-bound violations {c['lower_violations']}, BT {sum(c['bt_seconds']):.1f} s", flush=True)
    table = []
    for i, c in enumerate(layers):
        for r in table_ranks:
            j = c["ranks"].index(r)
            table.append({"layer": i, "r": r,
                          "bound_median": float(np.median(c["bt_bound"][j])), "bound_max": float(np.max(c["bt_bound"][j])),
                          "bt_median": float(np.median(c["bt_measured"][j])), "bt_max": float(np.max(c["bt_measured"][j])),
                          "bound_over_measured_median": float(np.median(np.array(c["bt_bound"][j]) / np.array(c["bt_measured"][j]))),
                          "modal_median": float(np.median(c["modal_measured"][j])),
                          "modal_max": float(np.max(c["modal_measured"][j]))})
    print(f"\nrelative H-inf error ||G-G_r||/||G|| over {systems[0].H} channels (median / max)")
    print(f"{'layer':>5} {'r':>3} {'BT bound':>20} {'BT measured':>20} {'bound/meas':>10} {'modal measured':>20}")
    for t in table:
        print(f"{t['layer']:5d} {t['r']:3d} {t['bound_median']:9.2e} / {t['bound_max']:8.2e} {t['bt_median']:9.2e} / {t['bt_max']:8.2e} "
              f"{t['bound_over_measured_median']:10.1f} {t['modal_median']:9.2e} / {t['modal_max']:8.2e}")
    print(f"\nL-step operator error (absolute), L = {a.horizon}: plain BT vs horizon BT (median / max over channels)")
    for i, rows in enumerate(hrows):
        for h in rows:
            print(f"layer {i} r {h['r']:2d}: BT {h['bt_Lstep_median']:.2e} / {h['bt_Lstep_max']:.2e}   "
                  f"horizon BT {h['hbt_Lstep_median']:.2e} / {h['hbt_Lstep_max']:.2e}  warnings {h['hbt_warnings']}")
    res = {"model": a.model, "N": N, "H": systems[0].H, "ranks": ranks, "horizon": a.horizon,
           "seconds": time.perf_counter() - t0, "table": table, "horizon_table": hrows,
           "violations": {"upper": sum(c["bound_violations"] for c in layers),
                          "lower": sum(c["lower_violations"] for c in layers),
                          "checked": len(ranks) * systems[0].H * len(systems)},
           "layers": [summarise(c) for c in layers],
           "command": "python bench/compression_quality.py " + " ".join(__import__("sys").argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res))
    plot(layers, Path(a.plot), f"{Path(a.model).name}: relative H-inf error vs r (H={systems[0].H} channels/layer)")
    print(f"wrote {a.out}, {a.plot} in {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
