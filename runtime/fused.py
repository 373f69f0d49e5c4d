"""The fused step engine: an edgessm step graph run as one C call per step, beside onnxruntime.

Dimensions: B streams, L steps, H channels, N modes of a SISO block, P modes of a MIMO block, O = d_output.

Why an engine of the runtime's own and not an onnxruntime custom op: a custom op needs onnxruntime's
C API headers at build time (the wheels do not ship them, and vendoring them is not allowed here),
its kernel would still be one node among onnxruntime's per-run overhead, and the graph would have to
name a custom domain, so the file would stop being the portable artefact. This engine reads the
weights out of the unchanged ONNX file instead: onnxruntime stays the reference and the fallback.

Life of a fused session (``load_fused``):

1. ``plan_from_onnx`` recognises the graph: the ``edgessm.*`` metadata and the node list by section
   (``encoder``, ``block.{i}``, ``block.{i}/ssm``, ``head``, ``pool``, the names export/graph.py gives),
   both SISO SSM forms of S4D / DSS (the CPU target's elementwise delta form and the GPU targets' Einsum
   matrices, whose structure is checked to be the diagonal one), both MIMO update forms of LRU / S5 (one
   Gemm over [X | z] when P <= H, whose state rows are checked to be the diagonal recurrence, or elementwise
   on X plus a Gemm on z) with the readout Gemm over [X | z], fp32 and fp16, every norm (a BatchNorm is
   already folded into the MIMO Gemms) / activation (exact and tanh GELU) / mixing / pooling / encoder /
   decoder choice, with or without the residual. Anything else (an unknown block, op or layout) is
   FusedUnavailable.
2. ``load_library`` compiles csrc/edgessm_fused.c with the platform's C compiler (``$CC``, else cc /
   gcc), once: the shared object is cached under ``$XDG_CACHE_HOME/edgessm/fused`` (default
   ``~/.cache``), keyed by the source's hash, the compiler and the flags. No compiler: FusedUnavailable.
3. ``FusedEngine.verify`` runs a few steps from a random state in both engines; a disagreement
   beyond the precision's tolerance is FusedUnavailable too, so an unrecognised variant that slipped
   through step 1 still cannot change results.

The caller (StreamingSession) falls back to onnxruntime with the reason; ``EDGESSM_ENGINE=onnxruntime``
turns the fused engine off. numpy + ctypes (stdlib) only.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .contract import (INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, PAST_PREFIX, POOL_STATE, PRESENT_PREFIX, past_state,
                       present_state)
from .errors import RuntimeInputError
from .onnx_reader import Node, OnnxGraph, OnnxReadError, read_onnx

__all__ = ["FusedUnavailable", "FusedPlan", "plan_from_onnx", "load_library", "FusedEngine", "load_fused",
           "cache_dir", "SOURCE", "VERIFY_TOL"]

SOURCE = Path(__file__).with_name("csrc") / "edgessm_fused.c"
ESF_VERSION = 2
HDR, BLK = 16, 24                     # descriptor layout, as in the C source
PW = 16                               # the C matmul's weight panel width
KIND_SISO, KIND_MIMO = 1, 2
ACTS = {"identity": 0, "relu": 1, "tanh": 2, "gelu": 3, "gelu_tanh": 4}
GELU_TANH_CUBIC = 0.044715            # the constant that tells the tanh GELU's node pattern from a Tanh
MIXES = {"none": 0, "linear": 1, "glu": 2}
# Load-time check against onnxruntime over a few steps. fp32: the two engines round differently
# (sum order, erf/exp implementations), ~1e-7..1e-6 relative after a few steps; a wrong weight or
# structure is O(1). fp16: this engine runs the float16 weights with float32 activations, onnxruntime
# rounds some node outputs to float16 (11 bits, ~5e-4 each): they agree to ~5e-4.
VERIFY_TOL = {"fp32": 1e-4, "fp16": 2e-2}
VERIFY_STEPS = 8
COMPILE_TIMEOUT_S = 120


class FusedUnavailable(Exception):
    """The fused engine cannot run this graph here; str() is the one-line reason."""


# ---------------------------------------------------------------------------------------- plan
@dataclass
class FusedPlan:
    """The recognised model: int64 descriptor + float32 weights for the C step, and what they mean."""

    desc: np.ndarray                 # int64 (HDR + BLK * n_blocks)
    weights: np.ndarray              # float32, every parameter (fp16 ones widened exactly)
    state_names: list[str]           # past_state names in C state-pointer order
    state_shapes: list[tuple]        # their shapes without batch: SISO (H, 2N), MIMO (2P,), pool (O+1,)
    precision: str                   # "fp32" | "fp16"
    tokens: bool
    d_input: int
    d_output: int
    H: int
    ranks: list[int]                 # N of a SISO block, P of a MIMO block
    kinds: list[str]                 # "siso" | "mimo" per block
    pooling: str                     # "mean" | "none" (last / none: no pooling state)
    form: str                        # the graph's SSM forms: elementwise | matrix | mimo-gemm | mimo-diag
    summary: dict = field(default_factory=dict)

    def describe(self) -> str:
        b = self.summary
        n = "P" if set(self.kinds) == {"mimo"} else "N" if set(self.kinds) == {"siso"} else "N/P"
        return (f"{len(self.ranks)} blocks x H={self.H}, {n}={self.ranks}, {self.precision}, {self.form} SSM, "
                f"norm={b.get('norm')}/{'pre' if b.get('prenorm') else 'post'}, act={b.get('activation')}, "
                f"mixing={b.get('mixing')}, residual={b.get('residual')}, encoder={b.get('encoder')}, "
                f"decoder={b.get('decoder')}, pooling={self.pooling}, {'tokens' if self.tokens else 'features'}")


class _Weights:
    def __init__(self):
        self.parts: list[np.ndarray] = []
        self.n = 0

    def add(self, arr) -> int:
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32).ravel())
        off = self.n
        self.parts.append(a)
        self.n += a.size
        return off

    def matrix(self, Wm: np.ndarray) -> int:
        """W r(K M) in the C matmul's column panels: Wp[p, k, j] = W[k, p PW + j], zero past M."""
        K, M = Wm.shape
        n_p = -(-M // PW)
        Wp = np.zeros((K, n_p * PW), np.float32)
        Wp[:, :M] = Wm
        return self.add(Wp.reshape(K, n_p, PW).transpose(1, 0, 2))

    def bias(self, b: np.ndarray) -> int:
        """A bias zero-padded to whole panels (the C code loads it 8 at a time)."""
        return self.add(np.concatenate([b, np.zeros(-(-b.size // PW) * PW - b.size)]))

    def array(self) -> np.ndarray:
        out = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        return np.concatenate([out, np.zeros(16, np.float32)])  # tail room for 8-wide vector loads


def _section(node: Node) -> str:
    return node.name.rsplit("/", 1)[0] if "/" in node.name else ""


class _Graph:
    """Lookups over one decoded graph; every failure is FusedUnavailable with what was not recognised."""

    def __init__(self, g: OnnxGraph):
        self.g = g
        self.inits = g.initializers
        self.producer = {o: n for n in g.nodes for o in n.outputs}
        self.consumers: dict[str, list[Node]] = {}
        for n in g.nodes:
            for t in n.inputs:
                self.consumers.setdefault(t, []).append(n)
        self.sections: dict[str, list[tuple[int, Node]]] = {}
        for k, n in enumerate(g.nodes):
            if n.domain not in ("", "ai.onnx"):
                raise FusedUnavailable(f"node {n.name!r} is in domain {n.domain!r}")
            self.sections.setdefault(_section(n), []).append((k, n))

    def init(self, name: str, shape: Optional[tuple] = None, what: str = "") -> np.ndarray:
        if name not in self.inits:
            raise FusedUnavailable(f"{what or name}: {name!r} is not an initializer")
        a = self.inits[name]
        if a.dtype.kind != "f":
            raise FusedUnavailable(f"{what or name}: {name!r} is {a.dtype}, not float")
        if shape is not None and a.shape != tuple(shape):
            raise FusedUnavailable(f"{what or name}: {name!r} has shape {a.shape}, expected {tuple(shape)}")
        return a

    def nodes(self, section: str) -> list[tuple[int, Node]]:
        return self.sections.get(section, [])

    def outflow(self, sections: set) -> set:
        """Tensors made in ``sections`` that a node elsewhere (or the graph's output list) reads."""
        out = set()
        for sec in sections:
            for _, n in self.nodes(sec):
                for t in n.outputs:
                    if t in self.g.outputs or any(_section(c) not in sections for c in self.consumers.get(t, [])):
                        out.add(t)
        return out


def _only(ops: set, allowed: set, where: str) -> None:
    extra = sorted(ops - allowed)
    if extra:
        raise FusedUnavailable(f"{where}: ops {extra} are not part of an edgessm block this engine knows")


def _gemm(G: _Graph, n: Node, K: int, M: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = n.attrs
    if a.get("transA", 0) or a.get("transB", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise FusedUnavailable(f"{what}: Gemm with attributes {a} (expected plain x @ W + b)")
    if len(n.inputs) != 3:
        raise FusedUnavailable(f"{what}: Gemm without a bias")
    return G.init(n.inputs[1], (K, M), what), G.init(n.inputs[2], (M,), what)


def _layernorm(G: _Graph, n: Node, H: int, what: str) -> tuple[np.ndarray, np.ndarray, float]:
    if n.attrs.get("axis", -1) not in (-1, 1) or len(n.inputs) != 3:
        raise FusedUnavailable(f"{what}: LayerNormalization over axis {n.attrs.get('axis')}")
    return G.init(n.inputs[1], (H,), what), G.init(n.inputs[2], (H,), what), float(n.attrs.get("epsilon", 1e-5))


def _ssm_elementwise(G: _Graph, nodes: list[Node], i: int, H: int, N: int) -> dict:
    past, present, where = past_state(i), present_state(i), f"block {i} SSM"
    _only({n.op for n in nodes}, {"Unsqueeze", "MatMul", "Mul", "Sum", "Add", "ReduceSum", "Cast"}, where)
    mm = [n for n in nodes if n.op == "MatMul"]
    if len(mm) != 1 or mm[0].inputs[0] != past:
        raise FusedUnavailable(f"{where}: expected one MatMul(past_state.{i}, swap)")
    P = G.init(mm[0].inputs[1], (2 * N, 2 * N), where)
    swap = np.concatenate([np.arange(N, 2 * N), np.arange(N)])
    want = np.zeros((2 * N, 2 * N))
    want[swap, np.arange(2 * N)] = 1.0
    if not np.array_equal(P, want):
        raise FusedUnavailable(f"{where}: the MatMul constant is not the [Im | Re] swap")
    unsq = {n.outputs[0] for n in nodes if n.op == "Unsqueeze"}
    found: dict[str, np.ndarray] = {}
    for n in (n for n in nodes if n.op == "Mul"):
        consts = [t for t in n.inputs if t in G.inits]
        other = [t for t in n.inputs if t not in G.inits]
        if len(consts) != 1 or len(other) != 1:
            raise FusedUnavailable(f"{where}: Mul {n.name!r} is not tensor x constant")
        t = other[0]
        key = ("Ac" if t == past else "As" if t == mm[0].outputs[0] else "Bc" if t in unsq
               else "Cc" if t == present else "D")
        if key in found:
            raise FusedUnavailable(f"{where}: two candidates for {key}")
        shape = (H,) if key == "D" else (H, 2 * N)
        found[key] = G.init(consts[0], shape, where)
    if set(found) != {"Ac", "As", "Bc", "Cc", "D"}:
        raise FusedUnavailable(f"{where}: found {sorted(found)} of Ac, As, Bc, Cc, D")
    if not any(n.op == "Add" and n.outputs[0] == present and past in n.inputs for n in nodes):
        raise FusedUnavailable(f"{where}: the state update is not the delta form past + delta")
    found["readout"] = 0
    return found


def _ssm_matrix(G: _Graph, nodes: list[Node], i: int, H: int, N: int) -> dict:
    past, present, where = past_state(i), present_state(i), f"block {i} SSM"
    _only({n.op for n in nodes}, {"Concat", "Unsqueeze", "Einsum", "Add", "Cast"}, where)
    M = R = None
    for n in (n for n in nodes if n.op == "Einsum"):
        eq = n.attrs.get("equation", b"")
        eq = (eq.decode() if isinstance(eq, bytes) else str(eq)).replace(" ", "")
        if eq == "bhi,hij->bhj":
            M = G.init(n.inputs[1], (H, 2 * N + 1, 2 * N), where).astype(np.float64)
        elif eq == "bhi,hi->bh":
            R = G.init(n.inputs[1], (H, 2 * N + 1), where)
        else:
            raise FusedUnavailable(f"{where}: Einsum {eq!r}")
    cat = [n for n in nodes if n.op == "Concat"]
    if M is None or R is None or len(cat) != 1 or cat[0].inputs[0] != past:
        raise FusedUnavailable(f"{where}: expected Concat([past_state.{i}, u]) and the update/readout Einsums")
    if not any(n.op == "Add" and n.outputs[0] == present and past in n.inputs for n in nodes):
        raise FusedUnavailable(f"{where}: the state update is not the delta form past + delta")
    n = np.arange(N)
    ar, ai = M[:, n, n], M[:, n, N + n]
    rebuilt = np.zeros_like(M)
    rebuilt[:, n, n] = ar
    rebuilt[:, N + n, N + n] = ar
    rebuilt[:, n, N + n] = ai
    rebuilt[:, N + n, n] = -ai
    rebuilt[:, 2 * N, :] = M[:, 2 * N, :]
    if not np.array_equal(rebuilt, M):  # per-mode complex multiply or nothing: a dense M is another block kind
        raise FusedUnavailable(f"{where}: the update matrix is not a diagonal (per-mode) recurrence")
    return {"Ac": np.concatenate([ar, ar], -1), "As": np.concatenate([-ai, ai], -1), "Bc": M[:, 2 * N, :],
            "Cc": R, "D": None, "readout": 1}


def _rotation(Mx: np.ndarray, P: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(ar, ai) if Mx r(2P 2P) acting on [Re x | Im x] is exactly the per-mode complex multiply by ar + i ai."""
    n = np.arange(P)
    ar, ai = Mx[n, n], Mx[n, P + n]
    rebuilt = np.zeros_like(Mx)
    rebuilt[n, n] = rebuilt[P + n, P + n] = ar
    rebuilt[n, P + n] = ai
    rebuilt[P + n, n] = -ai
    return (ar, ai) if np.array_equal(rebuilt, Mx) else None


def _ssm_mimo(G: _Graph, nodes: list[Node], i: int, H: int) -> dict:
    """An LRU / S5 block (export/graph.py's MIMO step): y = [X | z] R + by from the old state; the update either
    one Gemm over [X | z] ("mimo-gemm", whose X part must be the diagonal recurrence) or Ac X + As swap(X) + the
    Gemm z Bm + bd ("mimo-diag"). Both run as the latter."""
    past, present, where = past_state(i), present_state(i), f"block {i} SSM"
    _only({n.op for n in nodes}, {"Concat", "Gemm", "Add", "Split", "Mul", "Sum", "Cast"}, where)
    cats = [n for n in nodes if n.op == "Concat" and n.inputs[:1] == [past] and len(n.inputs) == 2]
    if len(cats) != 1 or cats[0].attrs.get("axis") not in (1, -1):
        raise FusedUnavailable(f"{where}: expected one Concat([past_state.{i}, z], axis=1)")
    xu, z = cats[0].outputs[0], cats[0].inputs[1]
    upd = [n for n in nodes if n.op == "Add" and n.outputs[0] == present]
    if len(upd) != 1 or upd[0].inputs.count(past) != 1:
        raise FusedUnavailable(f"{where}: the state update is not the delta form past + delta")
    dn = G.producer.get([t for t in upd[0].inputs if t != past][0])
    reads = [n for n in nodes if n.op == "Gemm" and n.inputs[0] == xu and n is not dn]
    if dn is None or len(reads) != 1:
        raise FusedUnavailable(f"{where}: expected one readout Gemm over [past_state.{i}, z]")
    R0 = G.init(reads[0].inputs[1], None, where)
    if R0.ndim != 2 or R0.shape[1] != H or R0.shape[0] <= H or (R0.shape[0] - H) % 2:
        raise FusedUnavailable(f"{where}: readout weight of shape {R0.shape} is not (2P+H, H) with H={H}")
    P = (R0.shape[0] - H) // 2
    R, by = _gemm(G, reads[0], 2 * P + H, H, where)
    if dn.op == "Gemm" and dn.inputs[0] == xu:
        M, bd = _gemm(G, dn, 2 * P + H, 2 * P, where)
        rot = _rotation(M[:2 * P].astype(np.float64), P)
        if rot is None:  # a coupled (non-diagonal) update is another block kind
            raise FusedUnavailable(f"{where}: the update Gemm's state rows are not a diagonal (per-mode) recurrence")
        ar, ai = rot
        Ac, As, Bm, form = np.concatenate([ar, ar]), np.concatenate([-ai, ai]), M[2 * P:], "mimo-gemm"
    elif dn.op == "Sum" and len(dn.inputs) == 3:
        parts = [G.producer.get(t) for t in dn.inputs]
        if any(p is None for p in parts):
            raise FusedUnavailable(f"{where}: the update Sum reads a graph input")
        gm = [p for p in parts if p.op == "Gemm"]
        muls = [p for p in parts if p.op == "Mul"]
        if len(gm) != 1 or len(muls) != 2 or gm[0].inputs[0] != z:
            raise FusedUnavailable(f"{where}: the update is not Ac X + As swap(X) + Gemm(z)")
        Bm, bd = _gemm(G, gm[0], H, 2 * P, where)
        Ac = As = None
        for mul in muls:
            c = [t for t in mul.inputs if t in G.inits]
            x = [t for t in mul.inputs if t not in G.inits]
            if len(c) != 1 or len(x) != 1:
                raise FusedUnavailable(f"{where}: Mul {mul.name!r} is not tensor x constant")
            if x[0] == past:
                Ac = G.init(c[0], (2 * P,), where)
                continue
            sw = G.producer.get(x[0])
            sp = G.producer.get(sw.inputs[0]) if sw is not None and sw.op == "Concat" and len(sw.inputs) == 2 else None
            if (sp is None or sp.op != "Split" or sp.inputs[0] != past or sw.inputs != sp.outputs[::-1]
                    or sp.attrs.get("axis") not in (1, -1) or len(sp.inputs) != 2
                    or not np.array_equal(G.inits.get(sp.inputs[1], np.zeros(0)), [P, P])):
                raise FusedUnavailable(f"{where}: the second update term is not As * [Im x | Re x]")
            As = G.init(c[0], (2 * P,), where)
        if Ac is None or As is None:
            raise FusedUnavailable(f"{where}: found {'Ac' if Ac is not None else 'As'} but not both of Ac, As")
        form = "mimo-diag"
    else:
        raise FusedUnavailable(f"{where}: the update is neither one Gemm over [X | z] nor the elementwise form")
    return {"P": P, "Ac": Ac, "As": As, "Bm": Bm, "bd": bd, "R": R, "by": by, "form": form}


def plan_from_onnx(data: bytes) -> FusedPlan:
    """Recognise an edgessm step graph (module docstring, step 1); FusedUnavailable if anything is off."""
    try:
        g = read_onnx(data)
    except OnnxReadError as e:
        raise FusedUnavailable(f"cannot read the ONNX file ({e})") from None
    try:
        return _plan(g)
    except (IndexError, KeyError, ValueError, TypeError) as e:  # a node shaped unlike the exporter's
        raise FusedUnavailable(f"unrecognised graph structure ({type(e).__name__}: {e})") from None


def _plan(g: OnnxGraph) -> FusedPlan:
    meta = g.metadata
    if meta.get(METADATA_PREFIX + "graph", "step") != "step" or METADATA_PREFIX + "format_version" not in meta:
        raise FusedUnavailable("not an edgessm step graph (no edgessm.format_version / graph=step metadata)")
    try:
        cfg = json.loads(meta.get(METADATA_PREFIX + "config", "{}"))
    except ValueError:
        raise FusedUnavailable("edgessm.config metadata is not JSON") from None
    G = _Graph(g)
    known = {"encoder", "head", "pool"}
    nb = 0
    while f"block.{nb}" in G.sections or f"block.{nb}/ssm" in G.sections:
        known |= {f"block.{nb}", f"block.{nb}/ssm"}
        nb += 1
    unknown = sorted(set(G.sections) - known)
    if unknown:
        raise FusedUnavailable(f"graph sections {unknown} are not ones this engine knows")
    if nb == 0:
        raise FusedUnavailable("no SSM blocks found")
    want_in = {INPUT_NAME, *[past_state(i) for i in range(nb)]}
    pooled = past_state(POOL_STATE) in g.inputs
    if set(g.inputs) - {past_state(POOL_STATE)} != want_in:
        raise FusedUnavailable(f"graph inputs {g.inputs} are not x and past_state.0..{nb - 1} (+ pool)")
    W = _Weights()
    desc = np.full(HDR + BLK * nb, -1, np.int64)

    # ---- encoder
    enc = [n for _, n in G.nodes("encoder") if n.op != "Cast"]
    enc_kind = "linear"
    if not enc:  # config.encoder='none': x (B H) feeds the first block (through a Cast when fp16)
        xs = g.shapes.get(INPUT_NAME)
        if xs is None or len(xs) != 2 or not isinstance(xs[1], int) or xs[1] < 1:
            raise FusedUnavailable(f"encoder: none, and the input x has shape {xs}, not (batch, H)")
        H = d_in = xs[1]
        tokens, V, enc_kind = False, 0, "none"
    elif len(enc) == 1 and enc[0].op == "Gather":
        E = G.init(enc[0].inputs[0], None, "embedding")
        if E.ndim != 2 or enc[0].inputs[1] != INPUT_NAME or enc[0].attrs.get("axis", 0) != 0:
            raise FusedUnavailable("encoder: Gather is not E[x]")
        V, H = E.shape
        tokens, d_in = True, 0
        desc[7], desc[8] = W.add(E), -1
    elif len(enc) == 1 and enc[0].op == "Gemm":
        Wm = G.inits.get(enc[0].inputs[1])
        if Wm is None or Wm.ndim != 2:
            raise FusedUnavailable("encoder: Gemm weight is not a matrix initializer")
        d_in, H = Wm.shape
        Wm, b = _gemm(G, enc[0], d_in, H, "encoder")
        tokens, V = False, 0
        desc[7], desc[8] = W.matrix(Wm), W.bias(b)
    else:
        raise FusedUnavailable(f"encoder: {[n.op for n in enc]} is neither Gemm nor Gather")
    precision = "fp16" if any(a.dtype == np.float16 for a in G.inits.values()) else "fp32"
    if meta.get(METADATA_PREFIX + "precision", precision) != precision:
        raise FusedUnavailable(f"weights are {precision} but the metadata says {meta.get('edgessm.precision')}")

    # ---- blocks
    ranks, kinds, shapes, forms = [], [], [], set()
    summary = {"norm": None, "prenorm": None, "activation": None, "mixing": None, "residual": None,
               "encoder": enc_kind, "decoder": None}
    h_in = INPUT_NAME                              # the tensor entering the next block
    if G.nodes("encoder"):
        flow = G.outflow({"encoder"})
        if len(flow) != 1:
            raise FusedUnavailable(f"encoder: {len(flow)} tensors leave it, expected one")
        h_in = flow.pop()
    for i in range(nb):
        bn = G.nodes(f"block.{i}")
        sn = [n for _, n in G.nodes(f"block.{i}/ssm")]
        where = f"block {i}"
        if not sn:
            raise FusedUnavailable(f"{where}: no SSM nodes")
        first_ssm = G.nodes(f"block.{i}/ssm")[0][0]
        _only({n.op for _, n in bn}, {"LayerNormalization", "Gelu", "Erf", "Div", "Add", "Mul", "Relu", "Tanh",
                                      "Gemm", "Split", "Sigmoid", "Cast"}, where)
        Ns = {n.op for n in sn}
        tmpl = ("elementwise" if "MatMul" in Ns else "matrix" if "Einsum" in Ns else "mimo" if "Gemm" in Ns
                else None)
        if tmpl is None:
            raise FusedUnavailable(f"{where}: SSM ops {sorted(Ns)} are not a known block")
        if tmpl == "mimo":
            ssm = _ssm_mimo(G, sn, i, H)
            N = ssm["P"]
            forms.add(ssm["form"])
        else:  # the state shape fixes N: (H, 2N)
            N = _block_modes(G, sn, i, H, tmpl)
            ssm = (_ssm_elementwise if tmpl == "elementwise" else _ssm_matrix)(G, sn, i, H, N)
            forms.add(tmpl)
        flow = G.outflow({f"block.{i}", f"block.{i}/ssm"}) - {present_state(i)}
        if len(flow) != 1:
            raise FusedUnavailable(f"{where}: {len(flow)} tensors leave the block, expected one")
        residual = any(n.op == "Add" and h_in in n.inputs for _, n in bn)  # h + block(h)
        h_in = flow.pop()
        lns = [(k, n) for k, n in bn if n.op == "LayerNormalization"]
        if len(lns) > 1:
            raise FusedUnavailable(f"{where}: {len(lns)} LayerNormalizations")
        prenorm = bool(lns and lns[0][0] < first_ssm)
        if not lns:
            prenorm = bool(cfg.get("prenorm", True))
        ops = [n.op for _, n in bn]
        acts = {"Gelu", "Erf", "Relu", "Tanh"} & set(ops)
        # the tanh GELU below opset 20: Tanh(sqrt(2/pi) (x + 0.044715 x^3)) in Muls and Adds (export/graph.py)
        cubic = any(n.op == "Mul" and any(t in G.inits and G.inits[t].size == 1
                                          and abs(float(G.inits[t].ravel()[0]) - GELU_TANH_CUBIC) < 1e-4
                                          for t in n.inputs) for _, n in bn)
        if len(acts) > 1:
            raise FusedUnavailable(f"{where}: several activations {sorted(acts)}")
        act = {"Gelu": "gelu", "Erf": "gelu", "Relu": "relu", "Tanh": "tanh"}[acts.pop()] if acts else "identity"
        if act == "tanh" and cubic:
            act = "gelu_tanh"
        for _, n in bn:
            if n.op == "Gelu":
                approx = n.attrs.get("approximate", b"none")
                approx = approx.decode() if isinstance(approx, bytes) else str(approx)
                if approx not in ("none", "tanh"):
                    raise FusedUnavailable(f"{where}: Gelu(approximate={approx!r})")
                act = "gelu_tanh" if approx == "tanh" else "gelu"
        gemms = [n for _, n in bn if n.op == "Gemm"]
        sig = [n for _, n in bn if n.op == "Sigmoid"]
        if not gemms:
            mixing, Wm, bm = "none", None, None
        elif len(gemms) == 1 and not sig:
            mixing, (Wm, bm) = "linear", _gemm(G, gemms[0], H, H, where)
        elif len(gemms) == 1 and len(sig) == 1 and "Split" in ops:
            mixing, (Wm, bm) = "glu", _gemm(G, gemms[0], H, 2 * H, where)
        elif len(gemms) == 2 and len(sig) == 1:
            gate = [n for n in gemms if n.outputs[0] in sig[0].inputs]
            if len(gate) != 1:
                raise FusedUnavailable(f"{where}: no Gemm feeds the GLU's Sigmoid")
            a = [n for n in gemms if n is not gate[0]][0]
            (Wa, ba), (Wg, bg) = _gemm(G, a, H, H, where), _gemm(G, gate[0], H, H, where)
            mixing, Wm, bm = "glu", np.concatenate([Wa, Wg], 1), np.concatenate([ba, bg])
        else:
            raise FusedUnavailable(f"{where}: mixing of {len(gemms)} Gemms and {len(sig)} Sigmoids")
        norm = "layer" if lns else "none"
        if tmpl == "mimo" and not lns and cfg.get("norm") == "batch" and prenorm:
            norm = "batch"  # folded into Bm, bd, R, by by the exporter: nothing left in the graph to see
        for key, got in (("prenorm", prenorm), ("activation", act), ("mixing", mixing), ("norm", norm),
                         ("residual", residual)):
            if key in cfg and not (key == "prenorm" and not lns):  # without a norm pre/post is moot
                if cfg[key] != got:
                    raise FusedUnavailable(f"{where}: graph has {key}={got!r}, config says {cfg[key]!r}")
            summary[key] = got
        d = desc[HDR + BLK * i: HDR + BLK * (i + 1)]
        d[:] = -1
        d[0], d[1], d[2], d[3] = KIND_MIMO if tmpl == "mimo" else KIND_SISO, N, i, int(prenorm)
        d[17] = int(residual)
        if lns:
            gam, bet, eps = _layernorm(G, lns[0][1], H, where)
            d[4], d[5], d[6] = W.add(gam), W.add(bet), W.add([eps])
        d[7], d[8] = ACTS[act], MIXES[mixing]
        if Wm is not None:
            d[9], d[10] = W.matrix(Wm), W.bias(bm)
        if tmpl == "mimo":
            d[12], d[13], d[14], d[15] = W.add(ssm["Ac"]), W.add(ssm["As"]), W.matrix(ssm["Bm"]), W.matrix(ssm["R"])
            d[18], d[19] = W.bias(ssm["bd"]), W.bias(ssm["by"])
            shapes.append((2 * N,))
        else:
            d[11] = ssm["readout"]
            d[12], d[13], d[14], d[15] = W.add(ssm["Ac"]), W.add(ssm["As"]), W.add(ssm["Bc"]), W.add(ssm["Cc"])
            d[16] = W.add(ssm["D"]) if ssm["D"] is not None else -1
            shapes.append((H, 2 * N))
        ranks.append(N)
        kinds.append("mimo" if tmpl == "mimo" else "siso")

    # ---- head and pooling
    head = [n for _, n in G.nodes("head") if n.op not in ("Cast", "Identity")]  # Identity: decoder 'none' -> y
    lnf = [n for n in head if n.op == "LayerNormalization"]
    dec = [n for n in head if n.op == "Gemm"]
    if len(dec) > 1 or len(lnf) > 1 or len(head) != len(dec) + len(lnf):
        raise FusedUnavailable(f"head: {[n.op for n in head]} is not [LayerNormalization] [Gemm]")
    if any(n.op == "Identity" and len(n.inputs) != 1 for _, n in G.nodes("head")):
        raise FusedUnavailable("head: an Identity with several inputs")
    if dec:
        Wd = G.inits.get(dec[0].inputs[1])
        if Wd is None or Wd.ndim != 2 or Wd.shape[0] != H:
            raise FusedUnavailable("head: decoder weight is not an (H, O) initializer")
        O = Wd.shape[1]
        Wd, bd = _gemm(G, dec[0], H, O, "head")
        desc[12], desc[13] = W.matrix(Wd), W.bias(bd)
    else:  # config.decoder='none': y is the last block's H channels
        O = H
    summary["decoder"] = "linear" if dec else "none"
    if g.shapes.get(OUTPUT_NAME, (None, O))[1:] != (O,):
        raise FusedUnavailable(f"head: output y has shape {g.shapes.get('y')}, the weights give (batch, {O})")
    if lnf:
        gam, bet, eps = _layernorm(G, lnf[0], H, "final norm")
        desc[9], desc[10], desc[11] = W.add(gam), W.add(bet), W.add([eps])
    pool_ops = {n.op for _, n in G.nodes("pool")}
    if pooled:
        _only(pool_ops, {"Split", "Add", "Sub", "Div", "Concat"}, "pool")
        if len(G.nodes("pool")) != 6:
            raise FusedUnavailable("pool: not the running-mean update")
    elif pool_ops:
        raise FusedUnavailable("pool nodes without a pool state")
    pooling = "mean" if pooled else "none"
    if cfg.get("pooling") is not None and (cfg["pooling"] == "mean") != pooled:
        raise FusedUnavailable(f"config pooling={cfg['pooling']!r} but the graph {'has' if pooled else 'has no'} "
                               "pool state")
    desc[:HDR] = [ESF_VERSION, d_in, V, H, O, nb, int(pooled), desc[7], desc[8], desc[9], desc[10], desc[11],
                  desc[12], desc[13], nb if pooled else -1, int(precision == "fp16")]
    names = [past_state(i) for i in range(nb)] + ([past_state(POOL_STATE)] if pooled else [])
    shapes += [(O + 1,)] if pooled else []
    return FusedPlan(desc=desc, weights=W.array(), state_names=names, state_shapes=shapes, precision=precision,
                     tokens=tokens, d_input=d_in, d_output=O, H=H, ranks=ranks, kinds=kinds, pooling=pooling,
                     form="+".join(sorted(forms)), summary=summary)


def _block_modes(G: _Graph, nodes: list[Node], i: int, H: int, form: str) -> int:
    """N of block i, from the shape of its readout constant (H, 2N) or (H, 2N+1)."""
    for n in nodes:
        if form == "elementwise" and n.op == "MatMul":
            P = G.inits.get(n.inputs[1])
            if P is not None and P.ndim == 2 and P.shape[0] == P.shape[1] and P.shape[0] % 2 == 0:
                return P.shape[0] // 2
        if form == "matrix" and n.op == "Einsum":
            M = G.inits.get(n.inputs[1])
            if M is not None and M.ndim == 3 and M.shape[0] == H and M.shape[2] % 2 == 0:
                return M.shape[2] // 2
    raise FusedUnavailable(f"block {i}: cannot read the number of modes")


# ---------------------------------------------------------------------------------------- build
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgessm" / "fused"


def _compiler() -> Optional[str]:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)  # an explicit CC that is not there: no compiler (never another one)
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


# -O3 and the host's instruction set (built where it runs); no -ffast-math: NaN/Inf and erf must behave.
BASE_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno"]
ARCH_FLAGS = [["-march=native"], ["-mcpu=native"], []]


class _Ctx(ctypes.Structure):
    _fields_ = [("desc", ctypes.c_void_p), ("w", ctypes.c_void_p), ("state", ctypes.c_void_p),
                ("scratch", ctypes.c_void_p), ("B", ctypes.c_int64), ("nthreads", ctypes.c_int64),
                ("x", ctypes.c_void_p), ("y", ctypes.c_void_p)]


_LIB: dict[str, tuple] = {}


def load_library() -> tuple[ctypes.CDLL, str]:
    """(the compiled engine, a one-line build description); FusedUnavailable when it cannot be built."""
    cc = _compiler()
    if cc is None:
        raise FusedUnavailable(f"no C compiler found ({'CC=' + os.environ['CC'] if os.environ.get('CC') else 'cc/gcc/clang'}"
                               " not on PATH)")
    try:
        src = SOURCE.read_bytes()
    except OSError as e:
        raise FusedUnavailable(f"engine source missing ({e.strerror}: {SOURCE})") from None
    key0 = (cc, src, str(cache_dir()))
    if key0 in _LIB:
        return _LIB[key0]
    errors = []
    for arch in ARCH_FLAGS:
        flags = BASE_FLAGS + arch
        # -march=native code is for this CPU: the key names the host, so a shared (NFS) cache never hands
        # one machine's build to another
        key = hashlib.sha256(src + "\0".join([cc, platform.machine(), _host_id(), *flags]).encode()).hexdigest()[:20]
        so = cache_dir() / f"edgessm_fused_{key}.so"
        lib, how = None, "cached"
        if so.exists() and _trusted(so):
            try:
                lib = ctypes.CDLL(str(so))
            except OSError:  # a damaged cache entry: build it again
                lib = None
        if lib is None:
            err, so = _compile(cc, flags, src, so)
            private = so.parent != cache_dir()  # the cache was not writable: a temporary folder of our own
            how = "built" if not private else "built (cache not writable)"
            try:
                if err:
                    errors.append(err)
                    continue
                try:
                    lib = ctypes.CDLL(str(so))
                except OSError as e:
                    errors.append(f"cannot load {so}: {e}")
                    continue
            finally:
                if private:  # a loaded library stays mapped once its file is gone (POSIX); elsewhere it stays
                    shutil.rmtree(so.parent, ignore_errors=True)
        lib.esf_step.argtypes = [ctypes.c_void_p]
        lib.esf_step.restype = ctypes.c_int64
        lib.esf_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        lib.esf_run.restype = ctypes.c_int64
        lib.esf_check.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.esf_check.restype = ctypes.c_int64
        lib.esf_scratch_floats.argtypes = [ctypes.c_void_p]
        lib.esf_scratch_floats.restype = ctypes.c_int64
        lib.esf_version.restype = ctypes.c_int64
        if lib.esf_version() != ESF_VERSION:
            errors.append(f"{so} is engine version {lib.esf_version()}, expected {ESF_VERSION}")
            continue
        out = (lib, f"{os.path.basename(cc)} {' '.join(['-O3', *arch])}, {how} {so}")
        _LIB[key0] = out
        return out
    raise FusedUnavailable("C build failed: " + "; ".join(errors)[:300])


def _trusted(path: Path) -> bool:
    """Load a cached library only if this user owns it and its folder, and neither is world-writable:
    loading a shared object runs its code."""
    try:
        for p in (path, path.parent):
            st = p.stat()
            if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o002:
                return False
    except OSError:
        return False
    return True


def _host_id() -> str:
    """This machine's name and CPU feature line (Linux /proc/cpuinfo; elsewhere the name only)."""
    feats = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            feats = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.node() + "|" + feats.strip()


def _compile(cc: str, flags: list[str], src: bytes, so: Path) -> tuple[Optional[str], Path]:
    """(error or None, where the library is). Compiles into the cache (temp file + rename, so a concurrent or
    failed build leaves nothing half-written); a cache folder that cannot be written: a temporary folder."""
    try:
        so.parent.mkdir(parents=True, exist_ok=True)
        folder = so.parent
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe", delete=True)
        probe.close()
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="edgessm_fused_"))
        so = folder / so.name
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".edgessm_fused_", suffix=".so")
    os.close(fd)
    src_path = Path(tmp).with_suffix(".c")
    try:
        src_path.write_bytes(src)
        r = subprocess.run([cc, *flags, "-o", tmp, str(src_path), "-lm", "-lpthread"], capture_output=True,
                           text=True, timeout=COMPILE_TIMEOUT_S)
        if r.returncode != 0:
            return f"{os.path.basename(cc)} {' '.join(flags[-1:])}: " + " ".join((r.stderr or r.stdout).split())[:200], so
        os.replace(tmp, so)
        return None, so
    except (OSError, subprocess.SubprocessError) as e:
        return f"{os.path.basename(cc)}: {e}", so
    finally:
        for p in (tmp, str(src_path)):
            if os.path.exists(p):
                os.unlink(p)


# ---------------------------------------------------------------------------------------- engine
class FusedEngine:
    """The C step with the state of ``batch`` streams in numpy arrays (updated in place by C).

    Same interface as the onnxruntime engines of session.py: step, chunk (T steps; the chunk graph is not
    needed), sequence (L steps in one C call), read_state / write_state / zero_state.
    """

    def __init__(self, plan: FusedPlan, lib: ctypes.CDLL, state_shapes: dict[str, tuple], batch: int,
                 threads: int = 1):
        self.plan, self._lib, self.batch = plan, lib, int(batch)
        self.threads = max(1, int(threads or 1))
        rc = lib.esf_check(plan.desc.ctypes.data, plan.desc.size)
        if rc != 0:
            raise FusedUnavailable(f"the C engine refuses the descriptor (code {rc}): a block kind it does not have")
        for name, want in zip(plan.state_names, plan.state_shapes):
            if tuple(state_shapes.get(name, ())) != want:
                raise FusedUnavailable(f"state {name} has shape {state_shapes.get(name)}, the graph's weights need {want}")
        if set(state_shapes) != set(plan.state_names):
            raise FusedUnavailable(f"states {sorted(state_shapes)} do not match {plan.state_names}")
        B = self.batch
        self._state = [np.zeros((B, *state_shapes[n]), np.float32) for n in plan.state_names]
        self._ptrs = (ctypes.c_void_p * len(self._state))(*[s.ctypes.data for s in self._state])
        per = lib.esf_scratch_floats(plan.desc.ctypes.data)
        self._scratch = np.zeros(per * min(self.threads, 64) + 16, np.float32)
        self._x = np.zeros((B,) if plan.tokens else (B, plan.d_input), np.int64 if plan.tokens else np.float32)
        self._xrun = np.zeros_like(self._x)
        self._y = np.zeros((B, plan.d_output), np.float32)
        self._ctx = _Ctx(plan.desc.ctypes.data, plan.weights.ctypes.data, ctypes.cast(self._ptrs, ctypes.c_void_p),
                         self._scratch.ctypes.data, B, self.threads, self._x.ctypes.data, self._y.ctypes.data)
        self._ctx_ref = ctypes.byref(self._ctx)
        self._step = lib.esf_step
        self._run = lib.esf_run

    # ---- running
    def step(self, x: np.ndarray) -> np.ndarray:
        self._x[...] = x
        if self._step(self._ctx_ref):
            raise RuntimeInputError("input 'x': token id out of range")  # the session checks ids first
        return self._y.copy()

    def sequence(self, xs: np.ndarray) -> np.ndarray:
        """xs (B, L, d_input) float32 | (B, L) int64 -> ys (B, L, O), L steps in one call."""
        xs = np.ascontiguousarray(xs, dtype=self._x.dtype)
        L = xs.shape[1]
        ys = np.empty((self.batch, L, self.plan.d_output), np.float32)
        if L and self._run(self._ctx_ref, xs.ctypes.data, ys.ctypes.data, L, self._xrun.ctypes.data):
            raise RuntimeInputError("input 'x': token id out of range")
        return ys

    chunk = sequence

    # ---- state (names and layout of the graph's past_state inputs)
    def read_state(self) -> dict[str, np.ndarray]:
        return {n: s.copy() for n, s in zip(self.plan.state_names, self._state)}

    def write_state(self, state: dict[str, np.ndarray]) -> None:
        for n, s in zip(self.plan.state_names, self._state):
            s[...] = state[n]  # in place: C holds the buffers' addresses

    def zero_state(self) -> None:
        for s in self._state:
            s[...] = 0

    # ---- load-time check
    def verify(self, ort_session, precision: str, steps: int = VERIFY_STEPS, seed: int = 0) -> float:
        """Run ``steps`` steps from a random state here and in ``ort_session`` (session.run on the same
        graph); return the worst relative difference over y and every state, FusedUnavailable past
        VERIFY_TOL. Leaves this engine's state zeroed."""
        rng = np.random.default_rng(seed)
        B = self.batch
        start = {}
        for n, s in zip(self.plan.state_names, self._state):
            v = 0.3 * rng.standard_normal(s.shape)
            if n == past_state(POOL_STATE):
                v[:, -1] = rng.integers(0, 5, B)  # the step count of the running mean
            start[n] = v.astype(np.float32)
        if self.plan.tokens:
            V = int(self.plan.desc[2])
            xs = rng.integers(0, V, (steps, B)).astype(np.int64)
        else:
            xs = rng.standard_normal((steps, B, self.plan.d_input)).astype(np.float32)
        outs = [OUTPUT_NAME] + [PRESENT_PREFIX + n[len(PAST_PREFIX):] for n in self.plan.state_names]
        ref_state = dict(start)
        self.write_state(start)
        worst = 0.0
        for t in range(steps):
            r = ort_session.run(outs, {INPUT_NAME: xs[t], **ref_state})
            ref_state = {n: v for n, v in zip(self.plan.state_names, r[1:])}
            y = self.step(xs[t])
            got = [y] + [s for s in self._state]
            for g, e in zip(got, r):
                scale = max(float(np.max(np.abs(e))), 1e-6)
                err = float(np.max(np.abs(g.astype(np.float64) - e))) / scale
                worst = max(worst, err if np.isfinite(err) else np.inf)
        self.zero_state()
        tol = VERIFY_TOL[precision]
        if not worst <= tol:
            raise FusedUnavailable(f"the fused step disagrees with onnxruntime on this graph (relative {worst:.2g} "
                                   f"> {tol:g} over {steps} steps)")
        return worst


def load_fused(model_bytes: bytes, ort_session, state_shapes: dict[str, tuple], batch: int,
               threads: Optional[int] = 1, verify: bool = True) -> tuple[FusedEngine, str]:
    """Plan, build, construct and verify (module docstring); (engine, one-line description)."""
    plan = plan_from_onnx(model_bytes)
    lib, build = load_library()
    eng = FusedEngine(plan, lib, state_shapes, batch, threads or 1)
    note = ""
    if verify:  # on a few streams: a row's result does not depend on the batch it is in (the C source)
        err = FusedEngine(plan, lib, state_shapes, min(int(batch), 4)).verify(ort_session, plan.precision)
        note = f"; matches onnxruntime to {err:.1e} relative on {VERIFY_STEPS} random steps"
    return eng, f"fused C step ({plan.describe()}; {build}{note})"
