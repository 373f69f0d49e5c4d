"""Typed errors for input a user can get wrong.

Each carries one line that names the thing and the fix; the CLI prints it and exits 2
(no traceback). Library callers catch ``EdgeSSMError``.
"""
from __future__ import annotations


class EdgeSSMError(Exception):
    """Base class: a user-facing error with a one-line message."""

    exit_code = 2


class ConfigError(EdgeSSMError, ValueError):
    """A model/training configuration value is out of range or unknown."""


class CheckpointError(EdgeSSMError):
    """A checkpoint file is missing, truncated, foreign, from a newer format, or incomplete."""


class UnstableSystemError(EdgeSSMError, ValueError):
    """A layer's diagonal system is unstable or marginal (|A| >= 1), or has NaN/Inf weights."""


class RankError(EdgeSSMError, ValueError):
    """A requested reduction rank / energy / tolerance is out of range."""


class TaskError(EdgeSSMError, ValueError):
    """A task name, dataset file or its arrays are invalid."""


class ExportError(EdgeSSMError):
    """Export failed: unsupported layer, unwritable path, or post-export parity check failed."""


class TrainingDiverged(EdgeSSMError):
    """The training loss (or a validation metric) became NaN/Inf; nothing after the last finite model is saved."""
