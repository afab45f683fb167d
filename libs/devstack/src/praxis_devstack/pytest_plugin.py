"""pytest plugin: session-wide real NATS and PostgreSQL for integration tests.

Registered through the ``pytest11`` entry point (``praxis``) when ``praxis-devstack`` is
installed. Fixtures:

* ``nats_url`` -- ``nats://...`` of a JetStream-enabled server, as the ``operator`` identity
  (its credentials are in the URL): what tests use to connect directly (clients, taps);
* ``nats_identity`` -- ``nats_identity("scheduler")`` (or ``("orchestrator", workcell)``):
  settings keywords (``nats_url``, ``nats_user``, ``nats_password``) that make an in-process
  service connect as its own identity (``praxis_contracts.permissions``);
* ``nats_access`` -- the server's plain URL and its identities' passwords (``NatsAccess``);
* ``database_url`` -- ``postgresql+asyncpg://...`` of the ``praxis`` database;
* ``make_database`` -- ``make_database("prefix") -> url`` of a new, empty database on the same
  server (dropped at the end of the session unless ``PRAXIS_TEST_KEEP_DATABASES=1``);
* ``admin_token`` -- the ``PRAXIS_ADMIN_TOKEN`` to give gateways (and ``Stack``) under test, and
  to send as ``Authorization: Bearer <token>``.
* ``local_sources`` -- code-manager settings (keyword arguments) that allow protocol sources
  from local git repositories and folders under the session's temporary directory.

Where the servers come from, per fixture, first match wins:

1. ``NATS_URL`` / ``DATABASE_URL`` in the environment (external servers, used as they are);
2. ``PRAXIS_TEST_DOCKER=1`` and a reachable Docker engine: testcontainers (not a dependency of
   this package: install ``testcontainers[nats,postgres]`` yourself);
3. embedded servers from :mod:`praxis_devstack.servers`, started once per session in a
   temporary directory (PostgreSQL with ``fast=True``). The embedded nats-server enforces the
   declared permissions, with random passwords per session; its orchestrator identity is the
   any-workcell one (tests name their workcells at random).

External and Docker servers are used as they are. Against an external server that enforces
the generated authorization, put the operator's credentials in ``NATS_URL``
(``nats://operator:PASSWORD@host:4222``): tests and in-process services then connect as the
operator (``NATS_USER``/``NATS_PASSWORD`` in the environment, if set, apply to the services).

A server that cannot be started skips the tests that need it -- except under ``CI=true`` (or
``CI=1``), where it is an error: CI must never go green by skipping integration tests.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import pytest

from praxis_contracts.permissions import ANY_WORKCELL, Topology, identity_for_service
from praxis_contracts.topology import workcell_state
from praxis_devstack import db
from praxis_devstack.servers import NatsServer, PostgresServer, provision_blocking
from praxis_runtime.natsauth import NatsAuth
from praxis_runtime.topology import provision

MakeDatabase = Callable[[str], str]
"""Type of the ``make_database`` fixture: ``make_database(name_prefix) -> SQLAlchemy URL``."""

CI_TRUE_VALUES = frozenset({"true", "1"})
LOCAL_SOURCE_SCHEMES = ("https", "ssh", "file")
DEFAULT_NATS_IMAGE = "nats:2.11"
DEFAULT_POSTGRES_IMAGE = "postgres:18"
_Server = TypeVar("_Server", NatsServer, PostgresServer)


def running_in_ci() -> bool:
    """Whether the ``CI`` environment variable says we run in CI (``true`` or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE_VALUES


def server_unavailable(reason: str) -> NoReturn:
    """The one place deciding what a missing server means: skip locally, fail under CI."""
    if running_in_ci():
        pytest.fail(f"{reason} (CI is set: this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------------------ source choice


@functools.cache
def _use_docker() -> bool:
    """``PRAXIS_TEST_DOCKER=1`` and a Docker engine answers (testcontainers must be importable)."""
    if os.environ.get("PRAXIS_TEST_DOCKER", "").strip() != "1":
        return False
    try:
        import testcontainers  # noqa: F401
    except ImportError:
        pytest.fail(
            "PRAXIS_TEST_DOCKER=1 but testcontainers is not installed: "
            "install 'testcontainers[nats,postgres]' or unset PRAXIS_TEST_DOCKER",
            pytrace=False,
        )
    return _docker_reachable()


def _docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception:
        return False
    return True


def _started(server: _Server, what: str) -> Iterator[_Server]:
    try:
        server.start()
    except Exception as exc:
        server_unavailable(f"could not start {what}: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _container_class(module: str, name: str) -> Any:
    """``testcontainers.community.<module>.<name>`` (newer) or ``testcontainers.<module>``."""
    for package in ("testcontainers.community", "testcontainers"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    pytest.fail(
        f"PRAXIS_TEST_DOCKER=1 but testcontainers lacks its {module!r} module: "
        "install 'testcontainers[nats,postgres]'",
        pytrace=False,
    )


def _container(make: Callable[[], Any], what: str) -> Iterator[Any]:
    try:
        container = make()  # constructing one already talks to the Docker engine
        container.start()
    except Exception as exc:
        server_unavailable(f"could not start a {what} container: {exc}")
    try:
        yield container
    finally:
        container.stop()


def _nats_container() -> Iterator[str]:
    nats_container = _container_class("nats", "NatsContainer")
    image = os.environ.get("PRAXIS_TEST_NATS_IMAGE", DEFAULT_NATS_IMAGE)
    for started in _container(lambda: nats_container(image).with_command("-js"), "NATS"):
        yield f"nats://{started.get_container_host_ip()}:{started.get_exposed_port(4222)}"


def _postgres_container() -> Iterator[str]:
    postgres_container = _container_class("postgres", "PostgresContainer")
    image = os.environ.get("PRAXIS_TEST_POSTGRES_IMAGE", DEFAULT_POSTGRES_IMAGE)
    command = "postgres -c max_connections=200 -c fsync=off -c synchronous_commit=off"
    # Random, like every password a service is given: a well-known one is refused by the
    # services' settings (praxis_runtime.settings.refuse_weak_secret).
    password = secrets.token_hex(16)

    def make() -> Any:
        credentials = {"username": "postgres", "password": password, "dbname": "praxis"}
        return postgres_container(image, **credentials).with_command(command)

    for started in _container(make, "PostgreSQL"):
        host, port = started.get_container_host_ip(), started.get_exposed_port(5432)
        yield f"postgresql+asyncpg://postgres:{password}@{host}:{port}/praxis"


# ----------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class NatsAccess:
    """A test session's NATS server: its URL and, when it enforces them, its identities."""

    url: str
    auth: NatsAuth | None = None

    @property
    def operator_url(self) -> str:
        return self.auth.url_for(self.url) if self.auth is not None else self.url

    def settings_for(self, service: str) -> dict[str, Any]:
        """Settings keywords connecting ``service`` as its identity (the any-workcell one for
        an orchestrator); just the URL where the server is not ours."""
        if self.auth is None:
            return {"nats_url": self.url}
        name = identity_for_service(service, ANY_WORKCELL if service == "orchestrator" else None)
        env = self.auth.env_for(name)
        return {"nats_url": self.url, "nats_user": name, "nats_password": env["NATS_PASSWORD"]}


NatsIdentity = Callable[..., dict[str, Any]]
"""Type of the ``nats_identity`` fixture: ``nats_identity(service) -> settings keywords``."""


@pytest.fixture(scope="session")
def nats_access(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsAccess]:
    """The session's JetStream-enabled NATS server (see the module doc for where it comes from)."""
    external = os.environ.get("NATS_URL")
    if external:
        yield _provisioned(NatsAccess(external))
    elif _use_docker():
        for url in _nats_container():
            yield _provisioned(NatsAccess(url))
    else:
        auth = NatsAuth((ANY_WORKCELL,))
        server = NatsServer(tmp_path_factory.mktemp("nats"), auth=auth)
        for started in _started(server, "the embedded nats-server"):
            yield _provisioned(NatsAccess(started.url, auth))


def _provisioned(access: NatsAccess) -> NatsAccess:
    """The session's topology, created as a deployment's provisioning step would (services only
    bind to it); each test workcell's state store is added by ``provide_workcell``."""
    provision_blocking(access.operator_url, ())
    return access


async def provide_workcell(js: Any, workcell: str) -> None:
    """Provision ``workcell``'s state store (tests name their workcells at random)."""
    await provision(js, Topology((), (), (workcell_state(workcell),)))


@pytest.fixture(scope="session")
def nats_url(nats_access: NatsAccess) -> str:
    """URL of the session's NATS server, as the operator identity (tools and tests)."""
    return nats_access.operator_url


@pytest.fixture(scope="session")
def nats_identity(nats_access: NatsAccess) -> NatsIdentity:
    """``nats_identity("scheduler")``: settings keywords for an in-process service."""
    return nats_access.settings_for


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLAlchemy URL (``postgresql+asyncpg://``) of a database for the whole session."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield db.to_sqlalchemy_url(external)
    elif _use_docker():
        yield from _postgres_container()
    else:
        server = PostgresServer(tmp_path_factory.mktemp("postgres"), fast=True)
        for started in _started(server, "the embedded PostgreSQL"):
            yield started.url


@pytest.fixture(scope="session")
def admin_token() -> str:
    """The gateway's bootstrap admin bearer for this session (``PRAXIS_ADMIN_TOKEN`` if set)."""
    return os.environ.get("PRAXIS_ADMIN_TOKEN") or secrets.token_urlsafe(32)


@pytest.fixture(scope="session")
def make_database(database_url: str) -> Iterator[MakeDatabase]:
    """Factory: ``make_database("orders") -> url`` of a new empty database on the server.

    Synchronous (asyncpg runs on a private thread), so it is callable from sync and async
    fixtures alike. Databases are dropped at session end unless PRAXIS_TEST_KEEP_DATABASES=1.
    """
    created: list[str] = []

    def make(name_prefix: str = "test") -> str:
        name = db.unique_database_name(name_prefix)
        db.create_database(database_url, name)
        created.append(name)
        return db.with_database(db.to_sqlalchemy_url(database_url), name)

    yield make
    if os.environ.get("PRAXIS_TEST_KEEP_DATABASES", "").strip() != "1":
        _drop_all(database_url, created)


@pytest.fixture(scope="session")
def local_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``Settings(**local_sources, ...)`` of the code-manager: git over file paths and local
    folders allowed under the session's temporary directory (and nowhere else)."""
    return {
        "source_allowed_schemes": list(LOCAL_SOURCE_SCHEMES),
        "source_allowed_roots": [tmp_path_factory.getbasetemp()],
    }


def _drop_all(database_url: str, names: list[str]) -> None:
    for name in names:
        try:
            db.drop_database(database_url, name)
        except Exception as exc:
            warnings.warn(f"could not drop test database {name!r}: {exc}", stacklevel=1)


async def drained(js: Any, stream: str, *durables: str, timeout: float = 15.0) -> None:
    """Wait until each durable consumer of ``stream`` has acknowledged everything delivered to
    it (a message is acknowledged once its handler returned).

    Acks go to the server and no one else, so this asks the server for the consumers' pending
    counts, a short interval apart, up to ``timeout``: a condition checked where no event tells
    that a handler has returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        infos = [await js.consumer_info(stream, durable) for durable in durables]
        if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
            return
        assert loop.time() < deadline, f"still unhandled after {timeout} s: {infos}"
        await asyncio.sleep(0.05)


async def eventually(
    condition: Callable[[], Any], what: str, timeout: float = 15.0, every: float = 0.02
) -> Any:
    """Wait until ``condition()`` (or what it returns, if awaitable) is truthy, looking every
    ``every`` seconds; fail the test after ``timeout``. Returns that value. For conditions
    nothing pushes (a process table, a file); prefer an event where one exists."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(every)


@pytest.fixture(name="eventually")
def eventually_fixture() -> Callable[..., Any]:
    """``await eventually(condition, what, timeout)``: a bounded wait for a condition."""
    return eventually
