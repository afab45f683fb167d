"""``@protocol_function``: declare a protocol function; parameters and assets come from type hints.

PyLabRobot machine and resource types become asset requirements (the orchestrator injects the live
objects); ``PraxisState`` and ``RunContext`` are injected; every other parameter is validated by
pydantic. Inside a run each call is logged (nested calls point at their parent) and is a
pause/cancel checkpoint.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticSerializationError, to_jsonable_python

from praxis_contracts.errors import InvalidParameters
from praxis_contracts.protocols import AssetRequirementSpec, ParameterSpec, ProtocolFunctionSpec
from praxis_contracts.runs import CALL_RESULT_BYTES, CALL_RESULT_MAX_BYTES
from praxis_plr.types import asset_kind, fqn, unwrap_optional
from praxis_sdk.context import CallRecord, CallStatus, RunCancelled, RunContext, current_run
from praxis_sdk.state import PraxisState

P = ParamSpec("P")
T = TypeVar("T")

SPEC_ATTR = "__praxis_spec__"
INJECTED = (PraxisState, RunContext)


@overload
def protocol_function(fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...


@overload
def protocol_function(
    *,
    name: str | None = None,
    version: str = "0.1.0",
    description: str | None = None,
    top_level: bool = True,
    moves_in: Iterable[str] = (),
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]: ...


def protocol_function(
    fn: Callable[P, Awaitable[T]] | None = None,
    /,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    description: str | None = None,
    top_level: bool = True,
    moves_in: Iterable[str] = (),
) -> Any:
    """Mark an async function as a protocol function (usable bare or with arguments).

    ``moves_in`` names labware parameters the protocol brings in from wherever they are (a
    hotel, storage): those are bound anywhere on the workcell, the others inside the machines
    the run binds (the liquid handler's deck, the reader)."""

    def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"protocol function {func.__qualname__} must be async")
        spec = inspect_function(func, name, version, description, top_level, moves_in)
        wrapper = _logged(func, spec)
        setattr(wrapper, SPEC_ATTR, spec)
        return wrapper

    return decorate(fn) if fn is not None else decorate


def spec_of(obj: object) -> ProtocolFunctionSpec | None:
    spec = getattr(obj, SPEC_ATTR, None)
    return spec if isinstance(spec, ProtocolFunctionSpec) else None


def inspect_function(
    func: Callable[..., Any],
    name: str | None = None,
    version: str = "0.1.0",
    description: str | None = None,
    top_level: bool = True,
    moves_in: Iterable[str] = (),
) -> ProtocolFunctionSpec:
    """Build the spec of ``func`` from its signature and type hints."""
    moved = set(moves_in)
    hints = typing.get_type_hints(func)
    parameters: list[ParameterSpec] = []
    assets: list[AssetRequirementSpec] = []
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{func.__qualname__}: *args/**kwargs are not allowed")
        hint = hints.get(param.name, Any)
        inner, optional = unwrap_optional(hint)
        has_default = param.default is not inspect.Parameter.empty
        if inner in INJECTED:
            continue
        kind = asset_kind(inner) if isinstance(inner, type) else None
        if kind is not None:
            assets.append(
                AssetRequirementSpec(
                    name=param.name,
                    type_fqn=fqn(inner),  # type: ignore[arg-type]
                    kind=kind,
                    optional=optional or has_default,
                    moves_in=param.name in moved and kind == "resource",
                )
            )
            if kind == "resource":
                moved.discard(param.name)
            continue
        parameters.append(
            ParameterSpec(
                name=param.name,
                type_hint=_hint_text(hint),
                json_schema=_json_schema(hint),
                optional=has_default,
                default=_json_default(param.default) if has_default else None,
            )
        )
    if moved:
        raise TypeError(
            f"{func.__qualname__}: moves_in names {sorted(moved)}, which are not labware parameters"
        )
    return ProtocolFunctionSpec(
        name=name or func.__name__,
        version=version,
        description=description or inspect.getdoc(func) or "",
        module=func.__module__,
        qualname=func.__qualname__,
        parameters=parameters,
        assets=assets,
        top_level=top_level,
    )


@functools.cache
def parameters_model(func: Callable[..., Any]) -> type[BaseModel]:
    """A pydantic model of the function's non-asset, non-injected parameters (built once)."""
    spec = spec_of(func) or inspect_function(func)
    hints = typing.get_type_hints(func)
    signature = inspect.signature(func)
    fields: dict[str, Any] = {}
    for p in spec.parameters:
        default = signature.parameters[p.name].default
        fields[p.name] = (
            hints.get(p.name, Any),
            ... if default is inspect.Parameter.empty else default,
        )
    return create_model(f"{spec.name}_parameters", __config__=ConfigDict(extra="forbid"), **fields)


def validate_parameters(func: Callable[..., Any], values: dict[str, Any]) -> dict[str, Any]:
    """Validate and coerce run parameters; raises ``InvalidParameters`` listing every problem."""
    try:
        model = parameters_model(func).model_validate(values)
    except ValidationError as exc:
        problems = [
            {"loc": ".".join(map(str, e["loc"])), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidParameters("parameters do not match the protocol", errors=problems) from exc
    dumped: dict[str, Any] = model.model_dump(mode="json")
    return dumped


def call_arguments(
    fn: Callable[..., Any], kwargs: dict[str, Any], ctx: RunContext
) -> dict[str, Any]:
    """The arguments a run calls ``fn`` with: ``kwargs`` (its validated parameters and bound
    assets), its ``PraxisState`` and ``RunContext`` parameters injected, and None for an
    optional asset left unbound (the edge's runner and ``praxis_sdk.testing`` alike)."""
    for name, hint in typing.get_type_hints(fn).items():
        inner, _ = unwrap_optional(hint)
        if inner is PraxisState:
            kwargs[name] = ctx.state
        elif inner is RunContext:
            kwargs[name] = ctx
    for name, param in inspect.signature(fn).parameters.items():
        if name not in kwargs and param.default is inspect.Parameter.empty:
            kwargs[name] = None
    return kwargs


def _logged(
    func: Callable[P, Awaitable[T]], spec: ProtocolFunctionSpec
) -> Callable[P, Awaitable[T]]:
    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        ctx = current_run.get()
        if ctx is None:
            return await func(*args, **kwargs)
        await ctx.control.checkpoint()
        if ctx.on_checkpoint is not None:
            await ctx.on_checkpoint()
        call = CallRecord(
            call_id=uuid.uuid4(),
            run_id=ctx.run_id,
            parent_call_id=ctx.parent_call_id,
            sequence=ctx.next_sequence(),
            function=spec.name,
            version=spec.version,
            arguments=_summarise(func, args, kwargs),
            status="running",
            started_at=datetime.now(UTC),
        )
        await _record(ctx, call)
        token = current_run.set(ctx.nested(call.call_id))
        try:
            result = await func(*args, **kwargs)
        except RunCancelled:
            await _finish(ctx, call, "cancelled", "cancelled")
            raise
        except BaseException as exc:
            await _finish(ctx, call, "failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            current_run.reset(token)
        await _finish(ctx, call, "completed", None, *_bounded(result))
        return result

    return wrapper


async def _record(ctx: RunContext, call: CallRecord) -> None:
    if ctx.sink is not None:
        await ctx.sink.record(call)


async def _finish(
    ctx: RunContext,
    call: CallRecord,
    status: CallStatus,
    error: str | None,
    result: Any = None,
    body: str | None = None,
) -> None:
    finished = {"status": status, "finished_at": datetime.now(UTC), "error": error}
    changes = {**finished, "result": result, "result_body": body}
    await _record(ctx, CallRecord(**{**call.__dict__, **changes}))


def _bounded(value: Any) -> tuple[Any, str | None]:
    """A call's return value as the call log keeps it: its JSON (live objects by name) when at
    most ``CALL_RESULT_BYTES``; else a marker with its size, type and the start of its text,
    and the whole JSON (up to ``CALL_RESULT_MAX_BYTES``) for the edge to keep by reference."""
    described = _describe(value) if not isinstance(value, list | tuple | dict) else value
    try:
        text = json.dumps(described, default=_by_name)
    except (TypeError, ValueError):
        text = json.dumps(repr(value)[:200])
    if len(text) <= CALL_RESULT_BYTES:
        return json.loads(text), None
    marker = {
        "truncated": True,
        "size_bytes": len(text.encode()),
        "type": type(value).__name__,
        "preview": text[:200],
    }
    return marker, text if len(text.encode()) <= CALL_RESULT_MAX_BYTES else None


def _by_name(value: Any) -> Any:
    """``json.dumps``'s fallback inside a result: assets by name, anything else by repr."""
    described = _describe(value)
    return described if described is not value else repr(value)[:200]


def _summarise(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Arguments as JSON-friendly values: live objects by name, others by value or repr."""
    try:
        bound = inspect.signature(func).bind_partial(*args, **kwargs).arguments
    except TypeError:
        bound = dict(kwargs)
    return {k: _describe(v) for k, v in bound.items() if not isinstance(v, INJECTED)}


def _describe(value: Any) -> Any:
    if asset_kind(type(value)) is not None:
        return {"asset": getattr(value, "name", repr(value)), "type": type(value).__name__}
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:200]


def _hint_text(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _json_schema(hint: Any) -> dict[str, Any]:
    try:
        return TypeAdapter(hint).json_schema()
    except Exception:
        return {}


def _json_default(value: Any) -> Any:
    """The default as JSON (an enum member as its value, a model as its fields), else repr."""
    try:
        encoded = to_jsonable_python(value)
        json.dumps(encoded)
        return encoded
    except (TypeError, ValueError, PydanticSerializationError):
        return repr(value)
