"""The audit service against a real nats-server and PostgreSQL: every event stored once with
its actor, through redelivery and restarts; the trail's filters and paging."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from praxis_audit import store
from praxis_audit.app import Settings, build_app
from praxis_audit.domain import entry_of
from praxis_audit.handlers import Deps
from praxis_contracts.assets import AssetsReleased
from praxis_contracts.audit import AuditFilters, ListAuditEvents
from praxis_contracts.common import RunStatus
from praxis_contracts.errors import Unavailable
from praxis_contracts.runs import RunStatusChanged
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity
from praxis_runtime.bus import Bus
from praxis_runtime.logging import log_context

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def audit(nats_identity: NatsIdentity, make_database: MakeDatabase, services: Any) -> Any:
    settings = Settings(
        **nats_identity("audit"),
        database_url=make_database("audit"),
        health_port=None,
        graceful_timeout_seconds=5,
    )
    return await services(build_app, settings)


def deps(audit: Any) -> Deps:
    return next(d for _, d in audit.service.handlers if isinstance(d, Deps))


def changed(run: uuid.UUID, status: RunStatus = RunStatus.RUNNING) -> RunStatusChanged:
    return RunStatusChanged(run_id=run, status=status, previous=None, at=datetime.now(UTC))


async def publish(client: Bus, event: Any, actor: str | None = None, **kw: Any) -> int:
    with log_context(actor=actor, correlation_id=kw.pop("correlation", None)):
        return await client.publish(event, **kw)


async def trail(client: Bus, seq: int, **filters: Any) -> list[Any]:
    page = await client.request(
        ListAuditEvents(filters=AuditFilters(**filters), stored_through=seq, limit=500)
    )
    return page.items


async def test_every_event_is_stored_with_its_actor_publisher_and_correlation(
    audit: Any, client: Bus
) -> None:
    run, assets = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    await publish(client, changed(run), actor="alice", correlation="corr-1")
    seq = await publish(client, AssetsReleased(run_id=run, asset_ids=assets))
    items = await trail(client, seq, run_id=run)
    assert [i.type for i in items] == ["asset.reservation.released", "scheduler.run.status_changed"]
    released, status = items
    assert (status.actor, status.correlation_id, status.publisher) == (
        "alice",
        "corr-1",
        "scheduler",
    )
    assert released.actor is None and released.stream_seq == seq
    assert released.asset_ids == assets and released.payload["run_id"] == str(run)
    assert [i.id for i in await trail(client, seq, asset_id=assets[1])] == [released.id]
    assert [i.id for i in await trail(client, seq, actor="alice", run_id=run)] == [status.id]
    assert [
        i.id for i in await trail(client, seq, types=["scheduler.run.status_changed"], run_id=run)
    ] == [status.id]
    assert await trail(client, seq, correlation_id="corr-1") == [status]


async def test_the_same_message_twice_is_stored_once(audit: Any, client: Bus) -> None:
    """A retried publish (same message id) is one event of the stream; the same entries
    appended twice (a redelivery, a second replica) store nothing the second time."""
    run = uuid.uuid4()
    first = await publish(client, changed(run), msg_id=f"once-{run}")
    again = await publish(client, changed(run), msg_id=f"once-{run}")
    assert first == again
    assert len(await trail(client, first, run_id=run)) == 1
    d = deps(audit)
    position = d.follower.position
    assert position is not None
    js = client.js
    msg = await js.get_msg("PRAXIS_EVENTS", first)

    entry = entry_of(
        first, msg.subject or "", msg.data or b"", msg.headers, msg.time or datetime.now(UTC)
    )
    assert await d.trail.append(position.epoch, [entry, entry]) == 0
    assert len(await trail(client, first, run_id=run)) == 1


async def test_a_restart_resumes_where_the_trail_ends_nothing_lost_nothing_twice(
    audit: Any, client: Bus
) -> None:
    run = uuid.uuid4()
    before = await publish(client, changed(run), actor="bob")
    assert len(await trail(client, before, run_id=run)) == 1
    await audit.stop()
    published_while_down = [
        await publish(client, changed(run, RunStatus.PAUSED), actor="bob") for _ in range(30)
    ]
    await audit.start()
    items = await trail(client, published_while_down[-1], run_id=run)
    assert sorted(i.stream_seq for i in items) == [before, *published_while_down]
    assert {i.actor for i in items} == {"bob"}


async def test_a_body_that_is_not_json_is_kept_and_the_service_goes_on(
    audit: Any, client: Bus
) -> None:
    ack = await client.js.publish("praxis.evt.lab.door.opened", b"\x00 not json")
    run = uuid.uuid4()
    after = await publish(client, changed(run))
    items = await trail(client, after, types=["lab.door.opened"])
    assert any(i.stream_seq == ack.seq and "not json" in i.payload for i in items)
    assert len(await trail(client, after, run_id=run)) == 1


async def test_a_body_jsonb_cannot_hold_is_kept_as_text_and_the_trail_goes_on(
    audit: Any, client: Bus
) -> None:
    """Valid JSON that PostgreSQL's JSONB refuses (an escaped lone surrogate) in the middle of
    a batch: the others are stored as they are, it is kept as text, nothing stops."""
    run = uuid.uuid4()
    before = await publish(client, changed(run))
    odd = await client.js.publish("praxis.evt.lab.odd.thing", b'{"name": "\\ud800"}')
    after = await publish(client, changed(run))
    assert len(await trail(client, after, run_id=run)) == 2
    (kept,) = [i for i in await trail(client, after, types=["lab.odd.thing"])]
    assert kept.stream_seq == odd.seq and kept.payload == '{"name": "\\ud800"}'
    assert before < odd.seq < after


async def test_pages_newest_first_and_time_bounds(
    audit: Any, client: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4()
    seqs = [await publish(client, changed(run)) for _ in range(7)]
    seen: list[int] = []
    before: int | None = None
    while True:
        page = await client.request(
            ListAuditEvents(
                filters=AuditFilters(run_id=run), limit=3, before=before, stored_through=seqs[-1]
            )
        )
        seen += [i.stream_seq for i in page.items]
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == sorted(seqs, reverse=True)
    now = datetime.now(UTC)
    hour_ago = now - timedelta(hours=1)
    within = await trail(client, seqs[-1], run_id=run, since=hour_ago)
    assert [i.stream_seq for i in within] == sorted(seqs, reverse=True)
    assert await trail(client, seqs[-1], run_id=run, until=hour_ago) == []
    # A wide window is read as any filter is (the index ending in id): the same answer.
    monkeypatch.setattr(store, "NARROW_WINDOW", 0)
    assert await trail(client, seqs[-1], run_id=run, since=hour_ago) == within
    assert await trail(client, seqs[-1], run_id=run, until=hour_ago) == []


async def test_reading_past_what_the_stream_holds_is_unavailable_not_wrong(
    audit: Any, client: Bus
) -> None:
    info = await client.js.stream_info("PRAXIS_EVENTS")
    with pytest.raises(Unavailable, match="holds the events stream up to"):
        await client.request(ListAuditEvents(stored_through=info.state.last_seq + 1000), timeout=10)
