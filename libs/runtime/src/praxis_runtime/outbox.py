"""The unit of work: rows and the messages they cause, committed together, published after.

Inside ``async with uow:`` a service layer changes rows and calls ``uow.emit(message, msg_id=…)``.
The messages are written to the service's ``outbox`` table in the same transaction, so a crash
can lose neither the change nor what it must announce. After the commit the ``OutboxRelay``
publishes them to JetStream and deletes their rows once acknowledged:

- the committing process hands its rows to its relay directly (no read back, one ``DELETE`` per
  pass on a kept connection), so the usual path costs one statement more than publishing by
  hand did; a batch for one stream is confirmed by its last ack (``publish_in_order``);
- what a crash left behind (committed, not yet acknowledged) is read from the table and
  published when the relay starts, and after any failed pass;
- a pass that fails (NATS or PostgreSQL unavailable) is retried with backoff until it succeeds:
  this is a retry of work that exists, not a poll for work that might.

Order: one relay publishes in commit order, and changes to one aggregate are serialised by its
row lock, so each aggregate's messages reach the stream in the order they were committed. Every
message carries a ``Nats-Msg-Id`` (the caller's, or one made at ``emit``), so a message published
again after a crash between its ack and its ``DELETE`` is dropped by JetStream's de-duplication.

``InMemoryUnitOfWork`` keeps the same contract without a database, for service-layer tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from praxis_contracts import headers as h
from praxis_contracts.base import Command, Event
from praxis_contracts.topology import dead_letter_subject
from praxis_runtime import tracing
from praxis_runtime.db import Database, KeptConnection
from praxis_runtime.logging import context_headers
from praxis_runtime.publisher import Outgoing, Publisher
from praxis_runtime.retry import Backoff

log = logging.getLogger(__name__)

OUTBOX = "outbox"
BATCH = 500
"""Rows one relay pass reads back from the table at most."""

RETRY_CAP = 1.0
"""Longest wait between failed passes: a recovered dependency is noticed within this."""

SWEEP_AFTER = 0.2
SWEEP_BATCH = 256
"""Published rows are deleted together, at most this long after publishing or this many at a
time: one ``DELETE`` per publish pass was a third of the asset-manager's outbox cost. A crash
before the sweep publishes those rows again, which JetStream drops as duplicates."""


def outbox_table(metadata: MetaData) -> Table:
    """The outbox table of a service's schema; call once with the service's ORM metadata."""
    return Table(
        OUTBOX,
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("subject", Text, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    )


def create_outbox(op: Any, schema: str) -> None:
    """Alembic migration step creating the outbox table in ``schema``."""
    import sqlalchemy as sa

    op.create_table(
        OUTBOX,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=schema,
    )


def encode(message: Command | Event, msg_id: str | None = None) -> Outgoing:
    """A message as it will be published: subject, JSON body, id and context headers."""
    headers = {h.MSG_ID: msg_id or uuid.uuid4().hex, **context_headers()}
    tracing.inject(headers)  # published later by the relay, in this trace
    return Outgoing(message.routing_subject(), message.model_dump_json().encode(), headers)


class UnitOfWork:
    """What every unit of work offers a service layer: ``emit`` and the ``async with`` scope.

    Messages emitted inside the scope are published only if it commits; an exception discards
    them with the rows. Re-entering starts a new unit."""

    def __init__(self) -> None:
        self.emitted: list[Outgoing] = []

    def emit(self, message: Command | Event, *, msg_id: str | None = None) -> None:
        """Publish ``message`` once this unit commits; ``msg_id`` de-duplicates re-publishes."""
        self.emitted.append(encode(message, msg_id))

    async def __aenter__(self) -> Self:
        self.emitted = []
        await self._begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.emitted = []
            await self._rollback()
            return
        await self._commit(self.emitted)
        self.emitted = []

    async def _begin(self) -> None:
        raise NotImplementedError

    async def _commit(self, messages: list[Outgoing]) -> None:
        raise NotImplementedError

    async def _rollback(self) -> None:
        raise NotImplementedError


class SqlUnitOfWork(UnitOfWork):
    """One transaction on the service's database; emitted messages go to its outbox table."""

    def __init__(self, db: Database, relay: OutboxRelay) -> None:
        super().__init__()
        self.db = db
        self.relay = relay
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            raise RuntimeError("the unit of work is not open (use `async with`)")
        return self._session

    async def _begin(self) -> None:
        self._session = self.db.sessions()
        await self._session.begin()

    async def _commit(self, messages: list[Outgoing]) -> None:
        session = self.session
        try:
            ids = await self._insert(session, messages) if messages else []
            await self._commit_transaction(session)
        except BaseException:
            await session.rollback()
            raise
        finally:
            await self._close()
        if messages:
            self.relay.committed(list(zip(ids, messages, strict=True)))

    async def _commit_transaction(self, session: AsyncSession) -> None:
        await session.commit()

    async def _insert(self, session: AsyncSession, messages: list[Outgoing]) -> list[int]:
        """One prepared statement on the transaction's own asyncpg connection: a fraction of
        the CPU of the same insert through SQLAlchemy's executemany (README, Design
        measurements).

        The ORM's pending rows are flushed first: SQLAlchemy begins the database transaction
        only with its first statement, and an insert sent straight to the connection before
        that would commit on its own, ahead of the rows it announces (the chaos harness caught
        a command for a run that was never committed)."""
        await session.flush()
        raw = await (await session.connection()).get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        if not driver.is_in_transaction():
            # Nothing ran in this unit but the emits: the insert alone is the whole unit.
            log.debug("outbox insert outside a transaction: the unit wrote nothing else")
        records = await driver.fetch(
            self.relay.insert_sql,
            [m.subject for m in messages],
            [m.payload for m in messages],
            [json.dumps(m.headers or {}) for m in messages],
        )
        return sorted(r["id"] for r in records)  # given in the messages' order, ascending

    async def _rollback(self) -> None:
        try:
            await self.session.rollback()
        finally:
            await self._close()

    async def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _row(message: Outgoing) -> dict[str, Any]:
    return {"subject": message.subject, "payload": message.payload, "headers": message.headers}


class OutboxRelay:
    """Publishes a service's committed outbox rows in order and deletes them once acknowledged.

    One per service process; ``start`` after the bus is connected, ``stop`` before it closes.
    """

    def __init__(self, db: Database, table: Table, publisher: Callable[[], Publisher]) -> None:
        self.db = db
        self.table = table
        self._publisher = publisher
        self._conn: KeptConnection = db.kept_connection()
        self._handed: list[tuple[int, Outgoing]] = []
        self._scan = True  # what a crash left behind is in the table, not in memory
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._swept: list[int] = []  # published, not yet deleted
        self._sweep: asyncio.TimerHandle | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self.published = 0
        self.observers: list[Callable[[Sequence[Outgoing]], None]] = []
        """Told what each commit handed over (metrics derived from what was committed)."""
        self._waiting_since: float | None = None  # monotonic: since when something waits
        self.insert_sql = (
            f'INSERT INTO "{db.schema}".{OUTBOX} (subject, payload, headers) '
            "SELECT subject, payload, headers FROM unnest($1::text[], $2::bytea[], $3::jsonb[]) "
            "WITH ORDINALITY AS m(subject, payload, headers, n) ORDER BY n RETURNING id"
        )

    def committed(self, rows: Sequence[tuple[int, Outgoing]]) -> None:
        """The commit hook: rows a unit of work just committed, in commit order."""
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        self._handed.extend(rows)
        for observe in self.observers:
            try:
                observe([message for _, message in rows])
            except Exception:  # an observer never stands in the way of publishing
                log.exception("outbox observer failed")
        self._idle.clear()
        self._wakeup.set()

    def backlog(self) -> tuple[int, float]:
        """Messages handed and not yet published, and how long the relay has had some waiting
        (seconds; 0 when idle). Rows only in the table (another process's, or after a failure)
        count once read back."""
        if self._idle.is_set() or self._waiting_since is None:
            return 0, 0.0
        return len(self._handed), time.monotonic() - self._waiting_since

    def wake(self) -> None:
        """Read the table on the next pass (e.g. another process may have left rows)."""
        self._scan = True
        self._idle.clear()
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self.wake()
            self._task = asyncio.create_task(self._run(), name=f"outbox-{self.db.schema}")

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything committed so far is published; False on time-out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish what is pending (up to ``timeout``), then stop; the rest waits in the table."""
        if self._task is None:
            return
        if not await self.flush(timeout):
            log.warning(
                "outbox of %s not empty at shutdown: published at next start-up", self.db.schema
            )
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._sweep is not None:
            self._sweep.cancel()
        try:
            await self._sweep_now()
        except Exception as exc:  # they are published again at start-up, and dropped
            log.warning("outbox of %s: published rows not deleted: %s", self.db.schema, exc)

    async def _run(self) -> None:
        backoff = Backoff(first=0.1, cap=RETRY_CAP)
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                while await self._pass():
                    pass
            except Exception as exc:
                self._scan = True  # the handed rows are in the table: read them back in order
                self._handed.clear()
                delay = backoff.failed()
                log.warning("outbox relay: %s; retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)  # backoff after a failure, then the same work again
                self._wakeup.set()
                continue
            backoff.succeeded()
            if not self._handed and not self._wakeup.is_set():
                self._idle.set()
                self._waiting_since = None

    async def _pass(self) -> bool:
        """Publish one batch; True if there may be more."""
        if self._scan:
            self._handed.clear()  # the table has them too, in order
            await self._sweep_now()  # what was published is not read back
            rows = await self._read_back()
            self._scan = len(rows) == BATCH
            if not rows:
                return False
            await self._publish(rows)
            return True
        rows, self._handed = self._handed, []
        if not rows:
            return False
        if _one_stream(rows):
            await self._publish_in_order(rows)
        else:
            await self._publish(rows)
        return True

    async def _publish_in_order(self, rows: list[tuple[int, Outgoing]]) -> None:
        """Rows this process just committed, all for one stream: confirmed by the last one's
        ack (``Publisher.publish_in_order``). Any failure sends the relay back to the table,
        where every row is published and confirmed on its own."""
        await self._publisher().publish_in_order([message for _, message in rows])
        await self._delete([row_id for row_id, _ in rows])

    async def _read_back(self) -> list[tuple[int, Outgoing]]:
        records = await self._conn.fetch(
            f'SELECT id, subject, payload, headers FROM "{self.db.schema}".{OUTBOX} '
            f"ORDER BY id LIMIT {BATCH}"
        )
        return [
            (r["id"], Outgoing(r["subject"], bytes(r["payload"]), _headers(r["headers"])))
            for r in records
        ]

    async def _publish(self, rows: list[tuple[int, Outgoing]]) -> None:
        results = await self._publisher().publish_all([message for _, message in rows])
        done: list[int] = []
        failure: Exception | None = None
        for (row_id, message), result in zip(rows, results, strict=True):
            if isinstance(result, Exception):
                if _never_publishable(result):
                    await self._dead_letter(message, result)
                    done.append(row_id)
                    continue
                failure = failure or result
                continue
            done.append(row_id)
        await self._delete(done)
        if failure is not None:
            raise failure

    async def _delete(self, done: list[int]) -> None:
        """Published: delete soon, together with the next ones (see ``SWEEP_AFTER``)."""
        if not done:
            return
        self.published += len(done)
        self._swept.extend(done)
        if len(self._swept) >= SWEEP_BATCH:
            await self._sweep_now()
        elif self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(SWEEP_AFTER, self._sweep_later)

    def _sweep_later(self) -> None:
        self._sweep = None
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.ensure_future(self._sweep_quietly())

    async def _sweep_quietly(self) -> None:
        try:
            await self._sweep_now()
        except Exception as exc:  # kept for the next sweep
            log.warning("outbox of %s: deleting published rows failed: %s", self.db.schema, exc)

    async def _sweep_now(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        done, self._swept = self._swept, []
        if not done:
            return
        try:
            await self._conn.fetch(
                f'DELETE FROM "{self.db.schema}".{OUTBOX} WHERE id = ANY($1::bigint[])', done
            )
        except BaseException:
            self._swept = done + self._swept
            raise

    async def _dead_letter(self, message: Outgoing, error: Exception) -> None:
        reason = f"outbox: cannot publish: {type(error).__name__}: {error}"
        log.error("%s (%s, %d bytes)", reason, message.subject, len(message.payload))
        headers = {k: v for k, v in (message.headers or {}).items() if k != h.MSG_ID}
        headers[h.DEAD_LETTER_REASON] = reason[:2000]
        headers[h.DEAD_LETTER_SUBJECT] = message.subject
        await self._publisher().publish(
            dead_letter_subject(message.subject), message.payload[:65536], headers
        )


def _one_stream(rows: list[tuple[int, Outgoing]]) -> bool:
    """Whether every message goes to one stream (events, or commands): only then does the last
    ack confirm the ones before it."""
    roots = {message.subject.split(".", 2)[1] for _, message in rows}
    return len(roots) == 1


def _headers(raw: Any) -> dict[str, str]:
    return dict(json.loads(raw) if isinstance(raw, str | bytes) else raw)


def _never_publishable(exc: Exception) -> bool:
    """A message the server will refuse however often it is sent (too large for it)."""
    import nats.errors

    return isinstance(exc, nats.errors.MaxPayloadError)


class InMemoryUnitOfWork(UnitOfWork):
    """A unit of work without a database: committed messages land in ``published`` in order.

    Service layers keep their state in in-memory repositories beside it; a test asserts on
    what would have been published."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Outgoing] = []
        self.commits = 0
        self.rollbacks = 0

    async def _begin(self) -> None:
        return None

    async def _commit(self, messages: list[Outgoing]) -> None:
        self.commits += 1
        self.published.extend(messages)

    async def _rollback(self) -> None:
        self.rollbacks += 1


__all__ = [
    "InMemoryUnitOfWork",
    "OutboxRelay",
    "SqlUnitOfWork",
    "UnitOfWork",
    "create_outbox",
    "encode",
    "outbox_table",
]
