"""Code-manager service layer: register and sync sources, discover, resolve runs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nats.js.object_store import ObjectStore
from sqlalchemy import select

from praxis_code_manager.git import GitMirror, archive_folder, extract
from praxis_code_manager.orm import DefinitionRow, SourceRow
from praxis_contracts.errors import Conflict, InvalidRequest, NotFound, SourceSyncFailed
from praxis_contracts.protocols import (
    ListProtocolDefinitions,
    ListProtocolSources,
    ProtocolDefinition,
    ProtocolDefinitionPage,
    ProtocolFunctionSpec,
    ProtocolSource,
    ProtocolSourcePage,
    ProtocolSourceSynced,
    RegisterProtocolSource,
    ResolvedProtocol,
    ResolveProtocol,
)
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay, SqlUnitOfWork
from praxis_runtime.query import apply_filters, fetch_page, where_all
from praxis_sdk.decorators import validate_parameters
from praxis_sdk.loader import SourceTree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    commit: str
    archive: bytes


class CodeService:
    def __init__(
        self,
        db: Database,
        store: Callable[[], ObjectStore],
        work_dir: Path,
        git_timeout: float,
        relay: OutboxRelay,
    ) -> None:
        self.db = db
        self.relay = relay
        self._store = store
        self.work_dir = work_dir
        self.git_timeout = git_timeout
        self._trees: dict[tuple[uuid.UUID, str], SourceTree] = {}
        self._sync_locks: dict[uuid.UUID, asyncio.Lock] = {}

    # -- sources ------------------------------------------------------------------------------
    async def register(self, cmd: RegisterProtocolSource) -> uuid.UUID:
        source_id = uuid.uuid4()
        async with self.db.transaction() as session:
            if await session.scalar(
                select(SourceRow.accession_id).where(SourceRow.name == cmd.name)
            ):
                raise Conflict(f"a protocol source named {cmd.name!r} exists", name=cmd.name)
            session.add(
                SourceRow(
                    accession_id=source_id,
                    name=cmd.name,
                    kind=cmd.kind,
                    url=cmd.url,
                    ref=cmd.ref,
                    pinned_commit=cmd.commit,
                    status="pending",
                    created_at=datetime.now(UTC),
                )
            )
        return source_id

    async def sync(
        self, source_id: uuid.UUID, commit: str | None = None, actor: str | None = None
    ) -> tuple[ProtocolSource, list[uuid.UUID]]:
        """Fetch the source, archive it at the commit, discover and record its protocols."""
        lock = self._sync_locks.setdefault(source_id, asyncio.Lock())
        async with lock:
            row = await self._source_row(source_id)
            try:
                fetched = await asyncio.to_thread(self._fetch, row, commit or row.pinned_commit)
                specs = await self._discover(source_id, fetched)
                bundle = f"{source_id}/{fetched.commit}.tar"
                await self._store().put(bundle, fetched.archive)
            except SourceSyncFailed as exc:
                await self._mark_failed(source_id, exc.message)
                raise
            ids = await self._record(source_id, fetched.commit, specs, bundle, actor)
            return await self.get_source(source_id), ids

    def _fetch(self, row: SourceRow, rev: str | None) -> Fetched:
        if row.kind == "filesystem":
            commit, archive = archive_folder(Path(row.url))
            return Fetched(commit, archive)
        mirror = GitMirror(
            self.work_dir / "mirrors" / f"{row.accession_id}.git", row.url, self.git_timeout
        )
        repo = mirror.fetch()
        commit = mirror.resolve(repo, rev or row.ref)
        return Fetched(commit, mirror.archive(repo, commit))

    async def _discover(self, source_id: uuid.UUID, fetched: Fetched) -> list[ProtocolFunctionSpec]:
        tree = await asyncio.to_thread(self._tree, source_id, fetched.commit, fetched.archive)
        found = await asyncio.to_thread(tree.discover)
        for problem in found.problems:
            log.warning("discovery: %s: %s", problem.module, problem.error)
        if not found.functions and found.problems:
            raise SourceSyncFailed(
                "no protocol function could be imported",
                problems=[p.__dict__ for p in found.problems],
            )
        return found.functions

    def _tree(self, source_id: uuid.UUID, commit: str, archive: bytes | None) -> SourceTree:
        key = (source_id, commit)
        if key not in self._trees:
            target = self.work_dir / "trees" / str(source_id) / commit
            if not target.exists():
                if archive is None:
                    raise SourceSyncFailed(f"code of {source_id}@{commit} is not available")
                extract(archive, target)
            self._trees[key] = SourceTree(target, f"{source_id}@{commit}")
        return self._trees[key]

    async def _record(
        self,
        source_id: uuid.UUID,
        commit: str,
        specs: list[ProtocolFunctionSpec],
        bundle: str,
        actor: str | None = None,
    ) -> list[uuid.UUID]:
        """Record the definitions found at ``commit``; ``ProtocolSourceSynced`` is emitted in
        the same unit of work (published once it commits)."""
        now = datetime.now(UTC)
        async with SqlUnitOfWork(self.db, self.relay) as uow:
            session = uow.session
            existing = {
                (r.name, r.version): r.accession_id
                for r in await session.scalars(
                    select(DefinitionRow).where(
                        DefinitionRow.source_id == source_id, DefinitionRow.commit == commit
                    )
                )
            }
            ids = []
            for spec in specs:
                if (spec.name, spec.version) in existing:
                    ids.append(existing[(spec.name, spec.version)])
                    continue
                row = DefinitionRow(
                    accession_id=uuid.uuid4(),
                    source_id=source_id,
                    commit=commit,
                    name=spec.name,
                    version=spec.version,
                    spec=spec.model_dump(mode="json"),
                    code_bundle=bundle,
                    created_at=now,
                )
                session.add(row)
                ids.append(row.accession_id)
            source = await session.get_one(SourceRow, source_id)
            source.commit, source.status, source.error, source.last_synced_at = (
                commit,
                "synced",
                None,
                now,
            )
            synced = ProtocolSourceSynced(source=_source_view(source), definitions=ids, actor=actor)
            uow.emit(synced)
        return ids

    async def _mark_failed(self, source_id: uuid.UUID, error: str) -> None:
        async with self.db.transaction() as session:
            source = await session.get_one(SourceRow, source_id)
            source.status, source.error = "failed", error

    async def _source_row(self, source_id: uuid.UUID) -> SourceRow:
        async with self.db.transaction() as session:
            row = await session.get(SourceRow, source_id)
        if row is None:
            raise NotFound(f"protocol source {source_id} not found")
        return row

    async def get_source(self, source_id: uuid.UUID) -> ProtocolSource:
        return _source_view(await self._source_row(source_id))

    async def list_sources(self, query: ListProtocolSources) -> ProtocolSourcePage:
        cols = {
            "name": SourceRow.name,
            "created_at": SourceRow.created_at,
            "status": SourceRow.status,
        }
        stmt = apply_filters(
            where_all(select(SourceRow), SourceRow.kind == query.kind if query.kind else None),
            query.filters,
            created_at=SourceRow.created_at,
            sortable=cols,
        )
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters)
            items = [_source_view(r) for r in rows]
        return ProtocolSourcePage(
            items=items, total=total, limit=query.filters.limit, offset=query.filters.offset
        )

    # -- definitions --------------------------------------------------------------------------
    async def list_definitions(self, query: ListProtocolDefinitions) -> ProtocolDefinitionPage:
        cols = {
            "name": DefinitionRow.name,
            "version": DefinitionRow.version,
            "created_at": DefinitionRow.created_at,
        }
        base = select(DefinitionRow, SourceRow.name).join(SourceRow)
        base = where_all(
            base,
            DefinitionRow.name == query.name if query.name else None,
            DefinitionRow.source_id == query.source_id if query.source_id else None,
        )
        stmt = apply_filters(
            base, query.filters, created_at=DefinitionRow.created_at, sortable=cols
        )
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters, scalars=False)
        items = [_definition_view(d, name) for d, name in rows]
        return ProtocolDefinitionPage(
            items=items, total=total, limit=query.filters.limit, offset=query.filters.offset
        )

    async def resolve(self, query: ResolveProtocol) -> ResolvedProtocol:
        definition = await self._find_definition(query)
        source_id, commit = definition.source_id, definition.commit
        tree = self._trees.get((source_id, commit))
        if tree is None:
            archive = await self._bundle(definition.code_bundle)
            tree = await asyncio.to_thread(self._tree, source_id, commit, archive)
        fn = await asyncio.to_thread(
            tree.function, definition.spec.module, definition.spec.qualname
        )
        parameters = validate_parameters(fn, query.parameters)
        return ResolvedProtocol(definition=definition, parameters=parameters)

    async def _bundle(self, name: str) -> bytes | None:
        try:
            result = await self._store().get(name)
        except Exception:
            return None
        return bytes(result.data or b"")

    async def _find_definition(self, query: ResolveProtocol) -> ProtocolDefinition:
        stmt = select(DefinitionRow, SourceRow.name).join(SourceRow)
        if query.definition_id is not None:
            stmt = stmt.where(DefinitionRow.accession_id == query.definition_id)
        else:
            if not query.protocol_name:
                raise InvalidRequest("give protocol_name or definition_id")
            stmt = stmt.where(
                DefinitionRow.name == query.protocol_name, DefinitionRow.commit == SourceRow.commit
            )
            if query.version is not None:
                stmt = stmt.where(DefinitionRow.version == query.version)
        async with self.db.transaction() as session:
            rows = (await session.execute(stmt)).all()
        if not rows:
            wanted = query.definition_id or f"{query.protocol_name} {query.version or ''}".strip()
            raise NotFound(f"no protocol definition {wanted}")
        definition, name = max(rows, key=lambda r: (_version_key(r[0].version), r[0].created_at))
        return _definition_view(definition, name)


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    return tuple(
        (int(p), "") if p.isdigit() else (-1, p) for p in version.replace("-", ".").split(".")
    )


def _source_view(row: SourceRow) -> ProtocolSource:
    return ProtocolSource(
        accession_id=row.accession_id,
        name=row.name,
        kind=row.kind,  # type: ignore[arg-type]
        url=row.url,
        ref=row.ref,
        commit=row.commit,
        status=row.status,  # type: ignore[arg-type]
        error=row.error,
        last_synced_at=row.last_synced_at,
        created_at=row.created_at,
    )


def _definition_view(row: DefinitionRow, source_name: str) -> ProtocolDefinition:
    return ProtocolDefinition(
        accession_id=row.accession_id,
        source_id=row.source_id,
        source_name=source_name,
        commit=row.commit,
        spec=ProtocolFunctionSpec.model_validate(row.spec),
        code_bundle=row.code_bundle,
        created_at=row.created_at,
    )
