"""The asynchronous client: ``async with AsyncClient(url, token) as praxis: ...``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx
from pydantic import BaseModel

from praxis_client import calls
from praxis_client.calls import Call, Id
from praxis_client.errors import ConnectionFailed, error_of
from praxis_client.events import SseDecoder, StreamEvent
from praxis_client.session import Followed, Probe, Session, probe_of
from praxis_contracts.common import Page
from praxis_contracts.runs import RunView

P = ParamSpec("P")
T = TypeVar("T")
ItemT = TypeVar("ItemT", bound=BaseModel)


def _op(
    builder: Callable[P, Call[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    """A client method sending what ``builder`` builds (its signature and docstring)."""

    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.send(builder(*args, **kwargs))

    method.__name__ = builder.__name__
    method.__doc__ = builder.__doc__
    return method


class AsyncClient(Session):
    """A typed client of the Praxis HTTP API. Replies are the contract models; errors raise
    the contract's ``PraxisError`` subclasses (``praxis_client.errors``)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 10,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout)
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=timeout,
            transport=transport,
            limits=limits,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send one call; its reply decoded, or its error raised."""
        try:
            response = await self.http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.body,
                timeout=call.timeout or self.timeout,
            )
        except httpx.TransportError as exc:
            refused = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            raise ConnectionFailed(
                f"{call.method} {call.path}: {exc!r}", maybe_done=not refused
            ) from exc
        if response.is_error:
            raise error_of(
                response.status_code, response.content, response.headers.get("X-Correlation-Id")
            )
        return call.decode(response.content)

    async def paginate(self, call: Call[Page[ItemT]]) -> AsyncIterator[ItemT]:
        """Every item of a list call, page after page, from its offset on."""
        offset: int | None = call.offset
        while offset is not None:
            page = await self.send(call.at_offset(offset))
            for item in page.items:
                yield item
            offset = calls.next_offset(page, offset)

    async def probe(self) -> Probe:
        """Whether the API answers and is ready, its version and clock (public endpoints)."""
        started = time.perf_counter()
        try:
            ready = await self.http.get("/readyz", timeout=5.0)
        except httpx.TransportError as exc:
            return Probe(reachable=False, problem=repr(exc))
        took_ms = (time.perf_counter() - started) * 1000
        try:
            document = await self.http.get("/openapi.json", timeout=5.0)
        except httpx.TransportError:
            document = None
        return probe_of(ready, document, took_ms)

    async def ready(self) -> bool:
        """Whether the gateway is up and connected to NATS (``/readyz``)."""
        try:
            return (await self.http.get("/readyz", timeout=5.0)).status_code == 200
        except httpx.TransportError:
            return False

    async def events(
        self,
        run_id: Id,
        *,
        last_event_id: int | None = None,
        reconnects: int = 10,
    ) -> AsyncIterator[StreamEvent]:
        """The run's events from the start (or after ``last_event_id``) until it ends. A broken
        connection is opened again with ``Last-Event-ID``, so no event is lost or repeated;
        after ``reconnects`` failures in a row it raises ``ConnectionFailed``."""
        path = calls.run_events_path(run_id)
        async for event in self._stream(path, (), last_event_id, reconnects, until_end=True):
            yield event

    async def live(
        self,
        types: Sequence[str] = (),
        *,
        last_event_id: int | None = None,
        reconnects: int = 10,
    ) -> AsyncIterator[StreamEvent]:
        """Every event from now on (after ``last_event_id`` if given), or those of ``types``
        (``context.aggregate.action``); it never ends by itself. Reconnects as ``events``."""
        params = tuple(("type", t) for t in types)
        async for event in self._stream(
            calls.LIVE_EVENTS_PATH, params, last_event_id, reconnects, until_end=False
        ):
            yield event

    async def _stream(
        self,
        path: str,
        params: tuple[tuple[str, str], ...],
        last_event_id: int | None,
        reconnects: int,
        *,
        until_end: bool,
    ) -> AsyncIterator[StreamEvent]:
        followed = Followed(path, reconnects, last_event_id)
        while True:
            try:
                async with self.http.stream(
                    "GET",
                    path,
                    params=params,
                    headers=followed.headers(),
                    timeout=self.stream_timeout,
                ) as response:
                    if response.is_error:
                        content = await response.aread()
                        raise error_of(
                            response.status_code,
                            content,
                            response.headers.get("X-Correlation-Id"),
                        )
                    decoder = SseDecoder()
                    async for line in response.aiter_lines():
                        event = decoder.feed(line)
                        if event is None:
                            continue
                        followed.seen(event)
                        yield event
                        if until_end and event.ends_run:
                            return
            except httpx.TransportError as exc:
                failures = followed.failed(exc)
            else:  # closed before the run ended (a gateway restarting): open it again
                failures = followed.failed(None)
            await asyncio.sleep(self.backoff(failures))

    async def wait(self, run_id: Id) -> RunView:
        """Follow the run until it ends; the ended run."""
        async for _ in self.events(run_id):
            pass
        return await self.get_run(run_id)

    submit_run = _op(calls.submit_run)
    list_runs = _op(calls.list_runs)
    get_run = _op(calls.get_run)
    act_on_run = _op(calls.act_on_run)
    pause_run = _op(calls.pause_run)
    resume_run = _op(calls.resume_run)
    cancel_run = _op(calls.cancel_run)
    retry_run = _op(calls.retry_run)
    resolve_run = _op(calls.resolve_run)
    list_calls = _op(calls.list_calls)
    get_call_result = _op(calls.get_call_result)
    list_logs = _op(calls.list_logs)
    register_source = _op(calls.register_source)
    list_sources = _op(calls.list_sources)
    sync_source = _op(calls.sync_source)
    delete_source = _op(calls.delete_source)
    list_definitions = _op(calls.list_definitions)
    register_workcell = _op(calls.register_workcell)
    list_workcells = _op(calls.list_workcells)
    get_workcell = _op(calls.get_workcell)
    update_workcell = _op(calls.update_workcell)
    drain_workcell = _op(calls.drain_workcell)
    undrain_workcell = _op(calls.undrain_workcell)
    delete_workcell = _op(calls.delete_workcell)
    list_snapshots = _op(calls.list_snapshots)
    get_snapshot = _op(calls.get_snapshot)
    restore_snapshot = _op(calls.restore_snapshot)
    set_resource_state = _op(calls.set_resource_state)
    list_assets = _op(calls.list_assets)
    get_asset = _op(calls.get_asset)
    create_asset = _op(calls.create_asset)
    update_asset = _op(calls.update_asset)
    delete_asset = _op(calls.delete_asset)
    list_asset_status_history = _op(calls.list_asset_status_history)
    list_catalog = _op(calls.list_catalog)
    list_locks = _op(calls.list_locks)
    list_edges = _op(calls.list_edges)
    list_dead_letters = _op(calls.list_dead_letters)
    replay_dead_letter = _op(calls.replay_dead_letter)
    list_events = _op(calls.list_events)
    get_dead_letter = _op(calls.get_dead_letter)
    force_release_lock = _op(calls.force_release_lock)
    create_token = _op(calls.create_token)
    list_tokens = _op(calls.list_tokens)
    revoke_token = _op(calls.revoke_token)
    asyncapi = _op(calls.asyncapi)
