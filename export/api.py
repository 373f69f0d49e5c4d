"""``export_onnx``: model or checkpoint -> verified ONNX step graph (+ chunk graph), written atomically.

The graph contract and the measured numbers are in docs/onnx.md; the graphs in graph.py.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import onnx
from onnx import helper

from edgessm import __version__
from edgessm.errors import EdgeSSMError, ExportError
from edgessm.runtime import fileio as _fileio

from . import verify as _verify
from .graph import MIN_OPSET, TARGETS, build_chunk_graph, build_step_graph, node_counts, state_specs
from .lowering import MimoSSMParams, ModelParams, lower_model

__all__ = ["export_onnx", "ExportResult", "read_metadata", "FORMAT_VERSION", "default_chunk_path"]

from edgessm.runtime.contract import (FORMAT_VERSION, INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, past_state,  # noqa: E402
                                      present_state)


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote. Per-graph dicts are keyed "step" and (with chunk) "chunk"."""

    path: Path                                   # the step graph
    chunk_path: Optional[Path]                   # the chunk graph, or None
    target: str
    precision: str                               # "fp32" | "fp16"
    opset: int
    node_counts: dict[str, dict[str, Any]]       # {"encoder", "blocks": [..], "ssm": [..], "head", "pool", "total"}
    ort_optimized_nodes: dict[str, int]          # total nodes after onnxruntime ORT_ENABLE_ALL (CPU provider)
    file_sizes: dict[str, int]                   # bytes
    parity: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # graph -> output -> {max_abs, rel}
    tolerance: Optional[float] = None            # the relative bar parity was held to (None: not verified)
    verify_steps: int = 0
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # graph -> metadata_props as written

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``--json``)."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["chunk_path"] = str(self.chunk_path) if self.chunk_path is not None else None
        return d


def default_chunk_path(out_path: Union[str, os.PathLike], T: int) -> Path:
    """``model.onnx`` -> ``model.chunk{T}.onnx`` next to it."""
    p = Path(out_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.chunk{T}.onnx")


def export_onnx(model_or_path, out_path: Union[str, os.PathLike], *, target: str = "cpu", fp16: bool = False,
                chunk: Optional[int] = None, opset: int = MIN_OPSET, verify: bool = True, verify_steps: int = 300,
                source_sha256: Optional[str] = None,
                chunk_path: Optional[Union[str, os.PathLike]] = None) -> ExportResult:
    """Lower an SSMModel (or the checkpoint at a path) to ONNX, check it, write it atomically.

    target: "cpu" (elementwise SSM update, fastest on the CPU provider) or "cuda"/"tensorrt"
        (one Einsum per SSM update and readout: fewest nodes for launch-bound GPU steps).
    fp16: float16 weights/activations; the recurrence, inputs, outputs and states stay float32.
    chunk: also write a T-step chunk graph (``chunk_path``, default ``<stem>.chunk{T}.onnx``).
    verify: run each graph for ``verify_steps`` steps (rounded up to whole chunks) in onnxruntime
        CPU against ``model(x)`` and the float64 oracle; ExportError if over the bar (nothing written).
    source_sha256: hash of the source checkpoint (computed from the path when a path is given).
    Raises ExportError (one line) for unsupported models/options, unwritable paths, failed parity.
    """
    from edgessm.checkpoint import file_sha256

    # ---- options -------------------------------------------------------------------------
    if target not in TARGETS:
        raise ExportError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ExportError(f"opset {opset!r} is not supported; use an opset in [{MIN_OPSET}, {max_opset}] "
                          f"({MIN_OPSET}: LayerNormalization; {max_opset}: the newest this onnx {onnx.__version__} knows)")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ExportError(f"chunk={chunk!r} must be a positive integer number of steps (or None for no chunk graph)")
    if isinstance(verify_steps, bool) or not isinstance(verify_steps, (int, np.integer)) or verify_steps < 1:
        raise ExportError(f"verify_steps={verify_steps!r} must be a positive integer")
    out_path = Path(out_path)
    chunk_out = None
    if chunk is not None:
        chunk = int(chunk)
        chunk_out = Path(chunk_path) if chunk_path is not None else default_chunk_path(out_path, chunk)
    source = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else getattr(model_or_path, "source_path", None)
    _fileio.check_outputs({"checkpoint": source}, {"ONNX file": out_path, "chunk graph": chunk_out}, ExportError)
    for p in [out_path] + ([chunk_out] if chunk_out is not None else []):
        _fileio.check_writable(p, "ONNX file", ExportError)

    # ---- model -----------------------------------------------------------------------------
    if isinstance(model_or_path, (str, os.PathLike)):
        import edgessm

        model = edgessm.load(model_or_path)
        if source_sha256 is None:
            source_sha256 = file_sha256(model_or_path)
    else:
        model = model_or_path
    if not hasattr(model, "config") or not hasattr(model, "blocks"):
        raise ExportError(f"{type(model).__name__} is not an edgessm SSMModel; pass a model or a checkpoint path")
    model = copy.deepcopy(model).cpu().float().eval()  # the caller's model keeps its device and mode
    mp = lower_model(model)
    precision = "fp16" if fp16 else "fp32"
    if chunk is not None:
        _check_chunk_size(mp, chunk)

    # ---- graphs ------------------------------------------------------------------------------
    graphs: dict[str, tuple[onnx.ModelProto, Path, Optional[int]]] = {
        "step": (build_step_graph(mp, target, fp16, opset), out_path, None)}
    if chunk is not None:
        graphs["chunk"] = (build_chunk_graph(mp, chunk, fp16, opset, target), chunk_out, chunk)
    counts, blobs = {}, {}
    for kind, (g, _, _) in graphs.items():
        try:
            onnx.checker.check_model(g, full_check=True)
        except onnx.checker.ValidationError as e:  # an exporter bug, not a user error
            raise ExportError(f"{kind} graph fails onnx.checker ({str(e).splitlines()[0]}); "
                              "report this exporter bug with the model config") from None
        counts[kind] = node_counts(g)
        blobs[kind] = g.SerializeToString()
    opt_counts = {kind: _verify.optimized_node_count(b) for kind, b in blobs.items()}

    # ---- parity ------------------------------------------------------------------------------
    tol = _verify.TOLERANCE[precision] if verify else None
    parity: dict[str, dict] = {}
    steps = 0
    if verify:
        steps = int(verify_steps)
        for kind, (g, path, T) in graphs.items():
            L = steps if T is None else T * -(-steps // T)
            parity[kind] = _check_parity(model, blobs[kind], kind, T, L, tol, precision, path, blobs["step"])

    # ---- metadata and files ----------------------------------------------------------------
    metas = {}
    for kind, (g, path, T) in graphs.items():
        metas[kind] = _metadata(model, mp, kind=kind, T=T, target=target, precision=precision, opset=opset,
                                counts=counts[kind], source_sha256=source_sha256,
                                parity=parity.get(kind), tol=tol, steps=steps)
        helper.set_model_props(g, metas[kind])
        blobs[kind] = g.SerializeToString()
    _write_all({graphs[k][1]: blobs[k] for k in graphs})
    return ExportResult(path=out_path, chunk_path=chunk_out, target=target, precision=precision, opset=opset,
                        node_counts=counts, ort_optimized_nodes=opt_counts,
                        file_sizes={k: len(b) for k, b in blobs.items()}, parity=parity, tolerance=tol,
                        verify_steps=steps, metadata=metas)


def _check_parity(model, blob: bytes, kind: str, T: Optional[int], L: int, tol: float, precision: str,
                  path: Path, step_blob: bytes) -> dict[str, dict[str, float]]:
    xs = _verify.make_input(model.config, batch=2, steps=L, seed=0)
    ref = _verify.reference(model, xs)
    result: dict[str, dict[str, float]] = {}
    ys = {}
    for opt in (True, False):
        # the runtime's own plain engine drives the graph, as on the device (a chunk graph rides with its step graph)
        y, st = _verify.run_graphs(step_blob, xs, chunk_bytes=blob if T is not None else None, optimize=opt)
        got = {OUTPUT_NAME: y, **st}
        ys[opt] = y
        par = _verify.parity(got, ref)
        bad = {k: v for k, v in par.items() if not v["rel"] <= tol}
        if bad:
            what = "; ".join(f"{k}: max abs {v['max_abs']:.3g}, rel {v['rel']:.3g}" for k, v in bad.items())
            raise ExportError(
                f"parity check failed for the {kind} graph {path.name} ({precision}, onnxruntime CPU, "
                f"{'ORT_ENABLE_ALL' if opt else 'ORT_DISABLE_ALL'}, {L} steps): {what} > rel {tol:g}; "
                "nothing was written; report this with the model config, or export with fp16=False / target='cpu'")
        if opt:
            result = par
    result["ort_enable_all_vs_disable_all"] = {"max_abs": float(np.max(np.abs(ys[True] - ys[False]))),
                                               "rel": float(np.max(np.abs(ys[True] - ys[False])))
                                               / max(float(np.max(np.abs(ys[False]))), 1e-30)}
    return result


# A protobuf message (an ONNX file without external data) cannot exceed 2 GiB, and building a chunk graph
# holds copies of its weights: the float32 constants, their TensorProto bytes, the serialised file. The
# complex128 powers of an LRU / S5 layer are formed in blocks of ~64 MB (lowering.mimo_chunk_matrices):
# forming one layer's constants peaks at 1.7x their bytes at P = 256, T = 256 (tracemalloc). 1 GiB of
# weights keeps the build to a few GiB.
MAX_GRAPH_BYTES = 1 << 30


def chunk_graph_bytes(mp: ModelParams, T: int) -> int:
    """Weight bytes of a T-step chunk graph's SSMs and pooling sums (the parts that grow with T).

    S4D / DSS layer: one (H, 2N+T, 2N+T) matrix. LRU / S5 layer: the recurrence L r(2P 2T+2 T+1) = P (2T+2)^2,
    B r(H 2P) + b r(2P) and the readout r(2P+H H) + b r(H). Mean pooling: the (T, T) causal sums. All are
    float32 in both precisions (the recurrence is float32 in fp16 graphs too); the encoder / mixing /
    decoder weights do not grow with T and are not counted.
    """
    floats = 0
    for b in mp.blocks:
        s = b.ssm
        if isinstance(s, MimoSSMParams):
            P, H = s.N, s.D.shape[0]
            floats += P * (2 * T + 2) ** 2 + H * 2 * P + 2 * P + (2 * P + H) * H + H
        else:
            floats += s.H * (2 * s.N + T) ** 2
    return 4 * (floats + (T * T if mp.pooling == "mean" else 0))


def _check_chunk_size(mp: ModelParams, T: int) -> None:
    """Refuse a chunk length whose graph would pass the protobuf limit, before building it."""
    need = chunk_graph_bytes(mp, T)
    if need > MAX_GRAPH_BYTES:
        t = 1
        while chunk_graph_bytes(mp, 2 * t) <= MAX_GRAPH_BYTES:
            t *= 2
        raise ExportError(f"--chunk {T} makes a chunk graph of {need / 2**30:.3g} GiB (its weights grow as T^2), over "
                          f"the limit of 1 GiB (ONNX files stop at 2 GB); use --chunk {t} or less")


def _write_all(files: dict[Path, bytes]) -> None:
    """Every file through a temp file + rename (one atomic writer, runtime/fileio.py); on any error none is left."""
    def atomic_write(p: Path, what: str):
        return _fileio.atomic_write(p, what, ExportError)

    try:
        with contextlib.ExitStack() as stack:
            tmps = {p: stack.enter_context(atomic_write(p, "ONNX file")) for p in files}
            for p, blob in files.items():
                with open(tmps[p], "wb") as f:
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
    except EdgeSSMError as e:
        raise ExportError(str(e)) from None
    except OSError as e:
        raise ExportError(f"cannot write ONNX file {e.filename or ''}: {e.strerror}; choose a writable path") from None


# ---- metadata ----------------------------------------------------------------------------------
def _json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _task_info(prov: dict) -> tuple[str, Optional[list]]:
    from edgessm.provenance import task_classes

    task = prov.get("task")
    name = task.get("name") if isinstance(task, dict) else task
    return (str(name) if name else "unknown"), task_classes(prov)


def _output_meaning(cfg) -> str:
    if getattr(cfg, "decoder", "linear") == "none":  # an imported layer: the backbone reads its channels
        return f"the SSM layer's {cfg.d_model} output channels at this step (no decoder: the layer for your backbone)"
    what = "class logits" if cfg.task_type == "classification" else "regression outputs"
    if cfg.pooling == "mean":
        return f"{what}, causal running mean over the steps seen so far (read after the last valid step)"
    if cfg.pooling == "last":
        return f"{what} at this step (read after the last valid step)"
    return f"{what} at this step (one per step, sequence to sequence)"


def _metadata(model, mp: ModelParams, *, kind: str, T: Optional[int], target: str, precision: str, opset: int,
              counts: dict, source_sha256: Optional[str], parity: Optional[dict],
              tol: Optional[float], steps: int) -> dict[str, str]:
    cfg = model.config
    prov = dict(getattr(model, "provenance", {}) or {})
    task, classes = _task_info(prov)
    states = [{"input": past_state(s), "output": present_state(s), "shape": shape, "dtype": "float32",
               "layout": layout} for s, shape, layout in state_specs(mp)]
    inp = {"name": INPUT_NAME, "dtype": "int64" if cfg.vocab_size > 0 else "float32",
           "shape": [] if cfg.vocab_size > 0 else [cfg.d_input],
           "meaning": (f"token id of one step, 0..{cfg.vocab_size - 1}" if cfg.vocab_size > 0
                       else f"features of one step ({cfg.d_input} float32)")}
    if cfg.vocab_size > 0:
        inp["vocab_size"] = cfg.vocab_size
    out = {"name": OUTPUT_NAME, "shape": [cfg.d_output], "meaning": _output_meaning(cfg)}
    if classes is not None:
        out["classes"] = classes
    if kind == "chunk":
        inp["time_axis"] = out["time_axis"] = f"x and y carry a T={T} axis after batch: (batch, {T}, ...)"
    bounds = prov.get("reduction")  # the compression report summary compress wrote into the provenance
    meta = {
        "format_version": str(FORMAT_VERSION),
        "graph": kind,
        "states": _json(states),
        "input": _json(inp),
        "output": _json(out),
        "task": task,
        "task_type": cfg.task_type,
        "precision": precision,
        "target": target,
        "ranks": _json([b.ssm.N for b in mp.blocks]),
        "real_state_numbers": _json(model.state_size()),  # from the layers' systems (DiagonalSSM.real_state_dims)
        "error_bounds": _json(bounds),
        "source_sha256": source_sha256 or "unknown",
        "config": cfg.to_json(),
        # a BatchNorm (CompreSSM's block) leaves no node: its running statistics are folded into the SSM's input
        # weights, so a reader cannot see from the graph that the model was normalised, or with which statistics
        "normalisation": _json({"norm": cfg.norm, "prenorm": bool(cfg.prenorm), "folded": cfg.norm == "batch",
                                **({"statistics": "BatchNorm running mean and variance at export (inference mode)"}
                                   if cfg.norm == "batch" else {})}),
        "opset": str(opset),
        "node_counts": _json(counts),
        "producer": f"edgessm {__version__}",
        "io": "x, y and every state are float32 (int64 tokens for x) at the graph boundary"
              + ("; weights/activations inside are float16, the SSM recurrence float32" if precision == "fp16" else ""),
    }
    if kind == "chunk":
        meta["chunk"] = str(T)
    if parity is not None:
        meta["parity"] = _json({"steps": steps, "tolerance_rel": tol, "provider": "CPUExecutionProvider",
                                "errors": parity})
    return {METADATA_PREFIX + k: v for k, v in meta.items()}


def read_metadata(onnx_path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The ``edgessm.*`` metadata_props of an ONNX file, JSON values decoded (for ``edgessm info``)."""
    p = _fileio.regular_file(onnx_path, "ONNX file", ExportError, "check the path")
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises several types for a file that is not ONNX
        raise ExportError(f"{p} is not a readable ONNX file ({type(e).__name__}); re-export it") from None
    out: dict[str, Any] = {}
    for prop in m.metadata_props:
        if not prop.key.startswith(METADATA_PREFIX):
            continue
        try:
            out[prop.key] = json.loads(prop.value)
        except (ValueError, RecursionError):
            out[prop.key] = prop.value
    if not out:
        raise ExportError(f"{p} has no edgessm.* metadata; it was not written by edgessm export")
    return out
