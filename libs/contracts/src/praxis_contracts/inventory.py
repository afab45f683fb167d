"""Inventory authoring (owned by the asset-manager): the type catalog, workcell and asset CRUD,
and asset status history.

Reads of workcells and assets (``ListAssets``, ``GetAsset``, ``GetWorkcellLayout``, …) and the
one-step ``RegisterWorkcell`` live in :mod:`praxis_contracts.assets`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from praxis_contracts.assets import Asset, AssetStatus, Workcell
from praxis_contracts.base import Empty, Event, Request
from praxis_contracts.common import AssetKind, Page, SearchFilters

USER_SETTABLE_STATUSES = frozenset(
    {AssetStatus.AVAILABLE, AssetStatus.MAINTENANCE, AssetStatus.ERROR}
)
"""Statuses a user may set; ``reserved`` and ``in_use`` follow leases and runs only."""

_WORKCELL_NAME = r"^[A-Za-z0-9_-]{1,64}$"
"""A workcell's name is a NATS subject token, a bucket suffix and its orchestrator's user name:
letters, digits, ``_`` and ``-`` (no dot), at most 64."""


# -- catalog ------------------------------------------------------------------------------------
class CatalogEntry(BaseModel):
    """A PyLabRobot resource or machine type installed with the asset-manager."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    fqn: str = Field(description="Defining module + qualified name, e.g. 'pylabrobot.….Plate'.")
    name: str = Field(description="The class or function name alone.")
    kind: AssetKind = Field(description="What an asset of this type is.")
    is_factory: bool = Field(description="A function returning a resource (most labware).")
    instantiable: bool = Field(
        default=False,
        description="Whether an asset can be created from the type name alone (no definition).",
    )
    category: str | None = Field(
        default=None, description="PyLabRobot's category default, e.g. 'plate', 'tip_rack'."
    )
    module: str = Field(description="The defining module.")
    bases: list[str] = Field(
        description="fqns of the resulting class and its PyLabRobot ancestors, class first."
    )
    pylabrobot_version: str


class CatalogPage(Page[CatalogEntry]):
    pass


class ListCatalog(Request[CatalogPage]):
    """List the installed PyLabRobot types; sortable by fqn, name, kind, category, module."""

    subject: ClassVar[str] = "praxis.rpc.asset.list_catalog"
    reply_type: ClassVar[type[BaseModel]] = CatalogPage

    filters: SearchFilters = Field(default_factory=SearchFilters)
    kind: AssetKind | None = None
    search: str | None = Field(
        default=None, description="Case-insensitive substring of the fqn or the name."
    )
    is_factory: bool | None = None
    base: str | None = Field(
        default=None, description="Only types whose ancestry contains this class fqn."
    )


# -- workcells ----------------------------------------------------------------------------------
class CreateWorkcell(Request[Workcell]):
    """Create an empty workcell; ``conflict`` if the name is taken."""

    subject: ClassVar[str] = "praxis.rpc.asset.create_workcell"
    reply_type: ClassVar[type[BaseModel]] = Workcell

    name: str = Field(min_length=1, max_length=200, pattern=_WORKCELL_NAME)
    description: str = Field(default="", max_length=2000)
    properties: dict[str, Any] = Field(default_factory=dict)


class UpdateWorkcell(Request[Workcell]):
    """Change a workcell's description and/or properties (``None`` leaves a field as it is)."""

    subject: ClassVar[str] = "praxis.rpc.asset.update_workcell"
    reply_type: ClassVar[type[BaseModel]] = Workcell

    workcell: str = Field(description="Workcell name or accession id.")
    description: str | None = Field(default=None, max_length=2000)
    properties: dict[str, Any] | None = Field(
        default=None, description="Replaces the properties object as a whole."
    )
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


class DeleteWorkcell(Request[Empty]):
    """Delete a workcell and its assets; ``conflict`` while any of them is reserved or in use."""

    subject: ClassVar[str] = "praxis.rpc.asset.delete_workcell"
    reply_type: ClassVar[type[BaseModel]] = Empty

    workcell: str = Field(description="Workcell name or accession id.")
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


# -- assets -------------------------------------------------------------------------------------
class Position(BaseModel):
    """A point in millimetres (PyLabRobot's ``Coordinate``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x: float
    y: float
    z: float


class CreateAsset(Request[Asset]):
    """Add a machine, deck, carrier or piece of labware to a workcell by catalog type name.

    Without a ``definition`` the type is built by PyLabRobot from its name: a factory or class
    that needs nothing but a name as it is, others with ``arguments`` (a machine's size, a
    heater-shaker's ``child_location``, a liquid handler's ``deck`` by type name) and, for a
    machine, ``backend`` by class name with its settings. What it builds is serialized into the
    definition; a machine's deck becomes an asset of its own (named like PyLabRobot names it, or
    as ``arguments.deck.name`` says), child of the machine. Placed in ``parent``: in the
    resource ``slot`` of it (a carrier site, which places it by itself), or at ``location`` /
    Hamilton ``rails`` (a carrier on a deck); the whole workcell is then built to check it fits.
    """

    subject: ClassVar[str] = "praxis.rpc.asset.create_asset"
    reply_type: ClassVar[type[BaseModel]] = Asset

    workcell: str = Field(description="Workcell name or accession id.")
    kind: AssetKind
    name: str = Field(min_length=1, max_length=200, description="Unique within the workcell.")
    fqn: str = Field(min_length=1, description="Catalog type: a class or factory fqn.")
    definition: dict[str, Any] | None = Field(
        default=None, description="PyLabRobot serialize() output; built from the type if None."
    )
    backend: dict[str, Any] | None = Field(
        default=None,
        description="Machines: the backend by class name and its settings, "
        "{'type': 'LiquidHandlerChatterboxBackend', 'settings': {'num_channels': 8}}, "
        "or PyLabRobot's own serialized form.",
    )
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="Constructor arguments when the type needs more than a name: numbers, "
        "strings, {'x','y','z'} for a Coordinate, a type name (or {'type', 'name'}) for a deck.",
    )
    state: dict[str, Any] | None = Field(
        default=None, description="PyLabRobot serialize_all_state() to load, e.g. well volumes."
    )
    parent: str | None = Field(
        default=None, description="Name or accession id of the parent asset in the workcell."
    )
    slot: str | None = Field(
        default=None, description="The resource of the parent it sits in (a carrier site)."
    )
    location: Position | None = Field(
        default=None, description="Where in the parent (or its slot), for what no site places."
    )
    rails: int | None = Field(
        default=None, ge=-4, le=60, description="A Hamilton deck's rail to place a carrier on."
    )
    properties: dict[str, Any] = Field(default_factory=dict)
    shareable: bool = False
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


class UpdateAsset(Request[Asset]):
    """Change an asset; fields left ``None`` stay as they are.

    Name, parent, slot and status cannot change while the asset is reserved or in use
    (``conflict``); ``reserved`` and ``in_use`` are never set by users (``invalid_request``).
    """

    subject: ClassVar[str] = "praxis.rpc.asset.update_asset"
    reply_type: ClassVar[type[BaseModel]] = Asset

    accession_id: UUID
    kind: AssetKind | None = Field(
        default=None, description="If set, the asset must be of this kind (else not_found)."
    )
    name: str | None = Field(default=None, min_length=1, max_length=200)
    properties: dict[str, Any] | None = Field(
        default=None, description="Replaces the properties object as a whole."
    )
    status: AssetStatus | None = Field(default=None, description="available, maintenance or error.")
    reason: str = Field(default="", max_length=2000, description="Why the status changed.")
    parent: str | None = Field(
        default=None, description="Move under this asset (name or accession id)."
    )
    slot: str | None = None
    detach: bool = Field(default=False, description="Remove from its parent (and slot).")
    shareable: bool | None = None
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


class DeleteAsset(Request[Empty]):
    """Delete an asset; ``conflict`` while it is reserved or in use, or holds other assets."""

    subject: ClassVar[str] = "praxis.rpc.asset.delete_asset"
    reply_type: ClassVar[type[BaseModel]] = Empty

    accession_id: UUID
    kind: AssetKind | None = Field(
        default=None, description="If set, the asset must be of this kind (else not_found)."
    )
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


# -- status -------------------------------------------------------------------------------------
class AssetStatusChanged(Event):
    """An asset's status changed (``previous`` is None when the asset was created)."""

    subject: ClassVar[str] = "praxis.evt.asset.asset.status_changed"
    keyed: ClassVar[bool] = True

    asset_id: UUID
    workcell_id: UUID
    name: str
    status: AssetStatus
    previous: AssetStatus | None = None
    reason: str = ""
    run_id: UUID | None = Field(default=None, description="The run behind the change, if any.")
    actor: str | None = Field(
        default=None, description="Principal whose request made the change; none for the system."
    )
    at: datetime

    def subject_key(self) -> str:
        return str(self.asset_id)


class AssetMoved(Event):
    """A run moved a piece of labware (between carrier sites, into or out of a machine, off the
    deck): the inventory now has it where the live workcell does (``parent``, ``slot``), so the
    next run and the workcell's layout see the deck as it is. Read from the run's recorded
    state (``snapshot_id``)."""

    subject: ClassVar[str] = "praxis.evt.asset.asset.moved"
    keyed: ClassVar[bool] = True

    asset_id: UUID
    workcell_id: UUID
    name: str
    parent_id: UUID | None = Field(description="The asset it is in now; none: off the deck.")
    parent: str | None = None
    slot: str | None = Field(default=None, description="The resource of the parent it is in.")
    previous_parent_id: UUID | None = None
    previous_parent: str | None = None
    previous_slot: str | None = None
    run_id: UUID | None = Field(default=None, description="The run that moved it.")
    snapshot_id: UUID
    at: datetime

    def subject_key(self) -> str:
        return str(self.asset_id)


class AssetStatusHistoryEntry(BaseModel):
    """One recorded status change of an asset."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    asset_id: UUID
    status: AssetStatus
    previous: AssetStatus | None = None
    reason: str = ""
    run_id: UUID | None = None
    at: datetime


class AssetStatusHistoryPage(Page[AssetStatusHistoryEntry]):
    pass


class ListAssetStatusHistory(Request[AssetStatusHistoryPage]):
    """Status changes, newest first by default; ``protocol_run_accession_id`` filters by run."""

    subject: ClassVar[str] = "praxis.rpc.asset.list_status_history"
    reply_type: ClassVar[type[BaseModel]] = AssetStatusHistoryPage

    accession_id: UUID | None = Field(default=None, description="One asset; every asset if None.")
    kind: AssetKind | None = Field(
        default=None, description="If set, the asset must be of this kind (else not_found)."
    )
    filters: SearchFilters = Field(default_factory=SearchFilters)
    status: AssetStatus | None = None
