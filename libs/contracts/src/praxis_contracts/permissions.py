"""Who may publish, consume, request and answer what on NATS: the one declaration.

Each service connects as its own identity (a NATS user); ``praxis_runtime.natsauth`` turns
these declarations into a nats-server ``authorization`` block. Everything is stated with the
message classes and the topology specs, so a renamed subject or bucket cannot drift from it; a
unit test checks the declaration against the services' handler registrations, and an
integration test tries every identity against every JetStream verb, store and subject family.

- ``publishes``: message types the identity may publish, with the keys it may use
  (``Publishes``): ``orchestrator-X`` publishes run events only under workcell X's key.
- ``consumes``: JetStream consumers the identity may create and read: type, durable name and
  key (the filter subject). Only the orchestrator of workcell X consumes ``...execute.X``.
- ``requests`` / ``responds``: core request/reply (``praxis.rpc...``).
- ``reads_events``: may open ephemeral (ordered) consumers on the events stream (live streams).
- ``reads_dead_letters``: may read the dead-letter stream, one message at a time (the
  operators' view over HTTP); nobody but the consumers writes it.
- ``key_values`` / ``object_stores``: buckets, read-only or writable; ``keys`` narrows writes.
- ``claims``: it has a claims store of its own (it sends requests or replies over the inline
  threshold); whoever requests or responds reads every claims store.
- Consumers dead-letter what they cannot process: a consumer of ``S`` may publish
  ``praxis.dlq.<S minus praxis.>`` (``dead_letter_subject``). An identity with consumers answers
  the replays of its dead letters (``ReplayDeadLetter`` keyed ``<identity>.<durable>``: it reads
  one dead letter by sequence and announces ``DeadLetterReplayed`` under the same key).

No service identity creates, updates, seals, purges or deletes a stream, bucket or store:
``provisioner`` creates and updates them, once at deploy or start-up
(``praxis_runtime.provision``), and deletes or purges nothing; the services only bind to what
exists. One exception cannot be narrowed: deleting or replacing an object purges its chunks'
subject, a filter in the purge request's body, so a store's writers may purge that store.
``audit`` reads events, and answers the audit trail's queries; ``subscriber`` only reads events
(for subscribers outside Praxis). The ``operator`` identity
(tooling, tests, the chaos harness) may do everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from praxis_contracts.assets import (
    AssetsHeld,
    AssetsReleased,
    AssetsReserved,
    CheckReservation,
    ForceReleaseLease,
    GetAsset,
    GetWorkcellLayout,
    HoldAssets,
    LeaseExpired,
    LeaseForceReleased,
    ListAssets,
    ListLeases,
    ListWorkcells,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationFailed,
    ReservationWaiting,
    ReserveAssets,
    SetWorkcellDrain,
    WorkcellChanged,
)
from praxis_contracts.audit import ListAuditEvents
from praxis_contracts.base import Event, Message, Request
from praxis_contracts.deadletters import ReplayDeadLetter
from praxis_contracts.inventory import (
    AssetMoved,
    AssetStatusChanged,
    CreateAsset,
    CreateWorkcell,
    DeleteAsset,
    DeleteWorkcell,
    ListAssetStatusHistory,
    ListCatalog,
    UpdateAsset,
    UpdateWorkcell,
)
from praxis_contracts.protocols import (
    DeleteProtocolSource,
    ListProtocolDefinitions,
    ListProtocolSources,
    ProtocolSourceSynced,
    RegisterProtocolSource,
    ResolveProtocol,
    SyncProtocolSource,
)
from praxis_contracts.runs import (
    ControlRun,
    ControlRunExecution,
    ExecuteRun,
    FunctionCallRecorded,
    GetCallResult,
    GetRun,
    ListEdges,
    ListRunCalls,
    ListRunLogs,
    ListRuns,
    RunBlocked,
    RunEventRefused,
    RunFinished,
    RunHandedBack,
    RunLogged,
    RunPaused,
    RunPreparing,
    RunResumed,
    RunStarted,
    RunStatusChanged,
    SubmitRun,
)
from praxis_contracts.state import (
    GetSnapshot,
    ListSnapshots,
    RestoreSnapshot,
    SetAssetState,
    WorkcellStateRecorded,
    WorkcellStateRestored,
)
from praxis_contracts.topology import (
    API_TOKENS,
    ASSET_LEASES,
    EDGES,
    EVENTS,
    KEY_VALUES,
    OBJECT_STORES,
    PROTOCOL_CODE,
    STATE_PREFIX,
    STREAMS,
    KeyValueSpec,
    ObjectStoreSpec,
    StreamSpec,
    claims,
    dead_letter_subject,
    workcell_state,
)

OPERATOR = "operator"
PROVISIONER = "provisioner"
AUDIT = "audit"
SUBSCRIBER = "subscriber"
ANY_WORKCELL = "*"


@dataclass(frozen=True)
class Publishes:
    """A message type an identity may publish; ``key`` is the pattern its key tokens must
    match (``None``: any key of a keyed type)."""

    message_type: type[Message]
    key: str | None = None

    @property
    def subject(self) -> str:
        if not self.message_type.keyed:
            return self.message_type.subject
        return f"{self.message_type.subject}.{self.key or '>'}"


@dataclass(frozen=True)
class Consumes:
    """A durable JetStream consumer an identity may create and read."""

    message_type: type[Message]
    durable: str
    key: str | None = None

    @property
    def filter_subject(self) -> str:
        return self.message_type.subscription_subject(self.key)

    @property
    def dead_letter_subject(self) -> str:
        return dead_letter_subject(self.filter_subject)


@dataclass(frozen=True)
class Bucket:
    """A KV bucket or object store an identity uses; ``keys`` narrows what it may write."""

    bucket: str
    write: bool = False
    keys: str = ">"


@dataclass(frozen=True)
class Identity:
    """One NATS user: what it may do. ``name`` is its user name and inbox token."""

    name: str
    publishes: tuple[Publishes, ...] = ()
    consumes: tuple[Consumes, ...] = ()
    requests: tuple[type[Request[Any]], ...] = ()
    responds: tuple[type[Request[Any]], ...] = ()
    reads_events: bool = False
    reads_dead_letters: bool = False
    key_values: tuple[Bucket, ...] = ()
    object_stores: tuple[Bucket, ...] = ()
    claims: bool = False
    admin: bool = False
    provisions: bool = False

    @property
    def inbox_prefix(self) -> str:
        """Where its replies and push deliveries arrive; only it may subscribe there."""
        return f"_INBOX.{self.name}"

    @property
    def uses_claims(self) -> bool:
        """It sends or answers requests: it reads claimed bodies."""
        return bool(self.requests or self.responds)


def _any(*types: type[Message]) -> tuple[Publishes, ...]:
    return tuple(Publishes(t) for t in types)


RUN_EVENTS: tuple[type[Event], ...] = (
    RunPreparing,
    RunStarted,
    RunPaused,
    RunResumed,
    RunFinished,
    RunBlocked,
    RunHandedBack,
    FunctionCallRecorded,
    RunLogged,
)
"""Events an edge publishes about its runs, keyed ``<workcell>.<run id>``."""
ORCHESTRATOR_EVENTS: tuple[type[Event], ...] = (*RUN_EVENTS, WorkcellStateRecorded)

SCHEDULER = Identity(
    name="scheduler",
    publishes=_any(
        RunStatusChanged,
        RunEventRefused,
        ReserveAssets,
        ReleaseAssets,
        HoldAssets,
        ExecuteRun,
        ControlRunExecution,
    ),
    consumes=(
        Consumes(AssetsReserved, "scheduler-reserved"),
        Consumes(ReservationFailed, "scheduler-reservation-failed"),
        Consumes(LeaseExpired, "scheduler-lease-expired"),
        Consumes(FunctionCallRecorded, "scheduler-calls"),
        Consumes(RunLogged, "scheduler-run-logged"),
        Consumes(RunFinished, "scheduler-run-finished"),
        Consumes(RunPreparing, "scheduler-run-preparing"),
        Consumes(RunStarted, "scheduler-run-started"),
        Consumes(RunPaused, "scheduler-run-paused"),
        Consumes(RunResumed, "scheduler-run-resumed"),
        Consumes(RunHandedBack, "scheduler-run-handed-back"),
        Consumes(ReservationWaiting, "scheduler-reservation-waiting"),
    ),
    requests=(ResolveProtocol, CheckReservation),
    responds=(SubmitRun, GetRun, ListRuns, ControlRun, ListRunCalls, ListRunLogs, ListEdges),
    key_values=(Bucket(EDGES.bucket),),
    claims=True,
)

CODE_MANAGER = Identity(
    name="code-manager",
    publishes=_any(ProtocolSourceSynced),
    responds=(
        RegisterProtocolSource,
        SyncProtocolSource,
        ListProtocolSources,
        ListProtocolDefinitions,
        ResolveProtocol,
        DeleteProtocolSource,
    ),
    object_stores=(Bucket(PROTOCOL_CODE.bucket, write=True),),
    claims=True,
)

GATEWAY = Identity(
    name="gateway",
    requests=(
        SubmitRun,
        GetRun,
        ListRuns,
        ControlRun,
        ListRunCalls,
        ListRunLogs,
        GetCallResult,
        RegisterProtocolSource,
        SyncProtocolSource,
        ListProtocolSources,
        ListProtocolDefinitions,
        RegisterWorkcell,
        GetWorkcellLayout,
        ListWorkcells,
        ListAssets,
        GetAsset,
        ListLeases,
        ForceReleaseLease,
        ListCatalog,
        CreateWorkcell,
        UpdateWorkcell,
        DeleteWorkcell,
        CreateAsset,
        UpdateAsset,
        DeleteAsset,
        ListAssetStatusHistory,
        DeleteProtocolSource,
        ListSnapshots,
        GetSnapshot,
        RestoreSnapshot,
        SetAssetState,
        SetWorkcellDrain,
        ListEdges,
        ListAuditEvents,
        ReplayDeadLetter,
    ),
    reads_events=True,
    # Dead letters for operators over HTTP (admins): read, never written or deleted.
    reads_dead_letters=True,
    # API tokens: each gateway watches the bucket and writes tokens, revocations, last use.
    key_values=(Bucket(API_TOKENS.bucket, write=True),),
    claims=True,
)

AUDIT_IDENTITY = Identity(name=AUDIT, reads_events=True, responds=(ListAuditEvents,), claims=True)
"""The audit service: it reads the events stream (from where its trail ends) and answers the
trail's queries; it publishes nothing and consumes no command."""
SUBSCRIBER_IDENTITY = Identity(name=SUBSCRIBER, reads_events=True)
"""Event subscribers outside Praxis (metrics, a lab's own audit): they read the events stream
and nothing else; unlike ``audit`` they answer nothing, so none can pose as the trail."""
PROVISIONER_IDENTITY = Identity(name=PROVISIONER, provisions=True)
"""Creates and updates the streams, buckets and stores, once at deploy or start-up."""
OPERATOR_IDENTITY = Identity(name=OPERATOR, admin=True)


def asset_manager(workcells: Sequence[str]) -> Identity:
    """The asset-manager: it reads, prunes and writes (``restored``) every workcell's state
    snapshots, so its permissions name each workcell's store."""
    return Identity(
        name="asset-manager",
        publishes=_any(
            AssetsReserved,
            AssetsReleased,
            AssetsHeld,
            ReservationFailed,
            ReservationWaiting,
            LeaseExpired,
            LeaseForceReleased,
            AssetStatusChanged,
            AssetMoved,
            WorkcellStateRestored,
            WorkcellChanged,
        ),
        consumes=(
            Consumes(ReserveAssets, "asset-manager-reserve"),
            Consumes(ReleaseAssets, "asset-manager-release"),
            Consumes(HoldAssets, "asset-manager-hold"),
            Consumes(RunStarted, "asset-manager-run-started"),
            Consumes(WorkcellStateRecorded, "asset-manager-state-recorded"),
        ),
        responds=(
            RegisterWorkcell,
            GetWorkcellLayout,
            ListWorkcells,
            ListAssets,
            GetAsset,
            ListLeases,
            ForceReleaseLease,
            CheckReservation,
            ListCatalog,
            CreateWorkcell,
            UpdateWorkcell,
            DeleteWorkcell,
            CreateAsset,
            UpdateAsset,
            DeleteAsset,
            ListAssetStatusHistory,
            ListSnapshots,
            GetSnapshot,
            RestoreSnapshot,
            SetAssetState,
            SetWorkcellDrain,
            GetCallResult,
        ),
        # Edge heartbeats (read only): a run is placed only where an orchestrator accepts it.
        key_values=(Bucket(ASSET_LEASES.bucket, write=True), Bucket(EDGES.bucket)),
        object_stores=tuple(
            Bucket(workcell_state(w).bucket, write=True) for w in dict.fromkeys(workcells)
        ),
        claims=True,
    )


def orchestrator_identity_name(workcell: str) -> str:
    """``orchestrator-<workcell>``; ``orchestrator`` for the any-workcell identity."""
    return "orchestrator" if workcell == ANY_WORKCELL else f"orchestrator-{workcell}"


def orchestrator(workcell: str) -> Identity:
    """The orchestrator of ``workcell``: it alone consumes that workcell's commands, publishes
    events of its runs (keyed ``<workcell>.<run>``), renews and releases leases under
    ``asset.<workcell>.``, beats under ``edge.<workcell>.`` and writes its state snapshots
    into its workcell's store. ``ANY_WORKCELL`` gives one identity for every workcell (test
    fixtures, whose workcells are named at random)."""
    durable = "*" if workcell == ANY_WORKCELL else f"orchestrator-{workcell}"
    control = "*" if workcell == ANY_WORKCELL else f"orchestrator-control-{workcell}"
    state = "*" if workcell == ANY_WORKCELL else f"orchestrator-state-{workcell}"
    return Identity(
        name=orchestrator_identity_name(workcell),
        publishes=(
            *(Publishes(t, f"{workcell}.*") for t in RUN_EVENTS),
            Publishes(WorkcellStateRecorded, workcell),
        ),
        consumes=(
            Consumes(ExecuteRun, durable, workcell),
            Consumes(ControlRunExecution, control, workcell),
            Consumes(WorkcellStateRestored, state, workcell),
        ),
        requests=(GetWorkcellLayout,),
        key_values=(
            Bucket(ASSET_LEASES.bucket, write=True, keys=f"asset.{workcell}.>"),
            Bucket(EDGES.bucket, write=True, keys=f"edge.{workcell}.>"),
        ),
        object_stores=(
            Bucket(PROTOCOL_CODE.bucket),
            Bucket(workcell_state(workcell).bucket, write=True),
        ),
    )


def services(workcells: Sequence[str]) -> dict[str, Identity]:
    """The service identities of a deployment (the orchestrators' depend on their workcells)."""
    fixed = (SCHEDULER, asset_manager(workcells), CODE_MANAGER, GATEWAY, AUDIT_IDENTITY)
    return {i.name: i for i in fixed}


def identities(workcells: Sequence[str]) -> list[Identity]:
    """Every identity of a deployment whose orchestrators serve ``workcells``."""
    return [
        *services(workcells).values(),
        *(orchestrator(w) for w in dict.fromkeys(workcells)),
        SUBSCRIBER_IDENTITY,
        PROVISIONER_IDENTITY,
        OPERATOR_IDENTITY,
    ]


def identity_for_service(service: str, workcell: str | None = None) -> str:
    """The identity (user) name a service process connects as."""
    if service == "orchestrator":
        if workcell is None:
            raise ValueError("the orchestrator's identity depends on its workcell")
        return orchestrator_identity_name(workcell)
    if service not in services(()):
        raise KeyError(f"no NATS identity is declared for service {service!r}")
    return service


@dataclass(frozen=True)
class Topology:
    """Every stream, bucket and store a deployment needs (what provisioning creates)."""

    streams: tuple[StreamSpec, ...]
    key_values: tuple[KeyValueSpec, ...]
    object_stores: tuple[ObjectStoreSpec, ...]


def topology(workcells: Sequence[str]) -> Topology:
    """The topology of a deployment whose orchestrators serve ``workcells``: the fixed
    streams, buckets and stores, a state store per workcell, a claims store per identity that
    sends large bodies."""
    writers = [i.name for i in services(workcells).values() if i.claims]
    stores = (
        *OBJECT_STORES,
        *(workcell_state(w) for w in dict.fromkeys(workcells) if w != ANY_WORKCELL),
        *(claims(name) for name in writers),
    )
    return Topology(tuple(STREAMS), tuple(KEY_VALUES), stores)


def needs(identity: Identity) -> Topology:
    """What ``identity`` binds to (and checks at start-up): the bus's streams if it uses the bus
    (only the events stream if it only reads events: ``audit`` reads events and nothing else),
    the buckets and stores it uses, and every claims store if it sends or answers requests."""
    used_kv = {b.bucket for b in identity.key_values}
    used_os = {b.bucket for b in identity.object_stores}
    stores = [spec for spec in OBJECT_STORES if spec.bucket in used_os]
    stores += [
        workcell_state(bucket.removeprefix(STATE_PREFIX))
        for bucket in sorted(used_os)
        if bucket.startswith(STATE_PREFIX) and ANY_WORKCELL not in bucket
    ]
    if identity.uses_claims:
        stores += [claims(i.name) for i in services(()).values() if i.claims]
    kvs = tuple(kv for kv in KEY_VALUES if kv.bucket in used_kv)
    bus = identity.publishes or identity.consumes or identity.requests or identity.responds
    streams = tuple(STREAMS) if bus else (EVENTS,) if identity.reads_events else ()
    return Topology(streams, kvs, tuple(stores))
