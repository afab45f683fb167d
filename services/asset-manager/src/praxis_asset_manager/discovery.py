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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from types import ModuleType
from typing import Any

from pylabrobot.resources import Resource

from praxis_contracts.common import AssetKind
from praxis_contracts.errors import InvalidRequest, UnknownAssetType
from praxis_contracts.inventory import CatalogEntry
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
        if not issubclass(obj, Resource) or inspect.isabstract(obj):
            return None
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
    """What instantiating a catalog type gives an asset."""

    kind: AssetKind
    definition: dict[str, Any]
    backend: dict[str, Any] | None
    state: dict[str, Any] | None
    type_mro: list[str]


def instantiate(entry: CatalogEntry, name: str) -> Built:
    """Call a factory, or a class, that needs nothing but a name, and serialize the result.

    Raises:
        InvalidRequest: the type needs more than a name (a definition must be given), or
            PyLabRobot refused to build it.
        UnknownAssetType: the type cannot be imported any more, or built no resource.
    """
    factory = import_object(entry.fqn)
    if not callable(factory):
        raise UnknownAssetType(f"{entry.fqn} cannot be imported.", fqn=entry.fqn)
    required = _required_parameters(factory)
    extra = [p for p in required or [] if p != "name"]
    if required is None or extra:
        raise InvalidRequest(
            f"{entry.fqn} needs a definition: it cannot be built from a name alone "
            f"(it requires {', '.join(extra) or 'arguments it does not declare'}).",
            fqn=entry.fqn,
            required=extra,
        )
    takes_name = "name" in inspect.signature(factory).parameters
    try:
        obj = factory(name=name) if takes_name else factory()
    except Exception as exc:
        raise InvalidRequest(
            f"PyLabRobot could not build {entry.fqn}: {exc}", fqn=entry.fqn
        ) from exc
    if not isinstance(obj, Resource):
        raise UnknownAssetType(f"{entry.fqn} did not build a PyLabRobot resource.", fqn=entry.fqn)
    obj.name = name  # factories without a name parameter (decks) pick their own
    try:
        draft = drafts_for_tree(obj, root_kind=entry.kind)[0]
    except ValueError as exc:
        raise InvalidRequest(f"{entry.fqn} built an unusable tree: {exc}", fqn=entry.fqn) from exc
    return Built(
        kind=entry.kind,
        definition=draft.definition,
        backend=draft.backend,
        state=draft.state,
        type_mro=type_ancestry(type(obj)),
    )
