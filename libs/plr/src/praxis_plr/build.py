"""Build an asset's PyLabRobot object from names and JSON, as an HTTP client can give them.

A client without PyLabRobot names the type (``HeaterShaker``), the backend by class name with
its settings (``{"type": "HeaterShakerChatterboxBackend", "settings": {}}``) and the
constructor's other arguments as JSON: numbers and strings as they are, a ``Coordinate`` as
``{"x", "y", "z"}``, a deck (or any resource an argument takes) by its type name, or
``{"type", "name"}`` to name it. PyLabRobot builds it here, so what is stored is what PyLabRobot
would serialize, and a wrong argument is a ``422`` naming it, not a failed run later.

Nothing is constructed that the client did not name from the installed PyLabRobot: resource
types come through ``resolve`` (the asset-manager's catalog), backends are concrete
``MachineBackend`` subclasses found by class name (as PyLabRobot's own deserializer finds them).
Building touches no hardware: backends open their connections in ``setup()``, which only the
orchestrator calls.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pylabrobot.machines.backend import MachineBackend
from pylabrobot.machines.machine import Machine
from pylabrobot.resources import Coordinate, Resource

from praxis_contracts.errors import InvalidInput
from praxis_plr.live import _ensure_backend_class
from praxis_plr.types import unwrap_optional

Resolve = Callable[[str], Any]
"""A type name (as the catalog resolves it) -> the class or factory."""


def backend_data(spec: Mapping[str, Any]) -> dict[str, Any]:
    """PyLabRobot's serialized form of a backend given as ``{"type", "settings"}`` (or already
    in that form: ``{"type", **settings}``), checked by building the backend."""
    if not isinstance(spec.get("type"), str):
        raise InvalidInput("backend needs a 'type': a backend class name", field="backend")
    if "settings" in spec:
        extra = sorted(set(spec) - {"type", "settings"})
        settings = spec["settings"]
        if extra or not isinstance(settings, dict):
            raise InvalidInput(
                "backend is {'type': '<class name>', 'settings': {...}}"
                + (f"; unknown fields {extra}" if extra else ""),
                field="backend",
            )
        data = {"type": spec["type"], **settings}
    else:
        data = dict(spec)
    try:
        _ensure_backend_class(data)
        MachineBackend.deserialize(copy.deepcopy(data))
    except InvalidInput:
        raise
    except Exception as exc:  # an unknown class, a wrong setting: PyLabRobot says which
        raise InvalidInput(f"backend {data['type']}: {exc}", field="backend") from exc
    return data


def build(
    factory: Callable[..., Any],
    name: str,
    arguments: Mapping[str, Any],
    backend: Mapping[str, Any] | None,
    resolve: Resolve,
) -> Resource | Machine:
    """Call ``factory`` (a class or a function from the catalog) with ``name``, the backend
    built from ``backend`` (``backend_data`` form) and the decoded ``arguments``.

    Raises:
        InvalidInput: an argument it does not take, one it needs and was not given, a value
            that does not decode, or PyLabRobot refusing to build it (``field`` says which).
    """
    try:
        parameters = dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{_label(factory)} cannot be built by name", field="fqn") from exc
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(k for k in arguments if k not in parameters or k in ("name", "backend"))
    if unknown and not open_ended:
        takes = sorted(k for k, p in parameters.items() if _settable(k, p))
        raise InvalidInput(
            f"{_label(factory)} takes no argument {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(takes) or 'none'}",
            field="arguments",
            unknown=unknown,
        )
    hints = _hints(factory)
    kwargs = {
        key: _decoded(key, value, hints.get(key), resolve, name) for key, value in arguments.items()
    }
    if "name" in parameters:
        kwargs["name"] = name
    if backend is not None and "backend" not in parameters:
        raise InvalidInput(f"{_label(factory)} takes no backend: it is no machine", field="backend")
    if "backend" in parameters:
        if backend is None:
            if parameters["backend"].default is inspect.Parameter.empty:
                raise InvalidInput(
                    f"{_label(factory)} needs a backend: "
                    "{'type': '<backend class>', 'settings': {...}}",
                    field="backend",
                )
        else:
            kwargs["backend"] = MachineBackend.deserialize(copy.deepcopy(dict(backend)))
    missing = sorted(
        k
        for k, p in parameters.items()
        if p.default is inspect.Parameter.empty and _settable(k, p) and k not in kwargs
    )
    if missing:
        raise InvalidInput(
            f"{_label(factory)} needs {', '.join(missing)}: give them in 'arguments'",
            field="arguments",
            missing=missing,
        )
    try:
        built = factory(**kwargs)
    except Exception as exc:
        raise InvalidInput(
            f"PyLabRobot could not build {_label(factory)}: {exc}", field="arguments"
        ) from exc
    if not isinstance(built, Resource | Machine):
        raise InvalidInput(f"{_label(factory)} built no PyLabRobot resource or machine")
    if isinstance(built, Resource):
        built.name = name  # factories without a name parameter (decks) pick their own
    return built


def _settable(key: str, parameter: inspect.Parameter) -> bool:
    return key != "self" and parameter.kind not in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    )


def _label(factory: Callable[..., Any]) -> str:
    return getattr(factory, "__qualname__", repr(factory))


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target: Any = factory
    if isinstance(factory, type):
        target = target.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:  # forward references PyLabRobot leaves unresolvable: by name, if we can
        scope = getattr(target, "__globals__", {})
        return {
            key: scope.get(hint, hint) if isinstance(hint, str) else hint
            for key, hint in getattr(target, "__annotations__", {}).items()
        }


def _decoded(key: str, value: Any, hint: Any, resolve: Resolve, owner: str) -> Any:
    base, _ = unwrap_optional(hint)
    field = f"arguments.{key}"
    if typing.get_origin(base) is dict and isinstance(value, dict):  # a carrier's modules
        key_type, item_type = (*typing.get_args(base), Any, Any)[:2]
        if isinstance(item_type, type) and issubclass(item_type, Resource):
            try:
                return {
                    (key_type(k) if key_type is int else k): _child(
                        v, f"{field}.{k}", resolve, f"{owner}-{k}"
                    )
                    for k, v in value.items()
                }
            except ValueError as exc:
                raise InvalidInput(f"{field}: keys are numbers", field=field) from exc
    if isinstance(base, type) and issubclass(base, Coordinate) and value is not None:
        if not isinstance(value, dict) or not {"x", "y", "z"} <= set(value):
            raise InvalidInput(f"{field} is a Coordinate: {{'x', 'y', 'z'}}", field=field)
        try:
            return Coordinate(float(value["x"]), float(value["y"]), float(value["z"]))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{field}: x, y and z are numbers", field=field) from exc
    if isinstance(base, type) and issubclass(base, Resource) and value is not None:
        return _child(value, field, resolve, None)
    if isinstance(value, dict | list) and not _plain(value):
        raise InvalidInput(f"{field}: only numbers, strings, lists and objects", field=field)
    return value


def _child(value: Any, field: str, resolve: Resolve, default_name: str | None) -> Resource:
    """A resource an argument takes (a liquid handler's deck, a carrier's module), built from
    its type name (named ``default_name`` unless it says otherwise)."""
    if isinstance(value, str):
        type_name, child_name = value, None
    elif isinstance(value, dict) and isinstance(value.get("type"), str):
        extra = sorted(set(value) - {"type", "name"})
        if extra:
            raise InvalidInput(f"{field}: unknown fields {extra}", field=field)
        type_name, child_name = value["type"], value.get("name")
    else:
        raise InvalidInput(f"{field}: a type name, or {{'type', 'name'}}", field=field)
    child_name = child_name or default_name
    factory = resolve(type_name)
    takes_name = "name" in inspect.signature(factory).parameters
    try:
        child = factory(name=child_name) if takes_name and child_name else factory()
    except Exception as exc:
        raise InvalidInput(f"{field}: PyLabRobot could not build {type_name}: {exc}") from exc
    if not isinstance(child, Resource):
        raise InvalidInput(f"{field}: {type_name} is not a resource", field=field)
    if child_name:
        child.name = child_name
    return child


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


__all__ = ["backend_data", "build"]
