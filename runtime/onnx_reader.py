"""A small reader of the ONNX protobuf: nodes, initializers and metadata_props, without ``onnx``.

The runtime may import numpy and onnxruntime only, and onnxruntime does not hand out a graph's
initializers, so the fused engine reads them from the file itself. Only what an edgessm step graph
uses is decoded (onnx/onnx.proto3 field numbers):

    ModelProto   7 graph, 14 metadata_props {1 key, 2 value}
    GraphProto   1 node, 5 initializer, 11 input, 12 output (ValueInfoProto 1 name, 2 type)
    TypeProto    1 tensor_type {2 shape {1 dim {1 dim_value, 2 dim_param}}}
    NodeProto    1 input, 2 output, 3 name, 4 op_type, 5 attribute, 7 domain
    Attribute    1 name, 2 f (float), 3 i (int), 4 s (bytes), 20 type
    TensorProto  1 dims, 2 data_type, 4 float_data, 5 int32_data (also float16 bit patterns),
                 7 int64_data, 8 name, 9 raw_data, 10 double_data, 13 external_data,
                 14 data_location (1 = EXTERNAL: refused)

Anything malformed raises OnnxReadError; the caller falls back to onnxruntime.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["OnnxReadError", "Node", "OnnxGraph", "read_onnx"]

# TensorProto.DataType -> numpy dtype (the ones an edgessm graph stores)
_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
MAX_INIT_BYTES = 1 << 31  # no single initializer of an edgessm graph comes near 2 GiB


class OnnxReadError(ValueError):
    """The bytes are not an ONNX model this reader understands."""


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    name: str = ""
    domain: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnnxGraph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    metadata: dict[str, str]
    shapes: dict[str, tuple] = field(default_factory=dict)  # input/output -> dims (int, or str for a dim_param)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxReadError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxReadError("varint too long")


def _fields(buf: memoryview):
    """Yield (field number, wire type, value): int for varint/fixed, memoryview for length-delimited."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1:
            if pos + 8 > n:
                raise OnnxReadError("truncated fixed64")
            v = bytes(buf[pos:pos + 8])
            pos += 8
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise OnnxReadError("truncated field")
            v = buf[pos:pos + ln]
            pos += ln
        elif wt == 5:
            if pos + 4 > n:
                raise OnnxReadError("truncated fixed32")
            v = bytes(buf[pos:pos + 4])
            pos += 4
        else:
            raise OnnxReadError(f"unsupported wire type {wt}")
        yield num, wt, v


def _str(v) -> str:
    return bytes(v).decode("utf-8", "replace")


def _packed_varints(v: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(v):
        x, pos = _varint(v, pos)
        out.append(x - (1 << 64) if x >= 1 << 63 else x)
    return out


def _attribute(buf: memoryview) -> tuple[str, Any]:
    name, val = "", None
    for num, wt, v in _fields(buf):
        if num == 1:
            name = _str(v)
        elif num == 2 and wt == 5:
            val = struct.unpack("<f", v)[0]
        elif num == 3 and wt == 0:
            val = v - (1 << 64) if v >= 1 << 63 else v
        elif num == 4 and wt == 2:
            val = bytes(v)
    return name, val


def _node(buf: memoryview) -> Node:
    n = Node(op="", inputs=[], outputs=[])
    for num, wt, v in _fields(buf):
        if num == 1:
            n.inputs.append(_str(v))
        elif num == 2:
            n.outputs.append(_str(v))
        elif num == 3:
            n.name = _str(v)
        elif num == 4:
            n.op = _str(v)
        elif num == 5:
            k, a = _attribute(v)
            n.attrs[k] = a
        elif num == 7:
            n.domain = _str(v)
    return n


def _tensor(buf: memoryview) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    dtype, name, raw, floats, ints, ints32, doubles = None, "", None, [], [], [], []
    for num, wt, v in _fields(buf):
        if num == 1:
            if wt == 2:
                dims.extend(_packed_varints(v))
            else:
                dims.append(v)
        elif num == 2:
            dtype = v
        elif num == 4:
            floats.append(np.frombuffer(v, "<f4"))          # packed (wt 2) or one fixed32 (wt 5)
        elif num == 5:
            ints32.extend(_packed_varints(v) if wt == 2 else [v])
        elif num == 10:
            doubles.append(np.frombuffer(v, "<f8"))
        elif num == 7:
            ints.extend(_packed_varints(v) if wt == 2 else [v - (1 << 64) if v >= 1 << 63 else v])
        elif num == 8:
            name = _str(v)
        elif num == 9:
            raw = v
        elif num in (13, 14) and not (num == 14 and v == 0):
            raise OnnxReadError("external tensor data is not supported")
    if dtype not in _DTYPES:
        raise OnnxReadError(f"initializer {name!r}: data type {dtype} not supported")
    dt = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    count = int(np.prod(dims)) if dims else 1
    if any(d < 0 for d in dims) or count * dt.itemsize > MAX_INIT_BYTES:
        raise OnnxReadError(f"initializer {name!r}: bad dims {dims}")
    if raw is not None:
        if len(raw) != count * dt.itemsize:
            raise OnnxReadError(f"initializer {name!r}: {len(raw)} bytes for dims {dims}")
        arr = np.frombuffer(raw, dt).copy()
    elif floats:
        arr = np.concatenate(floats).astype(dt)
    elif ints:
        arr = np.asarray(ints, dt)
    elif ints32:
        a32 = np.asarray(ints32, np.int64)
        arr = (a32.astype(np.uint16).view(np.float16) if dt == np.float16 else a32).astype(dt)
    elif doubles:
        arr = np.concatenate(doubles).astype(dt)
    elif count == 0:
        arr = np.zeros(0, dt)
    else:
        raise OnnxReadError(f"initializer {name!r}: no data")
    if arr.size != count:
        raise OnnxReadError(f"initializer {name!r}: {arr.size} values for dims {dims}")
    return name, arr.astype(dt.newbyteorder("="), copy=False).reshape(dims)


def _value_dims(buf: memoryview):
    """A TypeProto's tensor dims as a tuple (int dim_value, str dim_param, None unknown); None if not a tensor."""
    for num, wt, v in _fields(buf):
        if num == 1 and wt == 2:  # tensor_type
            dims: list = []
            for n2, wt2, v2 in _fields(v):
                if n2 == 2 and wt2 == 2:  # shape
                    for n3, wt3, v3 in _fields(v2):
                        if n3 == 1 and wt3 == 2:  # dim
                            d = None
                            for n4, wt4, v4 in _fields(v3):
                                if n4 == 1 and wt4 == 0:
                                    d = v4
                                elif n4 == 2 and wt4 == 2:
                                    d = _str(v4)
                            dims.append(d)
            return tuple(dims)
    return None


def read_onnx(data: bytes) -> OnnxGraph:
    """Decode the parts of a ModelProto an edgessm step graph uses (module docstring)."""
    buf = memoryview(data)
    graph_buf, meta = None, {}
    for num, wt, v in _fields(buf):
        if num == 7 and wt == 2:
            graph_buf = v
        elif num == 14 and wt == 2:
            key = val = ""
            for n2, _, v2 in _fields(v):
                if n2 == 1:
                    key = _str(v2)
                elif n2 == 2:
                    val = _str(v2)
            meta[key] = val
    if graph_buf is None:
        raise OnnxReadError("no graph in the model")
    g = OnnxGraph(nodes=[], initializers={}, inputs=[], outputs=[], metadata=meta)
    for num, wt, v in _fields(graph_buf):
        if wt != 2:
            continue
        if num == 1:
            g.nodes.append(_node(v))
        elif num == 5:
            k, arr = _tensor(v)
            g.initializers[k] = arr
        elif num in (11, 12):
            name, dims = "", None
            for n2, wt2, v2 in _fields(v):
                if n2 == 1:
                    name = _str(v2)
                elif n2 == 2 and wt2 == 2:
                    dims = _value_dims(v2)
            (g.inputs if num == 11 else g.outputs).append(name)
            if dims is not None:
                g.shapes[name] = dims
    return g
