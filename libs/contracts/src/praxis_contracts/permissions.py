"""Who may publish, consume, request and answer what on NATS: the one declaration.

Each service connects as its own identity (a NATS user); ``praxis_devstack.natsauth`` turns
these declarations into a nats-server ``authorization`` block. Everything is stated with the
message classes and the topology specs, so a renamed subject or bucket cannot drift from it; a
unit test checks the declaration against the services' handler registrations.

- ``publishes``: message types the identity may publish (every key of a keyed type).
- ``consumes``: JetStream consumers the identity may create and read: type, durable name and
  key (the filter subject). Only the orchestrator of workcell X consumes ``...execute.X``.
- ``requests`` / ``responds``: core request/reply (``praxis.rpc...``).
- ``reads_events``: may open ephemeral (ordered) consumers on the events stream (live streams).
- ``key_values`` / ``object_stores``: buckets, read-only or writable; ``keys`` narrows writes.
- Consumers dead-letter what they cannot process: a consumer of ``S`` may publish
  ``praxis.dlq.<S minus praxis.>`` (``dead_letter_subject``).

The ``operator`` identity (tooling, tests, the chaos harness) may do everything.
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
)
from praxis_contracts.base import Event, Message, Request
from praxis_contracts.inventory import (
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
    GetRun,
    ListRunCalls,
    ListRuns,
    RunBlocked,
    RunFinished,
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
    WorkcellStateRecorded,
    WorkcellStateRestored,
)
from praxis_contracts.topology import (
    API_TOKENS,
    ASSET_LEASES,
    CLAIMS,
    EDGES,
    PROTOCOL_CODE,
    WORKCELL_STATE,
    dead_letter_subject,
)

OPERATOR = "operator"
ANY_WORKCELL = "*"


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
    publishes: tuple[type[Message], ...] = ()
    consumes: tuple[Consumes, ...] = ()
    requests: tuple[type[Request[Any]], ...] = ()
    responds: tuple[type[Request[Any]], ...] = ()
    reads_events: bool = False
    key_values: tuple[Bucket, ...] = ()
    object_stores: tuple[Bucket, ...] = ()
    admin: bool = False

    @property
    def inbox_prefix(self) -> str:
        """Where its replies and push deliveries arrive; only it may subscribe there."""
        return f"_INBOX.{self.name}"


ORCHESTRATOR_EVENTS: tuple[type[Event], ...] = (
    RunPreparing,
    RunStarted,
    RunPaused,
    RunResumed,
    RunFinished,
    RunBlocked,
    FunctionCallRecorded,
    WorkcellStateRecorded,
)

# Requests and replies over the inline threshold travel through the claims store
# (``praxis_runtime.claims``): whoever sends or answers requests writes and reads it.
CLAIMS_STORE = Bucket(CLAIMS.bucket, write=True)

SCHEDULER = Identity(
    name="scheduler",
    publishes=(
        RunStatusChanged,
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
        Consumes(RunFinished, "scheduler-run-finished"),
        Consumes(RunPreparing, "scheduler-run-preparing"),
        Consumes(RunStarted, "scheduler-run-started"),
        Consumes(RunPaused, "scheduler-run-paused"),
        Consumes(RunResumed, "scheduler-run-resumed"),
    ),
    requests=(ResolveProtocol, CheckReservation),
    responds=(SubmitRun, GetRun, ListRuns, ControlRun, ListRunCalls),
    key_values=(Bucket(EDGES.bucket),),
    object_stores=(CLAIMS_STORE,),
)

ASSET_MANAGER = Identity(
    name="asset-manager",
    publishes=(
        AssetsReserved,
        AssetsReleased,
        AssetsHeld,
        ReservationFailed,
        ReservationWaiting,
        LeaseExpired,
        LeaseForceReleased,
        AssetStatusChanged,
        WorkcellStateRestored,
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
    ),
    key_values=(Bucket(ASSET_LEASES.bucket, write=True),),
    # Snapshots: reads them, writes the ``restored`` ones, prunes old ones.
    object_stores=(CLAIMS_STORE, Bucket(WORKCELL_STATE.bucket, write=True)),
)

CODE_MANAGER = Identity(
    name="code-manager",
    publishes=(ProtocolSourceSynced,),
    responds=(
        RegisterProtocolSource,
        SyncProtocolSource,
        ListProtocolSources,
        ListProtocolDefinitions,
        ResolveProtocol,
        DeleteProtocolSource,
    ),
    object_stores=(Bucket(PROTOCOL_CODE.bucket, write=True), CLAIMS_STORE),
)

GATEWAY = Identity(
    name="gateway",
    requests=(
        SubmitRun,
        GetRun,
        ListRuns,
        ControlRun,
        ListRunCalls,
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
    ),
    reads_events=True,
    # API tokens: each gateway watches the bucket and writes tokens, revocations, last use.
    key_values=(Bucket(API_TOKENS.bucket, write=True),),
    object_stores=(CLAIMS_STORE,),
)

OPERATOR_IDENTITY = Identity(name=OPERATOR, admin=True)


def orchestrator_identity_name(workcell: str) -> str:
    """``orchestrator-<workcell>``; ``orchestrator`` for the any-workcell identity."""
    return "orchestrator" if workcell == ANY_WORKCELL else f"orchestrator-{workcell}"


def orchestrator(workcell: str) -> Identity:
    """The orchestrator of ``workcell``: it alone consumes that workcell's commands and
    heartbeats under ``edge.<workcell>.``. ``ANY_WORKCELL`` gives one identity for every
    workcell (test fixtures, whose workcells are named at random)."""
    durable = "*" if workcell == ANY_WORKCELL else f"orchestrator-{workcell}"
    control = "*" if workcell == ANY_WORKCELL else f"orchestrator-control-{workcell}"
    state = "*" if workcell == ANY_WORKCELL else f"orchestrator-state-{workcell}"
    return Identity(
        name=orchestrator_identity_name(workcell),
        publishes=ORCHESTRATOR_EVENTS,
        consumes=(
            Consumes(ExecuteRun, durable, workcell),
            Consumes(ControlRunExecution, control, workcell),
            Consumes(WorkcellStateRestored, state, workcell),
        ),
        requests=(GetWorkcellLayout,),
        # It renews and releases the leases of the runs it executes (compare-and-set on the
        # holder's own revision; the asset-manager grants them).
        key_values=(
            Bucket(ASSET_LEASES.bucket, write=True),
            Bucket(EDGES.bucket, write=True, keys=f"edge.{workcell}.>"),
        ),
        object_stores=(
            Bucket(PROTOCOL_CODE.bucket),
            CLAIMS_STORE,
            # Object stores cannot be narrowed by name (meta subjects carry the name encoded,
            # chunks a random id): it may write the whole bucket, by convention <workcell>/….
            Bucket(WORKCELL_STATE.bucket, write=True),
        ),
    )


SERVICES: dict[str, Identity] = {
    i.name: i for i in (SCHEDULER, ASSET_MANAGER, CODE_MANAGER, GATEWAY)
}
"""The fixed service identities, by name (the orchestrator's depends on its workcell)."""


def identities(workcells: Sequence[str]) -> list[Identity]:
    """Every identity of a deployment whose orchestrators serve ``workcells``."""
    return [
        *SERVICES.values(),
        *(orchestrator(w) for w in dict.fromkeys(workcells)),
        OPERATOR_IDENTITY,
    ]


def identity_for_service(service: str, workcell: str | None = None) -> str:
    """The identity (user) name a service process connects as."""
    if service == "orchestrator":
        if workcell is None:
            raise ValueError("the orchestrator's identity depends on its workcell")
        return orchestrator_identity_name(workcell)
    if service not in SERVICES:
        raise KeyError(f"no NATS identity is declared for service {service!r}")
    return service
