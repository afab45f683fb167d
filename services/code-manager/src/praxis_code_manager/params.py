"""Run parameters checked against the JSON schemas recorded at discovery (no protocol import).

The recorded schema of each parameter is turned back into a pydantic type for the subset
pydantic's ``TypeAdapter.json_schema()`` produces for plain parameters (scalars, lists, dicts,
optionals, unions, literals/enums, ``$ref`` to ``$defs``, the common bounds). A part it does not
know is taken as ``Any``: the orchestrator validates against the real signature again before it
runs the protocol, so this check catches the usual mistakes early and is never stricter.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from praxis_contracts.errors import InvalidParameters
from praxis_contracts.protocols import ProtocolFunctionSpec

_SCALARS: dict[str, Any] = {
    "number": float,
    "integer": int,
    "string": str,
    "boolean": bool,
    "null": None,
}
_BOUNDS = {
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_length",
    "maxItems": "max_length",
    "pattern": "pattern",
}


def validate(spec: ProtocolFunctionSpec, values: dict[str, Any]) -> dict[str, Any]:
    """Validate and coerce run parameters; raises ``InvalidParameters`` listing every problem."""
    model = _model(spec.model_dump_json())
    try:
        checked = model.model_validate(values)
    except ValidationError as exc:
        problems = [
            {"loc": ".".join(map(str, e["loc"])), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidParameters("parameters do not match the protocol", errors=problems) from exc
    dumped: dict[str, Any] = checked.model_dump(mode="json")
    return dumped


@functools.lru_cache(maxsize=512)
def _model(spec_json: str) -> type[BaseModel]:
    spec = ProtocolFunctionSpec.model_validate_json(spec_json)
    fields: dict[str, Any] = {}
    for p in spec.parameters:
        hint = type_of(p.json_schema, p.json_schema.get("$defs", {}), depth=0)
        fields[p.name] = (hint, p.default if p.optional else ...)
    return create_model(f"{spec.name}_parameters", __config__=ConfigDict(extra="forbid"), **fields)


def type_of(schema: Any, defs: dict[str, Any], depth: int) -> Any:
    """The Python type a JSON schema (as pydantic writes them) stands for; ``Any`` if unknown."""
    if not isinstance(schema, dict) or depth > 20:
        return Any
    if "$ref" in schema:
        name = str(schema["$ref"]).rpartition("/")[2]
        return type_of(defs.get(name), defs, depth + 1)
    if "const" in schema:
        return _literal([schema["const"]])
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return _literal(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            options = tuple(type_of(s, defs, depth + 1) for s in schema[key])
            return Any if Any in options else Union[options]  # noqa: UP007 - built at runtime
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
        return type_of(schema["allOf"][0], defs, depth + 1)
    return _bounded(_plain(schema, defs, depth), schema)


def _plain(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    kind = schema.get("type")
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = schema.get("items")
        return list[type_of(items, defs, depth + 1) if items else Any]  # type: ignore[misc]
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return _object(schema, defs, depth)
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        value = type_of(schema["additionalProperties"], defs, depth + 1)
        return dict[str, value]  # type: ignore[valid-type]
    if kind == "object":
        return dict[str, Any]
    return Any


def _object(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    required = set(schema.get("required") or [])
    fields: dict[str, Any] = {}
    for name, sub in schema["properties"].items():
        default = sub.get("default") if isinstance(sub, dict) else None
        fields[str(name)] = (type_of(sub, defs, depth + 1), ... if name in required else default)
    config = ConfigDict(extra="forbid" if schema.get("additionalProperties") is False else "ignore")
    try:
        return create_model(str(schema.get("title") or "Object"), __config__=config, **fields)
    except (TypeError, ValueError, NameError):  # a property name pydantic cannot take
        return dict[str, Any]


def _bounded(hint: Any, schema: dict[str, Any]) -> Any:
    bounds = {_BOUNDS[k]: v for k, v in schema.items() if k in _BOUNDS}
    if not bounds or hint is Any:
        return hint
    return Annotated[hint, Field(**bounds)]


def _literal(values: list[Any]) -> Any:
    if all(isinstance(v, str | int | bool) or v is None for v in values):
        return Literal[tuple(values)]
    return Any if not values else _json_equal(values)


def _json_equal(values: list[Any]) -> Any:
    encoded = {json.dumps(v, sort_keys=True) for v in values}

    def check(value: Any) -> Any:
        if json.dumps(value, sort_keys=True) not in encoded:
            raise ValueError(f"must be one of {values}")
        return value

    from pydantic import AfterValidator

    return Annotated[Any, AfterValidator(check)]
