"""Import-time stand-in for torchvision inside the SGLang test environments.

Why: SGLang's serving path imports torchvision at module level (``sglang.srt.utils.common`` imports
``torchvision.io.decode_jpeg``; model configs import ``torchvision.transforms``), but PyPI's torchvision wheels are
built against CUDA torch and cannot load beside the CPU torch these environments share with ``.venv``. A text-only
chat model never touches images, so every name resolves to a placeholder that fails loudly if anything calls it.
There is no ``torchvision`` distribution metadata, so transformers correctly reports torchvision as unavailable.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

__version__ = "0.0.0+sglang-test-standin"


class _Placeholder:
    """Any torchvision attribute: attribute access chains, calling raises."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> _Placeholder:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Placeholder(f"{self._name}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name} was called, but torchvision is a test stand-in (text-only serving)")

    def __repr__(self) -> str:
        return f"<torchvision stand-in {self._name}>"


def _module_getattr(prefix: str):
    def __getattr__(name: str) -> _Placeholder:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{prefix}.{name}")

    return __getattr__


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Creates ``torchvision.<anything>`` submodules on import, each a namespace of placeholders."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _module_getattr(spec.name)  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


__getattr__ = _module_getattr(__name__)
if not any(isinstance(finder, _SubmoduleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_SubmoduleFinder())
