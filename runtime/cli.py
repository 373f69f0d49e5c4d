"""The on-device script: ``python -m edgessm.runtime MODEL.onnx [--input X] [--output Y] [--bench N]``.

argparse only (no click on a device). Inputs: ``.npy`` float (L, d_input) or (B, L, d_input), int
tokens (L,) or (B, L); ``.csv`` or ``-`` (stdin): one step per line, ``batch * d_input`` numbers
separated by commas or whitespace; stdin is streamed, each output line printed and flushed as it
comes. Outputs: ``.npy``, ``.csv`` or ``-`` (stdout, one line per step), written to a temporary
file and renamed, so an error never leaves a half-written output. Errors: one line on stderr,
exit code 2, no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Iterator, Optional

import numpy as np

from . import fileio
from .errors import EdgeSSMRuntimeError, RuntimeInputError
from .latency import measure_floor, measure_latency
from .session import StreamingSession

__all__ = ["main", "build_parser"]

_SPLIT = re.compile(r"[,\s]+")
MAX_BATCH = 1 << 20    # streams; the session also checks the bytes its buffers would take
MAX_BENCH = 10_000_000  # timed steps: each keeps one float of timing


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (not the usage block) and exit code 2."""

    def error(self, message: str):  # noqa: D401 (argparse's hook)
        self.exit(2, f"error: {' '.join(message.split())}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m edgessm.runtime",
        description="Run an edgessm ONNX step graph one time step per call (streaming), or benchmark it.")
    ap.add_argument("model", help="the step graph (.onnx)")
    io = ap.add_argument_group("data")
    io.add_argument("-i", "--input", help=".npy, .csv, or - for stdin (one step per line, streamed)")
    io.add_argument("-o", "--output", default="-", help=".npy, .csv, or - for stdout (default)")
    io.add_argument("--chunk", metavar="PATH", help="chunk graph of the same model: whole chunks of a file input use it")
    io.add_argument("--batch", type=int, help="streams per step for .csv/stdin input (each line holds batch * d_input "
                    "numbers); .npy input takes it from the array")
    io.add_argument("--check-finite", action="store_true", help=argparse.SUPPRESS)  # the default since 0.1: kept for old scripts
    io.add_argument("--allow-nonfinite", action="store_true",
                    help="feed NaN/Inf inputs to the graph instead of stopping (by default each step is checked: one "
                         "NaN poisons the state of its stream for every later step)")
    rt = ap.add_argument_group("execution")
    rt.add_argument("--provider", default="auto",
                    help="auto (TensorRT > CUDA > CPU), tensorrt, cuda, cpu, or a comma-separated provider list")
    rt.add_argument("--threads", type=int, help="CPU provider threads (default 1: lowest per-step latency)")
    rt.add_argument("--cuda-graph", action="store_true", help="capture the step as CUDA graphs (CUDA provider)")
    rt.add_argument("--device-id", type=int, default=0)
    rt.add_argument("--trt-cache", metavar="DIR", help="TensorRT engine cache folder (rebuild after any model, "
                    "onnxruntime, TensorRT or GPU change)")
    rt.add_argument("--no-trt-fp16", action="store_true", help="TensorRT in fp32")
    rt.add_argument("--tf32", action="store_true", help="CUDA provider: float32 MatMul/Gemm in TF32 on Ampere+ GPUs "
                    "(~1e-3 relative error; off by default)")
    rt.add_argument("--no-io-binding", action="store_true", help="plain session.run with host states (debugging)")
    rt.add_argument("--engine", choices=("auto", "fused", "onnxruntime"), default="auto",
                    help="auto: the fused C step (compiled here, checked against onnxruntime at start) where it runs, "
                    "else onnxruntime; --info says which runs and why (env EDGESSM_ENGINE overrides auto)")
    b = ap.add_argument_group("benchmark")
    b.add_argument("--bench", type=int, metavar="N", help="time N steps after warm-up: p50/p90/p99 latency, steps/s, "
                   "and the floor of a one-node graph on the same provider and IO path")
    b.add_argument("--warmup", type=int, help="untimed steps before timing (default: N/10, 20..200)")
    b.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    ap.add_argument("--info", action="store_true", help="print the model's inputs, states, metadata and providers")
    ap.add_argument("--json", action="store_true", help="machine-readable output (bench report, info, output lines)")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = _main(args)
        sys.stdout.flush()  # a full or closed stdout fails here, inside the handlers, not at interpreter exit
        return rc
    except EdgeSSMRuntimeError as e:
        return _fail(str(e))
    except BrokenPipeError:  # the reader went away (| head): stop quietly. Before OSError, its base class
        fileio.silence_stdout()
        return 0
    except OSError as e:
        fileio.silence_stdout()  # a full or closed stdout must not raise again at exit
        return _fail(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else
                     f"{e.strerror or e} (writing the output)")
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # onnxruntime's own errors at run time: one line, not a traceback
        if type(e).__module__.startswith("onnxruntime"):
            from .providers import clean_ort_message

            return _fail("onnxruntime: " + clean_ort_message(str(e)))
        raise




def _fail(msg: str) -> int:
    print(f"error: {' '.join(msg.split())}", file=sys.stderr)
    return 2


def _main(args) -> int:
    if args.input is None and args.bench is None and not args.info:
        raise RuntimeInputError("nothing to do: give --input FILE|-, --bench N or --info")
    if args.bench is not None and args.bench < 1:
        raise RuntimeInputError(f"--bench N needs N >= 1, got {args.bench}")
    for name, lo, hi in (("batch", 1, MAX_BATCH), ("warmup", 0, MAX_BENCH), ("bench", 1, MAX_BENCH),
                         ("threads", 1, 1024), ("device_id", 0, 1024)):
        v = getattr(args, name)
        if v is not None and not lo <= v <= hi:
            raise RuntimeInputError(f"--{name.replace('_', '-')} must be an integer in [{lo}, {hi}], got {v}")
    out_kind = _output_kind(args.output) if args.input is not None else None
    fileio.check_outputs({"model": args.model, "--chunk graph": args.chunk, "--input": args.input},
                         {"--output": args.output if out_kind not in (None, "-") else None}, RuntimeInputError)

    data, has_batch_axis = None, args.batch is not None
    if args.input not in (None, "-") and args.input.lower().endswith(".npy"):
        data, has_batch_axis = _read_npy(args.input)
        if args.batch is not None and args.batch != data.shape[0]:
            raise RuntimeInputError(f"--batch {args.batch} but {args.input} holds {data.shape[0]} streams "
                                    f"(shape {data.shape}); drop --batch")
    batch = data.shape[0] if data is not None else (args.batch or 1)

    provider = args.provider if "," not in args.provider else [p.strip() for p in args.provider.split(",") if p.strip()]
    options = dict(provider=provider, threads=args.threads, cuda_graph=args.cuda_graph, trt_fp16=not args.no_trt_fp16,
                   trt_cache_dir=args.trt_cache, chunk_path=args.chunk, device_id=args.device_id,
                   io_binding=not args.no_io_binding, check_finite=not args.allow_nonfinite, tf32=args.tf32,
                   engine=args.engine)
    sess = StreamingSession(args.model, batch=batch, **options)
    if data is not None:
        data, has_batch_axis = _as_model_input(data, has_batch_axis, sess, args.input)
        if data.shape[0] != sess.batch:  # integer features read as (B, L) tokens at first: one stream after all
            sess = StreamingSession(args.model, batch=data.shape[0], **options)
    report_to = sys.stderr if (args.input is not None and out_kind == "-") else sys.stdout

    if args.info:
        _print_info(sess, args.json, report_to)
    if args.bench is not None:
        _bench(sess, args, report_to)
        sess.reset()
    if args.input is None:
        return 0

    if data is None and args.input != "-":
        data = _read_text(args.input, sess)
    if data is not None:
        ys = sess.run(data)  # (B, L, d_output)
        _write(args.output, out_kind, ys, has_batch_axis, args.json)
        if out_kind != "-":
            _summary(args, sess, ys)
        return 0
    return _stream_stdin(sess, args, out_kind, has_batch_axis)


# ------------------------------------------------------------------ input
def _read_npy(path: str) -> tuple[np.ndarray, bool]:
    """(B, L, d) floats / (B, L) tokens, and whether the file had the batch axis."""
    arr = _load_npy(path)
    if arr.dtype.kind in "iu":  # token ids: (L,) or (B, L)
        if arr.ndim not in (1, 2):
            raise RuntimeInputError(f"{path}: token ids must have shape (L,) or (B, L), got {arr.shape}")
        return (arr[None] if arr.ndim == 1 else arr), arr.ndim == 2
    if arr.dtype.kind != "f":
        raise RuntimeInputError(f"{path}: expected float features or integer token ids, got {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise RuntimeInputError(f"{path}: features must have shape (L, d_input) or (B, L, d_input), got {arr.shape}")
    return (arr[None] if arr.ndim == 2 else arr), arr.ndim == 3


def _load_npy(path: str) -> np.ndarray:
    """np.load after checking the header against the file: a header may claim 1e12 elements in 100 bytes."""
    fileio.regular_file(path, "--input", RuntimeInputError)
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0(f))
            offset = f.tell()
    except (ValueError, EOFError, OSError) as e:
        raise RuntimeInputError(f"{path}: not a .npy file ({' '.join(str(e).split())[:120]}); "
                                "save it with np.save") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise RuntimeInputError(f"{path}: expected float features or integer token ids, got {dtype}")
    count = 1
    for d in shape:
        count *= int(d)
    need = count * dtype.itemsize
    if need != size - offset:
        raise RuntimeInputError(f"{path}: its header says {shape} {dtype} ({need:,} bytes) but the file holds "
                                f"{size - offset:,} bytes of data; the file is truncated or not written by np.save")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise RuntimeInputError(f"{path}: not a numeric .npy array ({' '.join(str(e).split())[:120]})") from None


def _as_model_input(data: np.ndarray, has_batch_axis: bool, sess: StreamingSession, path: str):
    """Reconcile what _read_npy guessed from the array alone with what the model takes.

    Integer arrays were read as token ids; for a float model an integer (L, d_input) or (B, L, d_input)
    array is features, and a (L,) or (B, L) one is missing the feature axis (said so with the right L).
    Returns (data (B, L, ...), has_batch_axis).
    """
    spec = sess.input
    if data.ndim < 2 or data.shape[1] == 0:
        raise RuntimeInputError(f"{path}: holds no time steps (shape {data.shape[1:] if not has_batch_axis else data.shape}); "
                                "nothing to run")
    raw = data[0] if (data.dtype.kind in "iu" and not has_batch_axis) else data
    if spec.is_tokens:
        if data.dtype.kind not in "iu":
            raise RuntimeInputError(f"{path}: the model takes int64 token ids, shape (L,) or (B, L); the file holds "
                                    f"{data.dtype} {tuple(raw.shape)}: save token ids as an integer array")
        return data, has_batch_axis
    d = spec.shape[-1] if spec.shape else 1
    if data.dtype.kind in "iu":
        if raw.ndim in (2, 3) and raw.shape[-1] == d:  # integer-valued features
            feats = raw.astype(spec.dtype)
            return (feats[None] if feats.ndim == 2 else feats), feats.ndim == 3
        L = raw.shape[-1]
        want = f"({L}, {d})" + (f" or ({raw.shape[0]}, {L}, {d})" if raw.ndim == 2 else "")
        raise RuntimeInputError(f"{path}: holds integer token ids of shape {tuple(raw.shape)}, but the model takes "
                                f"{spec.dtype.name} features, d_input={d} per step: save an array of shape {want}")
    return data, has_batch_axis


def _parse_line(line: str, where: str, sess: StreamingSession) -> Optional[np.ndarray]:
    """One step's (batch, *input_shape) array from a text line; None for a blank or # comment line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    spec = sess.input
    per = int(np.prod(spec.shape)) if spec.shape else 1
    want = sess.batch * per
    fields = [f for f in _SPLIT.split(text) if f]
    if len(fields) != want:
        what = f"batch {sess.batch} x d_input {per}" if spec.shape else f"batch {sess.batch} token ids"
        raise RuntimeInputError(f"{where}: expected {want} values ({what}), got {len(fields)}")
    try:
        vals = np.array([float(f) for f in fields])
    except ValueError:
        raise RuntimeInputError(f"{where}: not a number in {text[:60]!r}") from None
    if spec.is_tokens:
        if not np.all(vals == np.round(vals)):
            raise RuntimeInputError(f"{where}: token ids must be integers, got {text[:60]!r}")
        return vals.astype(np.int64).reshape(sess.batch)
    return vals.astype(spec.dtype).reshape(sess.batch, *spec.shape)


def _read_text(path: str, sess: StreamingSession) -> np.ndarray:
    steps = _Steps()
    fileio.regular_file(path, "--input", RuntimeInputError)
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(_lines(f, sess, path), 1):
            try:
                x = _parse_line(line, f"{path}:{n}", sess)
            except RuntimeInputError:
                if n == 1 and re.search(r"[A-Za-z_]", line) and not re.search(r"\b(nan|inf)\b", line, re.I):
                    continue  # a header row
                raise
            if x is not None:
                steps.append(x)
    if not len(steps):
        raise RuntimeInputError(f"{path}: no data rows")
    return steps.array()  # (B, L, ...)


class _Steps:
    """Per-step arrays (B, ...) gathered into one (B, L, ...) array that doubles as it fills.

    A list of small arrays costs ~100 bytes of Python objects per step: a 200 MB text file of one
    number per line held that way is ~10 GB. Here memory stays within 2x the numbers themselves.
    """

    def __init__(self):
        self._buf: Optional[np.ndarray] = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, x: np.ndarray) -> None:
        if self._buf is None:
            self._buf = np.empty((x.shape[0], 64, *x.shape[1:]), x.dtype)
        elif self._n == self._buf.shape[1]:
            grown = np.empty((self._buf.shape[0], 2 * self._n, *self._buf.shape[2:]), self._buf.dtype)
            grown[:, :self._n] = self._buf
            self._buf = grown
        self._buf[:, self._n] = x
        self._n += 1

    def array(self) -> np.ndarray:
        return self._buf[:, :self._n]


# ------------------------------------------------------------------ output
def _output_kind(path: str) -> str:
    if path == "-":
        return "-"
    low = path.lower()
    for ext in (".npy", ".csv"):
        if low.endswith(ext):  # checked before any input is read: a stdin run must not fail at its end
            fileio.check_writable(path, "--output", RuntimeInputError)
            return ext
    raise RuntimeInputError(f"--output {path}: use a .npy or .csv file, or - for stdout")


def _fmt_row(y_t: np.ndarray) -> str:
    return ",".join(f"{v:.9g}" for v in np.asarray(y_t, np.float64).ravel())  # 9 digits: float32 round trip


def _json_row(t: int, y_t: np.ndarray) -> str:
    return json.dumps({"t": t, "y": np.asarray(y_t, np.float64).tolist()})


def _write(path: str, kind: str, ys: np.ndarray, has_batch_axis: bool, as_json: bool) -> None:
    """ys (B, L, d_output): write atomically (temp file in the same folder, then rename)."""
    if kind == "-":
        out = sys.stdout
        for t in range(ys.shape[1]):
            out.write((_json_row(t, ys[:, t]) if as_json else _fmt_row(ys[:, t])) + "\n")
        out.flush()
        return
    with fileio.atomic_write(path, "--output", RuntimeInputError) as tmp:
        with open(tmp, "wb" if kind == ".npy" else "w") as f:
            if kind == ".npy":
                np.save(f, ys if has_batch_axis else ys[0])
            else:
                for t in range(ys.shape[1]):
                    f.write(_fmt_row(ys[:, t]) + "\n")


def _stream_stdin(sess: StreamingSession, args, kind: str, has_batch_axis: bool) -> int:
    """One step per stdin line. To stdout: print and flush each output as it comes (live sensors)."""
    ys = _Steps()
    t = 0
    for n, line in enumerate(_lines(sys.stdin, sess, "stdin"), 1):
        x = _parse_line(line, f"stdin line {n}", sess)
        if x is None:
            continue
        y = sess.step(x)
        if kind == "-":
            try:
                sys.stdout.write((_json_row(t, y) if args.json else _fmt_row(y)) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:  # the reader went away (| head): stop quietly
                fileio.silence_stdout()
                return 0
        else:
            ys.append(y)
        t += 1
    if kind != "-":
        if not len(ys):
            raise RuntimeInputError("stdin: no data lines")
        all_ys = ys.array()
        _write(args.output, kind, all_ys, has_batch_axis, args.json)
        _summary(args, sess, all_ys)
    return 0


def _line_limit(sess: StreamingSession) -> int:
    """Characters one line may hold: 64 per value (far beyond any printed float) plus room for a comment."""
    per = int(np.prod(sess.input.shape)) if sess.input.shape else 1
    return 64 * sess.batch * per + 4096


def _lines(f, sess: StreamingSession, where: str) -> Iterator[str]:
    """Lines of bounded length (2 GB without a newline must not be read into memory), decoded as UTF-8.

    readline returns as soon as a line is there (a for loop may read ahead on some streams).
    """
    limit = _line_limit(sess)
    n = 0
    try:
        for line in fileio.iter_lines(f, limit):
            n += 1
            yield line
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        if isinstance(e, UnicodeDecodeError):
            raise RuntimeInputError(f"{where} line {n + 1}: not UTF-8 text ({e.reason} at byte {e.start}); "
                                    "write numbers as plain text, or use a .npy file") from None
        raise RuntimeInputError(f"{where} line {n + 1}: {e} (batch {sess.batch} needs far fewer); one step per "
                                "line, values separated by commas or spaces") from None


def _summary(args, sess: StreamingSession, ys: np.ndarray) -> None:
    info = {"output": args.output, "steps": int(ys.shape[1]), "batch": sess.batch, "providers": sess.providers}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"wrote {args.output}: {ys.shape[1]} steps x {sess.batch} streams on {sess.providers[0]}", file=sys.stderr)


# ------------------------------------------------------------------ info / bench
def _print_info(sess: StreamingSession, as_json: bool, out) -> None:
    spec = sess.spec
    info = {
        "model": sess.model_label, "providers": sess.providers, "fallback": sess.fallback, "batch": sess.batch,
        "engine": sess.engine, "engine_note": sess.engine_note,
        "input": {"name": spec.input.name, "dtype": spec.input.dtype.name, "shape": list(spec.input.shape)},
        "output": {"name": spec.output.name, "dtype": spec.output.dtype.name, "shape": list(spec.output.shape)},
        "states": [{"input": s.input, "output": s.output, "shape": list(s.shape), "layout": s.layout} for s in spec.states],
        "chunk": sess.chunk_spec.chunk if sess.chunk_spec else None,
        "metadata": spec.metadata,
    }
    if as_json:
        print(json.dumps(info, default=str), file=out)
        return
    print(f"model      {sess.model_label}", file=out)
    print(f"graph      {spec.describe()}", file=out)
    print(f"providers  {', '.join(sess.providers)}" + (f"  [{sess.fallback}]" if sess.fallback else ""), file=out)
    print(f"engine     {sess.engine}: {sess.engine_note}", file=out)
    for key in ("edgessm.task", "edgessm.precision", "edgessm.ranks", "edgessm.error_bounds", "edgessm.source_sha256"):
        if key in spec.metadata:
            print(f"{key[8:]:<10} {json.dumps(spec.metadata[key])[:200]}", file=out)


def _bench_inputs(sess: StreamingSession, k: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    spec = sess.input
    if spec.is_tokens:
        vocab = sess._vocab_size() or 1
        return [rng.integers(0, vocab, (sess.batch,)).astype(spec.dtype) for _ in range(k)]
    return [rng.standard_normal((sess.batch, *spec.shape)).astype(spec.dtype) for _ in range(k)]


def _bench(sess: StreamingSession, args, out) -> None:
    import onnxruntime
    n = args.bench
    warmup = args.warmup if args.warmup is not None else min(200, max(20, n // 10))
    step = measure_latency(sess.step, _bench_inputs(sess), n=n, warmup=warmup)
    floor = None if args.no_floor else measure_floor(sess, n=n, warmup=warmup)
    ratio = step.p50_us / floor.p50_us if floor else None
    report = {
        "model": sess.model_label, "providers": sess.providers, "fallback": sess.fallback, "device": sess.device,
        "engine": sess.engine, "engine_note": sess.engine_note,
        "batch": sess.batch, "threads": sess.threads or 1, "io_binding": sess.io_binding, "cuda_graph": sess.cuda_graph,
        "onnxruntime": onnxruntime.__version__, "n": n, "warmup": warmup,
        "step": step.as_dict(), "floor": floor.as_dict() if floor else None, "step_over_floor_p50": ratio,
    }
    if args.json:
        print(json.dumps(report), file=out)
        return
    print(f"providers  {', '.join(sess.providers)}  (batch {sess.batch}, threads {sess.threads or 1}, "
          f"{'io binding' if sess.io_binding else 'session.run'}, cuda graph {'on' if sess.cuda_graph else 'off'})"
          + (f"  [{sess.fallback}]" if sess.fallback else ""), file=out)
    print(f"engine     {sess.engine}: {sess.engine_note}", file=out)
    print(f"step       {step.line()}", file=out)
    if floor:
        print(f"floor      {floor.line()}  (one-node graph, same provider and IO path)", file=out)
        print(f"step/floor {ratio:.2f}x at p50", file=out)
