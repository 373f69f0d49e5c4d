"""The edgessm ONNX contract, read back from an onnxruntime session (no ``onnx`` import).

Step graph:  x (batch, *input_shape) -> y (batch, *output_shape), plus one
             past_state.{k} -> present_state.{k} pair per state (k = 0..n-1, or "pool").
Chunk graph: x (batch, T, *input_shape) -> y (batch, T, *output_shape), same states.

input_shape is (d_input,) for float32 features or () for int64 tokens. Batch is the only
dynamic axis. The graph's own signature is the source of truth for names, shapes and dtypes;
the ``edgessm.*`` metadata adds meaning and is cross-checked where present (every key optional).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .errors import RuntimeModelError

__all__ = ["TensorSpec", "StateSpec", "GraphSpec", "read_graph_spec", "parse_metadata",
           "INPUT_NAME", "OUTPUT_NAME", "PAST_PREFIX", "PRESENT_PREFIX", "POOL_STATE", "METADATA_PREFIX",
           "FORMAT_VERSION", "past_state", "present_state"]

# The contract, defined here once: the exporter (edgessm.export) and the checkpoint writer import these.
INPUT_NAME = "x"
OUTPUT_NAME = "y"
PAST_PREFIX = "past_state."
PRESENT_PREFIX = "present_state."
POOL_STATE = "pool"  # the running-mean pooling state's suffix (past_state.pool / present_state.pool)
METADATA_PREFIX = "edgessm."
# Version of the edgessm metadata layout, in graphs and checkpoints alike (written as the string "1").
FORMAT_VERSION = 1


def past_state(k) -> str:
    """The graph input carrying state k (a layer index or POOL_STATE) into a step."""
    return f"{PAST_PREFIX}{k}"


def present_state(k) -> str:
    """The graph output carrying state k out of a step."""
    return f"{PRESENT_PREFIX}{k}"

# onnxruntime's type strings -> numpy dtypes the contract allows
_ORT_TYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: ``shape`` excludes the batch axis (and the T axis of a chunk graph)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def is_tokens(self) -> bool:
        return self.dtype.kind in "iu"


@dataclass(frozen=True)
class StateSpec:
    """A past_state/present_state pair; ``shape`` excludes the batch axis."""

    input: str
    output: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str = ""


@dataclass(frozen=True)
class GraphSpec:
    """What a runner needs to know about one edgessm graph, read from the file alone."""

    kind: str                      # "step" | "chunk"
    input: TensorSpec
    output: TensorSpec
    states: tuple[StateSpec, ...]
    batch_dim: Optional[int]       # None when dynamic (the contract); an int if the exporter fixed it
    chunk: Optional[int] = None    # T of a chunk graph (None: any T)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.input for s in self.states)

    def describe(self) -> str:
        st = ", ".join(f"{s.input}{list(s.shape)}" for s in self.states) or "none"
        t = f", T={self.chunk}" if self.kind == "chunk" else ""
        return (f"{self.kind} graph{t}: {self.input.name} {self.input.dtype.name}{list(self.input.shape)} -> "
                f"{self.output.name} {self.output.dtype.name}{list(self.output.shape)}; states: {st}")


def parse_metadata(custom: dict[str, str]) -> dict[str, Any]:
    """``edgessm.*`` metadata_props with JSON values decoded (plain strings kept as they are)."""
    out: dict[str, Any] = {}
    for key, raw in custom.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        try:
            out[key] = json.loads(raw)
        except (TypeError, ValueError, RecursionError):  # not JSON (or nested absurdly deep): keep the text
            out[key] = raw
    return out


def _dims(arg, where: str, path: str) -> list:
    shape = arg.shape
    if shape is None:
        raise RuntimeModelError(f"{path}: {where} {arg.name!r} has no shape; re-export the model with shapes")
    return list(shape)


def _dtype(arg, path: str) -> np.dtype:
    dt = _ORT_TYPES.get(arg.type)
    if dt is None:
        raise RuntimeModelError(f"{path}: {arg.name!r} has type {arg.type}, which the edgessm contract does not use "
                                f"(allowed: {', '.join(sorted(_ORT_TYPES))})")
    return dt


def _static(dims: list, name: str, path: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise RuntimeModelError(f"{path}: {name!r} has non-static dims {dims} after the batch axis; "
                                "only batch may be dynamic")
    return tuple(dims)


def read_graph_spec(session, path: str = "model") -> GraphSpec:
    """Read and validate the contract from an onnxruntime InferenceSession; RuntimeModelError if broken."""
    custom = dict(session.get_modelmeta().custom_metadata_map or {})
    meta = parse_metadata(custom)
    inputs = {a.name: a for a in session.get_inputs()}
    outputs = {a.name: a for a in session.get_outputs()}

    for name, table, kind in ((INPUT_NAME, inputs, "input"), (OUTPUT_NAME, outputs, "output")):
        if name not in table:
            raise RuntimeModelError(f"{path}: not an edgessm graph: no {kind} named {name!r} "
                                    f"(graph {kind}s: {sorted(table)})")

    kind = str(meta.get("edgessm.graph", "")) or None
    x_dims = _dims(inputs[INPUT_NAME], "input", path)
    y_dims = _dims(outputs[OUTPUT_NAME], "output", path)
    if kind is None:  # no metadata: a rank-3 float input (or rank-2 tokens) means a chunk graph
        x_dt = _dtype(inputs[INPUT_NAME], path)
        kind = "chunk" if len(x_dims) == (2 if x_dt.kind in "iu" else 3) else "step"
    if kind not in ("step", "chunk"):
        raise RuntimeModelError(f"{path}: edgessm.graph is {kind!r}; expected 'step' or 'chunk'")
    lead = 2 if kind == "chunk" else 1  # batch (and T)
    if len(x_dims) < lead or len(y_dims) < lead:
        raise RuntimeModelError(f"{path}: {kind} graph needs x and y with a batch axis{' and a T axis' if lead == 2 else ''}; "
                                f"got x {x_dims}, y {y_dims}")

    x_spec = TensorSpec(INPUT_NAME, _dtype(inputs[INPUT_NAME], path), _static(x_dims[lead:], INPUT_NAME, path))
    y_spec = TensorSpec(OUTPUT_NAME, _dtype(outputs[OUTPUT_NAME], path), _static(y_dims[lead:], OUTPUT_NAME, path))

    chunk = None
    if kind == "chunk":
        tx, ty = x_dims[1], y_dims[1]
        t_meta = meta.get("edgessm.chunk")
        t_meta = int(t_meta) if isinstance(t_meta, (int, str)) and str(t_meta).isdigit() else None
        chunk = tx if isinstance(tx, int) else t_meta
        if isinstance(tx, int) and isinstance(ty, int) and tx != ty:
            raise RuntimeModelError(f"{path}: chunk graph x has T={tx} but y has T={ty}")
        if isinstance(tx, int) and t_meta is not None and t_meta != tx:
            raise RuntimeModelError(f"{path}: edgessm.chunk says T={t_meta} but x has T={tx}")

    # batch axis: dynamic per the contract; tolerate a fixed one but remember it
    batch_dims = {x_dims[0], y_dims[0]}
    fixed = [d for d in batch_dims if isinstance(d, int)]
    batch_dim = fixed[0] if fixed else None
    if len(fixed) > 1:
        raise RuntimeModelError(f"{path}: x and y have different fixed batch sizes {sorted(fixed)}")

    states = []
    for name, arg in inputs.items():
        if name == INPUT_NAME:
            continue
        if not name.startswith(PAST_PREFIX):
            raise RuntimeModelError(f"{path}: unexpected graph input {name!r}; an edgessm graph has only "
                                    f"'x' and '{PAST_PREFIX}*' inputs")
        out_name = PRESENT_PREFIX + name[len(PAST_PREFIX):]
        if out_name not in outputs:
            raise RuntimeModelError(f"{path}: state input {name!r} has no matching output {out_name!r}")
        dims_in = _dims(arg, "state input", path)
        dims_out = _dims(outputs[out_name], "state output", path)
        if not dims_in:
            raise RuntimeModelError(f"{path}: state {name!r} is a scalar; states carry a batch axis")
        shape = _static(dims_in[1:], name, path)
        if len(dims_out) != len(dims_in) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                                   for a, b in zip(dims_in[1:], dims_out[1:])):
            raise RuntimeModelError(f"{path}: {name!r} has shape {dims_in} but {out_name!r} has {dims_out}")
        dt_in, dt_out = _dtype(arg, path), _dtype(outputs[out_name], path)
        if dt_in != dt_out or dt_in.kind != "f":
            raise RuntimeModelError(f"{path}: state {name!r} must be a float tensor with the same dtype in and out; "
                                    f"got {dt_in.name} -> {dt_out.name}")
        states.append(StateSpec(name, out_name, shape, dt_in))
    for name in outputs:
        if name != OUTPUT_NAME and not name.startswith(PRESENT_PREFIX):
            raise RuntimeModelError(f"{path}: unexpected graph output {name!r}; an edgessm graph has only "
                                    f"'y' and '{PRESENT_PREFIX}*' outputs")
        if name.startswith(PRESENT_PREFIX) and PAST_PREFIX + name[len(PRESENT_PREFIX):] not in inputs:
            raise RuntimeModelError(f"{path}: state output {name!r} has no matching input "
                                    f"{PAST_PREFIX + name[len(PRESENT_PREFIX):]!r}")
    states = _order_states(states)
    states = _check_against_metadata(states, meta, x_spec, y_spec, path)
    return GraphSpec(kind=kind, input=x_spec, output=y_spec, states=tuple(states), batch_dim=batch_dim,
                     chunk=chunk, metadata=meta)


def _order_states(states: list[StateSpec]) -> list[StateSpec]:
    """past_state.0, .1, ..., .10, then named ones (e.g. .pool) alphabetically."""
    def key(s: StateSpec):
        suffix = s.input[len(PAST_PREFIX):]
        return (0, int(suffix), "") if suffix.isdigit() else (1, 0, suffix)
    return sorted(states, key=key)


def _shape_of(v: Any, where: str, path: str) -> tuple[int, ...]:
    """A metadata shape: a list of non-negative integers (metadata is text anyone can edit)."""
    if not isinstance(v, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v):
        raise RuntimeModelError(f"{path}: metadata {where} is {json.dumps(v)[:60]}, not a list of sizes; "
                                "re-export the model")
    return tuple(v)


def _check_against_metadata(states, meta, x_spec, y_spec, path) -> list[StateSpec]:
    """Cross-check the optional metadata against the signature; attach state layouts."""
    layouts: dict[str, str] = {}
    declared = meta.get("edgessm.states")
    if isinstance(declared, list):
        by_name = {s.input: s for s in states}
        names = []
        for entry in declared:
            if not isinstance(entry, dict) or not isinstance(entry.get("input"), str):
                raise RuntimeModelError(f"{path}: edgessm.states entries must be objects with an 'input' key; got {entry!r}")
            name = entry["input"]
            names.append(name)
            if name not in by_name:
                raise RuntimeModelError(f"{path}: edgessm.states declares {name!r} but the graph has no such input "
                                        f"(graph states: {sorted(by_name)})")
            if "shape" in entry and _shape_of(entry["shape"], f"edgessm.states[{name!r}].shape", path) != by_name[name].shape:
                raise RuntimeModelError(f"{path}: edgessm.states says {name!r} has shape {list(entry['shape'])} "
                                        f"but the graph says {list(by_name[name].shape)}")
            if "output" in entry and entry["output"] != by_name[name].output:
                raise RuntimeModelError(f"{path}: edgessm.states pairs {name!r} with {entry['output']!r}, "
                                        f"the graph with {by_name[name].output!r}")
            layouts[name] = str(entry.get("layout", ""))
        missing = sorted(set(by_name) - set(names))
        if missing:
            raise RuntimeModelError(f"{path}: graph states {missing} are not declared in edgessm.states")
    for key, spec in (("edgessm.input", x_spec), ("edgessm.output", y_spec)):
        decl = meta.get(key)
        if isinstance(decl, dict) and "shape" in decl and _shape_of(decl["shape"], f"{key}.shape", path) != spec.shape:
            raise RuntimeModelError(f"{path}: {key} says shape {list(decl['shape'])} but the graph's "
                                    f"{spec.name!r} has {list(spec.shape)}")
    return [StateSpec(s.input, s.output, s.shape, s.dtype, layouts.get(s.input, "")) for s in states]
