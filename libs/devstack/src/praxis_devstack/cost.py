"""What a run costs the machine, for ``make bench``: CPU per process, NATS messages, database work.

Wall time on this shared two-core machine moves with its load; CPU time does not, much. A
``Sample`` reads, for each process of the stack (a service with every process it started, the
nats-server, PostgreSQL's postmaster with its backends):

- CPU: ``utime + stime`` of every live process of its tree plus ``cutime + cstime`` (the time of
  the children it already reaped), from ``/proc``: a child that exits between two samples moves
  into its parent's reaped time, so nothing is counted twice or lost;
- NATS: the server's ``in_msgs`` and ``out_msgs`` (``/varz``), which count every client's
  messages, the benchmark's own subscriptions and JetStream's acknowledgements included;
- PostgreSQL, where ``pg_stat_statements`` is loaded (the benchmark's server loads it):
  statements executed, ``BEGIN`` and ``COMMIT`` included (about one round trip each), and of
  them the ``COMMIT``/``ROLLBACK`` that end a transaction. (``pg_stat_database`` is no help: a
  backend reports its counts up to seconds late.)

``per_run(before, after, runs)`` turns two samples into figures per run. External servers
(``NATS_URL``, ``DATABASE_URL``) are not measured: their processes are not ours to read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")

STATEMENTS = (
    "SELECT coalesce(sum(calls), 0)::bigint AS statements, coalesce(sum(calls) FILTER "
    r"(WHERE query ~* '^\s*(commit|rollback|end)\y'), 0)::bigint AS transactions "
    "FROM pg_stat_statements"
)


@dataclass(frozen=True)
class Sample:
    cpu_seconds: dict[str, float]
    nats: dict[str, int] = field(default_factory=dict)
    database: dict[str, int] = field(default_factory=dict)


def _processes() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, CPU ticks of it and its reaped children)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        # fields[0] is the state (field 3): ppid is field 4, utime..cstime fields 14..17
        ppid = int(fields[1])
        ticks = sum(int(value) for value in fields[11:15])
        table[int(entry.name)] = (ppid, ticks)
    return table


def tree_cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and all its descendants."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[str, float] = {}
    for name, root in roots.items():
        if root not in table:
            continue
        ticks, todo = 0, [root]
        while todo:
            pid = todo.pop()
            ticks += table[pid][1]
            todo.extend(children.get(pid, ()))
        found[name] = ticks / TICKS
    return found


class Meter:
    """Samples the processes named in ``roots`` and, when given, a nats-server's monitoring
    endpoint and a PostgreSQL server (its superuser DSN)."""

    def __init__(
        self,
        roots: Mapping[str, int],
        *,
        nats_monitor: str | None = None,
        postgres_dsn: str | None = None,
    ) -> None:
        self.roots = dict(roots)
        self.nats_monitor = nats_monitor
        self.postgres_dsn = postgres_dsn
        self.statements = False

    async def start(self) -> None:
        """Reset statement counts where ``pg_stat_statements`` is loaded (else count none)."""
        if self.postgres_dsn is None:
            return
        conn = await asyncpg.connect(self.postgres_dsn)
        try:
            loaded = await conn.fetchval("SHOW shared_preload_libraries")
            if "pg_stat_statements" in (loaded or ""):
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                self.statements = True
        finally:
            await conn.close()

    async def sample(self) -> Sample:
        cpu = await asyncio.to_thread(tree_cpu_seconds, self.roots)
        nats: dict[str, int] = {}
        if self.nats_monitor is not None:
            async with httpx.AsyncClient(timeout=5.0) as client:
                varz = (await client.get(f"{self.nats_monitor}/varz")).json()
            nats = {"in_msgs": int(varz["in_msgs"]), "out_msgs": int(varz["out_msgs"])}
        database: dict[str, int] = {}
        if self.postgres_dsn is not None and self.statements:
            conn = await asyncpg.connect(self.postgres_dsn)
            try:
                row = await conn.fetchrow(STATEMENTS)
                assert row is not None
                database = {"statements": int(row[0]), "transactions": int(row[1])}
            finally:
                await conn.close()
        return Sample(cpu, nats, database)


def per_run(before: Sample, after: Sample, runs: int) -> dict[str, Any]:
    """Figures per run between two samples: CPU ms of each process and in all, NATS messages
    in and out of the server, database transactions and statements."""
    cpu = {
        name: round((after.cpu_seconds[name] - before.cpu_seconds[name]) * 1000 / runs, 2)
        for name in after.cpu_seconds
        if name in before.cpu_seconds
    }
    figures: dict[str, Any] = {
        "runs": runs,
        "cpu_ms": dict(sorted(cpu.items(), key=lambda item: -item[1])),
        "cpu_ms_total": round(sum(cpu.values()), 2),
    }
    if before.nats and after.nats:
        figures["nats_msgs"] = {
            key: round((after.nats[key] - before.nats[key]) / runs, 1) for key in after.nats
        }
    for key in after.database:
        if key in before.database:
            figures.setdefault("database", {})[key] = round(
                (after.database[key] - before.database[key]) / runs, 1
            )
    return figures
