"""Code-manager service layer: register and sync sources, discover, resolve runs."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nats.js.object_store import ObjectStore
from sqlalchemy import select

from praxis_code_manager import params
from praxis_code_manager.discovery import Discovered, Discovery
from praxis_code_manager.git import GitAccess, GitMirror, archive_folder, extract
from praxis_code_manager.orm import DefinitionRow, SourceRow
from praxis_code_manager.policy import (
    SourcePolicy,
    Target,
    check_credentials_ref,
    check_ref,
    check_source,
    refuse,
)
from praxis_contracts.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    SourceRefused,
    SourceSyncFailed,
)
from praxis_contracts.protocols import (
    DiscoveryProblem,
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

log = logging.getLogger(__name__)

SECRET_ENV_PREFIX = "SOURCE_SECRET_"


@dataclass(frozen=True)
class Fetched:
    commit: str
    archive: bytes


class Secrets:
    """The secrets credentials references name: ``file:<name>`` is a file in ``folder`` (a
    mounted secret), ``env:<NAME>`` the variable ``SOURCE_SECRET_<NAME>``. Read when git needs
    them; never stored, logged or returned."""

    def __init__(self, folder: Path | None, environ: Mapping[str, str] | None = None) -> None:
        self.folder = folder
        self.environ = os.environ if environ is None else environ

    def read(self, ref: str) -> bytes:
        kind, name = check_credentials_ref(ref)
        if kind == "env":
            value = self.environ.get(f"{SECRET_ENV_PREFIX}{name}")
            if value:
                return value.encode()
            raise refuse("credentials_ref", f"no secret {ref!r} (variable not set)")
        if self.folder is not None:
            path = self.folder / name
            if path.is_file():
                return path.read_bytes()
        raise refuse("credentials_ref", f"no secret {ref!r} (no such file in SOURCE_SECRETS_DIR)")


def resolve_host(host: str) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]


class CodeService:
    def __init__(
        self,
        db: Database,
        store: Callable[[], ObjectStore],
        work_dir: Path,
        git_timeout: float,
        relay: OutboxRelay,
        policy: SourcePolicy,
        secrets: Secrets,
        discovery: Discovery,
    ) -> None:
        self.db = db
        self.relay = relay
        self._store = store
        self.work_dir = work_dir
        self.git_timeout = git_timeout
        self.policy = policy
        self.secrets = secrets
        self.discovery = discovery
        self._sync_locks: dict[uuid.UUID, asyncio.Lock] = {}

    # -- sources ------------------------------------------------------------------------------
    async def register(self, cmd: RegisterProtocolSource) -> uuid.UUID:
        """Record a source the policy allows; a refused one leaves nothing behind."""
        check_ref(cmd.ref, "ref")
        if cmd.commit is not None:
            check_ref(cmd.commit, "commit")
        if cmd.credentials_ref is not None:
            self.secrets.read(cmd.credentials_ref)
        await self._allowed(cmd.kind, cmd.url)
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
                    credentials_ref=cmd.credentials_ref,
                    status="pending",
                    created_at=datetime.now(UTC),
                )
            )
        return source_id

    async def _allowed(self, kind: str, url: str) -> Target:
        return await asyncio.to_thread(check_source, kind, url, self.policy, resolve_host)

    async def sync(
        self, source_id: uuid.UUID, commit: str | None = None, actor: str | None = None
    ) -> tuple[ProtocolSource, list[uuid.UUID]]:
        """Fetch the source, archive it at the commit, discover and record its protocols."""
        if commit is not None:
            check_ref(commit, "commit")
        lock = self._sync_locks.setdefault(source_id, asyncio.Lock())
        async with lock:
            row = await self._source_row(source_id)
            try:
                target = await self._allowed(row.kind, row.url)  # the policy may have changed
                rev = commit or row.pinned_commit
                fetched = await asyncio.to_thread(self._fetch, row, target, rev)
                found = await self._discover(source_id, fetched)
                bundle = f"{source_id}/{fetched.commit}.tar"
                await self._store().put(bundle, fetched.archive)
            except (SourceSyncFailed, SourceRefused) as exc:
                await self._mark_failed(source_id, exc.message, exc.details.get("problems", []))
                raise
            except Exception as exc:  # a bug, not the source's: still not left pending
                log.exception("sync of %s failed unexpectedly", source_id)
                await self._mark_failed(source_id, f"internal error ({type(exc).__name__})", [])
                raise
            ids = await self._record(source_id, fetched.commit, found, bundle, actor)
            return await self.get_source(source_id), ids

    async def delete(self, source_id: uuid.UUID, actor: str | None = None) -> None:
        """Forget a source (any status) and its definitions (the foreign key cascades); the
        code bundles stay in the object store for runs that still need them."""
        lock = self._sync_locks.setdefault(source_id, asyncio.Lock())
        async with lock:
            async with self.db.transaction() as session:
                row = await session.get(SourceRow, source_id)
                if row is None:
                    raise NotFound(f"protocol source {source_id} not found")
                await session.delete(row)
                log.info("source %s (%s) deleted by %s", row.name, source_id, actor or "?")
            for path in (self._mirror_path(source_id), self.work_dir / "trees" / str(source_id)):
                await asyncio.to_thread(shutil.rmtree, path, True)
        self._sync_locks.pop(source_id, None)

    def _mirror_path(self, source_id: uuid.UUID) -> Path:
        return self.work_dir / "mirrors" / f"{source_id}.git"

    def _fetch(self, row: SourceRow, target: Target, rev: str | None) -> Fetched:
        if row.kind == "filesystem":
            assert target.path is not None
            commit, archive = archive_folder(target.path)
            return Fetched(commit, archive)
        secret = None  # for the host the source names now, and no other (see git.py)
        if row.credentials_ref and target.host:
            secret = self.secrets.read(row.credentials_ref)
        access = GitAccess(
            protocols=self.policy.git_protocols(),
            timeout=self.git_timeout,
            home=self.work_dir / "git-home",
            secret=secret,
            scheme=target.scheme,
            pin=target.pinned_address(),
            host=target.host,
            port=target.port,
        )
        url = str(target.path) if target.path is not None else row.url
        mirror = GitMirror(self._mirror_path(row.accession_id), url, access)
        mirror.fetch()
        commit = mirror.resolve(rev or row.ref)
        return Fetched(commit, mirror.archive(commit))

    async def _discover(self, source_id: uuid.UUID, fetched: Fetched) -> Discovered:
        """Discovery in a child process (see ``discovery``): protocol code never runs here."""
        target = self.work_dir / "trees" / str(source_id) / fetched.commit
        await asyncio.to_thread(extract, fetched.archive, target)
        found = await self.discovery.discover(target, f"{source_id}@{fetched.commit}")
        for problem in found.problems:
            log.warning("discovery of %s: %s: %s", source_id, problem.module, problem.error)
        if not found.functions and found.problems:
            raise SourceSyncFailed(
                "no protocol function could be imported",
                problems=[p.model_dump() for p in found.problems],
            )
        return found

    async def _record(
        self,
        source_id: uuid.UUID,
        commit: str,
        found: Discovered,
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
            for spec in found.functions:
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
            source.problems = [p.model_dump() for p in found.problems]
            synced = ProtocolSourceSynced(source=_source_view(source), definitions=ids, actor=actor)
            uow.emit(synced)
        return ids

    async def _mark_failed(
        self, source_id: uuid.UUID, error: str, problems: list[dict[str, str]]
    ) -> None:
        async with self.db.transaction() as session:
            source = await session.get_one(SourceRow, source_id)
            source.status, source.error, source.problems = "failed", error, problems

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
        """The definition for a run, its parameters checked against the schemas recorded at
        discovery (no protocol code is imported here)."""
        definition = await self._find_definition(query)
        parameters = params.validate(definition.spec, query.parameters)
        return ResolvedProtocol(definition=definition, parameters=parameters)

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
        kind=row.kind,
        url=row.url,
        ref=row.ref,
        commit=row.commit,
        status=row.status,
        error=row.error,
        credentials_ref=row.credentials_ref,
        problems=[DiscoveryProblem.model_validate(p) for p in row.problems or []],
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
