# The two commands of the README: `make demo` and `make test`. Each does all set-up on a fresh
# machine: a virtual env in .venv (it sees the system site-packages, so an existing torch, e.g. a
# CUDA or Jetson build, is used as it is), torch 2.13.0 (CPU build) only when no torch is importable,
# then this package with its test extra.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgessm-installed
# Where `make demo` writes its checkpoints, ONNX file and report.
DEMO_DIR ?= demo_out
# torch to install when none is present; override for another platform, e.g.
# make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
# Shared cores: spinning OpenMP/OpenBLAS workers on oversubscribed cores were measured 3-16x slower
# (see edgessm/cli.py); passive waiting and one BLAS thread avoid it. Override on the command line.
export OMP_WAIT_POLICY ?= PASSIVE
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup demo test test-slow test-gpu test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "no torch found: installing $(TORCH_SPEC)"; $(BIN)/python -m pip install -q $(TORCH_SPEC); }
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	@DEMO_DIR=$(DEMO_DIR) BIN=$(BIN) $(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -p no:cacheprovider

# The runtime on onnxruntime's CUDA provider (skipped without a GPU; docs/jetson.md has the recipe).
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu -p no:cacheprovider -rs

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The benchmark scripts whose results are kept in docs/ (minutes on 2 cores; compare ratios, not absolutes).
bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python bench/bench_reduction.py --repeats 3 --subset 12
	OMP_NUM_THREADS=1 $(BIN)/python -m edgessm.export.latency_forms --design
	$(BIN)/python bench/long_stream.py --steps 100000 --fp16 --skip-deep

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info .pytest_cache .hypothesis
