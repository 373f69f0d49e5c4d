"""Typed runtime errors, each with a one-line message naming the thing and the fix.

The runtime cannot import ``edgessm.errors`` (it must run from a plain copy of this folder
on a device without the workstation library), so it defines its own small hierarchy.
The script prints the message and exits 2, no traceback.
"""
from __future__ import annotations

__all__ = ["EdgeSSMRuntimeError", "RuntimeInputError", "RuntimeModelError", "RuntimeProviderError"]


class EdgeSSMRuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""

    exit_code = 2


class RuntimeInputError(EdgeSSMRuntimeError, ValueError):
    """A value passed to the runtime is wrong: input shape / dtype / batch, a state, a stream
    index, an option value, an input file's contents."""


class RuntimeModelError(EdgeSSMRuntimeError):
    """The model file is missing, not ONNX, or does not follow the edgessm step/chunk contract."""


class RuntimeProviderError(EdgeSSMRuntimeError):
    """The requested execution provider is not available or onnxruntime silently fell back
    from it (a fallback would change latency and possibly numerics, so it is not silent here)."""
