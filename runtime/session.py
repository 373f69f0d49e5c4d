"""StreamingSession: run an edgessm step graph one time step per call, state kept between calls.

Dimensions: B streams (the session's fixed batch), L sequence length, T chunk length.

Lifecycle (Polygraphy-style runner): construct from the ONNX file alone (provider choice,
contract check) -> ``step`` / ``run`` any number of times -> ``reset`` / ``get_state`` /
``set_state`` between them. Every stream in the batch is independent: its state is its own
row of each state tensor.

Two engines move data in and out of onnxruntime:

- bound (default): IO binding. The state lives in two preallocated buffer sets on the
  provider's device (GPU memory for CUDA/TensorRT). A step reads ``past_state.*`` from set
  p and writes ``present_state.*`` into set 1-p, then p flips (ping-pong). Input and output
  are never the same buffer, so a graph may be run again on the same inputs (as onnxruntime
  does before capturing a CUDA graph, microsoft/onnxruntime#32243) without corrupting the
  state, and the state never makes a host round trip. With ``cuda_graph=True`` each parity
  gets its own captured graph, chosen per run with the run option ``gpu_graph_id`` (1 for
  even steps, 2 for odd; 0 is reserved by onnxruntime), and every buffer keeps the address it
  had at capture: inputs are copied into the bound ``x`` buffer, reset/set_state write into
  the existing state buffers.
- plain (``io_binding=False``): ``session.run`` with numpy states, the reference path.
- fused (``engine="auto"`` on the CPU provider, or ``engine="fused"``): the whole step as one call into
  C compiled on this machine from the weights in the same ONNX file (runtime/fused.py). It is checked
  against onnxruntime on a few random steps when the session starts; a graph it does not recognise,
  no C compiler, or a disagreement leaves the bound engine in place and says why in ``engine_note``.
  ``EDGESSM_ENGINE=onnxruntime`` (or ``fused``) overrides ``engine="auto"``.

On the CPU provider the bound engine runs the same binding and ping-pong code with CPU
buffers, so the CPU tests exercise the GPU path's state logic.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .contract import GraphSpec, TensorSpec, read_graph_spec
from .errors import RuntimeInputError, RuntimeModelError, RuntimeProviderError
from .providers import CUDA, TRT, ProviderArg, _version, create_session, plan_providers, session_options

__all__ = ["StreamingSession", "ENGINES"]

ENGINES = ("auto", "fused", "onnxruntime")
ENGINE_ENV = "EDGESSM_ENGINE"

# State + IO buffers a session may allocate (both ping-pong sets, all streams) unless
# EDGESSM_MAX_STATE_BYTES says otherwise. An edgessm graph needs 2 x 4 bytes x H x 2N per layer per
# stream: 4 x 128 x 64 is 0.5 MiB, so 1 GiB is 2000 such streams; a foreign graph declaring a
# 20000 x 20000 state (3.2 GB) is refused before onnxruntime allocates it.
def _max_buffer_bytes() -> int:
    raw = os.environ.get("EDGESSM_MAX_STATE_BYTES", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1 << 30

# gpu_graph_id values for the two ping-pong directions (onnxruntime reserves 0, -1 disables capture)
GRAPH_IDS = ("1", "2")
GRAPH_ID_KEY = "gpu_graph_id"  # onnxruntime kOrtRunOptionsConfigCudaGraphAnnotation


def _ort():
    import onnxruntime
    return onnxruntime


# Multiple CUDA graphs per session, selected per run by gpu_graph_id (microsoft/onnxruntime#19636,
# merged March 2024): believed to ship from 1.18; older versions would ignore the id and replay one
# graph for both ping-pong directions (wrong state), hence the gate and the start-up self-check.
MIN_ORT_CUDA_GRAPH_IDS = (1, 18)


def _all_finite(x: np.ndarray) -> bool:
    """Whether every value is finite. A step's input is usually a handful of numbers: for those a Python
    loop over x.tolist() takes ~0.3-0.4 us where np.isfinite(x).all() takes ~2 us (two numpy calls and
    a temporary), measured on this CPU; larger inputs take the numpy path (docs/latency.md)."""
    if x.size <= 16:
        return all(map(math.isfinite, x.ravel().tolist()))
    return bool(np.isfinite(x).all())


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class _PlainEngine:
    """session.run with host numpy states (reference path)."""

    def __init__(self, sess, spec: GraphSpec, batch: int, chunk_sess=None):
        self._sess, self._spec, self._chunk = sess, spec, chunk_sess
        self._names_out = [spec.output.name] + [s.output for s in spec.states]
        self._state = {s.input: np.zeros((batch, *s.shape), s.dtype) for s in spec.states}

    def step(self, x: np.ndarray) -> np.ndarray:
        return self._run(self._sess, x)

    def chunk(self, x: np.ndarray) -> np.ndarray:
        return self._run(self._chunk, x)

    def _run(self, sess, x):
        outs = sess.run(self._names_out, {self._spec.input.name: x, **self._state})
        self._state = {s.input: o for s, o in zip(self._spec.states, outs[1:])}
        return outs[0]

    def read_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._state.items()}

    def write_state(self, state: dict[str, np.ndarray]) -> None:
        self._state = {k: np.array(state[k], copy=True) for k in self._state}

    def zero_state(self) -> None:
        for v in self._state.values():
            v[...] = 0


class _BoundEngine:
    """IO binding with ping-pong state buffers on the provider's device (see the module docstring)."""

    def __init__(self, sess, spec: GraphSpec, batch: int, device: str, device_id: int,
                 cuda_graph: bool, chunk_sess=None):
        ort = _ort()
        self._ort, self._sess, self._spec, self._chunk = ort, sess, spec, chunk_sess
        self._device, self._device_id = device, device_id
        new = ort.OrtValue.ortvalue_from_shape_and_type
        self._x = new([batch, *spec.input.shape], spec.input.dtype, device, device_id)
        self._y = new([batch, *spec.output.shape], spec.output.dtype, device, device_id)
        # two state buffer sets; the current state lives in self._bufs[self._parity]
        self._bufs = [[new([batch, *s.shape], s.dtype, device, device_id) for s in spec.states] for _ in range(2)]
        self._zeros = [np.zeros((batch, *s.shape), s.dtype) for s in spec.states]
        for bufs in self._bufs:
            for buf, z in zip(bufs, self._zeros):
                buf.update_inplace(z)
        self._bindings = [self._bind(sess, p) for p in (0, 1)]
        # Without CUDA graphs pass no RunOptions: onnxruntime's Python wrapper looks up gpu_graph_id in a
        # given RunOptions and a missing key costs a C++ exception (~35 us per run measured on CPU, ORT 1.31).
        self._run_options = [None, None]
        if cuda_graph:
            for p in (0, 1):
                ro = ort.RunOptions()
                ro.add_run_config_entry(GRAPH_ID_KEY, GRAPH_IDS[p])
                self._run_options[p] = ro
        self._parity = 0
        self._copy_out = device == "cpu"  # a CPU OrtValue's numpy() is a view of the bound buffer

    def check_cuda_graphs(self, x: np.ndarray, steps: int = 10, seed: int = 0) -> None:
        """Self-check: the captured graphs must reproduce eager execution (gpu_graph_id=-1) from one state.

        Run from a random state for ``steps`` steps, enough for onnxruntime's pre-capture runs, the capture
        of both graph ids and replays of each; then the same steps eagerly. A graph replayed with the wrong
        buffers (microsoft/onnxruntime-genai#2446) or an onnxruntime that ignores gpu_graph_id diverges here.
        Leaves the state zeroed.
        """
        rng = np.random.default_rng(seed)
        start = {s.input: (0.1 * rng.standard_normal(z.shape)).astype(s.dtype)
                 for s, z in zip(self._spec.states, self._zeros)}
        eager = self._ort.RunOptions()
        eager.add_run_config_entry(GRAPH_ID_KEY, "-1")  # -1: no capture / replay in this run
        runs = []
        for options in (self._run_options, (eager, eager)):
            self.write_state(start)
            ys = []
            for _ in range(steps):
                p = self._parity
                self._x.update_inplace(x)
                self._sess.run_with_iobinding(self._bindings[p], options[p])
                self._parity = 1 - p
                ys.append(np.array(self._y.numpy(), copy=True))
            runs.append(np.stack(ys))
        self.zero_state()
        graph, ref = runs
        scale = float(np.abs(ref).max()) or 1.0
        err = float(np.abs(graph - ref).max())
        if not err <= 1e-4 * scale:  # same kernels either way: only replay-buffer mistakes exceed this
            raise RuntimeProviderError(f"CUDA graph replay disagrees with eager execution (max abs diff {err:.3g}, "
                                       f"outputs up to {scale:.3g}); run without --cuda-graph")

    def _bind(self, sess, p: int):
        b = sess.io_binding()
        b.bind_ortvalue_input(self._spec.input.name, self._x)
        b.bind_ortvalue_output(self._spec.output.name, self._y)
        for s, src, dst in zip(self._spec.states, self._bufs[p], self._bufs[1 - p]):
            b.bind_ortvalue_input(s.input, src)    # read set p
            b.bind_ortvalue_output(s.output, dst)  # write set 1-p: never the same buffer
        return b

    def step(self, x: np.ndarray) -> np.ndarray:
        p = self._parity
        self._x.update_inplace(x)  # host -> bound buffer (fixed address: CUDA graph safe)
        self._sess.run_with_iobinding(self._bindings[p], self._run_options[p])
        self._parity = 1 - p
        y = self._y.numpy()  # device -> host copy on a GPU
        return y.copy() if self._copy_out else y

    def chunk(self, x: np.ndarray) -> np.ndarray:
        """Advance T steps with the chunk graph, reading and writing the same state buffers."""
        p = self._parity
        b = self._chunk.io_binding()
        b.bind_ortvalue_input(self._spec.input.name,
                              self._ort.OrtValue.ortvalue_from_numpy(x, self._device, self._device_id))
        b.bind_output(self._spec.output.name, self._device, self._device_id)
        for s, src, dst in zip(self._spec.states, self._bufs[p], self._bufs[1 - p]):
            b.bind_ortvalue_input(s.input, src)
            b.bind_ortvalue_output(s.output, dst)
        self._chunk.run_with_iobinding(b)
        self._parity = 1 - p
        return np.array(b.get_outputs()[0].numpy(), copy=True)

    def read_state(self) -> dict[str, np.ndarray]:
        return {s.input: np.array(buf.numpy(), copy=True)
                for s, buf in zip(self._spec.states, self._bufs[self._parity])}

    def write_state(self, state: dict[str, np.ndarray]) -> None:
        for s, buf in zip(self._spec.states, self._bufs[self._parity]):
            buf.update_inplace(np.ascontiguousarray(state[s.input], dtype=s.dtype))

    def zero_state(self) -> None:
        for buf, z in zip(self._bufs[self._parity], self._zeros):
            buf.update_inplace(z)


class StreamingSession:
    """Run an edgessm ONNX step graph one time step per call for a batch of independent streams.

    Parameters
    ----------
    model: path to the step graph (``.onnx``) or its bytes.
    provider: "auto" (TensorRT -> CUDA -> CPU by availability), "tensorrt", "cuda", "cpu", or a
        list of provider names / (name, options) pairs. ``providers`` says what actually runs;
        an explicit request that onnxruntime silently replaced raises RuntimeProviderError.
    batch: number of independent streams, fixed for the session's life.
    threads: CPU provider intra-op threads (default 1: lowest latency for one small step).
    cuda_graph: capture the step as CUDA graphs (CUDA provider only; double-buffered, two graph ids).
    trt_fp16, trt_cache_dir: TensorRT fp16 kernels and the engine cache folder (None: no cache).
    tf32: let the CUDA provider run float32 MatMul/Gemm in TF32 on Ampere and newer GPUs (faster for
        large products, ~1e-3 relative error; off by default, onnxruntime's own default is on).
    chunk_path: optional chunk graph (a path or the graph's bytes; same states) that ``run`` uses for
        whole chunks of T steps.
    io_binding: keep states in bound device buffers (default); False uses plain ``session.run``.
    check_finite: reject NaN/Inf inputs (default): one NaN in a step poisons its stream's state for every
        later step, silently. The check costs well under 1 us for a few input values, a few us for
        large batches (bench/finite_check.py, docs/latency.md); False skips it.
    verify_cuda_graph: with cuda_graph, compare the captured graphs with eager runs once at start.
    graph_optimization: "all" (onnxruntime's fusions, the default) or "none" (the graph as written; the
        exporter's parity check runs both).
    engine: "auto" (the fused C engine where it runs: CPU provider, IO binding, no CUDA graph; else
        onnxruntime), "fused" (RuntimeProviderError if it cannot run) or "onnxruntime". ``engine`` says
        which runs, ``engine_note`` why. The environment variable EDGESSM_ENGINE overrides "auto".

    A session is not thread-safe; with CUDA graphs call it from the thread that created it
    (onnxruntime keeps captured graphs per thread).
    """

    def __init__(self, model: Union[str, os.PathLike, bytes], provider: ProviderArg = "auto", batch: int = 1,
                 threads: Optional[int] = None, cuda_graph: bool = False, trt_fp16: bool = True,
                 trt_cache_dir: Optional[str] = None, *, chunk_path: Optional[Union[str, os.PathLike]] = None,
                 device_id: int = 0, io_binding: bool = True, check_finite: bool = True,
                 verify_cuda_graph: bool = True, log_level: int = 3, tf32: bool = False, engine: str = "auto",
                 graph_optimization: str = "all"):
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise RuntimeInputError(f"batch must be a positive integer (number of streams), got {batch!r}")
        if isinstance(device_id, bool) or not isinstance(device_id, (int, np.integer)) or device_id < 0:
            raise RuntimeInputError(f"device_id must be a non-negative integer (the GPU index), got {device_id!r}")
        if cuda_graph and not io_binding:
            raise RuntimeInputError("cuda_graph=True needs io_binding=True (captured graphs need fixed buffers)")
        self.batch = int(batch)
        self.cuda_graph = bool(cuda_graph)
        self.io_binding = bool(io_binding)
        self.check_finite = bool(check_finite)
        self.threads = threads
        self.device_id = int(device_id)
        self.model_label = "<bytes>" if isinstance(model, bytes) else os.fspath(model)

        if self.cuda_graph and _version(_ort().__version__) < MIN_ORT_CUDA_GRAPH_IDS:
            raise RuntimeProviderError(f"cuda_graph needs onnxruntime >= {'.'.join(map(str, MIN_ORT_CUDA_GRAPH_IDS))} "
                                       f"(per-run gpu_graph_id); this is {_ort().__version__}: drop --cuda-graph")
        self.tf32 = bool(tf32)
        self.provider_plan = plan_providers(provider, device_id=device_id, cuda_graph=cuda_graph,
                                            trt_fp16=trt_fp16, trt_cache_dir=trt_cache_dir, tf32=tf32)
        so = session_options(threads, log_level, graph_optimization)
        self._sess, self.fallback = create_session(model, self.provider_plan, so, self.model_label)
        self.spec = read_graph_spec(self._sess, self.model_label)
        if self.spec.kind != "step":
            raise RuntimeModelError(f"{self.model_label} is a {self.spec.kind} graph; pass the step graph as the "
                                    "model and this file as chunk_path (--chunk)")
        self._check_batch(self.spec, self.model_label)
        self._check_buffer_bytes(self.spec, self.model_label)
        self.providers: list[str] = self._sess.get_providers()
        self.device = "cuda" if self.providers[0] in (CUDA, TRT) else "cpu"
        if self.cuda_graph and self.providers[0] != CUDA:
            raise RuntimeProviderError(f"cuda_graph needs the CUDA provider but onnxruntime runs {self.providers[0]}"
                                       + (f" ({self.fallback})" if self.fallback else "")
                                       + "; drop --cuda-graph or fix the CUDA installation")

        chunk_sess = None
        self.chunk_spec: Optional[GraphSpec] = None
        if chunk_path is not None:
            chunk_plan = plan_providers(provider, device_id=device_id, cuda_graph=False,
                                        trt_fp16=trt_fp16, trt_cache_dir=trt_cache_dir, tf32=tf32)
            label = "<chunk bytes>" if isinstance(chunk_path, bytes) else os.fspath(chunk_path)
            chunk_sess, _ = create_session(chunk_path if isinstance(chunk_path, bytes) else label, chunk_plan,
                                           session_options(threads, log_level, graph_optimization), label)
            self.chunk_spec = read_graph_spec(chunk_sess, label)
            self._check_chunk(self.chunk_spec, label)
            chunk_device = "cuda" if chunk_sess.get_providers()[0] in (CUDA, TRT) else "cpu"
            if chunk_device != self.device:
                raise RuntimeProviderError(f"{label} runs on {chunk_sess.get_providers()[0]} but the step graph on "
                                           f"{self.providers[0]}; both must share the state buffers' device")

        if self.io_binding:
            self._engine = _BoundEngine(self._sess, self.spec, self.batch, self.device, device_id,
                                        self.cuda_graph, chunk_sess)
            if self.cuda_graph and verify_cuda_graph:
                self._engine.check_cuda_graphs(self._probe_input())
        else:
            self._engine = _PlainEngine(self._sess, self.spec, self.batch, chunk_sess)
        self.engine, self.engine_note = "onnxruntime", ""
        self._select_engine(model, engine)
        x = self.spec.input
        self._x_shape = (self.batch, *x.shape)
        self._x_dtype = x.dtype
        self._fast_ok = not x.is_tokens  # tokens always get the range check
        self._t = 0                                     # steps taken by the session
        self._reset_at = np.zeros(self.batch, np.int64)  # self._t at each stream's last reset

    def _select_engine(self, model, engine: str) -> None:
        if engine not in ENGINES:
            raise RuntimeInputError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        if engine == "auto":
            engine = os.environ.get(ENGINE_ENV, "").strip().lower() or "auto"
            if engine not in ENGINES:
                raise RuntimeInputError(f"{ENGINE_ENV}={engine!r} is not one of {', '.join(ENGINES)}")
        if engine == "onnxruntime":
            self.engine_note = "onnxruntime requested"
            return
        if engine == "auto" and (self.device != "cpu" or not self.io_binding or self.cuda_graph):
            self.engine_note = (f"fused engine not tried: it runs on the CPU with IO binding and no CUDA graph, "
                                f"this session is {self.providers[0]}"
                                f"{'' if self.io_binding else ', io_binding=False'}{', cuda_graph' if self.cuda_graph else ''}")
            return
        from .fused import FusedUnavailable, load_fused
        try:
            data = model if isinstance(model, bytes) else Path(model).read_bytes()
            shapes = {st.input: tuple(st.shape) for st in self.spec.states}
            self._engine, self.engine_note = load_fused(data, self._sess, shapes, self.batch, self.threads or 1)
            self.engine = "fused"
        except (FusedUnavailable, OSError) as e:
            if engine == "fused":
                raise RuntimeProviderError(f"{self.model_label}: the fused engine cannot run it ({e}); "
                                           "use engine='onnxruntime' (--engine onnxruntime)") from None
            self.engine_note = f"fused engine unavailable: {e}"

    # ------------------------------------------------------------------ info
    @property
    def metadata(self) -> dict[str, Any]:
        """The ``edgessm.*`` metadata_props, JSON values decoded."""
        return self.spec.metadata

    @property
    def steps(self) -> np.ndarray:
        """Steps each stream has taken since its last reset (int64, (batch,))."""
        return self._t - self._reset_at

    @property
    def input(self) -> TensorSpec:
        return self.spec.input

    @property
    def output(self) -> TensorSpec:
        return self.spec.output

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.spec.state_names

    def __repr__(self) -> str:
        return (f"StreamingSession({self.model_label!r}, batch={self.batch}, providers={self.providers}, "
                f"io_binding={self.io_binding}, cuda_graph={self.cuda_graph}, engine={self.engine!r}, "
                f"chunk={self.chunk_spec.chunk if self.chunk_spec else None})")

    # ------------------------------------------------------------------ running
    def step(self, x_t) -> np.ndarray:
        """Advance every stream one step. x_t: (batch, d_input) float (or (batch,) int tokens)
        -> y_t: (batch, d_output) float32, a fresh array."""
        x = self._prepare(x_t, sequence=False)
        y = self._engine.step(x)
        self._t += 1
        return y

    def run(self, sequence) -> np.ndarray:
        """Advance every stream L steps. sequence: (batch, L, d_input) (or (batch, L) tokens)
        -> (batch, L, d_output). Uses the chunk graph for whole chunks when one was given,
        single steps for the rest; either way the state carries on from (and to) the session's."""
        xs = self._prepare(sequence, sequence=True)
        L = xs.shape[1]
        ys = np.empty((self.batch, L, *self.spec.output.shape), self.spec.output.dtype)
        t = 0
        if self.engine == "fused" and L > 0:  # all L steps in one C call
            ys[:] = self._engine.sequence(xs)
            t = L
        if self.chunk_spec is not None and t < L:
            T = self.chunk_spec.chunk or L
            while t + T <= L:
                ys[:, t:t + T] = self._engine.chunk(np.ascontiguousarray(xs[:, t:t + T]))
                t += T
        for k in range(t, L):
            ys[:, k] = self._engine.step(np.ascontiguousarray(xs[:, k]))
        self._t += L
        return ys

    # ------------------------------------------------------------------ state
    def reset(self, streams: Optional[Sequence[int]] = None) -> None:
        """Zero the state of all streams, or of the listed stream indices only."""
        if streams is None:
            self._engine.zero_state()
            self._reset_at[:] = self._t
            return
        idx = self._streams(streams)
        state = self._engine.read_state()
        for v in state.values():
            v[idx] = 0
        self._engine.write_state(state)
        self._reset_at[idx] = self._t

    def get_state(self, streams: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
        """A copy of the state: {past_state name: (batch or len(streams), *state shape)}."""
        state = self._engine.read_state()
        if streams is None:
            return state
        idx = self._streams(streams)
        return {k: v[idx] for k, v in state.items()}

    def set_state(self, state: dict, streams: Optional[Sequence[int]] = None) -> None:
        """Restore a state from get_state (all streams, or the listed ones, in that order)."""
        if not isinstance(state, dict):
            raise RuntimeInputError(f"state must be a dict {{name: array}} as get_state returns, got {type(state).__name__}")
        names = set(self.spec.state_names)
        unknown = sorted(set(state) - names)
        missing = sorted(names - set(state))
        if unknown or missing:
            raise RuntimeInputError(f"state keys do not match the model: missing {missing}, unknown {unknown}; "
                                    f"expected {list(self.spec.state_names)}")
        idx = None if streams is None else self._streams(streams)
        rows = self.batch if idx is None else len(idx)
        checked = {}
        for s in self.spec.states:
            v = np.asarray(state[s.input])
            want = (rows, *s.shape)
            if v.shape != want:
                raise RuntimeInputError(f"state {s.input!r}: expected shape {_shape_str(want)}, got {_shape_str(v.shape)}")
            if v.dtype.kind != "f":
                raise RuntimeInputError(f"state {s.input!r}: expected {s.dtype.name}, got {v.dtype.name}")
            if not np.all(np.isfinite(v)):
                raise RuntimeInputError(f"state {s.input!r} contains NaN or Inf; it would poison every later step")
            checked[s.input] = v.astype(s.dtype, copy=False)
        if idx is None:
            self._engine.write_state(checked)
        else:
            current = self._engine.read_state()
            for k, v in checked.items():
                current[k][idx] = v
            self._engine.write_state(current)

    def _probe_input(self) -> np.ndarray:
        x = self.spec.input
        if x.is_tokens:
            return np.zeros((self.batch,), x.dtype)
        return np.random.default_rng(1).standard_normal((self.batch, *x.shape)).astype(x.dtype)

    # ------------------------------------------------------------------ validation
    def _streams(self, streams) -> np.ndarray:
        idx = np.asarray(streams)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise RuntimeInputError(f"streams must be a list of stream indices, got {streams!r}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.batch):
            raise RuntimeInputError(f"stream index out of range in {list(idx)}: this session has streams 0..{self.batch - 1}")
        if len(set(idx.tolist())) != idx.size:
            raise RuntimeInputError(f"streams {list(idx)} lists a stream twice")
        return idx.astype(np.int64)

    def _check_batch(self, spec: GraphSpec, label: str) -> None:
        if spec.batch_dim is not None and spec.batch_dim != self.batch:
            raise RuntimeInputError(f"{label} was exported with a fixed batch of {spec.batch_dim}; "
                                    f"create the session with batch={spec.batch_dim}")

    def _check_buffer_bytes(self, spec: GraphSpec, label: str) -> None:
        """Refuse before allocating: a graph may declare a 20000 x 20000 state, a caller ask for 1e9 streams."""
        per_stream = sum(2 * int(np.prod(s.shape, dtype=np.float64)) * s.dtype.itemsize for s in spec.states)  # ping-pong
        per_stream += int(np.prod(spec.input.shape, dtype=np.float64)) * spec.input.dtype.itemsize
        per_stream += int(np.prod(spec.output.shape, dtype=np.float64)) * spec.output.dtype.itemsize
        need = per_stream * self.batch
        limit = _max_buffer_bytes()
        if need > limit:
            biggest = max(spec.states, key=lambda s: np.prod(s.shape, dtype=np.float64), default=None)
            what = f"; its largest state {biggest.input} is {list(biggest.shape)} per stream" if biggest else ""
            raise RuntimeInputError(f"{label}: {self.batch} stream(s) need {need / 2**30:.3g} GiB of state and IO "
                                    f"buffers, over the limit of {limit / 2**30:.3g} GiB{what}; lower the batch, check "
                                    "that the graph is an edgessm step graph, or raise EDGESSM_MAX_STATE_BYTES")

    def _check_chunk(self, c: GraphSpec, label: str) -> None:
        s = self.spec
        if c.kind != "chunk":
            raise RuntimeModelError(f"{label} is a {c.kind} graph, not a chunk graph")
        if (c.input.dtype, c.input.shape, c.output.shape) != (s.input.dtype, s.input.shape, s.output.shape):
            raise RuntimeModelError(f"{label} does not match the step graph: x {c.input.dtype.name}{list(c.input.shape)} "
                                    f"-> y {list(c.output.shape)} vs x {s.input.dtype.name}{list(s.input.shape)} "
                                    f"-> y {list(s.output.shape)}")
        if [(t.input, t.shape, t.dtype) for t in c.states] != [(t.input, t.shape, t.dtype) for t in s.states]:
            raise RuntimeModelError(f"{label} has states {[(t.input, list(t.shape)) for t in c.states]} but the step "
                                    f"graph has {[(t.input, list(t.shape)) for t in s.states]}; export both from one model")
        self._check_batch(c, label)

    def _prepare(self, x, sequence: bool) -> np.ndarray:
        """Validate an input against the graph and return a contiguous array of the graph's dtype."""
        if type(x) is np.ndarray and not sequence and x.dtype == self._x_dtype and x.shape == self._x_shape \
                and self._fast_ok:
            if self.check_finite and not _all_finite(x):
                self._nonfinite(x, sequence=False)
            return x if x.flags.c_contiguous else np.ascontiguousarray(x)  # the hot path: nothing to convert
        spec = self.spec.input
        name = spec.name
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise RuntimeInputError(f"input {name!r}: cannot be read as an array ({e})") from None
        lead = (self.batch,)
        if sequence:
            n_inner = len(spec.shape)
            if arr.ndim == n_inner + 2:
                L = arr.shape[1]
            elif arr.ndim == n_inner + 1 and arr.ndim >= 2:  # one axis short: the batch, or the features
                missing_batch = bool(spec.shape) and arr.shape[-1] == spec.shape[-1]
                L = arr.shape[0] if missing_batch else arr.shape[1]
            elif arr.ndim == n_inner + 1:
                L = arr.shape[0]
            else:
                L = "L"
            lead = (self.batch, L)
            what = "(batch, L" + (", d_input)" if spec.shape else ") token ids")
        else:
            what = "(batch, d_input)" if spec.shape else "(batch,) token ids"
        want = (*lead, *spec.shape)
        if arr.shape != want:
            raise RuntimeInputError(f"input {name!r}: expected shape {_shape_str(want)} {what}, got "
                                    f"{_shape_str(arr.shape)}; {self._shape_fix(arr.shape, want, sequence)}")
        if spec.is_tokens:
            if arr.dtype.kind not in "iu":
                raise RuntimeInputError(f"input {name!r}: expected integer token ids ({spec.dtype.name}), got "
                                        f"{arr.dtype.name}; convert with x.astype(np.int64)")
            if arr.size and arr.min() < 0:
                raise RuntimeInputError(f"input {name!r}: token ids must be >= 0, got {int(arr.min())}")
            vocab = self._vocab_size()
            if vocab is not None and arr.size and arr.max() >= vocab:
                raise RuntimeInputError(f"input {name!r}: token id {int(arr.max())} >= vocabulary size {vocab}")
        else:
            if arr.dtype.kind != "f":
                raise RuntimeInputError(f"input {name!r}: expected {spec.dtype.name} features, got {arr.dtype.name}; "
                                        f"convert with x.astype(np.{spec.dtype.name})")
            if self.check_finite and not _all_finite(arr):
                self._nonfinite(arr, sequence)
        return np.ascontiguousarray(arr, dtype=spec.dtype)

    def _nonfinite(self, arr: np.ndarray, sequence: bool) -> None:
        """Raise naming the first NaN/Inf's stream and step."""
        bad = np.argwhere(~np.isfinite(arr))[0]
        b, t = int(bad[0]), (int(bad[1]) if sequence else 0)
        step = int(self.steps[b]) + t
        raise RuntimeInputError(f"input {self.spec.input.name!r} has NaN/Inf at stream {b}, step {step}: it would "
                                "poison that stream's state for every later step; clean the input, or pass "
                                "check_finite=False (--allow-nonfinite) to run it anyway")

    def _shape_fix(self, got, want, sequence: bool) -> str:
        b, inner = self.batch, tuple(self.spec.input.shape)
        n_lead = 2 if sequence else 1
        if tuple(got) == tuple(want[1:]):
            return "add the batch axis (x[None] for one stream)"
        if len(got) == len(want) and tuple(got[n_lead:]) == inner and got[0] != b:
            return f"this session has batch={b} streams; create it with batch={got[0]} or pass {b} rows"
        if inner and len(got) >= 1 and got[-1] != inner[-1]:
            return f"the model takes d_input={inner[-1]} features per step"
        return "see StreamingSession.input for the expected layout"

    def _vocab_size(self) -> Optional[int]:
        for key in ("edgessm.input", "edgessm.config"):
            d = self.spec.metadata.get(key)
            if isinstance(d, dict):
                v = d.get("vocab_size")
                if isinstance(v, int) and v > 0:
                    return v
        return None
