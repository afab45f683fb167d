"""Protocol sources and definitions (owned by the code-manager)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from praxis_contracts.base import Empty, Event, Request
from praxis_contracts.common import AssetKind, Page, SearchFilters


class ParameterSpec(BaseModel):
    """A protocol parameter inferred from a type hint (not a PyLabRobot asset)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    type_hint: str = Field(description="The annotation as written, e.g. 'float'.")
    json_schema: dict[str, Any] = Field(default_factory=dict)
    optional: bool = False
    default: Any = None
    description: str = ""


class AssetRequirementSpec(BaseModel):
    """An asset a protocol needs, inferred from a PyLabRobot type hint."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(description="The parameter name the live object is injected as.")
    type_fqn: str = Field(description="Fully-qualified PyLabRobot class name.")
    kind: AssetKind
    optional: bool = False
    description: str = ""
    moves_in: bool = Field(
        default=False,
        description="Labware the protocol moves in from wherever it is (storage, a hotel): "
        "bound anywhere on the workcell, not only inside the machines the run binds.",
    )


class ProtocolFunctionSpec(BaseModel):
    """What the SDK's ``@protocol_function`` records about a function."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    version: str
    description: str = ""
    module: str = Field(description="Module path inside the source, e.g. 'transfers'.")
    qualname: str
    parameters: list[ParameterSpec] = Field(default_factory=list)
    assets: list[AssetRequirementSpec] = Field(default_factory=list)
    top_level: bool = Field(default=True, description="Runnable on its own (not only nested).")


SourceKind = Literal["git", "filesystem"]


class DiscoveryProblem(BaseModel):
    """A module of a source that could not be discovered; the source's other modules still are."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    module: str = Field(description="Dotted module path inside the source.")
    error: str = Field(description="What went wrong, e.g. an exception, an exit, a limit hit.")


class ProtocolSource(BaseModel):
    """A place protocol code comes from, pinned to a commit after each sync."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    accession_id: UUID
    name: str
    kind: SourceKind
    url: str
    ref: str = Field(description="Branch or tag followed when no commit is pinned.")
    commit: str | None = Field(description="The commit definitions were last discovered at.")
    status: Literal["pending", "synced", "failed"]
    error: str | None = None
    credentials_ref: str | None = Field(
        default=None, description="The secret reference git authenticates with (never the secret)."
    )
    problems: list[DiscoveryProblem] = Field(
        default_factory=list,
        description="Modules of the last sync that yielded no protocols: import errors, exits, "
        "time or memory limits.",
    )
    last_synced_at: datetime | None = None
    created_at: datetime


class ProtocolDefinition(BaseModel):
    """A discovered protocol function at one commit of one source."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    accession_id: UUID
    source_id: UUID
    source_name: str
    commit: str
    spec: ProtocolFunctionSpec
    code_bundle: str = Field(description="Object-store name of the code archive at the commit.")
    created_at: datetime


class ProtocolSourcePage(Page[ProtocolSource]):
    pass


class ProtocolDefinitionPage(Page[ProtocolDefinition]):
    pass


class RegisterProtocolSource(Request[ProtocolSource]):
    """Register a git repository (or a local folder) and sync it once."""

    subject: ClassVar[str] = "praxis.rpc.code.register_source"
    reply_type: ClassVar[type[BaseModel]] = ProtocolSource

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: SourceKind = "git"
    url: str = Field(min_length=1, description="Git URL or path.")
    ref: str = Field(default="HEAD", min_length=1)
    commit: str | None = Field(default=None, description="Pin to this commit instead of ref.")
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )
    credentials_ref: str | None = Field(
        default=None,
        max_length=200,
        description="Where the code-manager finds the secret for a private repository: "
        "'file:<name>' (a file in its SOURCE_SECRETS_DIR) or 'env:<NAME>' (its environment "
        "variable SOURCE_SECRET_<NAME>). Only the reference is stored or returned.",
    )


class DeleteProtocolSource(Request[Empty]):
    """Forget a source (any status) and its protocol definitions; runs already recorded keep
    their records, and the name can be registered again."""

    subject: ClassVar[str] = "praxis.rpc.code.delete_source"
    reply_type: ClassVar[type[BaseModel]] = Empty

    source_id: UUID
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


class SyncProtocolSource(Request[ProtocolSource]):
    """Fetch a source and discover its protocols at ``commit`` (or the head of its ref)."""

    subject: ClassVar[str] = "praxis.rpc.code.sync_source"
    reply_type: ClassVar[type[BaseModel]] = ProtocolSource

    source_id: UUID
    commit: str | None = None
    actor: str | None = Field(
        default=None, max_length=200, description="Who asked (the gateway's principal)."
    )


class ListProtocolSources(Request[ProtocolSourcePage]):
    subject: ClassVar[str] = "praxis.rpc.code.list_sources"
    reply_type: ClassVar[type[BaseModel]] = ProtocolSourcePage

    filters: SearchFilters = Field(default_factory=SearchFilters)
    kind: SourceKind | None = None


class ListProtocolDefinitions(Request[ProtocolDefinitionPage]):
    subject: ClassVar[str] = "praxis.rpc.code.list_definitions"
    reply_type: ClassVar[type[BaseModel]] = ProtocolDefinitionPage

    filters: SearchFilters = Field(default_factory=SearchFilters)
    name: str | None = None
    source_id: UUID | None = None


class ResolvedProtocol(BaseModel):
    """A definition chosen for a run, with its parameters validated and normalised."""

    model_config = ConfigDict(frozen=True)

    definition: ProtocolDefinition
    parameters: dict[str, Any]


class ResolveProtocol(Request[ResolvedProtocol]):
    """Pick the definition for a run and validate the run's parameters against it."""

    subject: ClassVar[str] = "praxis.rpc.code.resolve"
    reply_type: ClassVar[type[BaseModel]] = ResolvedProtocol

    protocol_name: str | None = None
    version: str | None = None
    definition_id: UUID | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProtocolSourceSynced(Event):
    """A source was fetched and its protocols discovered at a commit."""

    subject: ClassVar[str] = "praxis.evt.code.source.synced"

    source: ProtocolSource
    definitions: list[UUID]
    actor: str | None = Field(
        default=None, description="Principal whose request made the change; none for the system."
    )
