"""The PyLabRobot types installed: found by walking the package, and instantiated by name.

Pure PyLabRobot and no database: ``walk`` is slow (it imports a few hundred modules) and runs on
a worker thread; ``instantiate`` builds a definition from a factory or a class that needs only a
name.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from types import ModuleType
from typing import Any

from pylabrobot.machines.machine import Machine
from pylabrobot.resources import Resource

from praxis_contracts.assets import AssetDraft
from praxis_contracts.errors import InvalidInput, InvalidRequest, UnknownAssetType
from praxis_contracts.inventory import CatalogEntry
from praxis_plr.build import Resolve, backend_data, build
from praxis_plr.layout import drafts_for_tree
from praxis_plr.types import asset_kind, type_ancestry, unwrap_optional

log = logging.getLogger(__name__)

# Labware lives under ``resources``; the rest are the machine packages of PyLabRobot 0.2.2
# (incubators are in ``storage``).
ROOTS = (
    "resources",
    "liquid_handling",
    "plate_reading",
    "heating_shaking",
    "temperature_controlling",
    "shaking",
    "centrifuge",
    "thermocycling",
    "scales",
    "pumps",
    "storage",
    "tilting",
    "sealing",
    "peeling",
    "plate_washing",
    "powder_dispensing",
    "arms",
    "barcode_scanners",
    "only_fans",
)
# Hardware backends (``backends`` packages, ``*_backend`` modules: they pull in USB, serial and
# vendor libraries) and tests hold no asset types; they are not even imported.
_SKIPPED_PARTS = frozenset({"tests", "testing", "conftest"})
_CONSTRUCTOR_KINDS = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


def pylabrobot_version() -> str:
    return version("pylabrobot")


@dataclass
class Walk:
    """What a walk of the package found."""

    entries: list[CatalogEntry]
    modules: int = 0
    skipped: list[str] = field(default_factory=list)


def walk(roots: tuple[str, ...] = ROOTS) -> Walk:
    """Every public, concrete ``Resource`` subclass and resource factory, sorted by fqn."""
    plr_version = pylabrobot_version()
    found: dict[str, CatalogEntry] = {}
    result = Walk(entries=[])
    for module in _modules(roots, result.skipped):
        result.modules += 1
        for obj in vars(module).values():
            entry = _entry(obj, plr_version)
            if entry is not None:
                found.setdefault(entry.fqn, entry)  # keyed by defining module: re-exports dedupe
    result.entries = [found[key] for key in sorted(found)]
    return result


def _modules(roots: tuple[str, ...], skipped: list[str]) -> Iterator[ModuleType]:
    """Import the root packages and their submodules, pruning skipped and unimportable ones."""
    pending = [f"pylabrobot.{root}" for root in roots]
    while pending:
        name = pending.pop(0)
        if _is_skipped(name):
            continue
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # optional dependencies, deprecated modules raising on import
            log.debug("catalog: skipping %s: %r", name, exc)
            skipped.append(name)
            continue
        yield module
        path = getattr(module, "__path__", None)
        if path is not None:
            pending.extend(sorted(info.name for info in pkgutil.iter_modules(path, f"{name}.")))


def _is_skipped(module: str) -> bool:
    return any(
        part in _SKIPPED_PARTS
        or "backend" in part
        or part.startswith("test_")
        or part.endswith("_tests")
        for part in module.split(".")
    )


def _entry(obj: object, plr_version: str) -> CatalogEntry | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not isinstance(module, str) or not module.startswith("pylabrobot."):
        return None
    if "<" in qualname or any(part.startswith("_") for part in qualname.split(".")):
        return None  # local or private
    if isinstance(obj, type):
        if obj is Machine or not issubclass(obj, Resource | Machine) or inspect.isabstract(obj):
            return None  # machines that are not resources too (pumps, sealers, scanners)
        produced, is_factory = obj, False
    elif inspect.isfunction(obj):
        returned = _return_type(obj)
        if returned is None:
            return None
        produced, is_factory = returned, True
    else:
        return None
    kind = asset_kind(produced)
    if kind is None:
        return None
    return CatalogEntry(
        fqn=f"{module}.{qualname}",
        name=qualname.rsplit(".", 1)[-1],
        kind=kind,
        is_factory=is_factory,
        instantiable=_needs_only_a_name(obj),
        category=_category(produced),
        module=module,
        bases=type_ancestry(produced),
        pylabrobot_version=plr_version,
    )


def _return_type(fn: Callable[..., Any]) -> type[Resource] | None:
    """The ``Resource`` subclass ``fn`` is annotated to return (``Optional`` unwrapped)."""
    try:
        hint: object = typing.get_type_hints(fn).get("return")
    except Exception:  # unresolvable forward references: fall back to a plain name lookup
        hint = fn.__annotations__.get("return")
        if isinstance(hint, str):
            hint = fn.__globals__.get(hint)
    hint, _ = unwrap_optional(hint)
    return hint if isinstance(hint, type) and issubclass(hint, Resource) else None


def _category(cls: type) -> str | None:
    """PyLabRobot's default ``category`` of a class (from the nearest constructor declaring it)."""
    for base in cls.__mro__:
        if "__init__" not in vars(base):
            continue
        try:
            parameter = inspect.signature(base).parameters.get("category")
        except (TypeError, ValueError):
            continue
        if parameter is not None and isinstance(parameter.default, str):
            return parameter.default
    return None


def _required_parameters(factory: Callable[..., Any]) -> list[str] | None:
    """Parameters without defaults (``None`` if the signature cannot be read)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    return [p.name for p in parameters if p.default is p.empty and p.kind in _CONSTRUCTOR_KINDS]


def _needs_only_a_name(factory: Callable[..., Any]) -> bool:
    required = _required_parameters(factory)
    return required is not None and set(required) <= {"name"}


def import_object(fqn: str) -> object | None:
    """Import ``fqn`` (longest importable module prefix, then attributes); None if it fails."""
    parts = fqn.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
        except Exception:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def canonical_fqn(fqn: str) -> str | None:
    """The defining-module fqn of a re-exported name (``pylabrobot.resources.Plate``)."""
    if not fqn.startswith("pylabrobot."):
        return None
    obj = import_object(fqn)
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


@dataclass(frozen=True)
class Built:
    """What building a catalog type gives: the asset and the assets inside it that are assets
    of their own (a machine's deck), root first."""

    drafts: list[AssetDraft]
    type_mro: list[str]

    @property
    def root(self) -> AssetDraft:
        return self.drafts[0]


def instantiate(
    entry: CatalogEntry,
    name: str,
    arguments: Mapping[str, Any] | None = None,
    backend: Mapping[str, Any] | None = None,
    factories: Resolve | None = None,
) -> Built:
    """Build a catalog type by name (``praxis_plr.build``: arguments, a backend by class name
    and its settings) and serialize what it built.

    Raises:
        InvalidInput: an argument or the backend is wrong, or PyLabRobot refused to build it.
        UnknownAssetType: the type cannot be imported any more, or built no resource.
    """
    factory = import_object(entry.fqn)
    if not callable(factory):
        raise UnknownAssetType(f"{entry.fqn} cannot be imported.", fqn=entry.fqn)
    data = backend_data(backend) if backend is not None else None

    def no_factories(type_name: str) -> Any:
        raise InvalidInput(f"{type_name}: no catalog to build it from", field="arguments")

    obj = build(factory, name, arguments or {}, data, factories or no_factories)
    if not isinstance(obj, Resource):  # a machine that is not a resource: a pump, a sealer
        assert isinstance(obj, Machine)
        root = AssetDraft(
            kind="machine",
            name=name,
            fqn=entry.fqn,
            definition={},
            backend=data if data is not None else obj.backend.serialize(),
        )
        return Built([root], type_ancestry(type(obj)))
    try:
        drafts = drafts_for_tree(obj, root_kind=entry.kind)
    except ValueError as exc:
        raise InvalidRequest(f"{entry.fqn} built an unusable tree: {exc}", fqn=entry.fqn) from exc
    if data is not None:  # the settings as given: a backend's serialize() may leave some out
        drafts[0] = drafts[0].model_copy(update={"backend": data})
    return Built(drafts, type_ancestry(type(obj)))
