"""Inventory and reservations (owned by the asset-manager)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from praxis_contracts.base import Command, Event, Request
from praxis_contracts.common import AssetKind, Page, SearchFilters
from praxis_contracts.errors import ErrorReply
from praxis_contracts.protocols import AssetRequirementSpec


class AssetStatus(StrEnum):
    AVAILABLE = "available"
    IN_USE = "in_use"
    RESERVED = "reserved"
    MAINTENANCE = "maintenance"
    ERROR = "error"


class Workcell(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    accession_id: UUID
    name: str
    description: str = ""
    properties: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    drained: bool = Field(
        default=False,
        description="Drained (maintenance, an upgrade): no new run is placed here; runs already "
        "on it go on. Runs that want it wait (``waiting_for: workcell_drained``).",
    )
    drain_reason: str | None = Field(default=None, description="Why, as the operator said.")


class Asset(BaseModel):
    """A machine, deck or piece of labware in a workcell."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    accession_id: UUID
    workcell_id: UUID
    kind: AssetKind
    name: str = Field(description="Unique within the workcell; the PyLabRobot resource name.")
    fqn: str = Field(description="Fully-qualified PyLabRobot class or factory name.")
    type_mro: list[str] = Field(description="fqn of the class and its PyLabRobot base classes.")
    definition: dict[str, Any] = Field(description="PyLabRobot serialize() output.")
    backend: dict[str, Any] | None = Field(
        default=None, description="Machines: backend + settings."
    )
    state: dict[str, Any] | None = Field(
        default=None,
        description="PyLabRobot serialize_all_state() to load, e.g. well volumes: the newest "
        "recorded state (see state_recorded_at), else the state it was created with.",
    )
    state_recorded_at: datetime | None = Field(
        default=None, description="When the orchestrator recorded ``state``; None: as created."
    )
    state_snapshot_id: UUID | None = Field(
        default=None, description="The snapshot ``state`` comes from, if recorded."
    )
    parent_id: UUID | None = None
    slot: str | None = Field(default=None, description="Location within the parent, if any.")
    properties: dict[str, Any] = Field(default_factory=dict)
    shareable: bool = False
    status: AssetStatus = AssetStatus.AVAILABLE
    created_at: datetime
    updated_at: datetime


class AssetDraft(BaseModel):
    """An asset to create; the asset-manager resolves its type and ancestry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AssetKind
    name: str = Field(min_length=1, max_length=200)
    fqn: str = Field(min_length=1)
    definition: dict[str, Any] = Field(default_factory=dict)
    backend: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    parent: str | None = Field(default=None, description="Name of the parent asset, if any.")
    slot: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    shareable: bool = False


class WorkcellLayout(BaseModel):
    """Everything an orchestrator needs to build a workcell's live PyLabRobot objects."""

    model_config = ConfigDict(frozen=True)

    workcell: Workcell
    assets: list[Asset]


class AssetPage(Page[Asset]):
    pass


class WorkcellPage(Page[Workcell]):
    pass


class RegisterWorkcell(Request[WorkcellLayout]):
    """Create a workcell with its assets in one step (idempotent by name: replaces the layout)."""

    subject: ClassVar[str] = "praxis.rpc.asset.register_workcell"
    reply_type: ClassVar[type[BaseModel]] = WorkcellLayout

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    properties: dict[str, Any] = Field(default_factory=dict)
    assets: list[AssetDraft] = Field(default_factory=list)
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


class GetWorkcellLayout(Request[WorkcellLayout]):
    subject: ClassVar[str] = "praxis.rpc.asset.get_layout"
    reply_type: ClassVar[type[BaseModel]] = WorkcellLayout

    workcell: str = Field(description="Workcell name or accession id.")


class ListWorkcells(Request[WorkcellPage]):
    subject: ClassVar[str] = "praxis.rpc.asset.list_workcells"
    reply_type: ClassVar[type[BaseModel]] = WorkcellPage

    filters: SearchFilters = Field(default_factory=SearchFilters)
    name: str | None = None


class ListAssets(Request[AssetPage]):
    subject: ClassVar[str] = "praxis.rpc.asset.list_assets"
    reply_type: ClassVar[type[BaseModel]] = AssetPage

    filters: SearchFilters = Field(default_factory=SearchFilters)
    kind: AssetKind | None = None
    status: AssetStatus | None = None
    fqn: str | None = None
    name: str | None = None


class GetAsset(Request[Asset]):
    subject: ClassVar[str] = "praxis.rpc.asset.get_asset"
    reply_type: ClassVar[type[BaseModel]] = Asset

    accession_id: UUID


class AssetBinding(BaseModel):
    """One requirement bound to one concrete asset under a lease."""

    model_config = ConfigDict(frozen=True)

    requirement: str = Field(description="The protocol parameter the asset is injected as.")
    asset_id: UUID
    asset_name: str
    kind: AssetKind
    fqn: str
    lease_key: str = Field(description="KV key of the lease in the lease bucket.")
    token: int = Field(description="Fencing token: the lease's KV revision at grant time.")
    reason: str = Field(
        default="",
        description="Why this asset: pinned, named like the requirement or the first free one "
        "by name; and inside which of the run's machines it is.",
    )


class Lease(BaseModel):
    """A live lease as listed for operators."""

    model_config = ConfigDict(frozen=True)

    asset_id: UUID
    asset_name: str
    lease_key: str
    run_id: UUID
    token: int = Field(description="Current revision: the fencing token the holder presents.")
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime | None = Field(
        description="None while the lease is held for an intervention (it does not expire)."
    )
    age_seconds: float
    seconds_left: float | None
    held_for_intervention: bool = Field(
        default=False, description="Kept without expiry until an operator resolves the run."
    )


class LeaseList(BaseModel):
    model_config = ConfigDict(frozen=True)

    items: list[Lease]


class ListLeases(Request[LeaseList]):
    subject: ClassVar[str] = "praxis.rpc.asset.list_leases"
    reply_type: ClassVar[type[BaseModel]] = LeaseList

    run_id: UUID | None = None


class ReserveAssets(Command):
    """Bind a run's requirements to assets on one workcell and lease them all, or none."""

    subject: ClassVar[str] = "praxis.cmd.asset.reserve"

    run_id: UUID
    requirements: list[AssetRequirementSpec]
    workcell: str | None = Field(default=None, description="Workcell name or id; any if None.")
    pins: dict[str, str] = Field(
        default_factory=dict, description="Requirement name -> asset name or id to use."
    )
    properties: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Requirement name -> properties the bound asset must have (containment).",
    )
    priority: int = Field(default=0, description="Higher is served first among waiters.")
    ttl_seconds: int | None = Field(
        default=None, ge=1, description="Lease TTL; default from config."
    )
    wait_timeout_seconds: float | None = Field(
        default=None, gt=0, description="Give up (ReservationFailed, timeout) after this long."
    )
    immediate: bool = Field(
        default=False,
        description="Grant now or fail (ReservationFailed, assets_unavailable, naming the "
        "holders); never queued.",
    )
    not_before: AwareDatetime | None = Field(
        default=None,
        description="Not planned before this time: until then it waits holding nothing and "
        "blocking no other run.",
    )
    deadline: AwareDatetime | None = Field(
        default=None,
        description="Give up (ReservationFailed, deadline_passed) if not granted by then.",
    )


class RequirementOptions(BaseModel):
    """The assets of one workcell a requirement could be bound to."""

    model_config = ConfigDict(frozen=True)

    requirement: str
    assets: list[str] = Field(description="Asset names, preferred first.")


class WorkcellMatch(BaseModel):
    """A workcell that could host the run, with every requirement's options there."""

    model_config = ConfigDict(frozen=True)

    workcell_id: UUID
    workcell_name: str
    requirements: list[RequirementOptions]


class ReservationCheck(BaseModel):
    """Where a reservation could be granted once its assets are free (busy ones count)."""

    model_config = ConfigDict(frozen=True)

    workcells: list[WorkcellMatch] = Field(description="Every workcell that could host the run.")


class CheckReservation(Request[ReservationCheck]):
    """Would ``ReserveAssets`` with these fields ever be granted? Leases nothing.

    The same matching as a reservation, with busy assets counted as free (a run waits for those):
    the reply lists the workcells that could host the run; a request that could never be
    granted gets ``no_matching_assets`` naming the workcell, requirement or pin at fault."""

    subject: ClassVar[str] = "praxis.rpc.asset.check_reservation"
    reply_type: ClassVar[type[BaseModel]] = ReservationCheck

    requirements: list[AssetRequirementSpec]
    workcell: str | None = Field(default=None, description="Workcell name or id; any if None.")
    pins: dict[str, str] = Field(
        default_factory=dict, description="Requirement name -> asset name or id to use."
    )
    properties: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Requirement name -> properties the bound asset must have (containment).",
    )


class ReleaseAssets(Command):
    """Release every lease a run holds (idempotent). ``snapshot_id``: the snapshot of the state
    the run left its assets in (``RunFinished.snapshot_id``), recorded into the inventory
    before the leases go, so the next run on them finds them where and as the run left them."""

    subject: ClassVar[str] = "praxis.cmd.asset.release"

    run_id: UUID
    reason: str = ""
    workcell: str | None = None
    snapshot_id: UUID | None = None


class HoldAssets(Command):
    """Keep every lease of a run until it is resolved: the leases stop expiring.

    Sent by the scheduler when a run needs an operator (its edge is gone, so the instruments'
    state is unknown). Each lease is rewritten without a TTL, which also moves its fencing token:
    an edge that comes back can no longer act under the old one. Idempotent."""

    subject: ClassVar[str] = "praxis.cmd.asset.hold"

    run_id: UUID
    reason: str = ""


class AssetsHeld(Event):
    """A run's leases are held without expiry until an operator resolves the run."""

    subject: ClassVar[str] = "praxis.evt.asset.reservation.held"
    keyed: ClassVar[bool] = True

    run_id: UUID
    asset_ids: list[UUID]
    reason: str = ""

    def subject_key(self) -> str:
        return str(self.run_id)


class AssetsReserved(Event):
    subject: ClassVar[str] = "praxis.evt.asset.reservation.granted"
    keyed: ClassVar[bool] = True

    run_id: UUID
    workcell_id: UUID
    workcell_name: str
    bindings: list[AssetBinding]

    def subject_key(self) -> str:
        return str(self.run_id)


class ReservationFailed(Event):
    subject: ClassVar[str] = "praxis.evt.asset.reservation.failed"
    keyed: ClassVar[bool] = True

    run_id: UUID
    error: ErrorReply

    def subject_key(self) -> str:
        return str(self.run_id)


class AssetsReleased(Event):
    subject: ClassVar[str] = "praxis.evt.asset.reservation.released"
    keyed: ClassVar[bool] = True

    run_id: UUID
    asset_ids: list[UUID]
    reason: str = ""

    def subject_key(self) -> str:
        return str(self.run_id)


class WaitReason(StrEnum):
    """Why a run that could be placed somewhere is not placed now."""

    ASSETS_BUSY = "assets_busy"
    """Other runs hold (or queue ahead for) the assets it wants."""
    WAITING_FOR_EDGE = "waiting_for_edge"
    """No workcell that could host it has a live orchestrator accepting runs (none started,
    lost, or stopping for an upgrade); it holds no lease while it waits."""
    WORKCELL_DRAINED = "workcell_drained"
    """Every workcell that could host it is drained by an operator."""
    NOT_BEFORE = "not_before"
    """It was submitted to start no earlier than its ``not_before``; it is planned then."""


class ReservationWaiting(Event):
    """The run cannot be placed now; it waits (by priority, then submission order), holding no
    lease, and is placed as soon as the reason goes."""

    subject: ClassVar[str] = "praxis.evt.asset.reservation.waiting"
    keyed: ClassVar[bool] = True

    run_id: UUID
    blocked_by: list[UUID] = Field(description="Runs holding or queued for the wanted assets.")
    reason: WaitReason = WaitReason.ASSETS_BUSY
    workcells: list[str] = Field(
        default_factory=list,
        description="The workcells that could host the run (for waiting_for_edge and "
        "workcell_drained: the ones it waits for).",
    )

    def subject_key(self) -> str:
        return str(self.run_id)


class SetWorkcellDrain(Request[Workcell]):
    """Drain a workcell (no new run is placed on it; runs on it go on) or resume it. Idempotent:
    draining a drained workcell changes nothing (its reason stays the first one)."""

    subject: ClassVar[str] = "praxis.rpc.asset.drain_workcell"
    reply_type: ClassVar[type[BaseModel]] = Workcell

    workcell: str = Field(description="Workcell name or accession id.")
    drained: bool
    reason: str | None = Field(default=None, max_length=2000)
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


class WorkcellChanged(Event):
    """A workcell was created, registered, changed, deleted, drained or resumed (audit; the
    local stack starts an orchestrator for each new workcell from it)."""

    subject: ClassVar[str] = "praxis.evt.asset.workcell.changed"
    keyed: ClassVar[bool] = True

    workcell: str
    workcell_id: UUID
    change: str = Field(description="created, updated, deleted, drained or resumed")
    drained: bool = False
    reason: str | None = None
    actor: str | None = None
    at: datetime

    def subject_key(self) -> str:
        return self.workcell


class LeaseExpired(Event):
    """A lease reached its TTL without renewal.

    An unclaimed lease (granted, never accepted by an edge) frees its asset. A claimed one
    (``held``: an edge accepted the run and then stopped renewing) does not: the run's state on
    its edge is unknown, so the asset-manager holds the lease for an operator (no TTL, a new
    fencing token) and the scheduler moves the run to ``requires_intervention``."""

    subject: ClassVar[str] = "praxis.evt.asset.lease.expired"
    keyed: ClassVar[bool] = True

    asset_id: UUID
    run_id: UUID | None
    lease_key: str
    token: int = Field(description="The expired lease's last revision.")
    at: datetime
    held: bool = Field(
        default=False,
        description="The lease had been claimed by an edge: it is held for an operator, not freed.",
    )
    edge_instance: str | None = Field(
        default=None, description="The edge process that had claimed it (``held`` only)."
    )

    def subject_key(self) -> str:
        return str(self.asset_id)


class LeaseForceReleased(Event):
    """An operator released a lease; the holder can no longer renew it or act on the asset."""

    subject: ClassVar[str] = "praxis.evt.asset.lease.force_released"
    keyed: ClassVar[bool] = True

    asset_id: UUID
    run_id: UUID
    lease_key: str
    token: int
    reason: str
    at: datetime
    actor: str | None = Field(
        default=None, description="Principal whose request made the change; none for the system."
    )

    def subject_key(self) -> str:
        return str(self.asset_id)


class ForceReleaseLease(Request[Lease]):
    """Release a lease whoever holds it (operations; audited as LeaseForceReleased)."""

    subject: ClassVar[str] = "praxis.rpc.asset.force_release"
    reply_type: ClassVar[type[BaseModel]] = Lease

    asset_id: UUID
    reason: str = Field(min_length=1, max_length=2000)
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )
