"""A package face that imports its names on first use, as transformers' lazy modules do: a wing's `__init__.py`
names where each public name lives, and `import ita_segmentation.<wing>.cli` stays free of torch and `datasets`
until a command has parsed its arguments."""

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`, whose public name N lives in the module
    `homes[N]` (relative to the package, as `"metric"` or `".metric"`)."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        home = homes[name]
        return getattr(importlib.import_module(home if home.startswith(".") else f".{home}", package), name)

    def __dir__() -> list[str]:
        module_globals = vars(importlib.import_module(package))
        return sorted(set(module_globals) | set(homes))

    return __getattr__, __dir__
