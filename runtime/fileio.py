"""The files every command reads and writes: one input check, one output-path guard, one atomic writer.

Standard library only: the on-device runtime (numpy + onnxruntime) and the workstation library
(``edgessm``, ``edgessm.export``) share this one module, so the three promises hold the same way
everywhere:

- an input is a regular file (a FIFO would block the reader forever, a device never ends),
  refused before it is opened;
- no output path resolves to an input of the same command or to another of its outputs
  (symlinks resolved, hard links caught by ``os.path.samefile``): nothing the user gave is overwritten;
- every output is written to a temp file in the target folder and renamed into place, so a
  failure leaves nothing half-written; the temp file is created with mode 0666 and the process
  umask applies, as it does for any other tool (``tempfile.mkstemp`` would fix it at 0600).

Each function takes the error class to raise, so the runtime raises its own ``RuntimeInputError``
and the library its ``EdgeSSMError`` subclasses, both printed as one line with exit code 2.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

__all__ = ["regular_file", "check_outputs", "check_writable", "atomic_write", "iter_lines", "silence_stdout"]

PathLike = Union[str, os.PathLike]


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def regular_file(path: PathLike, what: str, error: type[Exception], hint: str = "") -> Path:
    """``path`` if it names an existing regular file (symlinks followed); else ``error`` with one line.

    Checked with stat before anything opens the file: opening a FIFO blocks until a writer appears.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} {p} not found{'; ' + hint if hint else ''}") from None
    except OSError as e:
        raise error(f"{what} {p} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p} is {_kind(st.st_mode)}, not a file; copy the data into a regular file"
                    + (f" ({hint})" if hint else "")) from None
    return p


def _same(a: str, b: str) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or one inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_outputs(inputs: Mapping[str, Optional[PathLike]], outputs: Mapping[str, Optional[PathLike]],
                  error: type[Exception]) -> None:
    """Refuse an output that is an input, or two outputs that are one file.

    ``inputs`` / ``outputs``: {label shown to the user (e.g. "-o", "--report", "checkpoint"): path or None}.
    Derived outputs (a chunk graph next to the step graph) belong in ``outputs`` too.
    """
    ins = [(k, os.fspath(v)) for k, v in inputs.items() if v is not None and os.fspath(v) != "-"]
    outs = [(k, os.fspath(v)) for k, v in outputs.items() if v is not None and os.fspath(v) != "-"]
    for i, (label, out) in enumerate(outs):
        for in_label, src in ins:
            if _same(out, src):
                raise error(f"{label} {out} is the {in_label} {src}; inputs are never overwritten: "
                            f"choose another path for {label}")
        for other_label, other in outs[:i]:
            if _same(out, other):
                raise error(f"{label} {out} and {other_label} {other} are the same file; give each output its own path")


def check_writable(path: PathLike, what: str, error: type[Exception]) -> Path:
    """Fail early (before any work) when ``path`` cannot be written by :func:`atomic_write`."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise error(f"cannot write {what} {p}: folder {parent} does not exist; create it first")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise error(f"cannot write {what} {p}: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise error(f"cannot write {what} {p}: it is {_kind(st.st_mode)}; give a file name")
    real_parent = Path(os.path.realpath(p)).parent
    if not os.access(real_parent, os.W_OK | os.X_OK):
        raise error(f"cannot write {what} {p}: folder {real_parent} is not writable; choose a writable path")
    return p


class atomic_write:
    """Context manager yielding a temp path next to ``path``; renamed onto ``path`` only on success.

    A symlinked ``path`` is written through (its target is replaced, the link stays). The temp file
    is opened with O_CREAT | O_EXCL and mode 0666, so the final mode is 0666 & ~umask.
    """

    def __init__(self, path: PathLike, what: str = "output", error: type[Exception] = OSError):
        self.path = Path(path)
        self.what = what
        self.error = error
        self.tmp: Optional[Path] = None

    def __enter__(self) -> Path:
        check_writable(self.path, self.what, self.error)
        target = Path(os.path.realpath(self.path))
        for _ in range(100):
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            except FileExistsError:
                continue
            except OSError as e:
                raise self.error(f"cannot write {self.what} {self.path}: {e.strerror}; choose a writable path") from None
            os.close(fd)
            self.tmp, self.target = tmp, target
            return tmp
        raise self.error(f"cannot write {self.what} {self.path}: no free temporary name in {target.parent}")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is None:  # __enter__ failed: nothing was created
            return
        if exc_type is None:
            try:
                os.replace(self.tmp, self.target)
            except OSError as e:
                self.tmp.unlink(missing_ok=True)
                raise self.error(f"cannot write {self.what} {self.path}: {e.strerror}") from None
        else:
            self.tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, self.error):
                # ENOSPC, EIO...: name the file the user asked for, never the temp file
                raise self.error(f"cannot write {self.what} {self.path}: {exc.strerror or exc}") from None


def iter_lines(f, limit: int) -> Iterator[str]:
    """Lines of a text stream, each at most ``limit`` characters; a longer one raises ValueError.

    ``readline(limit)`` never holds more than ``limit`` characters, so a stream without newlines
    costs bounded memory. readline (not iteration) returns as soon as a line is there.
    """
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith("\n"):
            raise ValueError(f"a line longer than {limit} characters")
        yield line


def silence_stdout() -> None:
    """Point stdout at /dev/null so the flush at exit does not raise again on a closed or full stream
    (after a broken pipe or ENOSPC on stdout, both CLIs stop quietly)."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
