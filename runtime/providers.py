"""Execution-provider selection and onnxruntime session creation.

``provider`` is "auto" (TensorRT -> CUDA -> CPU, the first that is available), "tensorrt",
"cuda", "cpu", or an explicit list of provider names / aliases / (name, options) pairs.
onnxruntime falls back to the CPU provider *silently* when a GPU provider fails to load
(missing CUDA/cuDNN/TensorRT libraries, no GPU): after creating the session we compare what
was asked for with ``session.get_providers()`` and raise ``RuntimeProviderError`` for an
explicit request; "auto" accepts the fallback and records it.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from .errors import RuntimeInputError, RuntimeModelError, RuntimeProviderError

__all__ = ["ProviderPlan", "plan_providers", "create_session", "ALIASES", "TRT", "CUDA", "CPU"]

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ALIASES = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "cpu": CPU}
_GPU = (TRT, CUDA)

ProviderArg = Union[str, Sequence[Union[str, tuple]]]


def _ort():
    import onnxruntime  # lazy: importing the runtime package stays cheap
    return onnxruntime


@dataclass
class ProviderPlan:
    """The provider list handed to onnxruntime and what must hold afterwards."""

    providers: list[tuple[str, dict[str, Any]]]
    requested: str                      # what the caller asked for, for messages
    strict: bool                        # an explicit request: a fallback is an error

    @property
    def primary(self) -> str:
        return self.providers[0][0]


# The CUDA provider's `use_tf32` option (onnxruntime >= 1.14 by our reading of its history; older builds
# reject unknown options, so it is only passed from there on). Its default is on: MatMul/Gemm on Ampere and
# newer GPUs then round float32 operands to 10 mantissa bits: on an H100 a 4 x 128 x 16 step graph's
# outputs were 1.4e-3 of max |y| from the float64 oracle (7.3e-7 with it off), against the export bar of
# 1e-4 (docs/jetson.md).
MIN_ORT_USE_TF32 = (1, 14)


def _version(v: str) -> tuple[int, ...]:
    """'1.31.1' -> (1, 31); tolerant of suffixes like '1.18.0+cu12' or '1.16.0rc1'."""
    parts = []
    for piece in v.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _provider_options(name: str, *, device_id: int, cuda_graph: bool, trt_fp16: bool,
                      trt_cache_dir: Optional[str], tf32: bool = False) -> dict[str, Any]:
    if name == TRT:
        opts: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": bool(trt_fp16)}
        if trt_cache_dir:
            os.makedirs(trt_cache_dir, exist_ok=True)
            # The cached engine is only valid for this model, ORT, TensorRT version and GPU: docs/jetson.md
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
        return opts
    if name == CUDA:
        opts = {"device_id": device_id}
        if cuda_graph:
            opts["enable_cuda_graph"] = "1"
        if _version(_ort().__version__) >= MIN_ORT_USE_TF32:
            opts["use_tf32"] = "1" if tf32 else "0"
        return opts
    return {}


def plan_providers(provider: ProviderArg = "auto", *, available: Optional[Sequence[str]] = None,
                   device_id: int = 0, cuda_graph: bool = False, trt_fp16: bool = True,
                   trt_cache_dir: Optional[str] = None, tf32: bool = False) -> ProviderPlan:
    """Turn the user's provider choice into onnxruntime's ``providers=`` list."""
    if not isinstance(provider, (str, list, tuple)):
        raise RuntimeInputError(f"provider {provider!r} must be 'auto', 'tensorrt', 'cuda', 'cpu' or a list of names")
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise RuntimeInputError(f"device_id {device_id!r} must be a non-negative integer (the GPU index)")
    if available is None:
        available = _ort().get_available_providers()
    available = list(available)
    kw = dict(device_id=device_id, cuda_graph=cuda_graph, trt_fp16=trt_fp16, trt_cache_dir=trt_cache_dir, tf32=tf32)
    if isinstance(provider, str) and provider.lower() == "auto":
        order = [p for p in (TRT, CUDA, CPU) if p in available]
        if cuda_graph and TRT in order:
            # Double-buffered CUDA graphs need two graph ids (run option gpu_graph_id), which the CUDA
            # provider supports; the TensorRT provider keeps one graph, so auto uses CUDA here.
            order.remove(TRT)
        if CPU not in order:
            order.append(CPU)
        return ProviderPlan([(p, _provider_options(p, **kw)) for p in order], "auto", strict=False)

    items = [provider] if isinstance(provider, str) else list(provider)
    if not items:
        raise RuntimeInputError("provider list is empty; use 'auto', 'tensorrt', 'cuda', 'cpu' or a list of names")
    plan: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        opts_given: Optional[dict] = None
        if isinstance(item, tuple):
            item, opts_given = item
        name = ALIASES.get(str(item).lower(), str(item))
        if name not in (TRT, CUDA, CPU) and not name.endswith("ExecutionProvider"):
            raise RuntimeInputError(f"unknown provider {item!r}; use auto, tensorrt, cuda, cpu or a full "
                                    f"onnxruntime provider name (available here: {', '.join(available)})")
        if name not in available:
            raise RuntimeProviderError(f"provider {name} is not in this onnxruntime build (available: "
                                       f"{', '.join(available)}); install onnxruntime-gpu or use --provider cpu")
        opts = _provider_options(name, **kw)
        opts.update(opts_given or {})
        plan.append((name, opts))
    names = [n for n, _ in plan]
    if isinstance(provider, str):
        # a single named GPU provider: let unsupported nodes go to CUDA (for TensorRT) and CPU, as ORT intends
        if names[0] == TRT and CUDA in available:
            plan.append((CUDA, _provider_options(CUDA, **kw)))
        if names[0] != CPU:
            plan.append((CPU, {}))
    if cuda_graph and plan[0][0] != CUDA:
        raise RuntimeProviderError(f"cuda_graph needs the CUDA provider first (double-buffered graphs use two "
                                   f"gpu_graph_id values, a CUDA-provider feature); got {plan[0][0]}: use provider='cuda'")
    return ProviderPlan(plan, str(provider) if isinstance(provider, str) else ",".join(names), strict=True)


GRAPH_OPTIMIZATIONS = ("all", "none")


def session_options(threads: Optional[int] = None, log_level: int = 3, optimization: str = "all"):
    """Latency-oriented options: all graph optimisations (optimization="none": none, the graph as written),
    sequential execution, 1 thread by default."""
    ort = _ort()
    so = ort.SessionOptions()
    if optimization not in GRAPH_OPTIMIZATIONS:
        raise RuntimeInputError(f"graph optimization {optimization!r} is not one of {', '.join(GRAPH_OPTIMIZATIONS)}")
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimization == "all"
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise RuntimeInputError(f"threads must be a positive integer, got {threads!r}")
    so.intra_op_num_threads = threads or 1  # one step is microseconds of work: extra threads only add wake-up latency
    so.inter_op_num_threads = 1
    so.log_severity_level = log_level
    return so


@contextlib.contextmanager
def _captured_stderr_fd():
    """onnxruntime's C++ logger writes provider load failures (coloured, several lines) straight to fd 2.

    Capture fd 2 for the duration of session creation: the user sees one line from us, with the reason
    taken from that log, and nothing else. Yields a callable returning the captured text.
    """
    import tempfile

    fd = 2  # the C++ logger writes to fd 2 whatever sys.stderr is
    try:
        saved = os.dup(fd)
    except OSError:  # no fd 2 (a daemon): nothing reaches a user anyway
        yield lambda: ""
        return
    with tempfile.TemporaryFile(mode="w+b") as buf:
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        os.dup2(buf.fileno(), fd)
        text = [""]
        try:
            yield lambda: text[0]
        finally:
            os.dup2(saved, fd)
            os.close(saved)
        buf.seek(0)
        text[0] = buf.read(1 << 16).decode("utf-8", "replace")


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE_LOC = re.compile(r"/\S+\.(?:cc|cpp|h):\d+ ")                       # /onnxruntime_src/...model.cc:256
_CXX_SIG = re.compile(r"(?:(?:void|bool|int|auto|static) )?[\w:~<>]+::[\w~<>]+\((?:[^()]|\([^()]*\))*\)(?: const)? ")  # ns::Fn(args)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean_ort_message(msg: str, limit: int = 400) -> str:
    """onnxruntime's exception text without its prefix, source locations and C++ signatures, on one line.

    The cause ("Unsupported model IR version: 14, max supported IR version: 13") is at the end of a
    message whose first 300 characters are a file path and a function signature: keep the end.
    """
    text = " ".join(_ANSI.sub("", str(msg)).split())
    text = _ORT_PREFIX.sub("", text)
    text = _SOURCE_LOC.sub(" ", text)
    text = _CXX_SIG.sub("", text)
    if len(text) > limit:
        text = text[: limit // 4] + " ... " + text[-(limit - limit // 4 - 5):]
    return text


def _load_hint(text: str) -> str:
    ver = _ort().__version__
    if "IR version" in text or re.search(r"[Oo]pset \d+", text):
        return (f"; the graph is newer than this onnxruntime {ver}: upgrade onnxruntime on this device "
                "or export with an older --opset (docs/jetson.md)")
    return ""


def _provider_failure(log: str) -> str:
    """The reason in onnxruntime's provider-load log: the missing library and the versions it needs."""
    text = " ".join(_ANSI.sub("", log).split())
    parts = []
    m = re.search(r"with error: (\S+: cannot open shared object file)", text)
    if m:
        parts.append(m.group(1))
    m = re.search(r"Require ([^.]*\d\.\*(?: and [^.]*\d\.\*)?)", text)
    if m:
        parts.append(f"this onnxruntime build needs {m.group(1)}")
    if not parts and "Please install" in text:
        parts.append(_fallback_reason(text))
    return "; ".join(parts)


def create_session(model: Union[str, bytes], plan: ProviderPlan, so, label: str = "model"):
    """Create the InferenceSession; turn load failures into one-line RuntimeModelError and check fallback.

    Returns (session, fallback_note or None). The note is short: for "auto" it says that the GPU
    providers could not load; a strict request that fell back is an error with the reason.
    """
    ort = _ort()
    if isinstance(model, (str, os.PathLike)):
        model = os.fspath(model)
        if not os.path.exists(model):
            raise RuntimeModelError(f"model file not found: {model}")
        if not os.path.isfile(model):
            raise RuntimeModelError(f"model path is not a file: {model}")
    captured = io.StringIO()
    try:
        # onnxruntime prints its provider-fallback notice to stdout (keep stdout clean for piped outputs)
        # and its C++ log to fd 2: both are read for the reason, neither reaches the user as is
        with _captured_stderr_fd() as log, contextlib.redirect_stdout(captured):
            sess = ort.InferenceSession(model, sess_options=so, providers=plan.providers)
    except Exception as e:  # onnxruntime raises its own (pybind) exception types
        msg = " ".join(str(e).split())
        kind = type(e).__name__
        if "Protobuf parsing failed" in msg or "INVALID_PROTOBUF" in kind or "InvalidProtobuf" in kind:
            raise RuntimeModelError(f"{label}: not an ONNX model (protobuf parsing failed)") from None
        text = clean_ort_message(msg)
        raise RuntimeModelError(f"{label}: onnxruntime could not load it: {text}{_load_hint(text)}") from None
    used = sess.get_providers()
    fallback = None
    if plan.primary not in used:
        reason = _provider_failure(log() + " " + captured.getvalue())
        if plan.strict:
            raise RuntimeProviderError(
                f"requested {plan.primary} but onnxruntime could not load it" + (f" ({reason})" if reason else "")
                + "; install the GPU libraries (CUDA, cuDNN, TensorRT) that match this onnxruntime-gpu build, "
                "or use --provider cpu")
        gpus = [p for p, _ in plan.providers if p in _GPU and p not in used]
        fallback = f"auto: {', '.join(gpus)} not loadable here, running {used[0]}"
    return sess, fallback


def _fallback_reason(printed: str) -> str:
    """The useful part of onnxruntime's printed provider-fallback notice, on one line."""
    text = " ".join(printed.split())
    k = text.find("Please install")
    if k >= 0:
        text = text[k:]
    return text.split(" when using ")[0][:200]
