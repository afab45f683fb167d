"""Import protocol code from a source tree in isolation.

Each tree (one source at one commit) is imported under its own synthetic top-level package, so two
commits of the same module never share ``sys.modules`` entries and nothing is put on ``sys.path``.
Inside a tree, modules import each other relatively (``from . import helpers``) or through the
package name the loader gives them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from praxis_contracts.errors import ProtocolLoadFailed
from praxis_contracts.protocols import ProtocolFunctionSpec
from praxis_sdk.decorators import spec_of

SKIP_DIRS = frozenset({"tests", "test", "__pycache__", "build", "dist", "docs"})
SKIP_FILES = frozenset({"setup.py", "conftest.py", "noxfile.py"})


@dataclass(frozen=True)
class DiscoveryProblem:
    module: str
    error: str


@dataclass(frozen=True)
class Discovered:
    functions: list[ProtocolFunctionSpec]
    problems: list[DiscoveryProblem]


class SourceTree:
    """Protocol code checked out at ``root``, imported under a package unique to ``identity``."""

    def __init__(self, root: Path, identity: str) -> None:
        self.root = root.resolve()
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.package = f"_praxis_src_{digest}"

    def _ensure_package(self) -> None:
        if self.package in sys.modules:
            return
        package = types.ModuleType(self.package)
        package.__path__ = [str(self.root)]
        package.__package__ = self.package
        spec = importlib.util.spec_from_loader(self.package, loader=None, is_package=True)
        assert spec is not None
        spec.submodule_search_locations = [str(self.root)]
        package.__spec__ = spec
        sys.modules[self.package] = package

    def import_module(self, module: str) -> types.ModuleType:
        self._ensure_package()
        try:
            return importlib.import_module(f"{self.package}.{module}")
        except Exception as exc:
            raise ProtocolLoadFailed(
                f"cannot import {module}: {type(exc).__name__}: {exc}", module=module
            ) from exc

    def function(self, module: str, qualname: str) -> Callable[..., Any]:
        """The protocol function ``qualname`` of ``module``."""
        obj: Any = self.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise ProtocolLoadFailed(f"{module} has no {qualname}", module=module)
        if spec_of(obj) is None:
            raise ProtocolLoadFailed(f"{module}.{qualname} is not a protocol function")
        return obj  # type: ignore[no-any-return]

    def modules(self) -> Iterator[str]:
        """Dotted names of the Python modules in the tree, in a stable order."""
        for path in sorted(self.root.rglob("*.py")):
            rel = path.relative_to(self.root)
            if path.name in SKIP_FILES or any(
                part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]
            ):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                yield ".".join(parts)

    def discover(self) -> Discovered:
        """Every protocol function defined in the tree; import failures are reported, not raised."""
        functions: list[ProtocolFunctionSpec] = []
        problems: list[DiscoveryProblem] = []
        for module in self.modules():
            try:
                functions.extend(self.discover_module(module))
            except ProtocolLoadFailed as exc:
                problems.append(DiscoveryProblem(module, exc.message))
        return Discovered(functions, problems)

    def discover_module(self, module: str) -> list[ProtocolFunctionSpec]:
        """The protocol functions defined in ``module``; raises ``ProtocolLoadFailed``."""
        mod = self.import_module(module)
        return [
            spec.model_copy(update={"module": module})
            for spec in map(spec_of, list(vars(mod).values()))
            if spec is not None and spec.module == mod.__name__
        ]

    def unload(self) -> None:
        """Forget every module imported from this tree."""
        for name in [
            n for n in sys.modules if n == self.package or n.startswith(f"{self.package}.")
        ]:
            del sys.modules[name]
