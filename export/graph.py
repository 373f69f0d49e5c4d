"""ONNX step and chunk graphs, built node by node with ``onnx.helper`` from :class:`ModelParams`.

Dimensions: B batch (the one dynamic axis, dim_param "batch"), T chunk length, H channels,
N modes of a layer, O = d_output.

Step graph (one time step):
    x r(B d_input) | int64 (B)   past_state.{i} r(B H 2N_i)   [past_state.pool r(B O+1)]
 -> y r(B O)                     present_state.{i}            [present_state.pool]
Chunk graph: x r(B T d_input) | int64 (B T) -> y r(B T O), the same state pairs.

The network (edgessm/model.py), per step:
    h = x W_enc + b | E[x]                                   encoder
    per block: z = LN(h) (prenorm); z = SSM(z) + D z; z = act(z); z = mix(z); h = h + z; h = LN(h) (postnorm)
    y = LN_f(h) W_dec + b_dec; mean pooling: m' = m + (y - m) / (c + 1), pool = [m' | c + 1]

Forms of the SSM (``target``): "cpu" writes the delta-form complex update with elementwise ops on
the [Re | Im] state, the [Im | Re] swap as a MatMul by a permutation (11 nodes a layer), and the GLU
as two Gemms (one fused with its Sigmoid by onnxruntime); "cuda"/"tensorrt" write the update as one
Einsum over [X | u] and the readout as another (5 nodes a layer): at batch 1 a GPU step is
launch-bound, so fewer nodes win there, while the CPU provider runs the elementwise form faster
(docs/onnx.md and docs/latency.md have the numbers).

fp16: weights and activations in float16, the SSM (state update and readout) in float32 with a
Cast on each side; x, y and every state stay float32 at the graph boundary.

Every node is named "<section>/<op>_<k>" with section encoder, block.{i}, block.{i}/ssm, head or
pool: ``node_counts`` counts by section.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgessm.errors import ExportError
from edgessm.runtime.contract import INPUT_NAME, OUTPUT_NAME, POOL_STATE, past_state, present_state

from .lowering import (BlockParams, LayerNormParams, LinearParams, MimoSSMParams, ModelParams, chunk_matrix,
                       mimo_chunk_matrices, mimo_step_diag, mimo_step_gemms, step_elementwise, step_matrices)

__all__ = ["TARGETS", "build_step_graph", "build_chunk_graph", "node_counts", "state_specs", "MIN_OPSET"]

TARGETS = ("cpu", "cuda", "tensorrt")
MIN_OPSET = 17  # LayerNormalization
GELU_OPSET = 20  # the Gelu op; below it the exact erf pattern (which onnxruntime fuses back into one kernel)
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


class _Builder:
    """Accumulates nodes (tagged with a section) and deduplicated initializers."""

    def __init__(self, fp16: bool, opset: int):
        self.nodes: list = []
        self.inits: list = []
        self._consts: dict = {}
        self.k = 0
        self.section = "encoder"
        self.fp16 = fp16
        self.opset = opset
        self.act_np = np.float16 if fp16 else np.float32  # activation/weight dtype outside the SSM

    def const(self, arr, dtype=np.float32, name: str = "c") -> str:
        a = np.array(arr, dtype=dtype, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        key = (a.dtype.str, a.shape, a.tobytes()) if a.size <= 64 else None  # share small constants
        if key is not None and key in self._consts:
            return self._consts[key]
        self.k += 1
        n = f"{self.section}/{name}_{self.k}"
        self.inits.append(numpy_helper.from_array(a, n))
        if key is not None:
            self._consts[key] = n
        return n

    def w(self, arr, name: str = "w") -> str:
        """A weight in the activation dtype (float16 when fp16)."""
        return self.const(arr, self.act_np, name)

    def op(self, op_type: str, inputs, out: Optional[str] = None, n_out: int = 1, **attrs):
        self.k += 1
        base = f"{self.section}/{op_type}_{self.k}"
        outs = [out] if out is not None else ([base] if n_out == 1 else [f"{base}:{j}" for j in range(n_out)])
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, **attrs))
        return outs[0] if n_out == 1 else outs

    def ints(self, vals) -> str:
        return self.const(np.asarray(vals, np.int64), np.int64, "i")

    # ---- precision boundary -------------------------------------------------------------
    def to_act(self, t: str) -> str:
        return self.op("Cast", [t], to=F16) if self.fp16 else t

    def to_f32(self, t: str, out: Optional[str] = None) -> str:
        if self.fp16:
            return self.op("Cast", [t], out=out, to=F32)
        return self.op("Identity", [t], out=out) if out is not None else t

    # ---- layers -------------------------------------------------------------------------
    def linear(self, x: str, p: LinearParams, rank2: bool, out: Optional[str] = None) -> str:
        if rank2:
            return self.op("Gemm", [x, self.w(p.W), self.w(p.b)], out=out)              # (B out)
        return self.op("Add", [self.op("MatMul", [x, self.w(p.W)]), self.w(p.b)], out=out)  # (B T out)

    def layernorm(self, x: str, p: Optional[LayerNormParams]) -> str:
        if p is None:
            return x
        return self.op("LayerNormalization", [x, self.w(p.gamma), self.w(p.beta)], axis=-1, epsilon=p.eps)

    def activation(self, x: str, kind: str) -> str:
        if kind == "gelu":
            if self.opset >= GELU_OPSET:
                return self.op("Gelu", [x], approximate="none")
            # 0.5 x (1 + erf(x / sqrt 2)): torch's exact GELU, in the pattern onnxruntime fuses
            e = self.op("Erf", [self.op("Div", [x, self.w(math.sqrt(2.0))])])
            return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.w(1.0)])]), self.w(0.5)])
        if kind == "gelu_tanh":
            if self.opset >= GELU_OPSET:
                return self.op("Gelu", [x], approximate="tanh")
            # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): torch's GELU(approximate="tanh")
            x3 = self.op("Mul", [self.op("Mul", [x, x]), x])
            inner = self.op("Mul", [self.op("Add", [x, self.op("Mul", [x3, self.w(0.044715)])]),
                                    self.w(math.sqrt(2.0 / math.pi))])
            return self.op("Mul", [self.op("Mul", [x, self.op("Add", [self.op("Tanh", [inner]), self.w(1.0)])]),
                                   self.w(0.5)])
        if kind == "relu":
            return self.op("Relu", [x])
        if kind == "tanh":
            return self.op("Tanh", [x])
        return x

    def mixing(self, z: str, blk: BlockParams, rank2: bool, H: int) -> str:
        if blk.mixing == "none":
            return z
        v = self.linear(z, blk.mix, rank2)  # (.. 2H) or (.. H)
        if blk.mixing == "linear":
            return v
        a, g = self.op("Split", [v, self.ints([H, H])], n_out=2, axis=-1)  # GLU: a * sigmoid(g)
        return self.op("Mul", [a, self.op("Sigmoid", [g])])

    def glu_two_gemms(self, z: str, blk: BlockParams, H: int) -> str:
        """GLU as Gemm(a half) * Sigmoid(Gemm(g half)): no Split, and onnxruntime's CPU provider fuses
        Gemm + Sigmoid into one FusedGemm (4 nodes, 3 after optimisation, instead of 4)."""
        W, b = blk.mix.W, blk.mix.b
        a = self.op("Gemm", [z, self.w(W[:, :H]), self.w(b[:H])])
        gate = self.op("Sigmoid", [self.op("Gemm", [z, self.w(W[:, H:]), self.w(b[H:])])])
        return self.op("Mul", [a, gate])


# ---- SSM forms ---------------------------------------------------------------------------------
def _ssm_step_elementwise(g: _Builder, z: str, X: str, X_out: str, blk: BlockParams) -> str:
    """z r(B H) f32, X r(B H 2N) -> y r(B H); writes X_out = X + (a X + B u) (11 nodes).

    The [Im | Re] swap is a MatMul by a 0/1 permutation matrix (exact: one product by 1, the rest
    by 0): onnxruntime's CPU Gather along the last axis costs ~15x a small MatMul (docs/latency.md).
    """
    c = step_elementwise(blk.ssm)
    U = g.op("Unsqueeze", [z, g.ints([2])])                                   # (B H 1)
    Xs = g.op("MatMul", [X, g.const(c["P"], name="swap")])                    # (B H 2N) [Im | Re]
    d = g.op("Sum", [g.op("Mul", [X, g.const(c["Ac"], name="A")]),           # a x on [Re | Im]
                     g.op("Mul", [Xs, g.const(c["As"], name="A")]),
                     g.op("Mul", [U, g.const(c["Bc"], name="B")])])           # + B u
    Xn = g.op("Add", [X, d], out=X_out)                                       # delta form
    y = g.op("ReduceSum", [g.op("Mul", [Xn, g.const(c["Cc"], name="C")]), g.ints([2])], keepdims=0)  # (B H)
    return g.op("Add", [y, g.op("Mul", [z, g.const(c["D"], name="D")])])


def _ssm_step_matrix(g: _Builder, z: str, X: str, X_out: str, blk: BlockParams) -> str:
    """z r(B H) f32, X r(B H 2N) -> y r(B H); one Einsum for the update, one for the readout (5 nodes)."""
    c = step_matrices(blk.ssm)
    XU = g.op("Concat", [X, g.op("Unsqueeze", [z, g.ints([2])])], axis=2)    # (B H 2N+1) [Re x | Im x | u]
    d = g.op("Einsum", [XU, g.const(c["M"], name="M")], equation="bhi,hij->bhj")  # (B H 2N)
    g.op("Add", [X, d], out=X_out)                                            # delta form
    return g.op("Einsum", [XU, g.const(c["R"], name="R")], equation="bhi,hi->bh")  # (B H) from the old state


# Up to this P / H the MIMO update is one dense Gemm over [X | z] (4 nodes a layer); above it the
# (2P+H) x 2P matrix is mostly the zeros of the diagonal a - 1 and the update goes elementwise
# (9 nodes). bench/mimo_step_latency.py measures both forms (docs/results.md).
MIMO_DENSE_MAX_P_OVER_H = 1.0


def _ssm_step_mimo(g: _Builder, z: str, X: str, X_out: str, blk: BlockParams) -> str:
    """LRU / S5: z r(B H) f32, X r(B 2P) -> y r(B H); the readout is one Gemm over [X | z] from the old state,
    the update one Gemm over [X | z] (P <= MIMO_DENSE_MAX_P_OVER_H * H) or elementwise on X plus a Gemm on z."""
    P, H = blk.ssm.N, blk.ssm.D.shape[0]
    XU = g.op("Concat", [X, z], axis=1)                                        # (B 2P+H)
    if P <= MIMO_DENSE_MAX_P_OVER_H * H:
        c = mimo_step_gemms(blk.ssm)
        d = g.op("Gemm", [XU, g.const(c["M"], name="M"), g.const(c["bd"], name="b")])  # (B 2P) delta
    else:
        c = mimo_step_diag(blk.ssm)
        Xr, Xi = g.op("Split", [X, g.ints([P, P])], n_out=2, axis=1)
        Xs = g.op("Concat", [Xi, Xr], axis=1)                                  # (B 2P) [Im | Re]
        d = g.op("Sum", [g.op("Mul", [X, g.const(c["Ac"], name="A")]), g.op("Mul", [Xs, g.const(c["As"], name="A")]),
                         g.op("Gemm", [z, g.const(c["Bm"], name="B"), g.const(c["bd"], name="b")])])  # (B 2P)
    g.op("Add", [X, d], out=X_out)                                             # delta form
    return g.op("Gemm", [XU, g.const(c["R"], name="R"), g.const(c["by"], name="b")])  # (B H) from the old state


def _per_block(ssm):
    """The SISO form ``ssm`` for S4D/DSS blocks, the Gemm form for LRU/S5 blocks."""
    def pick(g, z, X, X_out, blk):
        if isinstance(blk.ssm, MimoSSMParams):
            return _ssm_step_mimo(g, z, X, X_out, blk)
        return ssm(g, z, X, X_out, blk)
    return pick


def _ssm_chunk(g: _Builder, z: str, X: str, X_out: str, blk: BlockParams, T: int) -> str:
    """z r(B T H) f32, X r(B H 2N) -> y r(B T H); Toeplitz + Vandermonde + state in one Einsum (6 nodes)."""
    N = blk.ssm.N
    W = chunk_matrix(blk.ssm, T)                                              # (H 2N+T 2N+T)
    XZ = g.op("Concat", [X, g.op("Transpose", [z], perm=[0, 2, 1])], axis=2)  # (B H 2N+T)
    out = g.op("Einsum", [XZ, g.const(W, name="W")], equation="bhi,hij->bhj")  # (B H 2N+T) [delta | y]
    d, yT = g.op("Split", [out, g.ints([2 * N, T])], n_out=2, axis=2)
    g.op("Add", [X, d], out=X_out)                                            # delta form over the chunk
    return g.op("Transpose", [yT], perm=[0, 2, 1])                            # (B T H)


MIMO_CHUNK_SSM_NODES = 16  # nodes of one LRU / S5 layer in the chunk graph (_ssm_chunk_mimo)


def _ssm_chunk_mimo(g: _Builder, z: str, X: str, X_out: str, blk: BlockParams, T: int) -> str:
    """LRU / S5: z r(B T H) f32, X r(B 2P) -> y r(B T H) (16 nodes; lowering.mimo_chunk_matrices).

    B u_j for all steps in one MatMul, the recurrence over the chunk as one MatMul batched over the 2P state
    rows (the T-step causal map of the diagonal a: P (2T+2)^2 weights) on [x0 | B u_0..B u_{T-1}] and its
    [Im | Re] swap, then the readout of every updated state x_t in one MatMul over [x_t | z_t]. The two
    Transposes are 3-d ((B T+1 2P) <-> (2P B T+1)): onnxruntime's CPU Transpose of the same data as 4-d
    (modes and Re/Im on separate axes) cost 3 to 6x more. The dense alternative, one (2P + T H)^2 Gemm with
    the Toeplitz of H x H blocks c Re(C a^l B), computes the same map with 15x the weights and 6 to 10x the
    latency at H = P = 64, T = 32 (bench/mimo_chunk_latency.py, docs/mimo.md).
    """
    P = blk.ssm.N
    c = mimo_chunk_matrices(blk.ssm, T)
    U = g.op("Add", [g.op("MatMul", [z, g.const(c["Bm"], name="B")]), g.const(c["bu"], name="b")])  # (B T 2P)
    V = g.op("Concat", [g.op("Unsqueeze", [X, g.ints([1])]), U], axis=1)          # (B T+1 2P) [x0 | B u_j]
    V = g.op("Transpose", [V], perm=[2, 0, 1])                                    # (2P B T+1) rows [Re | Im]
    Vr, Vi = g.op("Split", [V, g.ints([P, P])], n_out=2, axis=0)
    V = g.op("Concat", [V, g.op("Concat", [Vi, Vr], axis=0)], axis=2)             # (2P B 2T+2) [v | swap v]
    W = g.op("MatMul", [V, g.const(c["L"], name="L")])                            # (2P B T+1) [x_t.. | delta]
    W = g.op("Transpose", [W], perm=[1, 2, 0])                                    # (B T+1 2P)
    Xs, d = g.op("Split", [W, g.ints([T, 1])], n_out=2, axis=1)                   # (B T 2P), (B 1 2P)
    g.op("Add", [X, g.op("Reshape", [d, g.ints([-1, 2 * P])])], out=X_out)        # delta form over the chunk
    XZ = g.op("Concat", [Xs, z], axis=2)                                          # (B T 2P+H)
    return g.op("Add", [g.op("MatMul", [XZ, g.const(c["R"], name="R")]), g.const(c["by"], name="b")])  # (B T H)


# ---- whole graphs --------------------------------------------------------------------------------
def state_specs(mp: ModelParams) -> list[tuple[str, list[int], str]]:
    """(suffix, shape without batch, layout) of every state, in graph order."""
    out = [(str(i), [2 * b.ssm.N],
            f"(2P,) = ({2 * b.ssm.N},): [Re x_1..x_P | Im x_1..x_P] of the layer's complex MIMO state x, shared "
            "by all channels (MimoSSM convention, updated state x_k = a x_(k-1) + B u_k); zeros = initial")
           if isinstance(b.ssm, MimoSSMParams) else
           (str(i), [mp.H, 2 * b.ssm.N],
            f"(H, 2N) = (H={mp.H}, 2N={2 * b.ssm.N}): [Re x_1..x_N | Im x_1..x_N] of the layer's complex "
            "diagonal state x (DiagonalSSM convention, updated state x_k = A x_(k-1) + B u_k); zeros = initial")
           for i, b in enumerate(mp.blocks)]
    if mp.pooling == "mean":
        out.append(("pool", [mp.d_output + 1],
                    f"(O+1,) = ({mp.d_output + 1},): [running mean of the decoder outputs (O) | steps seen (1)]; "
                    "zeros = initial"))
    return out


def _check(mp: ModelParams, target: str, opset: int) -> None:
    if target not in TARGETS:
        raise ExportError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset {opset!r} is too old; LayerNormalization needs opset >= {MIN_OPSET}")
    if opset > onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {opset} is newer than this onnx ({onnx.defs.onnx_opset_version()}); "
                          "use a lower --opset")


def _finish(g: _Builder, name: str, inputs, outputs, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgessm.export")
    model.ir_version = helper.find_min_ir_version_for(opsets)  # the oldest IR that holds this opset (older runtimes)
    return model


def _io(mp: ModelParams, lead: list) -> tuple[list, list]:
    specs = state_specs(mp)
    if mp.vocab_size > 0:
        x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64, lead)
    else:
        x = helper.make_tensor_value_info(INPUT_NAME, F32, [*lead, mp.d_input])
    inputs = [x] + [helper.make_tensor_value_info(past_state(s), F32, ["batch", *shape]) for s, shape, _ in specs]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, F32, [*lead, mp.d_output])]
    outputs += [helper.make_tensor_value_info(present_state(s), F32, ["batch", *shape]) for s, shape, _ in specs]
    return inputs, outputs


def _encode(g: _Builder, mp: ModelParams, rank2: bool) -> str:
    g.section = "encoder"
    if mp.embedding is not None:
        return g.op("Gather", [g.w(mp.embedding), INPUT_NAME], axis=0)  # (B H) | (B T H)
    if mp.encoder is None:  # config.encoder='none': x is already the H channels
        return g.to_act(INPUT_NAME)
    return g.linear(g.to_act(INPUT_NAME), mp.encoder, rank2)


def _blocks(g: _Builder, mp: ModelParams, h: str, ssm, rank2: bool, split_glu: bool = False) -> str:
    for i, blk in enumerate(mp.blocks):
        g.section = f"block.{i}"
        z = g.layernorm(h, blk.norm) if blk.prenorm else h
        g.section = f"block.{i}/ssm"
        y = ssm(g, g.to_f32(z), past_state(i), present_state(i), blk)  # float32 recurrence
        y = g.to_act(y)
        g.section = f"block.{i}"
        z = g.activation(y, blk.activation)
        if split_glu and rank2 and blk.mixing == "glu":
            z = g.glu_two_gemms(z, blk, mp.H)
        else:
            z = g.mixing(z, blk, rank2, mp.H)
        h = g.op("Add", [h, z]) if blk.residual else z
        if not blk.prenorm:
            h = g.layernorm(h, blk.norm)
    return h



def _decode(g: _Builder, mp: ModelParams, h: str, rank2: bool) -> str:
    """Final norm and decoder; the last node writes "y" unless mean pooling follows. Returns a float32 tensor."""
    out = None if mp.pooling == "mean" else OUTPUT_NAME
    v = g.layernorm(h, mp.norm_f)
    if mp.decoder is None:  # config.decoder='none': the blocks' channels are the output
        if g.fp16:
            return g.to_f32(v, out=out)
        return g.op("Identity", [v], out=out) if out is not None else v
    if g.fp16:
        return g.to_f32(g.linear(v, mp.decoder, rank2), out=out)
    return g.linear(v, mp.decoder, rank2, out=out)


def build_step_graph(mp: ModelParams, target: str = "cpu", fp16: bool = False, opset: int = MIN_OPSET
                     ) -> onnx.ModelProto:
    """The one-step graph (module docstring); metadata is added by the caller."""
    _check(mp, target, opset)
    g = _Builder(fp16, opset)
    ssm = _per_block(_ssm_step_elementwise if target == "cpu" else _ssm_step_matrix)
    h = _blocks(g, mp, _encode(g, mp, rank2=True), ssm, rank2=True, split_glu=target == "cpu")  # (B H)
    g.section = "head"
    y = _decode(g, mp, h, rank2=True)                                         # (B O) float32
    if mp.pooling == "mean":
        g.section = "pool"
        m, c = g.op("Split", [past_state(POOL_STATE), g.ints([mp.d_output, 1])], n_out=2, axis=1)  # (B O), (B 1)
        c1 = g.op("Add", [c, g.const(1.0)])
        y = g.op("Add", [m, g.op("Div", [g.op("Sub", [y, m]), c1])], out=OUTPUT_NAME)  # running mean (SSMModel.step)
        g.op("Concat", [y, c1], out=present_state(POOL_STATE), axis=1)
    inputs, outputs = _io(mp, ["batch"])
    return _finish(g, f"edgessm_step_{target}", inputs, outputs, opset)


def build_chunk_graph(mp: ModelParams, T: int, fp16: bool = False, opset: int = MIN_OPSET,
                      target: str = "cpu") -> onnx.ModelProto:
    """The T-step chunk graph: the same states; an S4D / DSS layer's SSM as one (2N+T)-square contraction per
    channel, an LRU / S5 layer's as one (2T+2)-square contraction per mode between two MatMuls."""
    _check(mp, target, opset)
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ExportError(f"chunk length {T!r} must be a positive integer")
    T = int(T)
    g = _Builder(fp16, opset)

    def ssm(g, z, X, X_out, blk):
        if isinstance(blk.ssm, MimoSSMParams):
            return _ssm_chunk_mimo(g, z, X, X_out, blk, T)
        return _ssm_chunk(g, z, X, X_out, blk, T)

    h = _blocks(g, mp, _encode(g, mp, rank2=False), ssm, rank2=False)        # (B T H)
    g.section = "head"
    y = _decode(g, mp, h, rank2=False)                                        # (B T O) float32
    O = mp.d_output
    if mp.pooling == "mean":
        # closed form of T running-mean updates: m_t = m0 + sum_{j<=t} (y_j - m0) / (c0 + t + 1)
        g.section = "pool"
        m, c = g.op("Split", [past_state(POOL_STATE), g.ints([O, 1])], n_out=2, axis=1)  # (B O), (B 1)
        mu = g.op("Unsqueeze", [m, g.ints([1])])                                   # (B 1 O)
        cs = g.op("MatMul", [g.const(np.tril(np.ones((T, T)))), g.op("Sub", [y, mu])])  # (B T O) causal sums
        cnt = g.op("Add", [g.op("Unsqueeze", [c, g.ints([1])]), g.const(np.arange(1, T + 1)[:, None])])  # (B T 1)
        y = g.op("Add", [mu, g.op("Div", [cs, cnt])], out=OUTPUT_NAME)                    # (B T O)
        last = g.op("Gather", [y, g.const(T - 1, np.int64, "i")], axis=1)        # (B O)
        g.op("Concat", [last, g.op("Add", [c, g.const(float(T))])], out=present_state(POOL_STATE), axis=1)
    inputs, outputs = _io(mp, ["batch", T])
    return _finish(g, f"edgessm_chunk{T}", inputs, outputs, opset)


def node_counts(model: onnx.ModelProto) -> dict:
    """Nodes per section: {"encoder", "blocks": [per block incl. SSM], "ssm": [per layer], "head", "pool", "total"}."""
    by: dict[str, int] = {}
    for n in model.graph.node:
        sec = n.name.split("/")[0] if "/" in n.name else "other"
        sub = n.name.rsplit("/", 1)[0]
        by[sec] = by.get(sec, 0) + 1
        if sub.endswith("/ssm"):
            by[sub] = by.get(sub, 0) + 1
    n_blocks = sum(1 for k in by if k.startswith("block.") and "/" not in k)
    blocks = [by.get(f"block.{i}", 0) for i in range(n_blocks)]
    out = {"encoder": by.get("encoder", 0), "blocks": blocks,
           "ssm": [by.get(f"block.{i}/ssm", 0) for i in range(n_blocks)],
           "head": by.get("head", 0), "pool": by.get("pool", 0), "total": len(model.graph.node)}
    if by.get("other"):
        out["other"] = by["other"]
    return out
