"""The client without a server: requests built, replies and errors decoded, lists paged, the
event stream decoded and resumed. Against the real stack: tests/e2e/test_client_and_cli.py."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest

from praxis_client import AsyncClient, Client, ConnectionFailed, calls, correlation_of, status_of
from praxis_client.calls import Call
from praxis_client.events import SseDecoder, StreamEvent
from praxis_contracts.errors import (
    AssetsUnavailable,
    InternalError,
    NotFound,
    PraxisError,
    Unauthenticated,
    Unavailable,
)
from praxis_contracts.runs import RunStatusChanged

RUN_ID = uuid4()


def builders() -> list[str]:
    return [
        name
        for name, fn in vars(calls).items()
        if inspect.isfunction(fn)
        and fn.__module__ == calls.__name__
        and not name.startswith("_")
        and inspect.signature(fn).return_annotation.startswith("Call[")
    ]


@pytest.mark.parametrize("client", [AsyncClient, Client])
def test_every_call_is_a_method_of_both_clients_with_its_signature(client: type[Any]) -> None:
    assert len(builders()) > 35
    for name in builders():
        method = getattr(client, name, None)
        assert method is not None, f"{client.__name__} has no {name}"
        assert method.__doc__ == getattr(calls, name).__doc__


def test_calls_build_their_requests() -> None:
    call = calls.list_runs(status=["failed", "queued"], protocol_name="noop", limit=5)
    assert (call.method, call.path) == ("GET", "/api/v1/protocols/runs")
    assert call.params == (
        ("limit", "5"),
        ("status", "failed"),
        ("status", "queued"),
        ("protocol_name", "noop"),
    )
    assert call.at_offset(10).params[-1] == ("offset", "10")
    assert call.at_offset(10).at_offset(20).offset == 20
    submit = calls.submit_run("noop", workcell="demo", priority=0, parameters={})
    assert submit.body == {
        "protocol_name": "noop",
        "workcell": "demo",
        "priority": 0,
        "parameters": {},
    }
    resolve = calls.resolve_run(RUN_ID, "failed", reason="checked the plate")
    assert resolve.path == f"/api/v1/protocols/runs/{RUN_ID}/actions"
    assert resolve.body == {"action": "resolve", "reason": "checked the plate", "outcome": "failed"}
    filters = calls.list_catalog(is_factory=True, search="plate").params
    assert filters == (("search", "plate"), ("is_factory", "true"))


def json_reply(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)


def sync_client(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client("http://praxis", "t0ken", transport=httpx.MockTransport(handler))


def test_an_error_reply_raises_its_contract_error_with_status_and_correlation() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t0ken"
        if request.url.path.endswith("/runs"):
            body = {
                "code": "assets_unavailable",
                "message": "held",
                "retryable": False,
                "details": {"blocked_by": ["r1"]},
                "correlation_id": "c-1",
            }
            return json_reply(409, body, **{"X-Correlation-Id": "c-1"})
        body = {"code": "not_found", "message": "no such run", "correlation_id": "c-2"}
        return json_reply(404, body)

    with sync_client(handler) as praxis:
        with pytest.raises(AssetsUnavailable) as held:
            praxis.submit_run("noop", mode="immediate")
        with pytest.raises(NotFound) as missing:
            praxis.get_run(RUN_ID)
    assert held.value.details == {"blocked_by": ["r1"]}
    assert (status_of(held.value), correlation_of(held.value)) == (409, "c-1")
    assert (status_of(missing.value), correlation_of(missing.value)) == (404, "c-2")
    assert missing.value.message == "no such run"


def test_a_reply_not_in_the_error_shape_maps_by_status() -> None:
    statuses = iter([502, 500, 401])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(statuses)
        if status == 401:
            return json_reply(401, {"code": "unauthenticated", "message": "who?"})
        return httpx.Response(status, content=b"<html>Bad Gateway</html>")

    with sync_client(handler) as praxis:
        with pytest.raises(Unavailable, match="HTTP 502: <html>Bad Gateway"):
            praxis.list_tokens()
        with pytest.raises(InternalError, match="HTTP 500"):
            praxis.list_tokens()
        with pytest.raises(Unauthenticated):
            praxis.list_tokens()


def test_no_answer_raises_connection_failed_a_retryable_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with sync_client(handler) as praxis, pytest.raises(ConnectionFailed) as failed:
        praxis.get_run(RUN_ID)
    assert isinstance(failed.value, PraxisError) and failed.value.retryable
    assert not failed.value.maybe_done and status_of(failed.value) is None

    def handler2(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no reply", request=request)

    with sync_client(handler2) as praxis, pytest.raises(ConnectionFailed) as lost:
        praxis.submit_run("noop")
    assert lost.value.maybe_done


def run_page(offset: int, limit: int, total: int, cut: int | None = None) -> dict[str, Any]:
    count = min(limit, total - offset, cut or limit)
    items = [
        {
            "accession_id": str(uuid4()),
            "protocol_name": f"p{offset + i}",
            "protocol_version": "1",
            "status": "completed",
            "created_at": "2026-12-07T00:00:00Z",
            "updated_at": "2026-12-07T00:00:00Z",
        }
        for i in range(max(count, 0))
    ]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


async def test_paginate_walks_every_page_from_where_the_last_stopped() -> None:
    asked: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", "0"))
        asked.append(offset)
        limit = int(request.url.params["limit"])
        # The server may cut a page short (runs at ~512 KB): the next starts after what came.
        return json_reply(200, run_page(offset, limit, total=8, cut=2 if offset == 3 else None))

    async with AsyncClient("http://praxis", transport=httpx.MockTransport(handler)) as praxis:
        names = [run.protocol_name async for run in praxis.paginate(calls.list_runs(limit=3))]
    assert names == [f"p{i}" for i in range(8)]
    assert asked == [0, 3, 5]
    with sync_client(handler) as praxis:
        tail = [run.protocol_name for run in praxis.paginate(calls.list_runs(limit=3, offset=6))]
    assert tail == ["p6", "p7"]


def test_the_sse_decoder_follows_the_grammar() -> None:
    decoder = SseDecoder()
    lines = [
        ": keep-alive",
        "",
        "id: 7",
        "event: scheduler.run.status_changed",
        'data: {"a":',
        "data: 1}",
        "",
        "data:{}",
        "",
    ]
    events = [e for e in map(decoder.feed, lines) if e is not None]
    assert events == [
        StreamEvent(id=7, type="scheduler.run.status_changed", data={"a": 1}),
        StreamEvent(id=None, type="message", data={}),
    ]


def status_event(seq: int, status: str) -> bytes:
    data = {
        "run_id": str(RUN_ID),
        "status": status,
        "previous": "queued",
        "at": "2026-12-07T00:00:00Z",
    }
    return f"id: {seq}\nevent: scheduler.run.status_changed\ndata: {json.dumps(data)}\n\n".encode()


class Breaks(httpx.AsyncByteStream, httpx.SyncByteStream):
    """A response body that sends ``chunks`` and then, if ``broken``, fails like a reset."""

    def __init__(self, chunks: list[bytes], broken: bool) -> None:
        self.chunks, self.broken = chunks, broken

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.broken:
            raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.broken:
            raise httpx.ReadError("connection reset")


def flaky_stream() -> tuple[Callable[[httpx.Request], httpx.Response], list[str | None]]:
    """A run's stream that breaks after its first event, then closes early once, then ends."""
    resumed: list[str | None] = []
    bodies = [
        ([b": keep-alive\n\n", status_event(3, "pending")], True),
        ([status_event(5, "running")], False),  # closed before the run ended
        ([status_event(9, "completed")], False),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        resumed.append(request.headers.get("Last-Event-ID"))
        chunks, broken = bodies[len(resumed) - 1]
        return httpx.Response(200, stream=Breaks(chunks, broken))

    return handler, resumed


async def test_the_event_stream_resumes_after_the_last_event_it_saw() -> None:
    handler, resumed = flaky_stream()
    async with AsyncClient("http://praxis", transport=httpx.MockTransport(handler)) as praxis:
        praxis.backoff = lambda failures: 0.0  # type: ignore[method-assign]
        events = [e async for e in praxis.events(RUN_ID, last_event_id=1)]
    assert [e.id for e in events] == [3, 5, 9]
    assert resumed == ["1", "3", "5"]
    message = events[-1].message()
    assert isinstance(message, RunStatusChanged) and message.status == "completed"
    assert events[-1].ends_run and not events[0].ends_run

    handler, resumed = flaky_stream()
    with sync_client(handler) as praxis:
        praxis.backoff = lambda failures: 0.0  # type: ignore[method-assign]
        assert [e.id for e in praxis.events(RUN_ID)] == [3, 5, 9]
    assert resumed == [None, "3", "5"]


async def test_a_stream_that_keeps_failing_raises_connection_failed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with AsyncClient("http://praxis", transport=httpx.MockTransport(handler)) as praxis:
        praxis.backoff = lambda failures: 0.0  # type: ignore[method-assign]
        with pytest.raises(ConnectionFailed):
            [e async for e in praxis.events(RUN_ID, reconnects=2)]


async def test_a_stream_refused_raises_its_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json_reply(404, {"code": "not_found", "message": "no run"})

    async with AsyncClient("http://praxis", transport=httpx.MockTransport(handler)) as praxis:
        with pytest.raises(NotFound):
            [e async for e in praxis.events(RUN_ID)]


def test_every_call_decodes_its_reply_type() -> None:
    call: Call[None] = calls.delete_source(RUN_ID)
    assert call.decode(b"") is None
    assert calls.asyncapi().decode(b'{"asyncapi": "3.0.0"}') == {"asyncapi": "3.0.0"}
