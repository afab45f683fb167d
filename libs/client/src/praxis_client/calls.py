"""Every operation of the HTTP API as a pure, typed ``Call``: its method, path, query, body and
the contract model its reply decodes into. No I/O here: ``AsyncClient`` and ``Client`` send
them; a builder's signature is the one both clients expose.

Each builder is named after what it does (``submit_run``, ``list_runs``, ``cancel_run``) and
takes ids as ``UUID`` or ``str``. List builders take the standard filters (``SearchFilters``),
with ``limit`` and ``offset`` as shortcuts; page through them with the clients' ``paginate``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, TypeAdapter

from praxis_contracts.assets import (
    Asset,
    AssetDraft,
    AssetPage,
    AssetStatus,
    Lease,
    LeaseList,
    Workcell,
    WorkcellLayout,
    WorkcellPage,
)
from praxis_contracts.audit import AuditEventPage
from praxis_contracts.common import AssetKind, Page, RunStatus, SearchFilters
from praxis_contracts.deadletters import DeadLetter, DeadLetterPage, DeadLetterReplay
from praxis_contracts.inventory import AssetStatusHistoryPage, CatalogPage, Position
from praxis_contracts.protocols import (
    ProtocolDefinitionPage,
    ProtocolSource,
    ProtocolSourcePage,
    SourceKind,
)
from praxis_contracts.runs import (
    CallResult,
    EdgeList,
    FunctionCallPage,
    LogSource,
    ResolveOutcome,
    RunAction,
    RunLogPage,
    RunMode,
    RunPage,
    RunView,
)
from praxis_contracts.state import OnFailure, SnapshotInfo, SnapshotPage, WorkcellSnapshot
from praxis_contracts.tokens import Scope, TokenCreated, TokenInfo, TokenList

T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)

API = "/api/v1"

Id = UUID | str
"""An accession id, as a ``UUID`` or its text."""

Level = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


@dataclass(frozen=True)
class Call(Generic[R_co]):
    """One HTTP request and the type of its reply (``None``: the reply has no content)."""

    method: str
    path: str
    reply: type[R_co] | None
    params: tuple[tuple[str, str], ...] = ()
    body: Mapping[str, Any] | None = None
    timeout: float | None = field(default=None, compare=False)
    """Seconds; ``None``: the client's. Syncing a source or building an asset takes longer."""

    def decode(self, content: bytes) -> R_co:
        """The reply's body as ``reply`` (``None`` for a reply without content)."""
        if self.reply is None:
            return None  # type: ignore[return-value]
        if issubclass(self.reply, BaseModel):
            return self.reply.model_validate_json(content)
        adapter: TypeAdapter[R_co] = _adapter(self.reply)  # type: ignore[arg-type]
        return adapter.validate_json(content)

    def at_offset(self, offset: int) -> Call[R_co]:
        """The same list call, for the page starting at ``offset``."""
        params = tuple((k, v) for k, v in self.params if k != "offset")
        return replace(self, params=(*params, ("offset", str(offset))))

    @property
    def offset(self) -> int:
        return next((int(v) for k, v in self.params if k == "offset"), 0)


@cache
def _adapter(reply: type[Any]) -> TypeAdapter[Any]:
    return TypeAdapter(reply)


def next_offset(page: Page[Any], offset: int) -> int | None:
    """Where the page after ``page`` (asked at ``offset``) starts, or None after the last. A
    page may hold fewer than ``limit`` items (runs are cut at ~512 KB): continue at what came."""
    after = offset + len(page.items)
    return after if page.items and after < page.total else None


def _query(
    filters: SearchFilters | None, limit: int | None, offset: int | None, **more: Any
) -> tuple[tuple[str, str], ...]:
    """Query parameters: the standard filters, then the endpoint's own (lists repeat)."""
    given = filters.model_dump(exclude_defaults=True) if filters else {}
    if limit is not None:
        given["limit"] = limit
    if offset is not None:
        given["offset"] = offset
    out: list[tuple[str, str]] = []
    for key, value in [*given.items(), *more.items()]:
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        out.extend((key, _text(v)) for v in values)
    return tuple(out)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _body(**fields: Any) -> dict[str, Any]:
    """A JSON body of the fields given (``None`` left out: the server's default applies)."""
    return {
        k: (v.isoformat() if isinstance(v, datetime) else v)
        for k, v in fields.items()
        if v is not None
    }


def _dump(items: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [item.model_dump(mode="json", exclude_unset=True) for item in items]


# -- runs ---------------------------------------------------------------------------------------
def submit_run(
    protocol_name: str | None = None,
    *,
    version: str | None = None,
    definition_id: Id | None = None,
    parameters: Mapping[str, Any] | None = None,
    workcell: str | None = None,
    assets: Mapping[str, str] | None = None,
    asset_properties: Mapping[str, Mapping[str, Any]] | None = None,
    initial_state: Mapping[str, Any] | None = None,
    priority: int | None = None,
    on_failure: OnFailure | None = None,
    mode: RunMode | None = None,
    not_before: datetime | None = None,
    deadline: datetime | None = None,
) -> Call[RunView]:
    """Submit a run of a protocol (by name, optionally ``version``) or of one definition."""
    body = _body(
        protocol_name=protocol_name,
        version=version,
        definition_id=str(definition_id) if definition_id else None,
        parameters=dict(parameters) if parameters is not None else None,
        workcell=workcell,
        assets=dict(assets) if assets is not None else None,
        asset_properties={k: dict(v) for k, v in asset_properties.items()}
        if asset_properties is not None
        else None,
        initial_state=dict(initial_state) if initial_state is not None else None,
        priority=priority,
        on_failure=on_failure,
        mode=mode,
        not_before=not_before,
        deadline=deadline,
    )
    return Call("POST", f"{API}/protocols/runs", RunView, body=body)


def list_runs(
    *,
    status: Sequence[RunStatus | str] | None = None,
    protocol_name: str | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[RunPage]:
    """Run summaries, newest first."""
    params = _query(filters, limit, offset, status=status, protocol_name=protocol_name)
    return Call("GET", f"{API}/protocols/runs", RunPage, params=params)


def get_run(run_id: Id) -> Call[RunView]:
    return Call("GET", f"{API}/protocols/runs/{run_id}", RunView)


def act_on_run(
    run_id: Id, action: RunAction, *, reason: str = "", outcome: ResolveOutcome | None = None
) -> Call[RunView]:
    """An operator action (pause, resume, cancel, resolve, retry); the reply is the run (the
    new run for retry)."""
    body = _body(action=action, reason=reason, outcome=outcome)
    return Call("POST", f"{API}/protocols/runs/{run_id}/actions", RunView, body=body)


def pause_run(run_id: Id, *, reason: str = "") -> Call[RunView]:
    return act_on_run(run_id, "pause", reason=reason)


def resume_run(run_id: Id, *, reason: str = "") -> Call[RunView]:
    return act_on_run(run_id, "resume", reason=reason)


def cancel_run(run_id: Id, *, reason: str = "") -> Call[RunView]:
    return act_on_run(run_id, "cancel", reason=reason)


def retry_run(run_id: Id, *, reason: str = "") -> Call[RunView]:
    """A new run of the same definition, commit, parameters and pins; the reply is it."""
    return act_on_run(run_id, "retry", reason=reason)


def resolve_run(run_id: Id, outcome: ResolveOutcome, *, reason: str = "") -> Call[RunView]:
    """End a run that requires intervention as ``failed`` or ``cancelled``."""
    return act_on_run(run_id, "resolve", reason=reason, outcome=outcome)


def list_calls(
    run_id: Id,
    *,
    function: str | None = None,
    sequence: int | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[FunctionCallPage]:
    """The run's protocol-function calls in call order (nested calls name their parent)."""
    params = _query(filters, limit, offset, function=function, sequence=sequence)
    return Call("GET", f"{API}/protocols/runs/{run_id}/calls", FunctionCallPage, params=params)


def get_call_result(run_id: Id, sequence: int) -> Call[CallResult]:
    """What call ``sequence`` returned, whole."""
    return Call("GET", f"{API}/protocols/runs/{run_id}/calls/{sequence}/result", CallResult)


def list_logs(
    run_id: Id,
    *,
    source: LogSource | None = None,
    level: Level | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[RunLogPage]:
    """The run's output lines in order (protocol prints and logs, instrument output)."""
    params = _query(filters, limit, offset, source=source, level=level)
    return Call("GET", f"{API}/protocols/runs/{run_id}/logs", RunLogPage, params=params)


# -- protocols ----------------------------------------------------------------------------------
def register_source(
    name: str,
    url: str,
    *,
    kind: SourceKind | None = None,
    ref: str | None = None,
    commit: str | None = None,
    credentials_ref: str | None = None,
) -> Call[ProtocolSource]:
    """Register a protocol repository and sync it (its protocols are discovered)."""
    body = _body(
        name=name, url=url, kind=kind, ref=ref, commit=commit, credentials_ref=credentials_ref
    )
    return Call("POST", f"{API}/protocols/sources", ProtocolSource, body=body, timeout=300.0)


def list_sources(
    *,
    kind: SourceKind | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[ProtocolSourcePage]:
    params = _query(filters, limit, offset, kind=kind)
    return Call("GET", f"{API}/protocols/sources", ProtocolSourcePage, params=params)


def sync_source(source_id: Id, *, commit: str | None = None) -> Call[ProtocolSource]:
    """Fetch the source again (its ref's head, or ``commit``) and rediscover its protocols."""
    body = _body(commit=commit)
    path = f"{API}/protocols/sources/{source_id}/sync"
    return Call("POST", path, ProtocolSource, body=body, timeout=300.0)


def delete_source(source_id: Id) -> Call[None]:
    return Call("DELETE", f"{API}/protocols/sources/{source_id}", None)


def list_definitions(
    *,
    name: str | None = None,
    source_id: Id | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[ProtocolDefinitionPage]:
    params = _query(filters, limit, offset, name=name, source_id=source_id)
    return Call("GET", f"{API}/protocols/definitions", ProtocolDefinitionPage, params=params)


# -- workcells ----------------------------------------------------------------------------------
def register_workcell(
    name: str,
    *,
    description: str | None = None,
    properties: Mapping[str, Any] | None = None,
    assets: Sequence[AssetDraft] | None = None,
) -> Call[WorkcellLayout]:
    """Register a workcell, empty or with its assets."""
    body = _body(
        name=name,
        description=description,
        properties=dict(properties) if properties is not None else None,
        assets=_dump(assets) if assets is not None else None,
    )
    return Call("POST", f"{API}/workcells", WorkcellLayout, body=body, timeout=60.0)


def list_workcells(
    *,
    name: str | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[WorkcellPage]:
    params = _query(filters, limit, offset, name=name)
    return Call("GET", f"{API}/workcells", WorkcellPage, params=params)


def get_workcell(workcell: str) -> Call[WorkcellLayout]:
    """A workcell (name or id) with its assets."""
    return Call("GET", f"{API}/workcells/{workcell}", WorkcellLayout)


def update_workcell(
    workcell: str,
    *,
    description: str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> Call[Workcell]:
    body = _body(
        description=description, properties=dict(properties) if properties is not None else None
    )
    return Call("PATCH", f"{API}/workcells/{workcell}", Workcell, body=body)


def drain_workcell(workcell: str, *, reason: str | None = None) -> Call[Workcell]:
    """No new run is placed on the workcell; runs on it go on."""
    return Call("POST", f"{API}/workcells/{workcell}/drain", Workcell, body=_body(reason=reason))


def undrain_workcell(workcell: str, *, reason: str | None = None) -> Call[Workcell]:
    """A drained workcell takes runs again."""
    return Call("POST", f"{API}/workcells/{workcell}/resume", Workcell, body=_body(reason=reason))


def delete_workcell(workcell: str) -> Call[None]:
    return Call("DELETE", f"{API}/workcells/{workcell}", None)


def list_snapshots(
    workcell: str,
    *,
    asset: str | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[SnapshotPage]:
    """The workcell's state snapshots, newest first."""
    params = _query(filters, limit, offset, asset=asset)
    return Call("GET", f"{API}/workcells/{workcell}/snapshots", SnapshotPage, params=params)


def get_snapshot(workcell: str, snapshot_id: Id) -> Call[WorkcellSnapshot]:
    path = f"{API}/workcells/{workcell}/snapshots/{snapshot_id}"
    return Call("GET", path, WorkcellSnapshot)


def restore_snapshot(
    workcell: str, snapshot_id: Id, *, reason: str, assets: Sequence[str] | None = None
) -> Call[SnapshotInfo]:
    """Make a snapshot's states the recorded state of its assets (all, or those named)."""
    body = _body(
        snapshot_id=str(snapshot_id), reason=reason, assets=list(assets) if assets else None
    )
    return Call("POST", f"{API}/workcells/{workcell}/restore", SnapshotInfo, body=body)


def set_resource_state(
    accession_id: Id,
    *,
    reason: str,
    state: Mapping[str, Mapping[str, Any]] | None = None,
    tips: Mapping[str, bool] | None = None,
) -> Call[SnapshotInfo]:
    """Set a labware's recorded state by hand (a plate refilled, a tip rack replaced)."""
    body = _body(
        reason=reason,
        state={k: dict(v) for k, v in state.items()} if state is not None else None,
        tips=dict(tips) if tips is not None else None,
    )
    return Call("POST", f"{API}/resources/{accession_id}/state", SnapshotInfo, body=body)


# -- assets -------------------------------------------------------------------------------------
_PATH: dict[AssetKind, str] = {"machine": "machines", "resource": "resources", "deck": "decks"}


def list_assets(
    kind: AssetKind,
    *,
    status: AssetStatus | None = None,
    fqn: str | None = None,
    name: str | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[AssetPage]:
    params = _query(filters, limit, offset, status=status, fqn=fqn, name=name)
    return Call("GET", f"{API}/{_PATH[kind]}", AssetPage, params=params)


def get_asset(kind: AssetKind, accession_id: Id) -> Call[Asset]:
    return Call("GET", f"{API}/{_PATH[kind]}/{accession_id}", Asset)


def create_asset(
    kind: AssetKind,
    workcell: str,
    name: str,
    fqn: str,
    *,
    definition: Mapping[str, Any] | None = None,
    backend: Mapping[str, Any] | None = None,
    arguments: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    parent: str | None = None,
    slot: str | None = None,
    location: Position | None = None,
    rails: int | None = None,
    properties: Mapping[str, Any] | None = None,
    shareable: bool | None = None,
) -> Call[Asset]:
    """Create an asset from a catalog type (``fqn``) in a workcell."""
    body = _body(
        workcell=workcell,
        name=name,
        fqn=fqn,
        definition=dict(definition) if definition is not None else None,
        backend=dict(backend) if backend is not None else None,
        arguments=dict(arguments) if arguments is not None else None,
        state=dict(state) if state is not None else None,
        parent=parent,
        slot=slot,
        location=location.model_dump(mode="json") if location is not None else None,
        rails=rails,
        properties=dict(properties) if properties is not None else None,
        shareable=shareable,
    )
    return Call("POST", f"{API}/{_PATH[kind]}", Asset, body=body, timeout=60.0)


def update_asset(
    kind: AssetKind,
    accession_id: Id,
    *,
    name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    status: AssetStatus | None = None,
    reason: str | None = None,
    parent: str | None = None,
    slot: str | None = None,
    detach: bool | None = None,
    shareable: bool | None = None,
) -> Call[Asset]:
    """Change the fields given; a status change is audited with ``reason``."""
    body = _body(
        name=name,
        properties=dict(properties) if properties is not None else None,
        status=status,
        reason=reason,
        parent=parent,
        slot=slot,
        detach=detach,
        shareable=shareable,
    )
    return Call("PATCH", f"{API}/{_PATH[kind]}/{accession_id}", Asset, body=body)


def delete_asset(kind: AssetKind, accession_id: Id) -> Call[None]:
    return Call("DELETE", f"{API}/{_PATH[kind]}/{accession_id}", None)


def list_asset_status_history(
    kind: AssetKind,
    accession_id: Id,
    *,
    status: AssetStatus | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[AssetStatusHistoryPage]:
    params = _query(filters, limit, offset, status=status)
    path = f"{API}/{_PATH[kind]}/{accession_id}/status-history"
    return Call("GET", path, AssetStatusHistoryPage, params=params)


def list_catalog(
    *,
    kind: AssetKind | None = None,
    search: str | None = None,
    is_factory: bool | None = None,
    base: str | None = None,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[CatalogPage]:
    """PyLabRobot types installed: what assets can be created from."""
    params = _query(
        filters, limit, offset, kind=kind, search=search, is_factory=is_factory, base=base
    )
    return Call("GET", f"{API}/catalog", CatalogPage, params=params)


# -- leases -------------------------------------------------------------------------------------
def list_locks(*, run_id: Id | None = None) -> Call[LeaseList]:
    """Live asset leases (all, or one run's)."""
    params = _query(None, None, None, protocol_run_accession_id=run_id)
    return Call("GET", f"{API}/locks", LeaseList, params=params)


def force_release_lock(asset_id: Id, *, reason: str) -> Call[Lease]:
    """Release an asset's lease whoever holds it (audited; the holder is fenced)."""
    body = _body(reason=reason)
    return Call("POST", f"{API}/locks/{asset_id}/force-release", Lease, body=body)


def list_edges(*, workcell: str | None = None) -> Call[EdgeList]:
    """The orchestrator processes and their heartbeats: live, accepting, the runs they hold."""
    params = _query(None, None, None, workcell=workcell)
    return Call("GET", f"{API}/edges", EdgeList, params=params)


def list_dead_letters(
    *, limit: int | None = None, before: int | None = None
) -> Call[DeadLetterPage]:
    """Dead letters, newest first (admin); page with ``before`` = the last ``next_before``."""
    params = _query(None, limit, None, before=before)
    return Call("GET", f"{API}/dead-letters", DeadLetterPage, params=params)


def get_dead_letter(seq: int) -> Call[DeadLetter]:
    """One dead letter with its headers and body (admin)."""
    return Call("GET", f"{API}/dead-letters/{seq}", DeadLetter)


def replay_dead_letter(seq: int, *, reason: str = "") -> Call[DeadLetterReplay]:
    """Hand a dead letter to its consumer again (admin; audited); its error if it fails."""
    body = _body(reason=reason)
    return Call("POST", f"{API}/dead-letters/{seq}/replay", DeadLetterReplay, body=body)


# -- the audit trail ----------------------------------------------------------------------------
def list_events(
    *,
    types: Sequence[str] = (),
    run_id: Id | None = None,
    workcell: str | None = None,
    asset_id: Id | None = None,
    actor: str | None = None,
    correlation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    before: int | None = None,
    stored_through: int | None = None,
) -> Call[AuditEventPage]:
    """The audit trail, newest first, filtered; page with ``before`` = the last
    ``next_before``. ``stored_through``: once the trail holds the stream that far (an event id
    of a live stream)."""
    params = _query(
        None,
        limit,
        None,
        type=list(types),
        run_id=run_id,
        workcell=workcell,
        asset_id=asset_id,
        actor=actor,
        correlation_id=correlation_id,
        since=since,
        until=until,
        before=before,
        stored_through=stored_through,
    )
    return Call("GET", f"{API}/events", AuditEventPage, params=params)


# -- tokens -------------------------------------------------------------------------------------
def create_token(
    name: str, scopes: Sequence[Scope | str], *, expires_in_seconds: int | None = None
) -> Call[TokenCreated]:
    """A new API token; its secret is in this reply only."""
    body = _body(name=name, scopes=[str(s) for s in scopes], expires_in_seconds=expires_in_seconds)
    return Call("POST", f"{API}/tokens", TokenCreated, body=body)


def list_tokens() -> Call[TokenList]:
    return Call("GET", f"{API}/tokens", TokenList)


def revoke_token(token_id: Id) -> Call[TokenInfo]:
    return Call("DELETE", f"{API}/tokens/{token_id}", TokenInfo)


# -- the server ---------------------------------------------------------------------------------
def asyncapi() -> Call[dict[str, Any]]:
    """The AsyncAPI document of the events and commands (public)."""
    return Call("GET", "/asyncapi.json", dict)


def run_events_path(run_id: Id) -> str:
    return f"{API}/protocols/runs/{run_id}/events"


LIVE_EVENTS_PATH = f"{API}/events/live"
