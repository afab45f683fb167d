"""Acknowledged JetStream publishing against a real nats-server: per-message results, one
deadline, and ordered batches confirmed by their last ack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from praxis_runtime.publisher import Outgoing, Publisher

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


@pytest.fixture
async def stream(client: Client) -> AsyncIterator[str]:
    name = f"PUBTEST_{uuid.uuid4().hex[:8]}"
    await client.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    yield name
    await client.jetstream().delete_stream(name)


async def test_every_message_gets_its_own_result_in_order(client: Client, stream: str) -> None:
    publisher = Publisher(client)
    first = await publisher.publish(f"{stream}.a", b"1")
    wrong = {"Nats-Expected-Last-Subject-Sequence": str(first + 100)}
    results = await publisher.publish_all(
        [
            Outgoing(f"{stream}.b", b"2"),
            Outgoing(f"{stream}.a", b"3", wrong),  # compare-and-set on a stale revision
            Outgoing(f"nostream.{stream}", b"4"),  # no stream takes it
            Outgoing(f"{stream}.c", b"5"),
        ]
    )
    assert results[0] == first + 1 and results[3] == first + 2
    assert isinstance(results[1], APIError) and results[1].err_code == 10071
    assert isinstance(results[2], NoStreamResponseError)
    assert publisher._pending == {}


async def test_an_unanswered_message_times_out_and_is_forgotten(client: Client) -> None:
    subject = f"silent.{uuid.uuid4().hex}"
    await client.subscribe(subject)  # takes the message, never answers
    publisher = Publisher(client)
    (result,) = await publisher.publish_all([Outgoing(subject, b"x")], timeout=0.2)
    assert isinstance(result, nats.errors.TimeoutError)
    assert publisher._pending == {}


async def test_a_cancelled_batch_is_forgotten(client: Client) -> None:
    subject = f"silent.{uuid.uuid4().hex}"
    await client.subscribe(subject)
    publisher = Publisher(client)
    waiting = asyncio.create_task(publisher.publish_all([Outgoing(subject, b"x")] * 3))
    await client.flush()  # the messages are out; their acks will never come
    assert len(publisher._pending) == 3
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert publisher._pending == {}


async def test_an_ordered_batch_is_stored_in_order_and_confirmed_by_its_last_ack(
    client: Client, stream: str
) -> None:
    publisher = Publisher(client)
    messages = [Outgoing(f"{stream}.e.{i}", str(i).encode(), {"n": str(i)}) for i in range(20)]
    last = await publisher.publish_in_order(messages)
    js = client.jetstream()
    stored = [await js.get_msg(stream, seq) for seq in range(last - 19, last + 1)]
    assert [m.data for m in stored] == [str(i).encode() for i in range(20)]
    assert [m.headers and m.headers["n"] for m in stored] == [str(i) for i in range(20)]


async def test_an_ordered_batch_whose_stream_is_missing_raises(client: Client) -> None:
    publisher = Publisher(client)
    messages = [Outgoing(f"nostream.{uuid.uuid4().hex}.{i}", b"x") for i in range(3)]
    with pytest.raises(NoStreamResponseError):
        await publisher.publish_in_order(messages)
