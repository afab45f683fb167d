"""Fixtures shared by the integration tests: a client bus, event taps, services, git repos.

Each integration module starts the real service(s) it tests in-process against the session's
nats-server and PostgreSQL (``praxis_devstack`` plugin) and talks to them through ``client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import git
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from praxis_contracts.base import Event
from praxis_runtime.bus import Bus
from praxis_runtime.service import Service

E = TypeVar("E", bound=Event)

EVENT_TIMEOUT = 15.0
"""Upper bound for an event that must arrive (generous: CI machines are slow, passing is fast)."""

QUIET_PERIOD = 0.5
"""How long a negative check ("nothing arrives") waits."""

STOP_TIMEOUT = 10.0
"""A service that has not stopped after this long is considered hung."""


class Tap(Generic[E]):
    """Events of one type (optionally one key) received on a core NATS subscription."""

    def __init__(self, event_type: type[E], where: Callable[[E], bool] | None = None) -> None:
        self.event_type = event_type
        self.where = where
        self.queue: asyncio.Queue[E] = asyncio.Queue()

    async def on_message(self, msg: Msg) -> None:
        event = self.event_type.model_validate_json(msg.data)
        if self.where is None or self.where(event):
            self.queue.put_nowait(event)

    async def next(self, timeout: float = EVENT_TIMEOUT) -> E:
        """The next event; fails the test if none arrives within ``timeout``."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            pytest.fail(f"no {self.event_type.__name__} within {timeout} s")

    async def assert_silent(self, period: float = QUIET_PERIOD) -> None:
        """Fail if an event arrives within ``period`` (a bounded negative check)."""
        try:
            event = await asyncio.wait_for(self.queue.get(), period)
        except TimeoutError:
            return
        pytest.fail(f"unexpected {self.event_type.__name__}: {event!r}")

    def drained(self) -> list[E]:
        """Events received so far and not consumed."""
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items


TapFactory = Callable[..., Awaitable[Tap[E]]]


async def registered(service: Service) -> None:
    """Wait until the server has every subscription ``service`` made.

    ``Service.start()`` can return while the SUB commands still wait in nats-py's write buffer
    (see the test report). A PING/PONG alone does not prove they arrived: nats-py writes PING
    straight to the socket, ahead of buffered commands. The first round trip lets the flusher
    write the buffer; the second is answered only after the server has read it.
    """
    await service.bus.nc.flush()
    await service.bus.nc.flush()


class Running:
    """A service started in-process from its ``build_app`` and settings."""

    def __init__(self, build: Callable[[Any], Service], settings: Any) -> None:
        self.build = build
        self.settings = settings
        self.service: Service | None = None

    async def start(self) -> None:
        self.service = self.build(self.settings)
        await self.service.start()
        await registered(self.service)

    async def stop(self, within: float = STOP_TIMEOUT) -> float:
        """Stop; returns how long it took. A stop hung past ``within`` is cancelled, which lets
        ``Service.stop`` carry on closing the bus and the database (no zombie consumer)."""
        service, self.service = self.service, None
        if service is None:
            return 0.0
        started = time.monotonic()
        stopping = asyncio.ensure_future(service.stop())
        done, _ = await asyncio.wait({stopping}, timeout=within)
        if not done:
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
        else:
            stopping.result()
        return time.monotonic() - started

    async def restart(self, settings: Any = None, within: float = STOP_TIMEOUT) -> float:
        """Stop (returns how long that took) and start a new instance."""
        took = await self.stop(within)
        if settings is not None:
            self.settings = settings
        await self.start()
        return took


@pytest.fixture(scope="module")
async def services() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """``await services(build_app, settings)`` starts a service; all stop at module end.

    Only one instance of a service type may consume its durables at a time, so services live for
    one module and are stopped (in reverse order) before the next module starts its own.
    """
    running: list[Running] = []

    async def start(build: Callable[[Any], Service], settings: Any) -> Running:
        handle = Running(build, settings)
        await handle.start()
        running.append(handle)
        return handle

    yield start
    for handle in reversed(running):
        name = handle.service.name if handle.service else "service"
        if await handle.stop() > STOP_TIMEOUT:
            warnings.warn(f"{name} hung on stop (see the test report)", stacklevel=1)


@pytest.fixture(scope="module")
async def client(nats_url: str) -> AsyncIterator[Bus]:
    """A bus of the test's own (not a service's): requests, publishes and event subscriptions."""
    bus = Bus(nats_url, f"test-client-{uuid.uuid4().hex[:8]}")
    await bus.connect()
    yield bus
    await bus.stop()


@pytest.fixture
async def tap(client: Bus) -> AsyncIterator[TapFactory[Event]]:
    """``await tap(EventType, key=None, where=None)``: subscribe *before* triggering the event."""
    subscriptions: list[Subscription] = []

    async def subscribe(
        event_type: type[E], key: str | None = None, where: Callable[[E], bool] | None = None
    ) -> Tap[E]:
        tapped = Tap(event_type, where)
        subject = event_type.subscription_subject(key)
        subscriptions.append(await client.nc.subscribe(subject, cb=tapped.on_message))
        await client.nc.flush()  # the server knows the subscription before anything is triggered
        return tapped

    yield subscribe
    for subscription in subscriptions:
        await subscription.unsubscribe()


class GitRepo:
    """A real git repository in a temporary folder, committed to with GitPython."""

    AUTHOR = git.Actor("Praxis Tests", "tests@praxis.invalid")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.repo = git.Repo.init(path, initial_branch="main")

    def commit(self, files: dict[str, str], message: str = "update") -> str:
        """Write ``files`` (relative path -> text), commit them; returns the commit sha."""
        for relative, text in files.items():
            target = self.path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self.repo.index.add(list(files))
        commit = self.repo.index.commit(message, author=self.AUTHOR, committer=self.AUTHOR)
        return str(commit.hexsha)

    @property
    def url(self) -> str:
        return str(self.path)


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    """An empty git repository (branch ``main``) in this test's tmp_path."""
    return GitRepo(tmp_path / "repo")


# -- an ASGI app served over a real socket -------------------------------------------------------
ServeAsgi = Callable[[Any], contextlib.AbstractAsyncContextManager[str]]


@contextlib.asynccontextmanager
async def _serve_asgi(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free local port (its lifespan run); yields the base URL.

    Started the way ``uvicorn.Server.serve`` starts, but awaited: ``startup`` returns once the
    lifespan has run and the socket listens, so nothing polls uvicorn's ``started`` flag."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    if server.should_exit:
        sock.close()
        raise RuntimeError("the app did not start (see its lifespan's log)")
    main_loop = asyncio.create_task(server.main_loop())
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await main_loop
        await server.shutdown(sockets=[sock])
        sock.close()


@pytest.fixture(scope="session")
def serve_asgi() -> ServeAsgi:
    """``async with serve_asgi(app) as url``: the app on a real socket, lifespan and all."""
    return _serve_asgi
