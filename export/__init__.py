"""Lowering edgessm models to ONNX step and chunk graphs (edgessm.export).

    from edgessm.export import export_onnx, read_metadata
    res = export_onnx("model.safetensors", "model.onnx", target="cpu", chunk=32)

The graph contract (inputs, outputs, state layout, metadata keys) is documented in docs/onnx.md.
onnx/onnxruntime/torch load on first use of a name, so ``import edgessm.export`` is cheap.
"""
from __future__ import annotations

from edgessm._lazy import lazy_exports

_LAZY = {
    "export_onnx": "edgessm.export.api",
    "ExportResult": "edgessm.export.api",
    "read_metadata": "edgessm.export.api",
    "default_chunk_path": "edgessm.export.api",
    "build_step_graph": "edgessm.export.graph",
    "build_chunk_graph": "edgessm.export.graph",
    "node_counts": "edgessm.export.graph",
    "TARGETS": "edgessm.export.graph",
    "lower_model": "edgessm.export.lowering",
    "TOLERANCE": "edgessm.export.verify",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
