"""Post-export parity: run the graph in onnxruntime (CPU provider) against the PyTorch model.

Dimensions: B batch, L steps, O = d_output, H channels, N modes.

References:
- ``y``: ``model(x)`` (float32 forward, FFT convolution), at every step;
- ``y@float64``: the same model in float64 (report only);
- ``present_state.{i}`` after L steps: the layer's ``DiagonalSSM.reference_recurrence`` (complex128
  oracle) fed with the layer inputs captured from the float64 forward; ``present_state.pool``:
  [float64 pooled output at the last step | L].

Error measure per output: max |got - ref| / max |ref| over all steps and batch entries (norm-wise
relative; ``max_abs`` is reported beside it). The graph runs twice, with ORT_ENABLE_ALL and
ORT_DISABLE_ALL graph optimisations: both must pass, and their difference is reported.
"""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Optional

import numpy as np
import torch

from edgessm.runtime.contract import PAST_PREFIX, PRESENT_PREFIX

__all__ = ["TOLERANCE", "reference", "run_graphs", "make_input", "parity", "session", "optimized_node_count"]

# fp32: float32 rounding over a few hundred to a few thousand steps of a small network is ~1e-6..1e-5
# relative (delta-form state, see tests/test_parity.py for the 16k-step layer bar); 1e-4 leaves margin
# for long memories. fp16: weights/activations rounded to 11 bits (~5e-4 each) through a few blocks.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


def session(model_bytes: bytes, optimize: bool = True, optimized_path: Optional[str] = None):
    """An onnxruntime CPU session of a graph (for node counts of onnxruntime's optimised graph)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path is not None:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def optimized_node_count(model_bytes: bytes) -> int:
    """Nodes left after onnxruntime's ORT_ENABLE_ALL optimisations for the CPU provider (fusions)."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "opt.onnx")
        session(model_bytes, True, p)
        return len(onnx.load(p, load_external_data=False).graph.node)


def run_graphs(step_bytes: bytes, xs: np.ndarray, chunk_bytes: Optional[bytes] = None,
               optimize: bool = True) -> tuple[np.ndarray, dict]:
    """Drive the graph(s) as a user's device does: the runtime's plain onnxruntime engine, CPU provider.

    xs r(B L d_input) | int64 (B L) -> (ys r(B L O), final states {present_state.k: array}). With
    chunk_bytes, whole chunks of T steps run in the chunk graph (L a multiple of T: all of them).
    """
    from edgessm.runtime import StreamingSession

    sess = StreamingSession(step_bytes, provider="cpu", batch=xs.shape[0], threads=1, io_binding=False,
                            engine="onnxruntime", check_finite=False, chunk_path=chunk_bytes,
                            graph_optimization="all" if optimize else "none")
    ys = sess.run(xs)
    return ys, {PRESENT_PREFIX + k[len(PAST_PREFIX):]: v for k, v in sess.get_state().items()}


def make_input(cfg, batch: int, steps: int, seed: int = 0) -> np.ndarray:
    """Random float32 features N(0, 1) or uniform int64 tokens in [0, vocab)."""
    rng = np.random.default_rng(seed)
    if cfg.vocab_size > 0:
        return rng.integers(0, cfg.vocab_size, (batch, steps)).astype(np.int64)
    return rng.standard_normal((batch, steps, cfg.d_input)).astype(np.float32)


@torch.no_grad()
def reference(model: torch.nn.Module, xs: np.ndarray) -> dict[str, np.ndarray]:
    """{"y": model(x) float32, "y@float64": float64 model, "present_state.k": float64 oracle states}."""
    model = model.eval()
    x = torch.from_numpy(xs)
    ref = {"y": model(x).numpy().astype(np.float64)}
    m64 = copy.deepcopy(model).double().eval()
    inputs: list = []
    hooks = [blk.ssm.register_forward_hook(lambda mod, args, out: inputs.append(args[0].numpy()))
             for blk in m64.blocks]
    try:
        y64 = m64(x if xs.dtype == np.int64 else x.double()).numpy()  # (B L O)
    finally:
        for h in hooks:
            h.remove()
    ref["y@float64"] = y64
    for i, (blk, u) in enumerate(zip(m64.blocks, inputs)):
        system = blk.ssm.to_system() if hasattr(blk.ssm, "to_system") else blk.ssm.to_diagonal()  # MimoSSM | DiagonalSSM
        _, s = system.reference_recurrence(u)  # c(B H N) or c(B P), complex128 oracle
        ref[f"present_state.{i}"] = np.concatenate([s.real, s.imag], -1)  # (B H 2N) | (B 2P) [Re | Im]
    if model.config.pooling == "mean":
        L = xs.shape[1]
        ref["present_state.pool"] = np.concatenate([y64[:, -1], np.full((xs.shape[0], 1), float(L))], 1)
    return ref


def parity(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{output: {"max_abs", "rel"}} for every key of ``ref`` ("y@float64" compares got["y"])."""
    out = {}
    for name, r in ref.items():
        g = got["y" if name == "y@float64" else name]
        diff = float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        if not np.isfinite(diff):
            diff = float("inf")
        out[name] = {"max_abs": diff, "rel": diff / scale if scale > 0 else diff}
    return out
