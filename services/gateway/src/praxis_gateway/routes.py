"""HTTP routes: each builds one typed request and returns its typed reply."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from nats.js import api
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from praxis_contracts.assets import (
    Asset,
    AssetDraft,
    AssetPage,
    AssetStatus,
    ForceReleaseLease,
    GetAsset,
    GetWorkcellLayout,
    Lease,
    LeaseList,
    ListAssets,
    ListLeases,
    ListWorkcells,
    RegisterWorkcell,
    WorkcellLayout,
    WorkcellPage,
)
from praxis_contracts.audit import MAX_AUDIT_PAGE, AuditEventPage, AuditFilters, ListAuditEvents
from praxis_contracts.base import event_types
from praxis_contracts.common import AssetKind, RunStatus, SearchFilters
from praxis_contracts.errors import (
    ErrorCode,
    ErrorReply,
    InvalidRequest,
    NotFound,
    Unavailable,
    error_from_reply,
)
from praxis_contracts.protocols import (
    DeleteProtocolSource,
    ListProtocolDefinitions,
    ListProtocolSources,
    ProtocolDefinitionPage,
    ProtocolSource,
    ProtocolSourcePage,
    RegisterProtocolSource,
    SourceKind,
    SyncProtocolSource,
)
from praxis_contracts.runs import (
    CallResult,
    ControlRun,
    EdgeList,
    FunctionCallPage,
    GetCallResult,
    GetRun,
    ListEdges,
    ListRunCalls,
    ListRunLogs,
    ListRuns,
    LogSource,
    ResolveOutcome,
    RunAction,
    RunLogPage,
    RunMode,
    RunPage,
    RunStatusChanged,
    RunView,
    SubmitRun,
)
from praxis_contracts.state import OnFailure
from praxis_contracts.topology import EVENTS
from praxis_gateway.filters import search_filters
from praxis_gateway.security import ActorDep
from praxis_runtime.bus import Bus

router = APIRouter(prefix="/api/v1")
Filters = Annotated[SearchFilters, Depends(search_filters)]


def bus(request: Request) -> Bus:
    return request.app.state.bus  # type: ignore[no-any-return]


BusDep = Annotated[Bus, Depends(bus)]


# -- protocols ----------------------------------------------------------------------------------
class SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused (422)

    name: str
    kind: SourceKind = "git"
    url: str
    ref: str = "HEAD"
    commit: str | None = None
    credentials_ref: str | None = None


class SyncIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused (422)

    commit: str | None = None


@router.post("/protocols/sources", status_code=status.HTTP_201_CREATED, tags=["protocols"])
async def register_source(body: SourceIn, b: BusDep, actor: ActorDep) -> ProtocolSource:
    cmd = RegisterProtocolSource(**body.model_dump(), actor=actor)
    return await b.request(cmd, timeout=_SYNC_TIMEOUT)


@router.get("/protocols/sources", tags=["protocols"])
async def list_sources(
    b: BusDep, filters: Filters, kind: SourceKind | None = None
) -> ProtocolSourcePage:
    return await b.request(ListProtocolSources(filters=filters, kind=kind))


@router.post("/protocols/sources/{source_id}/sync", tags=["protocols"])
async def sync_source(
    source_id: UUID, b: BusDep, actor: ActorDep, body: SyncIn | None = None
) -> ProtocolSource:
    commit = body.commit if body else None
    return await b.request(
        SyncProtocolSource(source_id=source_id, commit=commit, actor=actor), timeout=_SYNC_TIMEOUT
    )


@router.delete(
    "/protocols/sources/{source_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["protocols"],
)
async def delete_source(source_id: UUID, b: BusDep, actor: ActorDep) -> Response:
    """Forget a source (also a failed one) and its definitions; past runs keep their records."""
    await b.request(DeleteProtocolSource(source_id=source_id, actor=actor))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/protocols/definitions", tags=["protocols"])
async def list_definitions(
    b: BusDep, filters: Filters, name: str | None = None, source_id: UUID | None = None
) -> ProtocolDefinitionPage:
    return await b.request(ListProtocolDefinitions(filters=filters, name=name, source_id=source_id))


# -- runs ---------------------------------------------------------------------------------------
class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused (422)

    protocol_name: str | None = None
    version: str | None = None
    definition_id: UUID | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    workcell: str | None = None
    assets: dict[str, str] = Field(default_factory=dict)
    asset_properties: dict[str, dict[str, Any]] = Field(default_factory=dict)
    initial_state: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-100, le=100)
    on_failure: OnFailure = Field(
        default="keep",
        description="What a failed or cancelled run leaves in its assets' state: keep, or "
        "rollback to the snapshot taken when it started.",
    )
    mode: RunMode = Field(
        default="queued",
        description="queued: wait for the assets; immediate: placed now (201) or refused "
        "(409 assets_unavailable naming the holders), never left queued.",
    )
    not_before: AwareDatetime | None = Field(
        default=None, description="A queued run starts no earlier than this (with time zone)."
    )
    deadline: AwareDatetime | None = Field(
        default=None,
        description="A queued run not placed by then is failed with deadline_passed.",
    )


IMMEDIATE_SECONDS = 10.0
"""How long an immediate submission waits to be placed before it is cancelled (503): the
asset-manager answers in milliseconds; this bounds an outage, it never queues the run."""


@router.post("/protocols/runs", status_code=status.HTTP_201_CREATED, tags=["runs"])
async def submit_run(body: RunIn, b: BusDep, actor: ActorDep) -> RunView:
    """Submit a run. ``queued`` (the default): the reply is the queued run, placed when its
    assets are free (by priority, then submission order), not before ``not_before``, failed
    with ``deadline_passed`` if not placed by ``deadline``. ``immediate``: the reply comes once
    the run is placed (201, status ``pending`` or later) or refused (409 ``assets_unavailable``,
    ``details.blocked_by`` naming the runs holding or queued for its assets, or
    ``details.workcells`` the workcells with no edge or drained); a refused run is recorded as
    failed, nothing stays queued."""
    cmd = SubmitRun.model_validate({**body.model_dump(), "actor": actor})
    run = await b.request(cmd)
    if cmd.mode == "immediate":
        run = await _placed_now(b, run, actor)
    return run


async def _placed_now(b: Bus, run: RunView, actor: str | None) -> RunView:
    """Wait (pushed: the scheduler's status events of the run) until the immediate run leaves
    ``queued``; its view if placed, its error if refused."""
    loop = asyncio.get_running_loop()
    left: asyncio.Future[None] = loop.create_future()

    async def seen(msg: Any) -> None:
        if RunStatus(json.loads(msg.data)["status"]) != RunStatus.QUEUED and not left.done():
            left.set_result(None)

    sub = await b.js.subscribe(
        f"{RunStatusChanged.subject}.{run.accession_id}",
        stream=EVENTS.name,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
        cb=seen,
    )
    try:
        await asyncio.wait_for(left, IMMEDIATE_SECONDS)
    except TimeoutError:
        reason = f"immediate run not placed within {IMMEDIATE_SECONDS:.0f} s"
        await b.request(
            ControlRun(run_id=run.accession_id, action="cancel", reason=reason, actor=actor)
        )
        raise Unavailable(f"{reason}: it was cancelled, nothing is queued") from None
    finally:
        await sub.unsubscribe()
    view = await b.request(GetRun(run_id=run.accession_id))
    if view.status in (RunStatus.FAILED, RunStatus.CANCELLED) and view.error is not None:
        code = view.error.code if view.error.code in set(ErrorCode) else ErrorCode.INTERNAL
        details = {**view.error.details, "run_id": str(run.accession_id)}  # recorded, failed
        raise error_from_reply(ErrorReply(code=code, message=view.error.message, details=details))
    return view


@router.get("/protocols/runs", tags=["runs"])
async def list_runs(
    b: BusDep,
    filters: Filters,
    status_: Annotated[list[RunStatus] | None, Query(alias="status")] = None,
    protocol_name: str | None = None,
) -> RunPage:
    """Run summaries, newest first: no result, final state, asset states or traceback (``GET
    /protocols/runs/{run_id}`` has them). ``resource_accession_id`` / ``machine_accession_id``
    select the runs bound to that asset. A page holds at most ``limit`` runs and is cut short
    when they would pass ~512 KB: continue at ``offset + len(items)`` until ``total``."""
    return await b.request(ListRuns(filters=filters, status=status_, protocol_name=protocol_name))


@router.get("/protocols/runs/{run_id}", tags=["runs"])
async def get_run(run_id: UUID, b: BusDep) -> RunView:
    return await b.request(GetRun(run_id=run_id))


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused (422)

    action: RunAction
    reason: str = Field(default="", max_length=2000)
    outcome: ResolveOutcome | None = Field(
        default=None, description="resolve: failed or cancelled, as the operator decides."
    )

    @model_validator(mode="after")
    def _outcome_for_resolve(self) -> ActionIn:
        if self.action == "resolve" and self.outcome is None:
            raise ValueError("resolve needs an outcome: failed or cancelled")
        return self


@router.post("/protocols/runs/{run_id}/actions", tags=["runs"])
async def run_action(run_id: UUID, body: ActionIn, b: BusDep, actor: ActorDep) -> RunView:
    """Operator actions.

    - ``pause``, ``cancel``: take effect at the protocol's next protocol-function call (never
      in the middle of an instrument operation); the run shows pausing/canceling until then. A
      run no edge has (queued, not yet dispatched, or lost with its edge) is cancelled at once;
      a cancel its edge does not confirm within ``CANCEL_TIMEOUT_SECONDS`` leaves the run to an
      operator (``requires_intervention``).
    - ``resume``: a paused run continues.
    - ``resolve``: ends a run that requires intervention with ``outcome`` (``failed`` or
      ``cancelled``) and releases its leases.
    - ``retry``: a new run of the same definition, commit, parameters, pins and priority,
      linked to this one (``retry_of`` / ``retried_by``); the reply is the new run. Asking again
      returns the same retry.
    """
    return await b.request(
        ControlRun(
            run_id=run_id,
            action=body.action,
            reason=body.reason,
            outcome=body.outcome,
            actor=actor,
        )
    )


@router.get("/protocols/runs/{run_id}/calls", tags=["runs"])
async def run_calls(
    run_id: UUID,
    b: BusDep,
    filters: Filters,
    function: str | None = None,
    sequence: Annotated[int | None, Query(ge=0)] = None,
) -> FunctionCallPage:
    """Every protocol-function call of the run in call order; nested calls name their parent."""
    query = ListRunCalls(run_id=run_id, filters=filters, function=function, sequence=sequence)
    return await b.request(query)


@router.get("/protocols/runs/{run_id}/calls/{sequence}/result", tags=["runs"])
async def run_call_result(run_id: UUID, sequence: int, b: BusDep) -> CallResult:
    """What the call numbered ``sequence`` returned, whole: inline in the call log when small,
    else read from where the edge kept it (``object_name`` in the call's ``result`` marker).
    404 for a call that does not exist, has not completed, or whose value was past
    ``CALL_RESULT_MAX_BYTES`` (only its marker is kept)."""
    if sequence < 0:
        raise NotFound(f"run {run_id} has no call {sequence}")
    page = await b.request(ListRunCalls(run_id=run_id, sequence=sequence))
    if not page.items or page.items[0].status != "completed":
        raise NotFound(f"run {run_id} has no completed call {sequence}")
    result = page.items[0].result
    if not (isinstance(result, dict) and result.get("truncated")):
        return CallResult(run_id=run_id, object_name="", result=result)
    name = result.get("object_name")
    if not isinstance(name, str):
        raise NotFound(f"call {sequence} of run {run_id} returned too much to keep whole")
    return await b.request(GetCallResult(run_id=run_id, object_name=name), timeout=30)


@router.get("/protocols/runs/{run_id}/logs", tags=["runs"])
async def run_logs(
    run_id: UUID,
    b: BusDep,
    filters: Filters,
    source: LogSource | None = None,
    level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None, Query()
    ] = None,
) -> RunLogPage:
    """The run's output lines in order (``seq``): what the protocol printed or logged
    (``source=protocol``) and what its instruments' backends printed and PyLabRobot logged
    while executing its commands (``source=instrument``); ``level`` keeps that level and above.
    Live, they come as ``orchestrator.run.logged`` in ``/events``. Paged like every list."""
    return await b.request(ListRunLogs(run_id=run_id, filters=filters, source=source, level=level))


SSE_KEEPALIVE_SECONDS = 15.0
"""How often an idle event stream sends a comment line (the gateway's SSE_KEEPALIVE_SECONDS)."""

SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A stream of server-sent events (``text/event-stream``). Each event has "
        "``id`` (its sequence in the event stream: send it back as ``Last-Event-ID`` to resume "
        "after it), ``event`` (``context.aggregate.action``, e.g. "
        "``scheduler.run.status_changed``) and ``data`` (the event's JSON, as in the event "
        "catalogue). A comment line (``: keep-alive``) comes when nothing else has for "
        "SSE_KEEPALIVE_SECONDS. The stream ends after the run's terminal status.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/protocols/runs/{run_id}/events",
    tags=["runs"],
    response_class=StreamingResponse,
    responses=SSE_RESPONSE,
)
async def run_events(
    run_id: UUID,
    b: BusDep,
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event (its ``id``): only later events are sent. "
            "Browsers' EventSource sends it by itself when it reconnects.",
        ),
    ] = None,
) -> StreamingResponse:
    """Server-sent events: the run's history so far (after ``Last-Event-ID``, if given), then
    live events until it ends. A run that had ended when asked ends the stream once the events
    stored by then are sent."""
    after = _event_id(last_event_id)
    run = await b.request(GetRun(run_id=run_id))  # 404 for an unknown run
    keepalive = getattr(request.app.state, "sse_keepalive_seconds", SSE_KEEPALIVE_SECONDS)
    # A run's events end in its id: keyed by run (the scheduler's, the asset-manager's) or by
    # workcell and run (the edge's).
    keyed = [f"praxis.evt.*.*.*.{run_id}", f"praxis.evt.*.*.*.*.{run_id}"]
    ended = run.status.is_terminal
    stream = _event_stream(b, keyed, after, keepalive, replay=True, ended=ended, until_end=True)
    return _sse_response(stream)


def _sse_response(stream: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


MAX_LIVE_TYPES = 20
AUDIT_TIMEOUT = 10.0
"""Longer than the trail's wait for ``stored_through`` (5 s), so that wait ends in its 503."""

LIVE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events as in ``/protocols/runs/{run_id}/events``, from now "
        "on (or after ``Last-Event-ID``); the stream does not end by itself.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/events/live",
    tags=["events"],
    response_class=StreamingResponse,
    responses=LIVE_RESPONSE,
)
async def live_events(
    b: BusDep,
    request: Request,
    type_: Annotated[
        list[str] | None,
        Query(
            alias="type",
            description="Event types to send (``context.aggregate.action``, e.g. "
            "``scheduler.run.status_changed``; repeatable); every event if omitted.",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="Resume after this event (its ``id``)."),
    ] = None,
) -> StreamingResponse:
    """Every event as it happens (the dashboard's live views), optionally of some types only.
    Resumes after ``Last-Event-ID``; keep-alives as the run stream's."""
    after = _event_id(last_event_id)
    subjects = _live_subjects(type_ or [])
    keepalive = getattr(request.app.state, "sse_keepalive_seconds", SSE_KEEPALIVE_SECONDS)
    return _sse_response(_event_stream(b, subjects, after, keepalive, replay=False))


@router.get("/events", tags=["events"])
async def list_events(
    b: BusDep,
    type_: Annotated[
        list[str] | None,
        Query(
            alias="type",
            max_length=MAX_LIVE_TYPES,
            description="Event names (``context.aggregate.action``; repeatable): any of them.",
        ),
    ] = None,
    run_id: UUID | None = None,
    workcell: Annotated[str | None, Query(description="A workcell's name.")] = None,
    asset_id: UUID | None = None,
    actor: Annotated[
        str | None, Query(description="Who set it going (a principal's name).")
    ] = None,
    correlation_id: str | None = None,
    since: Annotated[AwareDatetime | None, Query(description="Stored at or after.")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Stored before.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 50,
    before: Annotated[
        int | None,
        Query(ge=1, description="Only older than this id (the previous page's ``next_before``)."),
    ] = None,
    stored_through: Annotated[
        int | None,
        Query(
            ge=1,
            description="Answer once the trail holds the events stream up to this event id "
            "(a live stream's ``id``); 503 if it does not within 5 s.",
        ),
    ] = None,
) -> AuditEventPage:
    """The audit trail: every event, kept for years with who set it going (``actor``), its
    correlation id and when; filtered, newest first, paged with ``before``."""
    filters = AuditFilters(
        types=type_ or [],
        run_id=run_id,
        workcell=workcell,
        asset_id=asset_id,
        actor=actor,
        correlation_id=correlation_id,
        since=since,
        until=until,
    )
    query = ListAuditEvents(
        filters=filters, limit=limit, before=before, stored_through=stored_through
    )
    return await b.request(query, timeout=AUDIT_TIMEOUT)


def _live_subjects(types: list[str]) -> list[str]:
    """The subjects of ``types`` (keyed or not), or every event's; 400 for a type no event
    has."""
    if not types:
        return ["praxis.evt.>"]
    if len(types) > MAX_LIVE_TYPES:
        raise InvalidRequest(f"at most {MAX_LIVE_TYPES} event types", field="type")
    known = event_types()
    unknown = sorted(set(types) - set(known))
    if unknown:
        raise InvalidRequest(f"no event type {', '.join(unknown)}", field="type")
    subjects: list[str] = []
    for name in dict.fromkeys(types):
        subjects.append(f"praxis.evt.{name}")
        if known[name].keyed:
            subjects.append(f"praxis.evt.{name}.>")
    return subjects


def _event_id(value: str | None) -> int | None:
    """The stream sequence a client last saw (``Last-Event-ID``), or None."""
    if value is None or value.strip() == "":
        return None
    if not value.strip().isdigit():
        raise InvalidRequest(
            "Last-Event-ID must be the id of an event of this stream (a whole number)",
            field="Last-Event-ID",
        )
    return int(value)


async def _event_stream(
    b: Bus,
    subjects: list[str],
    after: int | None,
    keepalive: float,
    *,
    replay: bool,
    ended: bool = False,
    until_end: bool = False,
) -> AsyncIterator[bytes]:
    """The events on ``subjects`` as server-sent events: after the stream sequence ``after``,
    else from the first (``replay``) or from now. ``ended``: only what is stored now is sent.
    ``until_end``: the stream ends after a run's terminal status."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    if after is not None:
        policy = api.DeliverPolicy.BY_START_SEQUENCE
        config = api.ConsumerConfig(filter_subjects=subjects, opt_start_seq=after + 1)
    else:
        policy = api.DeliverPolicy.ALL if replay else api.DeliverPolicy.NEW
        config = api.ConsumerConfig(filter_subjects=subjects)
    sub = await b.js.subscribe(
        subjects[0],
        stream=EVENTS.name,
        ordered_consumer=True,
        deliver_policy=policy,
        config=config,
        cb=queue.put,
    )
    try:
        left: int | None = None
        if ended:  # what is stored now is all it will get: delivered so far plus pending
            info = await sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered is not None else None
            left = (info.num_pending or 0) + (delivered or 0)
        while left is None or left > 0:
            try:
                msg = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            left = None if left is None else left - 1
            name = ".".join(msg.subject.split(".")[2:5])  # context.aggregate.action
            seq = msg.metadata.sequence.stream
            yield f"id: {seq}\nevent: {name}\ndata: {msg.data.decode()}\n\n".encode()
            if (
                until_end
                and name == "scheduler.run.status_changed"
                and RunStatus(json.loads(msg.data)["status"]).is_terminal
            ):
                return
    finally:
        await sub.unsubscribe()


# -- inventory ----------------------------------------------------------------------------------
class WorkcellIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused (422)

    name: str
    description: str = ""
    properties: dict[str, Any] = Field(default_factory=dict)
    assets: list[AssetDraft] = Field(default_factory=list)


@router.post("/workcells", status_code=status.HTTP_201_CREATED, tags=["inventory"])
async def register_workcell(body: WorkcellIn, b: BusDep, actor: ActorDep) -> WorkcellLayout:
    return await b.request(RegisterWorkcell(**body.model_dump(), actor=actor))


@router.get("/workcells", tags=["inventory"])
async def list_workcells(b: BusDep, filters: Filters, name: str | None = None) -> WorkcellPage:
    return await b.request(ListWorkcells(filters=filters, name=name))


@router.get("/workcells/{workcell}", tags=["inventory"])
async def get_workcell(workcell: str, b: BusDep) -> WorkcellLayout:
    return await b.request(GetWorkcellLayout(workcell=workcell))


@router.get("/edges", tags=["inventory"])
async def list_edges(b: BusDep, workcell: str | None = None) -> EdgeList:
    """The orchestrator processes (edges) the scheduler knows from their heartbeats: workcell,
    instance, version, last beat, whether it is live and takes new runs, and the runs it
    reports executing."""
    return await b.request(ListEdges(workcell=workcell))


@router.get("/locks", tags=["inventory"])
async def list_locks(b: BusDep, protocol_run_accession_id: UUID | None = None) -> LeaseList:
    """Live asset leases: asset, holder run, fencing token, when acquired and when it expires."""
    return await b.request(ListLeases(run_id=protocol_run_accession_id))


class ForceReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused (422)

    reason: str = Field(min_length=1, max_length=2000, description="Why; kept in the audit event.")


@router.post("/locks/{asset_id}/force-release", tags=["inventory"])
async def force_release_lock(
    asset_id: UUID, body: ForceReleaseIn, b: BusDep, actor: ActorDep
) -> Lease:
    """Release an asset's lease whoever holds it, audited as ``LeaseForceReleased``; the
    holding run is fenced before its next step. 404 if the asset has no live lease."""
    return await b.request(ForceReleaseLease(asset_id=asset_id, reason=body.reason, actor=actor))


def _asset_routes(path: str, kind: AssetKind) -> None:
    async def list_kind(
        b: BusDep,
        filters: Filters,
        status_: Annotated[AssetStatus | None, Query(alias="status")] = None,
        fqn: str | None = None,
        name: str | None = None,
    ) -> AssetPage:
        return await b.request(
            ListAssets(filters=filters, kind=kind, status=status_, fqn=fqn, name=name)
        )

    async def get_kind(accession_id: UUID, b: BusDep) -> Asset:
        asset = await b.request(GetAsset(accession_id=accession_id))
        if asset.kind != kind:
            raise NotFound(f"{kind} {accession_id} not found")
        return asset

    router.add_api_route(
        f"/{path}", list_kind, methods=["GET"], tags=["inventory"], name=f"list_{path}"
    )
    router.add_api_route(
        f"/{path}/{{accession_id}}",
        get_kind,
        methods=["GET"],
        tags=["inventory"],
        name=f"get_{path}",
    )


for _path, _kind in (("machines", "machine"), ("resources", "resource"), ("decks", "deck")):
    _asset_routes(_path, _kind)  # type: ignore[arg-type]

_SYNC_TIMEOUT = 300.0
