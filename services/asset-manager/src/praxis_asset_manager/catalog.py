"""The catalog of PyLabRobot types: synced into ``asset_manager.catalog``, resolved by name.

The walk (see ``discovery``) runs at start-up only when the stored PyLabRobot version differs from
the installed one or the table is empty; replicas starting together replace the rows once (an
advisory lock, then a re-check).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, text

from praxis_asset_manager import discovery
from praxis_asset_manager.orm import CatalogRow
from praxis_contracts.errors import UnknownAssetType
from praxis_contracts.inventory import CatalogEntry, CatalogPage, ListCatalog
from praxis_runtime.db import Database
from praxis_runtime.query import apply_filters, fetch_page, where_all

log = logging.getLogger(__name__)

_LOCK = zlib.crc32(b"praxis-asset-manager:catalog")
_SUGGESTIONS = 5


class Catalog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._entries: dict[str, CatalogEntry] | None = None

    async def sync(self) -> None:
        """Walk the installed PyLabRobot into the table if the stored catalog is stale."""
        installed = discovery.pylabrobot_version()
        if await self._stored_version() == installed:
            log.info("catalog is current for PyLabRobot %s", installed)
            return
        started = time.perf_counter()
        found = await asyncio.to_thread(discovery.walk)
        took = time.perf_counter() - started
        log.info(
            "catalog: walked PyLabRobot %s in %.2f s: %d types from %d modules, %d modules skipped",
            installed,
            took,
            len(found.entries),
            found.modules,
            len(found.skipped),
        )
        await self._replace(found.entries, installed)
        self._entries = {entry.fqn: entry for entry in found.entries}

    async def _stored_version(self) -> str | None:
        async with self.db.transaction() as session:
            return await session.scalar(select(CatalogRow.pylabrobot_version).limit(1))

    async def _replace(self, entries: list[CatalogEntry], installed: str) -> None:
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
            stored = await session.scalar(select(CatalogRow.pylabrobot_version).limit(1))
            if stored == installed:
                return  # another replica synced it meanwhile
            await session.execute(delete(CatalogRow))
            if entries:
                rows = [{**entry.model_dump(), "synced_at": now} for entry in entries]
                await session.execute(insert(CatalogRow), rows)

    async def entries(self) -> dict[str, CatalogEntry]:
        """Every entry by fqn (loaded once; the table changes only at start-up)."""
        if self._entries is None:
            async with self.db.transaction() as session:
                rows = (await session.scalars(select(CatalogRow))).all()
            self._entries = {row.fqn: _entry(row) for row in rows}
        return self._entries

    async def resolve(self, name: str) -> CatalogEntry:
        """The entry of a type: its fqn, a re-exported path, or its bare name if unique.

        Raises:
            UnknownAssetType: no such type; ``details.suggestions`` lists close matches.
        """
        entries = await self.entries()
        return await asyncio.to_thread(lookup, entries, name)

    async def factories(self) -> Callable[[str], Any]:
        """Type name -> the class or factory it names (``resolve``'s rules), for building
        what an argument takes (a liquid handler's deck) on a worker thread."""
        entries = await self.entries()

        def factory(name: str) -> Any:
            entry = lookup(entries, name)
            found = discovery.import_object(entry.fqn)
            if not callable(found):
                raise UnknownAssetType(f"{entry.fqn} cannot be imported.", fqn=entry.fqn)
            return found

        return factory

    async def list(self, query: ListCatalog) -> CatalogPage:
        stmt = where_all(
            select(CatalogRow),
            CatalogRow.kind == query.kind if query.kind else None,
            CatalogRow.is_factory == query.is_factory if query.is_factory is not None else None,
            CatalogRow.bases.contains([query.base]) if query.base else None,
            or_(
                CatalogRow.fqn.icontains(query.search, autoescape=True),
                CatalogRow.name.icontains(query.search, autoescape=True),
            )
            if query.search
            else None,
        )
        stmt = apply_filters(
            stmt,
            query.filters,
            created_at=CatalogRow.synced_at,
            sortable={
                column: getattr(CatalogRow, column)
                for column in ("fqn", "name", "kind", "category", "module")
            },
        ).order_by(CatalogRow.fqn)  # a stable order within equal sort keys
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters)
        f = query.filters
        return CatalogPage(
            items=[_entry(row) for row in rows], total=total, limit=f.limit, offset=f.offset
        )


def lookup(entries: dict[str, CatalogEntry], name: str) -> CatalogEntry:
    """The entry of a type: its fqn, a re-exported path (imports it), or its bare name if
    unique; ``UnknownAssetType`` with suggestions else."""
    if name in entries:
        return entries[name]
    canonical = discovery.canonical_fqn(name)
    if canonical in entries:
        return entries[canonical]
    by_name = [entry for entry in entries.values() if entry.name == name]
    if len(by_name) == 1:
        return by_name[0]
    raise _unknown(name, entries, ambiguous=[e.fqn for e in by_name])


def _unknown(name: str, entries: dict[str, CatalogEntry], ambiguous: list[str]) -> UnknownAssetType:
    if ambiguous:
        return UnknownAssetType(
            f"Asset type {name!r} is ambiguous: use one of {', '.join(sorted(ambiguous))}.",
            fqn=name,
            suggestions=sorted(ambiguous),
        )
    suggestions = _close_matches(name, entries)
    hint = f" Did you mean {suggestions[0]!r}?" if suggestions else ""
    return UnknownAssetType(
        f"Unknown asset type {name!r}: not a PyLabRobot resource or machine type in the "
        f"catalog.{hint}",
        fqn=name,
        suggestions=suggestions,
    )


def _close_matches(name: str, entries: dict[str, CatalogEntry]) -> list[str]:
    """Close fqns first, then entries whose bare name is close to the name's last part."""
    found = difflib.get_close_matches(name, list(entries), n=_SUGGESTIONS, cutoff=0.8)
    by_name: dict[str, list[str]] = {}
    for entry in entries.values():
        by_name.setdefault(entry.name, []).append(entry.fqn)
    last = name.rsplit(".", 1)[-1]
    for close in difflib.get_close_matches(last, list(by_name), n=_SUGGESTIONS, cutoff=0.6):
        found.extend(fqn for fqn in sorted(by_name[close]) if fqn not in found)
    return found[:_SUGGESTIONS]


def _entry(row: CatalogRow) -> CatalogEntry:
    return CatalogEntry(
        fqn=row.fqn,
        name=row.name,
        kind=row.kind,
        is_factory=row.is_factory,
        instantiable=row.instantiable,
        category=row.category,
        module=row.module,
        bases=row.bases,
        pylabrobot_version=row.pylabrobot_version,
    )
