"""A package's public names loaded on first use (PEP 562): its ``__init__`` imports nothing heavy, so a
light module beneath it (the CLI's parsers, :mod:`pvt.weights.formats`) imports without torch."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, homes: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, where ``homes`` maps each public name to the submodule
    (relative to ``package``) that defines it. A name is imported on first access and kept; any other name
    is tried as a submodule, as a package that imported it eagerly would have it."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's own name
        module = sys.modules[package]
        if name in homes:
            value = getattr(importlib.import_module(f".{homes[name]}", package), name)
            setattr(module, name, value)
            return value
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
