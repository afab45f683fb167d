"""Workcell state: snapshots of live labware state, where they are kept, restore and rollback.

The orchestrator owns the live PyLabRobot state of its workcell (volumes, tips). At each run
boundary and protocol checkpoint it writes a ``WorkcellSnapshot`` of the assets the run is bound
to into the ``praxis_workcell_state`` object store (the body can be large: a 96-well plate's state
is ~15 KB, a deck of them far more) and publishes a small ``WorkcellStateRecorded`` naming it
(claim check). The asset-manager records each snapshot's metadata, keeps the newest state of each
asset as the asset's ``state`` (what ``GET /resources/{id}`` and the workcell layout show, so an
orchestrator restarted between runs builds its workcell from it), and prunes all but the newest
``SNAPSHOTS_KEPT`` snapshots of each workcell.

``RestoreSnapshot`` (asset-manager) writes a snapshot's states back as the assets' recorded state,
refusing while a run holds any of them, and publishes ``WorkcellStateRestored`` (the audit record);
the workcell's orchestrator applies it to its live objects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from praxis_contracts.base import Event, Request
from praxis_contracts.common import Page, SearchFilters

OnFailure = Literal["keep", "rollback"]
"""What a failed or cancelled run leaves in its assets' recorded state: what really happened
(``keep``), or their state before the run (``rollback``)."""

SnapshotKind = Literal[
    "run_started", "checkpoint", "run_finished", "rolled_back", "restored", "set"
]
"""``set``: an operator set a labware's state by hand (``SetAssetState``)."""


class Placement(BaseModel):
    """Where a piece of labware physically is, as the live workcell has it: inside the asset
    ``parent`` (the nearest asset above it: a deck, a machine, a plate under a lid; none when
    it was taken off the deck), in the resource ``slot`` of that asset (a carrier site; none
    when it sits in the asset itself), at ``location`` (millimetres from that resource's
    origin; given only where the resource does not place what it holds by itself, e.g. a deck
    position rather than a carrier site)."""

    model_config = ConfigDict(frozen=True)

    parent_id: UUID | None = None
    parent: str | None = None
    slot: str | None = None
    location: tuple[float, float, float] | None = None


class AssetState(BaseModel):
    """One asset's own state (PyLabRobot ``serialize_all_state`` of it, its children but not
    other assets on it), as strict JSON, and for labware where it is (``placement``: a move a
    run made is written back to the inventory)."""

    model_config = ConfigDict(frozen=True)

    asset_id: UUID
    asset_name: str
    state: dict[str, Any]
    placement: Placement | None = None


class SnapshotInfo(BaseModel):
    """What is known of a snapshot without its body."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    snapshot_id: UUID
    workcell_name: str
    kind: SnapshotKind
    run_id: UUID | None = None
    checkpoint: str | None = Field(
        default=None, description="The protocol function call it was taken after, if any."
    )
    taken_at: datetime
    asset_ids: list[UUID] = Field(default_factory=list)
    asset_names: list[str] = Field(default_factory=list)
    object_name: str = Field(description="Its body in the praxis_workcell_state object store.")
    size_bytes: int = 0


class WorkcellSnapshot(SnapshotInfo):
    """A snapshot with its body: the state of each asset it covers."""

    assets: list[AssetState] = Field(default_factory=list)


class SnapshotPage(Page[SnapshotInfo]):
    pass


def snapshot_object_name(workcell_name: str, snapshot_id: UUID) -> str:
    """Where a snapshot's body is kept in the object store."""
    return f"{workcell_name}/{snapshot_id}"


class WorkcellStateRecorded(Event, SnapshotInfo):
    """The orchestrator recorded a snapshot (its body is in the object store, by name)."""

    subject: ClassVar[str] = "praxis.evt.orchestrator.state.recorded"
    keyed: ClassVar[bool] = True

    def subject_key(self) -> str:
        return self.workcell_name


class ListSnapshots(Request[SnapshotPage]):
    """A workcell's snapshots, newest first."""

    subject: ClassVar[str] = "praxis.rpc.asset.list_snapshots"
    reply_type: ClassVar[type[BaseModel]] = SnapshotPage

    workcell: str = Field(description="Workcell name or accession id.")
    run_id: UUID | None = None
    asset: str | None = Field(default=None, description="Only snapshots covering this asset.")
    filters: SearchFilters = Field(default_factory=SearchFilters)


class GetSnapshot(Request[WorkcellSnapshot]):
    """One snapshot with the state of each asset it covers."""

    subject: ClassVar[str] = "praxis.rpc.asset.get_snapshot"
    reply_type: ClassVar[type[BaseModel]] = WorkcellSnapshot

    workcell: str
    snapshot_id: UUID


class RestoreSnapshot(Request[SnapshotInfo]):
    """Make a snapshot's states the recorded state of its assets (all, or those named), and have
    the orchestrator load them. Refused (409) while a run holds any of them. The reply is the
    ``restored`` snapshot recorded for it."""

    subject: ClassVar[str] = "praxis.rpc.asset.restore_snapshot"
    reply_type: ClassVar[type[BaseModel]] = SnapshotInfo

    workcell: str
    snapshot_id: UUID
    reason: str = Field(min_length=1, max_length=2000)
    assets: list[str] | None = Field(default=None, description="Asset names; all if omitted.")
    actor: str | None = Field(default=None, max_length=200)


class SetAssetState(Request[SnapshotInfo]):
    """An operator sets a labware's recorded state by hand (a plate refilled, a tip rack
    replaced): checked by PyLabRobot, written as a snapshot of kind ``set``, loaded by the
    workcell's orchestrator and audited like a restore (``WorkcellStateRestored`` with no
    source). Refused (``conflict``) while a run holds the asset."""

    subject: ClassVar[str] = "praxis.rpc.asset.set_state"
    reply_type: ClassVar[type[BaseModel]] = SnapshotInfo

    accession_id: UUID
    state: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Part name -> fields of its PyLabRobot state to change, e.g. "
        "{'plate_well_A1': {'volume': 150}}; '*' is every well (volume alone also sets "
        "pending_volume).",
    )
    tips: dict[str, bool] = Field(
        default_factory=dict,
        description="A tip rack's spots ('A1') -> whether a tip is there; {'*': true} fills it, "
        "{'*': false} empties it.",
    )
    reason: str = Field(min_length=1, max_length=2000)
    actor: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _changes_something(self) -> SetAssetState:
        if not self.state and not self.tips:
            raise ValueError("give state or tips")
        return self


class WorkcellStateRestored(Event):
    """An operator restored recorded state: the audit record, and the orchestrator's cue to load
    the states of ``restored`` (a snapshot of kind ``restored``, in the object store) into its
    live objects."""

    subject: ClassVar[str] = "praxis.evt.asset.state.restored"
    keyed: ClassVar[bool] = True

    workcell_name: str
    restored: SnapshotInfo
    source_snapshot_id: UUID | None = Field(
        default=None, description="The snapshot restored; none when an operator set the state."
    )
    reason: str
    actor: str | None = None

    def subject_key(self) -> str:
        return self.workcell_name


__all__ = [
    "AssetState",
    "GetSnapshot",
    "ListSnapshots",
    "OnFailure",
    "Placement",
    "RestoreSnapshot",
    "SetAssetState",
    "SnapshotInfo",
    "SnapshotKind",
    "SnapshotPage",
    "WorkcellSnapshot",
    "WorkcellStateRecorded",
    "WorkcellStateRestored",
    "snapshot_object_name",
]
