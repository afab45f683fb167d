"""The trail's pure core: what an event becomes in the trail, who published it, gaps."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from praxis_audit.domain import Position, entry_of, event_name, publisher_of
from praxis_audit.ingest import Follower
from praxis_contracts import headers as h
from praxis_contracts.assets import AssetsReleased, AssetStatus
from praxis_contracts.common import RunStatus
from praxis_contracts.inventory import AssetStatusChanged
from praxis_contracts.runs import RunFinished, RunStatusChanged
from praxis_runtime.metrics import AUDIT_GAP

AT = datetime(2026, 12, 8, tzinfo=UTC)


def test_an_event_names_its_run_workcell_assets_actor_and_correlation() -> None:
    run, asset = uuid.uuid4(), uuid.uuid4()
    event = AssetStatusChanged(
        asset_id=asset,
        workcell_id=uuid.uuid4(),
        name="plate",
        status=AssetStatus.IN_USE,
        previous=AssetStatus.AVAILABLE,
        run_id=run,
        at=AT,
    )
    headers = {h.ACTOR: "alice", h.CORRELATION_ID: "c-1"}
    entry = entry_of(7, event.routing_subject(), event.model_dump_json().encode(), headers, AT)
    assert (entry.stream_seq, entry.occurred_at) == (7, AT)
    assert entry.type == "asset.asset.status_changed"
    assert (entry.actor, entry.correlation_id, entry.run_id) == ("alice", "c-1", run)
    assert entry.asset_ids == (asset,)
    assert entry.publisher == "asset-manager"
    assert json.loads(entry.payload) == event.model_dump(mode="json")


def test_asset_lists_and_the_workcells_name_are_found() -> None:
    run, assets = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    released = AssetsReleased(run_id=run, asset_ids=assets)
    entry = entry_of(1, released.routing_subject(), released.model_dump_json().encode(), {}, AT)
    assert entry.asset_ids == tuple(assets)
    assert entry.actor is None  # the system did it
    finished = _finished(run, "wc-1")
    entry = entry_of(2, finished.routing_subject(), finished.model_dump_json().encode(), {}, AT)
    assert (entry.workcell, entry.run_id) == ("wc-1", run)


def test_the_actor_in_the_body_is_the_nearer_one_the_header_names_the_chains() -> None:
    changed = RunStatusChanged(
        run_id=uuid.uuid4(), status=RunStatus.CANCELLED, previous=None, at=AT, actor="bob"
    )
    body = changed.model_dump_json().encode()
    assert entry_of(1, changed.routing_subject(), body, None, AT).actor == "bob"
    assert entry_of(1, changed.routing_subject(), body, {h.ACTOR: "carol"}, AT).actor == "bob"
    system = changed.model_copy(update={"actor": None}).model_dump_json().encode()
    assert entry_of(1, changed.routing_subject(), system, {h.ACTOR: "carol"}, AT).actor == "carol"


def test_an_edges_events_are_published_by_its_workcells_orchestrator() -> None:
    run = uuid.uuid4()
    finished = _finished(run, "wc-9")
    assert publisher_of(finished.routing_subject()) == "orchestrator-wc-9"
    assert publisher_of(f"{RunStatusChanged.subject}.{run}") == "scheduler"
    assert publisher_of("praxis.evt.somebody.else") is None


def test_a_body_that_is_not_json_is_kept_as_text_and_nul_cannot_break_the_store() -> None:
    entry = entry_of(3, "praxis.evt.lab.door.opened", b"\x00not json\xff", {}, AT)
    assert entry.type == "lab.door.opened"
    text = json.loads(entry.payload)
    assert isinstance(text, str) and "not json" in text and "\x00" not in text
    nul = entry_of(4, "praxis.evt.x.y.z", json.dumps({"note": "a\u0000b"}).encode(), {}, AT)
    assert "\\u0000" not in nul.payload


def test_event_names_are_those_of_the_live_streams() -> None:
    assert event_name(f"{RunFinished.subject}.wc.{uuid.uuid4()}") == "orchestrator.run.finished"


def test_the_position_says_where_to_start() -> None:
    assert Position("epoch", 10).start_at() == 11


def test_what_a_sender_put_in_is_made_storable_and_nothing_raises() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # past what the JSON parser takes
    entry = entry_of(5, "praxis.evt.x.y.z", deep, {}, AT)
    assert entry.payload.startswith('"[[[')  # kept as text
    body = json.dumps({"actor": "a\u0000b\ud800", "workcell": "w" * 5000}).encode()
    entry = entry_of(6, "praxis.evt.x.y.z", body, {h.CORRELATION_ID: "c" * 1000}, AT)
    assert entry.actor is not None and "\x00" not in entry.actor
    entry.actor.encode()  # no lone surrogate left
    assert entry.workcell == "w" * 200 and entry.correlation_id == "c" * 200


class Stream:
    """``stream_info`` of a stream whose oldest event is ``first``."""

    def __init__(self, first: int) -> None:
        self.first = first

    async def stream_info(self, name: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(first_seq=self.first))


def entries(*seqs: int) -> list[Any]:
    return [entry_of(s, "praxis.evt.x.y.z", b"{}", {}, AT) for s in seqs]


async def test_what_arrived_is_stored_up_to_the_first_break_then_read_again() -> None:
    at = Position("e", 10)
    kept, again = await Follower._contiguous(Stream(1), at, entries(9, 10, 11, 12))
    assert [e.stream_seq for e in kept] == [11, 12] and not again  # 9, 10: stored already
    kept, again = await Follower._contiguous(Stream(1), at, entries(11, 13, 14))
    assert [e.stream_seq for e in kept] == [11] and again  # 12 did not arrive: read again
    kept, again = await Follower._contiguous(Stream(1), at, entries(13))
    assert kept == [] and again


async def test_what_left_the_stream_is_counted_and_stepped_over() -> None:
    lost = AUDIT_GAP._value.get()
    kept, again = await Follower._contiguous(Stream(20), Position("e", 10), entries(20, 21))
    assert [e.stream_seq for e in kept] == [20, 21] and not again
    assert AUDIT_GAP._value.get() == lost + 9  # 11 to 19
    kept, again = await Follower._contiguous(Stream(20), Position("e", 10), entries(22))
    assert kept == [] and again  # 20 and 21 are still there


def _finished(run: uuid.UUID, workcell: str) -> RunFinished:
    return RunFinished(
        run_id=run, workcell=workcell, at=AT, edge_instance="edge-1", outcome="completed"
    )
