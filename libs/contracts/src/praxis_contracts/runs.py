"""Protocol runs: submission and queries (scheduler), execution (orchestrator)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from praxis_contracts.assets import AssetBinding
from praxis_contracts.base import Command, Event, Request
from praxis_contracts.common import ErrorInfo, Page, RunStatus, SearchFilters
from praxis_contracts.protocols import ProtocolDefinition
from praxis_contracts.state import OnFailure

RunMode = Literal["queued", "immediate"]
"""``queued``: the run waits for its assets (by priority, then submission order);
``immediate``: it is placed now or refused (409 naming the holders), never left queued."""


class RunView(BaseModel):
    """A protocol run as the scheduler records it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    accession_id: UUID
    protocol_name: str
    protocol_version: str
    definition_id: UUID
    source_commit: str
    status: RunStatus
    parameters: dict[str, Any]
    workcell: str | None = Field(default=None, description="Requested workcell (name or id).")
    workcell_id: UUID | None = Field(default=None, description="Workcell the run was bound to.")
    workcell_name: str | None = None
    bindings: list[AssetBinding] = Field(default_factory=list)
    priority: int = 0
    on_failure: OnFailure = "keep"
    result: Any = None
    error: ErrorInfo | None = None
    final_state: dict[str, Any] | None = None
    asset_states: dict[str, Any] | None = Field(
        default=None, description="PyLabRobot state of each bound asset after the run."
    )
    edge_instance: str | None = Field(
        default=None, description="The orchestrator process executing (or that executed) it."
    )
    waiting_for: str | None = Field(
        default=None,
        description="Why a queued run is not placed yet: assets_busy, waiting_for_edge or "
        "workcell_drained (ReservationWaiting); None once placed.",
    )
    waiting_since: datetime | None = None
    mode: RunMode = "queued"
    not_before: datetime | None = Field(default=None, description="Not started before this.")
    deadline: datetime | None = Field(
        default=None, description="Failed (deadline_passed) if it has not started by then."
    )
    retry_of: UUID | None = Field(default=None, description="The run this one retries.")
    retried_by: UUID | None = Field(default=None, description="The run that retried this one.")
    submitted_by: str | None = Field(
        default=None, description="Principal that submitted the run (or asked for this retry)."
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


SUMMARY_ERROR_CHARS = 200
SUMMARY_PARAMETERS_BYTES = 1024


class RunErrorSummary(BaseModel):
    """What a run list says about a failure: its kind and the start of its message."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str = Field(description="Exception type name, e.g. 'ValueError'.")
    code: str | None = Field(default=None, description="Praxis error code when one applies.")
    message: str = Field(description=f"At most the first {SUMMARY_ERROR_CHARS} characters.")


class RunSummary(BaseModel):
    """A run as lists show it: a few hundred bytes, so that a page of 1,000 fits one message.

    A page travels as one NATS message (1 MB at most). ``result``, ``final_state``,
    ``asset_states`` (tens of KB per run) and the error's traceback can be any size, so lists
    leave them out, as they leave out the ids and lease details ``GetRun``'s ``RunView`` has.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    accession_id: UUID
    protocol_name: str
    protocol_version: str
    status: RunStatus
    priority: int = 0
    workcell: str | None = Field(default=None, description="Requested workcell (name or id).")
    workcell_name: str | None = Field(default=None, description="Workcell the run was bound to.")
    waiting_for: str | None = Field(
        default=None, description="Why a queued run is not placed yet (see RunView)."
    )
    waiting_since: datetime | None = Field(default=None, description="Since when it waits so.")
    not_before: datetime | None = None
    deadline: datetime | None = None
    assets: dict[str, str] = Field(
        default_factory=dict, description="Requirement -> name of the asset bound to it."
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description=f"The run's parameters; null when their JSON exceeds "
        f"{SUMMARY_PARAMETERS_BYTES} bytes (GetRun has them).",
    )
    error: RunErrorSummary | None = None
    retry_of: UUID | None = Field(default=None, description="The run this one retries.")
    retried_by: UUID | None = Field(default=None, description="The run that retried this one.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunPage(Page[RunSummary]):
    """A page of run summaries; ``GetRun`` for a run's result, states and traceback.

    At most ``limit`` items, and fewer when they would not fit one message (about 512 KB of
    items): continue at ``offset + len(items)`` until ``total``."""


class SubmitRun(Request[RunView]):
    """Create a run of a discovered protocol; the reply is the queued run."""

    subject: ClassVar[str] = "praxis.rpc.scheduler.submit_run"
    reply_type: ClassVar[type[BaseModel]] = RunView

    protocol_name: str | None = Field(default=None, description="Protocol function name.")
    version: str | None = Field(default=None, description="Exact version; newest if omitted.")
    definition_id: UUID | None = Field(default=None, description="Alternative to name+version.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    workcell: str | None = Field(default=None, description="Workcell name or id; any if omitted.")
    assets: dict[str, str] = Field(
        default_factory=dict, description="Requirement name -> asset name or id to use."
    )
    asset_properties: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Requirement name -> properties the bound asset must have.",
    )
    initial_state: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-100, le=100)
    on_failure: OnFailure = Field(
        default="keep",
        description="If the run fails or is cancelled: keep what really happened in its assets' "
        "recorded state, or roll them back to their state before the run.",
    )
    mode: RunMode = Field(
        default="queued",
        description="queued: wait for the assets; immediate: place now or fail "
        "(assets_unavailable, naming the holders), never left queued.",
    )
    not_before: AwareDatetime | None = Field(
        default=None, description="A queued run starts no earlier than this (with time zone)."
    )
    deadline: AwareDatetime | None = Field(
        default=None,
        description="A queued run that has not been placed by then is failed with "
        "deadline_passed (with time zone).",
    )
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )

    @model_validator(mode="after")
    def _names_a_protocol(self) -> SubmitRun:
        if self.protocol_name is None and self.definition_id is None:
            raise ValueError("give protocol_name or definition_id")
        if self.mode == "immediate" and (self.not_before or self.deadline):
            raise ValueError("an immediate run takes no not_before or deadline")
        if self.not_before and self.deadline and self.deadline <= self.not_before:
            raise ValueError("deadline must be after not_before")
        return self


class GetRun(Request[RunView]):
    subject: ClassVar[str] = "praxis.rpc.scheduler.get_run"
    reply_type: ClassVar[type[BaseModel]] = RunView

    run_id: UUID


class ListRuns(Request[RunPage]):
    """Run summaries, one page. ``filters.resource_accession_id`` and
    ``filters.machine_accession_id`` select the runs bound to that asset."""

    subject: ClassVar[str] = "praxis.rpc.scheduler.list_runs"
    reply_type: ClassVar[type[BaseModel]] = RunPage

    filters: SearchFilters = Field(default_factory=SearchFilters)
    status: list[RunStatus] | None = None
    protocol_name: str | None = None


class RunStatusChanged(Event):
    """The scheduler recorded a new status for a run."""

    subject: ClassVar[str] = "praxis.evt.scheduler.run.status_changed"
    keyed: ClassVar[bool] = True

    run_id: UUID
    status: RunStatus
    previous: RunStatus | None
    reason: str = ""
    at: datetime
    actor: str | None = Field(
        default=None, description="Principal whose request made the change; none for the system."
    )

    def subject_key(self) -> str:
        return str(self.run_id)


class RunEventRefused(Event):
    """A security event: the scheduler refused a run event (progress, call, finish) that did not
    come from the edge running the run: another workcell's orchestrator, or another process than
    the one executing it. Never applied; recorded here (and in the scheduler's log)."""

    subject: ClassVar[str] = "praxis.evt.scheduler.security.run_event_refused"
    keyed: ClassVar[bool] = True

    run_id: UUID
    event: str = Field(description="The refused event's type, e.g. RunFinished.")
    workcell: str = Field(description="The workcell that reported it (its subject key).")
    edge_instance: str = Field(description="The process that claimed to report it.")
    run_workcell: str | None = Field(default=None, description="The workcell the run is on.")
    run_edge_instance: str | None = Field(
        default=None, description="The process executing the run."
    )
    reason: str
    at: datetime

    def subject_key(self) -> str:
        return str(self.run_id)


class ExecuteRun(Command):
    """Run a protocol on one workcell's orchestrator with leased assets."""

    subject: ClassVar[str] = "praxis.cmd.orchestrator.execute"
    keyed: ClassVar[bool] = True

    run_id: UUID
    workcell_id: UUID
    workcell_name: str = Field(description="Routing key: orchestrators subscribe by name.")
    definition: ProtocolDefinition
    parameters: dict[str, Any]
    bindings: list[AssetBinding]
    initial_state: dict[str, Any] = Field(default_factory=dict)
    on_failure: OnFailure = "keep"

    def subject_key(self) -> str:
        return self.workcell_name


WORKCELL_NAME = r"^[A-Za-z0-9_-]{1,64}$"
"""A workcell's name is a subject token, a bucket suffix and its orchestrator's user name."""


class _RunEvent(Event):
    """An edge's report on one of its runs, keyed ``<workcell>.<run id>``: the server lets only
    that workcell's orchestrator publish it, and the scheduler believes it only from the edge
    process that runs it (``edge_instance``)."""

    keyed: ClassVar[bool] = True

    run_id: UUID
    workcell: str = Field(pattern=WORKCELL_NAME, description="The workcell whose edge reports.")
    at: datetime
    edge_instance: str = Field(
        min_length=1, description="The orchestrator process that reports (EdgeHeartbeat.instance)."
    )

    def subject_key(self) -> str:
        return f"{self.workcell}.{self.run_id}"


class RunPreparing(_RunEvent):
    """The orchestrator accepted the run and is loading code and assets."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.run.preparing"


class RunStarted(_RunEvent):
    """The protocol function has been called."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.run.started"


RunOutcome = Literal["completed", "failed", "cancelled", "requires_intervention"]


class RunFinished(_RunEvent):
    """The protocol function returned, raised, or was cancelled.

    ``requires_intervention``: the edge gave the run up without knowing the instruments' state
    (a cancel had to abandon a protocol that would not stop, or interrupted an instrument
    command); its leases must be held for an operator, not released."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.run.finished"

    outcome: RunOutcome
    result: Any = None
    error: ErrorInfo | None = None
    final_state: dict[str, Any] = Field(default_factory=dict)
    asset_states: dict[str, Any] = Field(
        default_factory=dict,
        description="PyLabRobot state each bound asset owns, by name (a labware's includes its "
        "wells or tip spots; a machine's or deck's not the labware on it).",
    )
    cleanup: list[str] = Field(
        default_factory=list,
        description="What the edge did to leave the run's machines safe after it failed or was "
        "cancelled (e.g. tips returned), and what it could not do.",
    )
    snapshot_id: UUID | None = Field(
        default=None,
        description="The snapshot of the state (and places) it left its assets in; recorded "
        "into the inventory before its leases are released.",
    )


ExecutionAction = Literal["pause", "resume", "cancel"]
RunAction = Literal["pause", "resume", "cancel", "resolve", "retry"]
ResolveOutcome = Literal["failed", "cancelled"]


class ControlRun(Request[RunView]):
    """An operator's action on a run; the reply is the run with its new status.

    ``pause``, ``resume`` and ``cancel`` act on the execution; ``resolve`` ends a run that
    requires intervention with ``outcome`` (its leases are released); ``retry`` creates a new run
    of the same definition, commit, parameters, pins and priority, linked to this one (the reply
    is the new run)."""

    subject: ClassVar[str] = "praxis.rpc.scheduler.control_run"
    reply_type: ClassVar[type[BaseModel]] = RunView

    run_id: UUID
    action: RunAction
    reason: str = Field(default="", max_length=2000)
    outcome: ResolveOutcome | None = Field(
        default=None, description="resolve: the terminal status the operator decides."
    )
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )

    @model_validator(mode="after")
    def _outcome_for_resolve(self) -> ControlRun:
        if self.action == "resolve" and self.outcome is None:
            raise ValueError("resolve needs an outcome: failed or cancelled")
        return self


class ControlRunExecution(Command):
    """Apply an operator action to a run executing on a workcell (at its next checkpoint)."""

    subject: ClassVar[str] = "praxis.cmd.orchestrator.control"
    keyed: ClassVar[bool] = True

    run_id: UUID
    workcell_name: str
    action: ExecutionAction

    def subject_key(self) -> str:
        return self.workcell_name


class RunHandedBack(_RunEvent):
    """The orchestrator is stopping and gives back a run it accepted but never started: its
    leases are unclaimed and its command goes to the workcell's next orchestrator. The run
    is no longer this process's (a lost process must not take it down with it)."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.run.handed_back"

    reason: str = ""


class RunBlocked(_RunEvent):
    """The protocol has kept its worker's event loop busy (blocking code such as
    ``time.sleep``, or a busy loop) for ``blocked_seconds``: it reaches no checkpoint and no
    pause or cancel can take effect cooperatively. Reported once per stall."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.run.blocked"

    blocked_seconds: float
    last_call: str | None = Field(default=None, description="The last protocol function called.")


LOG_LINE_CHARS = 2000
"""A log line's message is cut to this many characters."""
LOG_BATCH_LINES = 200
"""At most this many lines travel in one ``RunLogged``."""

LogSource = Literal["protocol", "instrument"]


class LogLine(BaseModel):
    """One line of a run's output: the protocol's own (``print``, ``logging``) or its
    instruments' (the backends' output and PyLabRobot's log while they execute its commands)."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=0, description="The line's place in the run's output (from 0).")
    at: datetime
    source: LogSource
    level: str = Field(max_length=20, description="INFO, WARNING ...; print: INFO, stderr: ERROR.")
    logger: str | None = Field(default=None, max_length=200)
    message: str = Field(max_length=LOG_LINE_CHARS)


class RunLogged(_RunEvent):
    """Lines a run wrote (in order; ``lines[i].seq`` runs on from the last batch's)."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.run.logged"

    lines: list[LogLine] = Field(min_length=1, max_length=LOG_BATCH_LINES)


class RunLogPage(Page[LogLine]):
    """A page of a run's output lines in order."""


class ListRunLogs(Request[RunLogPage]):
    """A run's output lines in order (``seq``), optionally one source or from one level up."""

    subject: ClassVar[str] = "praxis.rpc.scheduler.list_logs"
    reply_type: ClassVar[type[BaseModel]] = RunLogPage

    run_id: UUID
    filters: SearchFilters = Field(default_factory=SearchFilters)
    source: LogSource | None = None
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = Field(
        default=None, description="This level and above."
    )


class RunPaused(_RunEvent):
    """The protocol is waiting at a checkpoint (a protocol-function boundary)."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.run.paused"


class RunResumed(_RunEvent):
    """The protocol continued after a pause."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.run.resumed"


CALL_RESULT_BYTES = 4096
"""A nested call's return value is recorded inline up to this JSON size (a page of calls stays
within one message); beyond, a marker with its size, type and the start of its text, and the
whole value by reference (``object_name``) up to ``CALL_RESULT_MAX_BYTES``."""

CALL_RESULT_MAX_BYTES = 8 * 1024 * 1024
"""The largest return value kept whole (in the workcell's state store); past it, the marker."""


def call_result_object(workcell: str, run_id: UUID, sequence: int) -> str:
    """Where a call's large return value is kept, in the workcell's state store."""
    return f"{workcell}/results/{run_id}/{sequence}"


class FunctionCall(BaseModel):
    """One recorded protocol-function call of a run."""

    model_config = ConfigDict(frozen=True)

    call_id: UUID
    run_id: UUID
    parent_call_id: UUID | None
    sequence: int
    function: str
    version: str
    arguments: dict[str, Any]
    status: Literal["running", "completed", "failed", "cancelled"]
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    result: Any = Field(
        default=None,
        description=f"What a completed call returned, as JSON (assets by name); past "
        f"{CALL_RESULT_BYTES} bytes, {{'truncated': true, 'size_bytes', 'type', 'preview', "
        "'object_name'}: the whole value is at GET /protocols/runs/{id}/calls/{sequence}/result "
        f"(up to {CALL_RESULT_MAX_BYTES} bytes; past that, no object_name).",
    )


class FunctionCallRecorded(Event, FunctionCall):
    """A protocol-function call started or ended (nested calls point at their parent); keyed
    ``<workcell>.<run id>`` like the other run events."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.call.recorded"
    keyed: ClassVar[bool] = True

    workcell: str = Field(pattern=WORKCELL_NAME, description="The workcell whose edge reports.")
    edge_instance: str = Field(min_length=1, description="The orchestrator process that reports.")

    def subject_key(self) -> str:
        return f"{self.workcell}.{self.run_id}"


class FunctionCallPage(Page[FunctionCall]):
    pass


class ListRunCalls(Request[FunctionCallPage]):
    """The calls of one run in call order (nested calls name their parent)."""

    subject: ClassVar[str] = "praxis.rpc.scheduler.list_calls"
    reply_type: ClassVar[type[BaseModel]] = FunctionCallPage

    run_id: UUID
    filters: SearchFilters = Field(default_factory=SearchFilters)
    function: str | None = None
    sequence: int | None = Field(default=None, ge=0, description="Only the call of that number.")


class CallResult(BaseModel):
    """A call's whole return value, read from where it is kept by reference."""

    model_config = ConfigDict(frozen=True)

    run_id: UUID
    object_name: str
    result: Any


class GetCallResult(Request[CallResult]):
    """A large call result by its ``object_name`` (``call_result_object``), from the workcell's
    state store (the asset-manager reads them)."""

    subject: ClassVar[str] = "praxis.rpc.asset.get_call_result"
    reply_type: ClassVar[type[BaseModel]] = CallResult

    run_id: UUID
    object_name: str = Field(min_length=1, max_length=400)


class EdgeRun(BaseModel):
    """A run an orchestrator is executing, as its heartbeat reports it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: UUID
    phase: Literal["preparing", "running", "paused"]
    last_call: str | None = Field(default=None, description="The last protocol function called.")
    last_checkpoint_at: datetime | None = None


class EdgeHeartbeat(BaseModel):
    """The value of an orchestrator's key in the edges bucket (``edge.<workcell>.<instance>``).

    Written with a TTL at every beat: the key leaves the bucket when the process stops beating.
    Not a message: it lives in KV, and the scheduler watches the bucket."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    workcell: str
    instance: str = Field(description="Unique per process start.")
    version: str
    started_at: datetime
    at: datetime
    ttl_seconds: int = Field(description="The key expires this long after ``at``.")
    runs: list[EdgeRun] = Field(default_factory=list)
    accepting: bool = Field(
        default=True,
        description="False once the process is stopping (an upgrade, a node drain): it takes no "
        "new run and lets its running protocols finish; new runs for its workcell wait for the "
        "next orchestrator.",
    )

    @property
    def key(self) -> str:
        return edge_key(self.workcell, self.instance)


def edge_key(workcell: str, instance: str) -> str:
    """The heartbeat key of one orchestrator process."""
    return f"edge.{workcell}.{instance}"


class EdgeView(BaseModel):
    """An orchestrator process as the scheduler knows it from its heartbeats."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    workcell: str
    instance: str = Field(description="Unique per process start.")
    version: str
    started_at: datetime
    last_beat_at: datetime = Field(description="When it last wrote its heartbeat.")
    ttl_seconds: int = Field(description="Its heartbeat expires this long after the last.")
    live: bool = Field(
        description="Its heartbeat key is in the bucket. False: it stopped beating (its runs "
        "are handed to an operator once the grace period passes)."
    )
    accepting: bool = Field(description="It takes new runs (False while it stops).")
    runs: list[EdgeRun] = Field(default_factory=list)


class EdgeList(BaseModel):
    model_config = ConfigDict(frozen=True)

    items: list[EdgeView]


class ListEdges(Request[EdgeList]):
    """The orchestrator processes the scheduler knows: live, or gone and within their grace
    period; one workcell's, or every one's. Bounded by the deployment (a process per workcell,
    two during a rolling restart)."""

    subject: ClassVar[str] = "praxis.rpc.scheduler.list_edges"
    reply_type: ClassVar[type[BaseModel]] = EdgeList

    workcell: str | None = None
