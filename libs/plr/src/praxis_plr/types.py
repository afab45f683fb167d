"""PyLabRobot class names and kinds: fully-qualified names, imports, machine/deck/resource."""

from __future__ import annotations

import importlib
import types
import typing
from typing import Any

from pylabrobot.machines.machine import Machine
from pylabrobot.resources import Deck, Resource

from praxis_contracts.common import AssetKind
from praxis_contracts.errors import UnknownAssetType

_PLR_PREFIX = "pylabrobot."


def fqn(cls: type) -> str:
    """Return the fully-qualified name ``module.QualName`` of a class.

    Deterministic: always the defining module, never a re-exporting package.
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def import_type(name: str) -> type[Resource]:
    """Import a PyLabRobot ``Resource`` subclass (machines included) from its fully-qualified name.

    A ``Machine`` that is not a ``Resource`` (a pump, a sealer, a barcode scanner) is accepted
    too: it is typed as a resource here because everything that builds assets deserializes it
    the same way (``cls.deserialize``); what walks trees checks ``isinstance(obj, Resource)``.

    Raises:
        UnknownAssetType: if ``name`` is not under ``pylabrobot.``, cannot be imported, or is not
            a ``Resource`` or ``Machine`` subclass (factory functions such as ``STARLetDeck``
            are rejected: use the class of the object they return).
    """
    if not name.startswith(_PLR_PREFIX):
        raise UnknownAssetType(
            f"Unknown asset type {name!r}: only PyLabRobot classes ('pylabrobot.…') are allowed.",
            fqn=name,
        )
    obj = _import_object(name)
    if not isinstance(obj, type) or not issubclass(obj, Resource | Machine) or obj is Machine:
        raise UnknownAssetType(
            f"Unknown asset type {name!r}: not a PyLabRobot Resource or Machine subclass.",
            fqn=name,
        )
    return obj  # a Machine that is no Resource passes as one: see above


def _import_object(name: str) -> object:
    """Import the longest importable module prefix of ``name``; resolve the rest as attributes."""
    parts = name.split(".")
    import_error: ImportError | None = None
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: object = importlib.import_module(module_name)
        except ImportError as exc:
            import_error = import_error or exc  # the longest prefix's error is the telling one
            continue
        except Exception as exc:  # a module that fails at import time for another reason
            raise UnknownAssetType(
                f"Unknown asset type {name!r}: importing {module_name!r} failed: {exc}", fqn=name
            ) from exc
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break  # the longest importable module does not define it: stop, do not guess
        return obj
    reason = f" ({import_error})" if import_error is not None else ""
    raise UnknownAssetType(f"Unknown asset type {name!r}: cannot be imported{reason}.", fqn=name)


def asset_kind(cls: type) -> AssetKind | None:
    """Classify a PyLabRobot class as ``machine``, ``deck`` or ``resource`` (else ``None``).

    Machines (``LiquidHandler``, ``PlateReader``, …) subclass both ``Machine`` and ``Resource``:
    the ``Machine`` test comes first.
    """
    if not isinstance(cls, type):
        return None
    if issubclass(cls, Machine):
        return "machine"
    if issubclass(cls, Deck):
        return "deck"
    if issubclass(cls, Resource):
        return "resource"
    return None


def type_ancestry(cls: type) -> list[str]:
    """fqns of ``cls`` and of its MRO bases that are ``Resource`` or ``Machine`` subclasses.

    In MRO order, ``cls`` first. A requirement for ``Plate`` matches an asset whose ancestry
    contains ``fqn(Plate)``.
    """
    return [fqn(base) for base in cls.__mro__ if issubclass(base, (Resource, Machine))]


def unwrap_optional(hint: object) -> tuple[object, bool]:
    """Split ``Optional[X]`` / ``X | None`` into ``(X, True)``; other hints give ``(hint, False)``.

    ``Optional[A | B]`` gives ``(A | B, True)`` (as a ``typing.Union``).
    """
    origin = typing.get_origin(hint)
    if origin is not typing.Union and origin is not types.UnionType:
        return hint, False
    args = typing.get_args(hint)
    rest = tuple(arg for arg in args if arg is not type(None))
    if len(rest) == len(args):
        return hint, False
    if len(rest) == 1:
        return rest[0], True
    union: Any = typing.Union[rest]  # noqa: UP007 - built from a runtime tuple
    return union, True
