"""The bus against a real nats-server: typed request/reply and the JetStream error policy.

Every name this module creates (service, durable, command key) is unique to the run, because
the streams are shared by the whole test session. The consumer listens on a keyed command subject
(``praxis.cmd.orchestrator.execute.<unique key>``) so its filter never overlaps a service's on
the work-queue stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from praxis_contracts import headers as h
from praxis_contracts.base import Request
from praxis_contracts.common import RunStatus
from praxis_contracts.deadletters import DeadLetterReplayed, ReplayDeadLetter
from praxis_contracts.errors import (
    Conflict,
    ErrorCode,
    ErrorReply,
    InternalError,
    InvalidRequest,
    NotFound,
    ReplyTooLarge,
    SourceSyncFailed,
    Unavailable,
)
from praxis_contracts.protocols import ProtocolDefinition, ProtocolFunctionSpec
from praxis_contracts.runs import ExecuteRun, GetRun, RunView
from praxis_contracts.topology import COMMANDS, DEAD_LETTERS, claims, dead_letter_subject
from praxis_runtime.bus import Bus, Handlers, acknowledge, is_infrastructure
from praxis_runtime.logging import log_context

pytestmark = pytest.mark.integration

SUFFIX = uuid.uuid4().hex[:10]
KEY = f"bus-test-{SUFFIX}"
DURABLE = f"bus-test-{SUFFIX}"
COMMAND_SUBJECT = ExecuteRun.subscription_subject(KEY)
PARALLEL_KEY = f"bus-test-parallel-{SUFFIX}"
PARALLEL_DURABLE = f"bus-test-parallel-{SUFFIX}"
BROKEN_RUN = uuid.uuid4()
WAIT = 10.0
FINAL = {"+ACK", "+TERM"}


class Unanswered(Request[RunView]):
    """A request type nobody serves (defined here, so it is no contract)."""

    subject: ClassVar[str] = f"praxis.rpc.bus_test.unanswered_{SUFFIX}"
    reply_type: ClassVar[type[BaseModel]] = RunView


@dataclass
class Recorder:
    """Handler dependencies: what to answer, how to behave, and what happened."""

    runs: dict[uuid.UUID, RunView] = field(default_factory=dict)
    behaviour: dict[uuid.UUID, str] = field(default_factory=dict)
    attempts: Counter[uuid.UUID] = field(default_factory=Counter)
    done: dict[uuid.UUID, asyncio.Future[int]] = field(default_factory=dict)
    dead_letters: asyncio.Queue[Msg] = field(default_factory=asyncio.Queue)
    acks: dict[int, list[str]] = field(default_factory=dict)
    ack_seen: asyncio.Event = field(default_factory=asyncio.Event)
    started: dict[uuid.UUID, asyncio.Event] = field(default_factory=dict)
    partner: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)

    def pair(self) -> tuple[uuid.UUID, uuid.UUID]:
        """Two runs whose handlers each wait until the other's has started."""
        a, b = uuid.uuid4(), uuid.uuid4()
        self.partner |= {a: b, b: a}
        self.started |= {a: asyncio.Event(), b: asyncio.Event()}
        return a, b

    async def meet(self, run_id: uuid.UUID) -> None:
        """Only returns if the partner's handler runs at the same time (else times out)."""
        self.started[run_id].set()
        async with asyncio.timeout(WAIT):
            await self.started[self.partner[run_id]].wait()

    def expect(self, run_id: uuid.UUID, behaviour: str = "ok") -> asyncio.Future[int]:
        self.behaviour[run_id] = behaviour
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.done[run_id] = future
        return future

    async def on_ack(self, msg: Msg) -> None:
        """``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...``: record our consumer's."""
        tokens = msg.subject.split(".")
        if DURABLE in tokens:
            seq = int(tokens[tokens.index(DURABLE) + 2])
            kind = msg.data.split(b" ")[0].decode() or "+ACK"  # an empty body acknowledges
            self.acks.setdefault(seq, []).append(kind)
            self.ack_seen.set()

    async def settled(self, seq: int) -> list[str]:
        """Every acknowledgement sent for stream sequence ``seq``, once one is final."""
        async with asyncio.timeout(WAIT):
            while not FINAL & set(self.acks.get(seq, [])):
                self.ack_seen.clear()
                await self.ack_seen.wait()
        return self.acks[seq]

    async def dead_letter(self, contains: bytes) -> Msg:
        """The next dead letter from this module whose body contains ``contains``."""
        async with asyncio.timeout(WAIT):
            while True:
                msg = await self.dead_letters.get()
                if contains in msg.data:
                    return msg


def handlers() -> Handlers[Recorder]:
    group: Handlers[Recorder] = Handlers()

    @group.rpc(GetRun)
    async def get_run(query: GetRun, rec: Recorder) -> RunView:
        if query.run_id == BROKEN_RUN:
            raise RuntimeError("database password is hunter2")
        if query.run_id in rec.partner:
            await rec.meet(query.run_id)
            return run_view(query.run_id)
        if query.run_id not in rec.runs:
            raise NotFound(f"protocol run {query.run_id} not found", run_id=str(query.run_id))
        return rec.runs[query.run_id]

    @group.consume(ExecuteRun, durable=DURABLE, key=KEY, ack_wait_seconds=10)
    async def execute(cmd: ExecuteRun, rec: Recorder) -> None:
        rec.attempts[cmd.run_id] += 1
        attempt = rec.attempts[cmd.run_id]
        behaviour = rec.behaviour.get(cmd.run_id, "ok")
        if behaviour == "flaky" and attempt == 1:
            raise Unavailable("warming up")
        if behaviour == "invalid":
            raise InvalidRequest("no such workcell")
        if behaviour == "down":
            raise SourceSyncFailed("still failing")
        if behaviour == "database restarting" and attempt <= 4:
            raise ConnectionRefusedError("connection to PostgreSQL refused")
        if behaviour == "database gone":
            raise ConnectionRefusedError("connection to PostgreSQL refused")
        if behaviour == "confirm first":
            await acknowledge()
            if attempt == 1:
                raise ConnectionRefusedError("after the point of no return")
        future = rec.done.get(cmd.run_id)
        if future is not None and not future.done():
            future.set_result(attempt)

    @group.consume(ExecuteRun, durable=PARALLEL_DURABLE, key=PARALLEL_KEY, max_workers=2)
    async def execute_in_parallel(cmd: ExecuteRun, rec: Recorder) -> None:
        await rec.meet(cmd.run_id)
        rec.done[cmd.run_id].set_result(1)

    return group


@dataclass
class Harness:
    bus: Bus
    rec: Recorder


@pytest.fixture(scope="module")
async def harness(nats_url: str) -> AsyncIterator[Harness]:
    rec = Recorder()
    bus = Bus(
        nats_url, f"bus-test-{SUFFIX}", request_timeout=5.0, max_deliver=3, infra_retry_seconds=3
    )
    await bus.connect()
    dead_letters = await bus.nc.subscribe("praxis.dlq.>", cb=rec.dead_letters.put)
    acks = await bus.nc.subscribe("$JS.ACK.>", cb=rec.on_ack)
    bus.include(handlers(), rec)
    await bus.start()
    yield Harness(bus, rec)
    await dead_letters.unsubscribe()
    await acks.unsubscribe()
    await bus.stop()
    await _forget_consumer(nats_url)


async def _forget_consumer(nats_url: str) -> None:
    """Durable consumers outlive the bus: remove ours and anything left on our subject."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for durable, key in ((DURABLE, KEY), (PARALLEL_DURABLE, PARALLEL_KEY)):
            await js.delete_consumer(COMMANDS.name, durable)
            await js.purge_stream(COMMANDS.name, subject=ExecuteRun.subscription_subject(key))
    finally:
        await nc.close()


def run_view(run_id: uuid.UUID) -> RunView:
    now = datetime.now(UTC)
    return RunView(
        accession_id=run_id,
        protocol_name="transfer",
        protocol_version="1.0.0",
        definition_id=uuid.uuid4(),
        source_commit="0" * 40,
        status=RunStatus.RUNNING,
        parameters={"volume": 5.0},
        created_at=now,
        updated_at=now,
    )


def execute_run(run_id: uuid.UUID, key: str = KEY) -> ExecuteRun:
    spec = ProtocolFunctionSpec(name="transfer", version="1.0.0", module="mod", qualname="transfer")
    definition = ProtocolDefinition(
        accession_id=uuid.uuid4(),
        source_id=uuid.uuid4(),
        source_name="examples",
        commit="0" * 40,
        spec=spec,
        code_bundle="bundle",
        created_at=datetime.now(UTC),
    )
    return ExecuteRun(
        run_id=run_id,
        workcell_id=uuid.uuid4(),
        workcell_name=key,
        definition=definition,
        parameters={},
        bindings=[],
    )


# -- request/reply ---------------------------------------------------------------------------


async def test_requests_are_answered_concurrently(harness: Harness) -> None:
    a, b = harness.rec.pair()
    first, second = await asyncio.gather(
        harness.bus.request(GetRun(run_id=a)), harness.bus.request(GetRun(run_id=b))
    )
    assert (first.accession_id, second.accession_id) == (a, b)


async def test_a_consumer_with_workers_handles_messages_concurrently(harness: Harness) -> None:
    a, b = harness.rec.pair()
    done = [harness.rec.expect(run_id) for run_id in (a, b)]
    for run_id in (a, b):
        await harness.bus.publish(execute_run(run_id, PARALLEL_KEY))
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(*done) == [1, 1]


async def test_request_returns_the_typed_reply(harness: Harness) -> None:
    view = run_view(uuid.uuid4())
    harness.rec.runs[view.accession_id] = view
    reply = await harness.bus.request(GetRun(run_id=view.accession_id))
    assert isinstance(reply, RunView)
    assert reply == view


async def test_a_domain_error_is_re_raised_by_type(harness: Harness) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFound) as caught:
        await harness.bus.request(GetRun(run_id=missing))
    assert caught.value.message == f"protocol run {missing} not found"
    assert caught.value.details == {"run_id": str(missing)}


async def test_an_unexpected_error_is_internal_and_leaks_nothing(harness: Harness) -> None:
    with pytest.raises(InternalError) as caught:
        await harness.bus.request(GetRun(run_id=BROKEN_RUN))
    assert caught.value.message == "RuntimeError while handling the request"
    assert "hunter2" not in caught.value.message


async def test_a_malformed_request_gets_an_invalid_request_reply(harness: Harness) -> None:
    response = await harness.bus.nc.request(
        GetRun.subject, b"{not json", timeout=WAIT, headers={h.CORRELATION_ID: f"c-{SUFFIX}"}
    )
    assert response.headers is not None
    assert response.headers.get(h.ERROR) == "1"
    assert response.headers.get(h.CORRELATION_ID) == f"c-{SUFFIX}"
    error = ErrorReply.model_validate_json(response.data)
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.message == "malformed GetRun"
    assert error.details["errors"]


async def test_a_request_without_responders_is_unavailable_at_once(harness: Harness) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="no service answers"):
        await harness.bus.request(Unanswered())
    assert time.monotonic() - started < harness.bus.request_timeout / 2


async def test_a_reply_over_the_max_payload_travels_by_claim_check(harness: Harness) -> None:
    """nats-server refuses a message over its max payload: a larger reply goes through the
    sender's claims object store, compressed, and the requester gets it whole. Only the sender
    may write (or delete) its store, so the claim stays until the store's TTL removes it."""
    limit = harness.bus.nc.max_payload
    huge = run_view(uuid.uuid4()).model_copy(
        update={"asset_states": {"deck": [f"well {i}" for i in range(limit // 4)]}}
    )
    assert len(huge.model_dump_json()) > 2 * limit
    harness.rec.runs[huge.accession_id] = huge
    assert await harness.bus.request(GetRun(run_id=huge.accession_id)) == huge

    assert await live_claims(harness) == 1
    status = await (await harness.bus.claims.store()).status()
    assert status.ttl == claims(harness.bus.claims.owner).ttl_seconds

    # A small reply travels inline: no object is written for it.
    small = run_view(uuid.uuid4())
    harness.rec.runs[small.accession_id] = small
    assert await harness.bus.request(GetRun(run_id=small.accession_id)) == small
    assert await live_claims(harness) == 1


async def live_claims(harness: Harness) -> int:
    store = await harness.bus.claims.store()
    try:
        return len(await store.list(ignore_deletes=True))
    except NotFoundError:  # nats-py: an empty store
        return 0


async def test_a_reply_over_the_claims_limit_is_a_typed_error_not_a_time_out(
    harness: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``MAX_CLAIM_BYTES`` a reply is not sent at all; the requester hears why at once."""
    monkeypatch.setattr(harness.bus.claims, "limit", 100_000)
    huge = run_view(uuid.uuid4()).model_copy(update={"asset_states": {"deck": "x" * 200_000}})
    harness.rec.runs[huge.accession_id] = huge
    started = time.monotonic()
    with (
        caplog.at_level("ERROR", logger="praxis_runtime.bus"),
        pytest.raises(ReplyTooLarge) as caught,
    ):
        await harness.bus.request(GetRun(run_id=huge.accession_id))
    assert time.monotonic() - started < harness.bus.request_timeout / 2
    assert caught.value.details["max_payload"] == 100_000
    assert caught.value.details["size"] > 100_000
    assert "smaller page" in caught.value.message
    assert any("exceeds" in r.getMessage() for r in caplog.records)


# -- JetStream consumers ---------------------------------------------------------------------


async def test_a_good_command_is_processed_and_acked_once(harness: Harness) -> None:
    run_id = uuid.uuid4()
    done = harness.rec.expect(run_id)
    seq = await harness.bus.publish(execute_run(run_id))
    assert await asyncio.wait_for(done, WAIT) == 1
    assert await harness.rec.settled(seq) == ["+ACK"]


async def test_a_retryable_failure_is_redelivered(harness: Harness) -> None:
    run_id = uuid.uuid4()
    done = harness.rec.expect(run_id, "flaky")
    seq = await harness.bus.publish(execute_run(run_id))
    assert await asyncio.wait_for(done, WAIT) == 2
    assert await harness.rec.settled(seq) == ["-NAK", "+ACK"]


async def test_retries_are_bounded_then_dead_lettered(harness: Harness) -> None:
    run_id = uuid.uuid4()
    harness.rec.expect(run_id, "down")
    seq = await harness.bus.publish(execute_run(run_id))
    letter = await harness.rec.dead_letter(str(run_id).encode())
    assert letter.headers is not None
    reason = letter.headers[h.DEAD_LETTER_REASON]
    assert reason == "gave up after 3 attempts: source_sync_failed: still failing"
    assert await harness.rec.settled(seq) == ["-NAK", "-NAK", "+TERM"]
    assert harness.rec.attempts[run_id] == 3


async def test_an_unavailable_dependency_is_waited_out_past_max_deliver(harness: Harness) -> None:
    """PostgreSQL refusing connections for four attempts (max_deliver is 3): redelivered until
    it is back, then processed; no dead letter."""
    run_id = uuid.uuid4()
    done = harness.rec.expect(run_id, "database restarting")
    seq = await harness.bus.publish(execute_run(run_id))
    assert await asyncio.wait_for(done, WAIT) == 5
    assert await harness.rec.settled(seq) == ["-NAK"] * 4 + ["+ACK"]


async def test_a_dependency_gone_for_good_is_dead_lettered_after_the_window(
    harness: Harness,
) -> None:
    run_id = uuid.uuid4()
    harness.rec.expect(run_id, "database gone")
    await harness.bus.publish(execute_run(run_id))
    letter = await harness.rec.dead_letter(str(run_id).encode())
    assert letter.headers is not None
    assert letter.headers[h.DEAD_LETTER_REASON].startswith("dependency unavailable for")
    assert harness.rec.attempts[run_id] > 3


async def test_a_confirmed_message_is_never_redelivered(harness: Harness) -> None:
    """``acknowledge()`` before the point of no return: a failure after it is not retried."""
    run_id = uuid.uuid4()
    harness.rec.expect(run_id, "confirm first")
    seq = await harness.bus.publish(execute_run(run_id))
    assert await harness.rec.settled(seq) == ["+ACK"]
    assert harness.rec.attempts[run_id] == 1


def test_infrastructure_errors_are_told_from_message_errors() -> None:
    import asyncpg
    import sqlalchemy.exc

    assert is_infrastructure(ConnectionRefusedError())
    assert is_infrastructure(asyncpg.CannotConnectNowError())
    assert is_infrastructure(sqlalchemy.exc.OperationalError("SELECT 1", {}, OSError()))
    assert is_infrastructure(Unavailable("no service answers"))
    wrapped = RuntimeError("while recording")
    wrapped.__cause__ = ConnectionResetError()
    assert is_infrastructure(wrapped)
    assert is_infrastructure(OSError(111, "Connect call failed"))
    # A stream electing a new leader after a cluster member died (seconds): waited out.
    import nats.js.errors

    assert is_infrastructure(nats.js.errors.NoStreamResponseError())
    assert is_infrastructure(nats.js.errors.ServiceUnavailableError())
    assert not is_infrastructure(nats.js.errors.KeyWrongLastSequenceError())
    assert not is_infrastructure(FileNotFoundError("protocols/missing.py"))
    assert not is_infrastructure(PermissionError("denied"))
    assert not is_infrastructure(ValueError("bad volume"))
    assert not is_infrastructure(InvalidRequest("no such workcell"))
    assert not is_infrastructure(asyncpg.UniqueViolationError())


async def test_a_non_retryable_failure_is_dead_lettered_not_redelivered(
    harness: Harness,
) -> None:
    bad, later = uuid.uuid4(), uuid.uuid4()
    harness.rec.expect(bad, "invalid")
    command = execute_run(bad)
    seq = await harness.bus.publish(command)
    letter = await harness.rec.dead_letter(str(bad).encode())
    assert letter.subject == dead_letter_subject(command.routing_subject())
    assert letter.headers is not None
    assert letter.headers[h.DEAD_LETTER_REASON] == "invalid_request: no such workcell"
    assert letter.headers[h.DEAD_LETTER_SUBJECT] == command.routing_subject()
    assert ExecuteRun.model_validate_json(letter.data) == command
    assert await harness.rec.settled(seq) == ["+TERM"]  # terminated: never redelivered
    done = harness.rec.expect(later)
    await harness.bus.publish(execute_run(later))
    await asyncio.wait_for(done, WAIT)
    assert harness.rec.attempts[bad] == 1


async def test_a_malformed_command_is_dead_lettered_and_processing_goes_on(
    harness: Harness,
) -> None:
    garbage = f"{{not json {SUFFIX}".encode()
    ack = await harness.bus.js.publish(COMMAND_SUBJECT, garbage)
    letter = await harness.rec.dead_letter(garbage)
    assert letter.headers is not None
    assert letter.headers[h.DEAD_LETTER_REASON].startswith("malformed ExecuteRun")
    assert await harness.rec.settled(ack.seq) == ["+TERM"]
    run_id = uuid.uuid4()
    done = harness.rec.expect(run_id)
    await harness.bus.publish(execute_run(run_id))
    assert await asyncio.wait_for(done, WAIT) == 1


async def test_a_dead_letter_is_replayed_by_its_own_consumer_and_the_replay_announced(
    harness: Harness,
) -> None:
    """Dead-lettered for a cause since fixed: replayed on request, the consumer's handler
    takes it; a replay that fails again answers the handler's error. Each replay is announced
    (``DeadLetterReplayed``) with who asked and why; a replay asked of the wrong consumer, or
    of no dead letter, is refused without touching anything."""
    bad = uuid.uuid4()
    harness.rec.expect(bad, "invalid")
    await harness.bus.publish(execute_run(bad))
    letter = await harness.rec.dead_letter(str(bad).encode())
    assert letter.headers is not None
    assert letter.headers[h.DEAD_LETTER_CONSUMER] == DURABLE
    assert letter.headers[h.DEAD_LETTER_IDENTITY] == harness.bus.identity
    stored = await harness.bus.js.get_last_msg(DEAD_LETTERS.name, letter.subject)
    assert stored.data == letter.data
    announced: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await harness.bus.nc.subscribe(
        DeadLetterReplayed.subscription_subject(), cb=announced.put
    )
    ask = ReplayDeadLetter(
        seq=stored.seq, identity=harness.bus.identity, consumer=DURABLE, reason="fixed"
    )
    try:
        with pytest.raises(InvalidRequest, match="no such workcell"):  # still failing
            await harness.bus.request(ask)
        failed = DeadLetterReplayed.model_validate_json((await announced.get()).data)
        assert (failed.outcome, failed.seq, failed.reason) == ("failed", stored.seq, "fixed")
        assert failed.error == "invalid_request: no such workcell"

        done = harness.rec.expect(bad)  # the cause is fixed
        with log_context(actor="ops-alice"):
            replayed = await harness.bus.request(ask)
        assert (replayed.seq, replayed.consumer, replayed.message_type) == (
            stored.seq,
            DURABLE,
            "ExecuteRun",
        )
        assert await asyncio.wait_for(done, WAIT) == 3  # the delivery, the two replays
        processed = DeadLetterReplayed.model_validate_json((await announced.get()).data)
        assert (processed.outcome, processed.actor) == ("processed", "ops-alice")

        with pytest.raises(Unavailable, match="no service answers"):  # nobody has that one
            await harness.bus.request(ask.model_copy(update={"consumer": "somebody-else"}))
        with pytest.raises(NotFound, match="no dead letter"):
            await harness.bus.request(ask.model_copy(update={"seq": 10**9}))
        # Stored by hand elsewhere, with headers naming this consumer: not its dead letter.
        forged = await harness.bus.js.publish(
            "praxis.dlq.matrix.forged", stored.data, headers=dict(stored.headers or {})
        )
        with pytest.raises(Conflict, match=r"is stored on praxis\.dlq\.matrix\.forged"):
            await harness.bus.request(ask.model_copy(update={"seq": forged.seq}))
        assert announced.empty()
    finally:
        await sub.unsubscribe()


# -- shutdown --------------------------------------------------------------------------------


async def test_after_stop_consuming_nothing_is_handled_but_publishing_works(
    nats_url: str,
) -> None:
    key = durable = f"bus-test-stop-{SUFFIX}"
    handled: asyncio.Queue[uuid.UUID] = asyncio.Queue()
    group: Handlers[asyncio.Queue[uuid.UUID]] = Handlers()

    @group.consume(ExecuteRun, durable=durable, key=key, max_workers=4)
    async def execute(cmd: ExecuteRun, seen: asyncio.Queue[uuid.UUID]) -> None:
        seen.put_nowait(cmd.run_id)

    bus = Bus(nats_url, durable)
    await bus.connect()
    bus.include(group, handled)
    await bus.start()
    try:
        first = uuid.uuid4()
        await bus.publish(execute_run(first, key))
        async with asyncio.timeout(WAIT):
            assert await handled.get() == first

        await bus.stop_consuming()
        await bus.publish(execute_run(uuid.uuid4(), key))  # the connection still publishes
        info = await bus.js.consumer_info(COMMANDS.name, durable)
        assert info.num_pending == 1 and handled.empty()  # kept for the next consumer
    finally:
        await bus.stop()
        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_consumer(COMMANDS.name, durable)
        await nc.jetstream().purge_stream(
            COMMANDS.name, subject=ExecuteRun.subscription_subject(key)
        )
        await nc.close()


async def test_a_claimed_body_swapped_in_the_store_is_refused(harness: Harness) -> None:
    """A body replaced in the sender's store after it was sent is not taken for the one it
    sent (the digest travels in the message)."""
    claims = harness.bus.claims
    headers: dict[str, str] = {}
    await claims.put(b"x" * 300_000, headers)
    store = await claims.store()
    await store.put(headers[h.CLAIM].rpartition("/")[2], zlib.compress(b"y" * 300_000))
    with pytest.raises(InvalidRequest, match="not the one its sender stored"):
        await claims.check_out(b"", headers)


async def test_a_claimed_body_that_inflates_past_the_limit_is_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = harness.bus.claims
    headers: dict[str, str] = {}
    await claims.put(b"z" * 50_000, headers)  # a few hundred bytes stored
    monkeypatch.setattr(claims, "limit", 10_000)
    with pytest.raises(InvalidRequest, match="over 10000 bytes"):
        await claims.check_out(b"", headers)
