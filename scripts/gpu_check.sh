#!/usr/bin/env bash
# The GPU checks and measurements of docs/results.md §3 and docs/jetson.md, on a machine with an NVIDIA GPU,
# torch and onnxruntime-gpu (the lent H100: see ../shared/GPU.md for getting onnxruntime-gpu onto it).
#
#   bash scripts/gpu_check.sh OUTDIR test      # the runtime's GPU tests (tests/test_runtime_gpu.py) + CPU runtime tests
#   bash scripts/gpu_check.sh OUTDIR svd       # bench/gpu_svd_floor.py: the reduction's SVD stage on the GPU
#   bash scripts/gpu_check.sh OUTDIR latency   # fixture graphs + full vs compressed checkpoints in runs/latency/
#
# Works from a plain checkout without `pip install`: where edgessm.runtime / edgessm.export are not importable
# (no editable install), it links runtime/ and export/ into edgessm/ (as pyproject.toml's package-dir maps them).
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR test|svd|latency ...}; shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
python3 -c "import edgessm.runtime, edgessm.export" 2>/dev/null || { ln -sfn ../runtime edgessm/runtime; ln -sfn ../export edgessm/export; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$out/machine.txt"
import onnxruntime as o, torch, platform
print("python", platform.python_version(), "| torch", torch.__version__, "| onnxruntime", o.__version__, o.get_available_providers())
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PY
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$out/machine.txt"
for stage in "$@"; do
  case $stage in
    test)
      python3 -m pytest -q -p no:cacheprovider -ra tests/test_runtime_gpu.py 2>&1 | tee "$out/test_gpu.log" | tail -40
      python3 - <<'PY' 2>&1 | grep -v Warning | tee "$out/tf32.log"
# the CUDA provider's TF32 default against the float64 oracle: max |error| / max |y|, 200 steps, 4 x H=128 x N=16
import importlib.util, sys, tempfile, numpy as np
from edgessm.runtime import StreamingSession
spec = importlib.util.spec_from_file_location("fx", "tests/test_runtime_graphs.py"); fx = importlib.util.module_from_spec(spec)
sys.modules["fx"] = fx; spec.loader.exec_module(fx)
p = fx.make_params(d_input=8, d_output=10, H=128, N=16, n_layers=4, seed=1, pool=True)
path = fx.save_model(fx.build_model(p), tempfile.mkdtemp() + "/m.onnx")
xs = np.random.default_rng(0).standard_normal((2, 200, 8)).astype(np.float32)
ref = fx.reference(p, xs)
for prov, tf32 in [("cpu", False), ("cuda", False), ("cuda", True)]:
    y = StreamingSession(path, provider=prov, batch=2, tf32=tf32).run(xs)
    print(f"{prov:4s} tf32={tf32!s:5s} max rel error vs float64: {np.abs(y - ref).max() / np.abs(ref).max():.2e}")
PY
      python3 -m pytest -q -p no:cacheprovider tests/test_runtime.py tests/test_runtime_graphs.py 2>&1 | tail -3 ;;
    svd)
      python3 bench/gpu_svd_floor.py --json "$out/gpu_svd_floor.json" 2>&1 | tee "$out/gpu_svd_floor.log" ;;
    latency)
      python3 bench/bench_latency.py --provider cuda --cuda-graph -n 3000 2>&1 | tee "$out/bench_latency_cuda.log"
      python3 bench/bench_latency.py --provider cuda --cuda-graph -n 3000 --batch 256 2>&1 | tee -a "$out/bench_latency_cuda.log"
      python3 bench/compression_quality.py latency runs/latency/full_s0.safetensors runs/latency/bt_r16_s0.safetensors \
        runs/latency/bt_r8_s0.safetensors runs/latency/bt_r4_s0.safetensors --steps 2000 --rounds 3 \
        --torch-devices cpu,cuda --runtimes cpu,cuda,cuda-graph,cuda-graph@cpu --out "$out/latency_gpu.json" 2>&1 \
        | grep -v Warning | tee "$out/latency_gpu.log" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
