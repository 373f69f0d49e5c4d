"""Step latency: a timing helper and the provider's floor (a one-node graph on the same IO path).

The floor graph is ``y = x + x`` on a float32 input of the model's input shape, encoded here
as ONNX protobuf bytes by hand (the runtime must not import ``onnx``). It runs through a
StreamingSession with the same provider, batch, binding and CUDA-graph settings as the model,
so it includes the host-to-device input copy, one kernel launch and the device-to-host output
copy: what any one-step-per-call graph costs before it does any work.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["LatencyStats", "measure_latency", "floor_model_bytes", "measure_floor"]


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in microseconds over ``n`` timed calls (after ``warmup`` untimed ones)."""

    n: int
    warmup: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    min_us: float
    max_us: float
    steps_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"p50 {self.p50_us:.1f} us  p90 {self.p90_us:.1f} us  p99 {self.p99_us:.1f} us  "
                f"mean {self.mean_us:.1f} us  ({self.steps_per_s:,.0f} steps/s, n={self.n})")


def measure_latency(step: Callable[[np.ndarray], object], inputs: Sequence[np.ndarray] | np.ndarray,
                    n: int = 1000, warmup: int = 100) -> LatencyStats:
    """Time ``n`` calls ``step(inputs[i % len(inputs)])`` with perf_counter_ns after ``warmup`` calls.

    ``inputs`` is one input or a list cycled through (pre-built, so the timing holds no allocation).
    steps_per_s is n over the summed per-call times (back-to-back calls, one at a time).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    xs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    k = len(xs)
    for i in range(warmup):
        step(xs[i % k])
    ns = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        x = xs[i % k]
        t0 = clock()
        step(x)
        ns[i] = clock() - t0
    us = ns / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return LatencyStats(n=n, warmup=warmup, p50_us=float(p50), p90_us=float(p90), p99_us=float(p99),
                        mean_us=float(us.mean()), min_us=float(us.min()), max_us=float(us.max()),
                        steps_per_s=float(n / (us.sum() / 1e6)))


# ---------------------------------------------------------------- hand-encoded ONNX (protobuf wire format)
def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _int(field: int, v: int) -> bytes:       # wire type 0
    return _varint(field << 3) + _varint(v)


def _bytes(field: int, b: bytes | str) -> bytes:  # wire type 2
    b = b.encode() if isinstance(b, str) else b
    return _varint(field << 3 | 2) + _varint(len(b)) + b


def _value_info(name: str, dims: Sequence[int | str], elem_type: int = 1) -> bytes:
    # ValueInfoProto{1 name, 2 type: TypeProto{1 tensor_type: {1 elem_type, 2 shape: {1 dim: {1 value | 2 param}}}}}
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor = _int(1, elem_type) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor))


def floor_model_bytes(shape: Sequence[int], ir_version: int = 7, opset: int = 13) -> bytes:
    """ONNX ModelProto bytes for ``y = Add(x, x)``, x and y float32 ``("batch", *shape)``.

    IR 7 / opset 13 so that old onnxruntime builds on a device load it too.
    """
    dims = ["batch", *[int(d) for d in shape]]
    node = _bytes(1, "x") + _bytes(1, "x") + _bytes(2, "y") + _bytes(3, "floor_add") + _bytes(4, "Add")
    graph = (_bytes(1, node) + _bytes(2, "edgessm_floor")
             + _bytes(11, _value_info("x", dims)) + _bytes(12, _value_info("y", dims)))
    # ModelProto{1 ir_version, 2 producer_name, 7 graph, 8 opset_import{1 domain, 2 version}}
    return (_int(1, ir_version) + _bytes(2, "edgessm.runtime") + _bytes(7, graph)
            + _bytes(8, _bytes(1, "") + _int(2, opset)))


def measure_floor(session, n: int = 1000, warmup: int = 100, seed: int = 0) -> LatencyStats:
    """Latency of the floor graph built for ``session``'s input, with the same provider and IO settings."""
    from .session import StreamingSession
    shape = tuple(session.input.shape) or (1,)  # token models: one float per stream
    floor = StreamingSession(floor_model_bytes(shape), provider=_same_provider(session), batch=session.batch,
                             threads=session.threads, cuda_graph=session.cuda_graph, io_binding=session.io_binding,
                             device_id=session.device_id, engine="onnxruntime")
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((session.batch, *shape)).astype(np.float32) for _ in range(16)]
    return measure_latency(floor.step, xs, n=n, warmup=warmup)


def _same_provider(session) -> list:
    """The providers the model session actually runs, with the options it was created with."""
    opts = dict(session.provider_plan.providers)
    return [(p, opts.get(p, {})) for p in session.providers]
