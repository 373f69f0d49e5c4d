"""Human-readable tables and the `edgessm info` description of checkpoints and ONNX graphs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .errors import CheckpointError

__all__ = ["table", "model_info"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], header: bool = True) -> str:
    """A plain monospace table (no dependency): columns padded to their widest cell."""
    cells = [[str(c) for c in r] for r in rows]
    if header:
        cells.insert(0, [str(h) for h in headers])
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(len(r) for r in cells))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """Config, parameter count, state size per layer and provenance of a checkpoint or ONNX file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} not found; pass a .safetensors checkpoint or an exported .onnx file")
    if p.suffix == ".onnx":
        from .export import read_metadata

        meta = read_metadata(p)
        return {"file": str(p), "kind": "onnx", "bytes": p.stat().st_size, **meta}
    from .checkpoint import load
    from .model import layer_systems

    model = load(p)
    systems = layer_systems(model)  # DiagonalSSM per SISO layer, MimoSSM per LRU / S5 layer
    prov = dict(model.provenance)
    prov.pop("history", None)  # per-epoch validation log: in the file, too long for a description
    return {
        "file": str(p), "kind": "checkpoint", "bytes": p.stat().st_size,
        "parameters": sum(t.numel() for t in model.parameters()),
        "modes_per_layer": [s.N for s in systems],
        "real_state_per_layer": [int(s.real_state_dims().sum()) for s in systems],
        "step_state_floats": sum(model.step_state_floats()),
        "max_abs_A_per_layer": [round(float(s.spectral_radius().max()), 6) for s in systems],
        "config": model.config.to_dict(),
        "provenance": prov,
    }


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy values and paths; anything else is a TypeError."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
