"""Lazy public names: ``import edgessm`` and ``import edgessm.export`` stay cheap (torch, onnx load on first use)."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, table: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for a package whose public name -> defining module table is ``table``."""
    names = sorted(table)

    def __getattr__(name: str) -> Any:
        mod = table.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(mod), name)
        namespace[name] = value  # the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return names + [k for k in ("__version__",) if k in namespace]

    return __getattr__, __dir__
