"""Step latency of edgessm step graphs vs the provider's floor, across runtime configurations.

    python bench/bench_latency.py                       # the test-fixture graphs, CPU provider
    python bench/bench_latency.py model.onnx --provider cuda --cuda-graph --json

For each model and configuration (session.run vs IO binding; CUDA graph on/off where the CUDA
provider runs) it reports p50/p90/p99 per-step latency, the floor (a one-node graph through the
same provider and IO path) and step/floor at p50. Without model paths it builds the fixture graphs
of tests/test_runtime_graphs.py (needs onnx; this script is workstation tooling, the runtime
itself never imports onnx): "small" (2 layers, H=4, N=3) and "gpu_md" (4 layers, H=128, N=16,
plain elementwise ops, the size measured on an H100, docs/latency.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def fixture_models(folder: pathlib.Path) -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("edgessm_runtime_fixture", ROOT / "tests" / "test_runtime_graphs.py")
    fx = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fx
    spec.loader.exec_module(fx)
    sizes = {"small": dict(), "gpu_md": dict(d_input=8, d_output=10, H=128, N=16, n_layers=4, seed=1)}
    out = {}
    for name, kw in sizes.items():
        model = fx.build_model(fx.make_params(**kw))
        out[f"{name} ({len(model.graph.node)} nodes)"] = fx.save_model(model, folder / f"{name}.onnx")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="step graphs (default: the fixture graphs)")
    ap.add_argument("--provider", default="cpu", help="auto, tensorrt, cuda, cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cuda-graph", action="store_true", help="also measure with CUDA graphs (CUDA provider)")
    ap.add_argument("-n", type=int, default=3000, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .` still finds edgessm.runtime
    from edgessm.runtime import StreamingSession, measure_floor, measure_latency
    from edgessm.runtime.cli import _bench_inputs

    with tempfile.TemporaryDirectory() as tmp:
        models = {pathlib.Path(m).name: m for m in args.models} or fixture_models(pathlib.Path(tmp))
        configs = [dict(io_binding=False), dict(io_binding=True)]
        if args.cuda_graph:
            configs.append(dict(io_binding=True, cuda_graph=True))
        rows = []
        for label, path in models.items():
            for cfg in configs:
                s = StreamingSession(path, provider=args.provider, batch=args.batch, threads=args.threads, **cfg)
                step = measure_latency(s.step, _bench_inputs(s), n=args.n, warmup=args.warmup)
                floor = measure_floor(s, n=args.n, warmup=args.warmup)
                rows.append(dict(model=label, providers=s.providers, batch=s.batch, threads=args.threads,
                                 io_binding=s.io_binding, cuda_graph=s.cuda_graph, step=step.as_dict(),
                                 floor=floor.as_dict(), step_over_floor_p50=step.p50_us / floor.p50_us))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':<24} {'provider':<10} {'path':<18} {'step p50':>9} {'p90':>7} {'p99':>7} "
          f"{'floor p50':>9} {'ratio':>6}")
    for r in rows:
        path = ("cuda graph" if r["cuda_graph"] else "io binding") if r["io_binding"] else "session.run"
        st, fl = r["step"], r["floor"]
        print(f"{r['model']:<24} {r['providers'][0].replace('ExecutionProvider', ''):<10} {path:<18} "
              f"{st['p50_us']:>7.1f}us {st['p90_us']:>5.1f}us {st['p99_us']:>5.1f}us {fl['p50_us']:>7.1f}us "
              f"{r['step_over_floor_p50']:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
