"""Integration tests: real nats-server and PostgreSQL processes, started in temporary dirs."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

import praxis_devstack
from praxis_contracts.permissions import OPERATOR
from praxis_devstack import db
from praxis_devstack.servers import (
    LocalInfra,
    NatsServer,
    PostgresServer,
    ServerStartError,
    free_port,
)
from praxis_runtime.natsauth import with_credentials

pytestmark = pytest.mark.integration

SRC_DIR = Path(praxis_devstack.__file__).resolve().parent.parent
MACHINE_PORTS = {4222, 5432}  # this machine's own servers: never ours


def port_refuses(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing accepts TCP connections on ``host:port`` any more."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def child_env(**overrides: str) -> dict[str, str]:
    """Environment for child Pythons: our sources importable, no external server URLs."""
    env = {k: v for k, v in os.environ.items() if k not in {"NATS_URL", "DATABASE_URL", "CI"}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


async def assert_postgres_answers(dsn: str) -> None:
    conn = await asyncpg.connect(db.to_libpq_dsn(dsn), timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def assert_nats_refuses_strangers(url: str) -> None:
    """A server with the generated authorization admits nobody without a password."""
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, connect_timeout=5, allow_reconnect=False)


async def assert_nats_round_trip(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        sub = await nc.subscribe("praxis.devstack.ping")
        await nc.publish("praxis.devstack.ping", b"ping")
        assert (await sub.next_msg(timeout=5)).data == b"ping"
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("pg"), fast=True) as server:
        yield server


# ---------------------------------------------------------------------------------------- NATS


@pytest.mark.asyncio
async def test_nats_round_trip_jetstream_and_stop(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    with server:
        assert server.port not in MACHINE_PORTS
        assert server.url == f"nats://127.0.0.1:{server.port}"
        await assert_nats_round_trip(server.url)
        nc = await nats.connect(server.url, connect_timeout=5, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await js.add_stream(name="DEVSTACK", subjects=["devstack.events.>"])
            ack = await js.publish("devstack.events.created", b"{}")
            assert (ack.stream, ack.seq) == ("DEVSTACK", 1)
            assert (await js.stream_info("DEVSTACK")).state.messages == 1
        finally:
            await nc.close()
        pid, port = server.pid, server.port
    assert not server.running
    assert pid_gone(pid)
    assert port_refuses(port)
    assert (tmp_path / "nats" / "jetstream").is_dir()
    assert "Server is ready" in (tmp_path / "nats" / "nats.log").read_text()


def test_nats_busy_port_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        server = NatsServer(tmp_path / "nats", port=port, start_timeout=20)
        with pytest.raises(ServerStartError, match="address already in use"):
            server.start()
    assert not server.running


# ---------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.asyncio
async def test_postgres_select_1_and_stop_with_client_connected(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg", fast=True)
    with server:
        assert server.port not in MACHINE_PORTS
        login = f"postgres:{server.password}@127.0.0.1:{server.port}"
        assert server.url == f"postgresql+asyncpg://{login}/praxis"
        assert server.dsn == f"postgresql://{login}/praxis"
        conn = await asyncpg.connect(server.dsn, timeout=10)
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "praxis"
        assert await conn.fetchval("SHOW max_connections") == "200"
        assert await conn.fetchval("SHOW fsync") == "off"
        pid, port = server.pid, server.port
    # stop() must not wait for the still-open client connection (fast shutdown)
    conn.terminate()
    assert not server.running
    assert pid_gone(pid)
    assert port_refuses(port)


@pytest.mark.asyncio
async def test_postgres_durable_restart_keeps_data(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as server:
        conn = await asyncpg.connect(server.dsn, timeout=10)
        assert await conn.fetchval("SHOW fsync") == "on"
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('yes')")
        await conn.close()
    with PostgresServer(tmp_path / "pg") as again:
        conn = await asyncpg.connect(again.dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "yes"
        finally:
            await conn.close()


def test_postgres_busy_port_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        server = PostgresServer(tmp_path / "pg", fast=True, port=port, start_timeout=20)
        with pytest.raises(ServerStartError, match="Address already in use"):
            server.start()
    assert not server.running


@pytest.mark.asyncio
async def test_create_and_drop_database_inside_running_loop(postgres: PostgresServer) -> None:
    name = db.unique_database_name("Loop Test!")
    assert name.startswith("loop_test_")
    assert db.create_database(postgres.url, name) is True  # sync call, loop is running
    assert db.create_database(postgres.url, name, exist_ok=True) is False
    await assert_postgres_answers(postgres.dsn_for(name))
    db.drop_database(postgres.url, name)
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await assert_postgres_answers(postgres.dsn_for(name))


# ---------------------------------------------------------------------------------- LocalInfra


@pytest.mark.asyncio
async def test_local_infra_starts_and_stops_both(tmp_path: Path) -> None:
    infra = LocalInfra(tmp_path / "infra", fast=True, environ={})
    with infra:
        await assert_nats_round_trip(infra.nats_operator_url)
        await assert_nats_refuses_strangers(infra.nats_url)
        await assert_postgres_answers(infra.database_url)
        # Each service with a database logs in as its own role; the others get no URL.
        for service in ("scheduler", "code-manager", "asset-manager"):
            url = infra.database_url_for(service)
            assert url is not None and "postgres:" not in url
            conn = await asyncpg.connect(db.to_libpq_dsn(url), timeout=10)
            try:
                role = await conn.fetchval("SELECT current_user")
                assert role == "praxis_" + service.replace("-", "_")
            finally:
                await conn.close()
        assert infra.database_url_for("gateway") is None
        assert infra.database_url_for("orchestrator") is None
        assert infra.dead_servers() == []
        assert infra.nats is not None and infra.postgres is not None
        ports = [infra.nats.port, infra.postgres.port]
    assert all(port_refuses(port) for port in ports)
    assert (tmp_path / "infra" / "postgres" / "pgdata" / "PG_VERSION").exists()


def test_local_infra_uses_external_servers_from_env(tmp_path: Path) -> None:
    environ = {"NATS_URL": "nats://nats.example:4222", "DATABASE_URL": "postgresql://u@db:5/x"}
    with LocalInfra(tmp_path / "infra", environ=environ) as infra:
        assert infra.nats is None and infra.postgres is None
        assert infra.nats_url == "nats://nats.example:4222"
        assert infra.database_url == "postgresql+asyncpg://u@db:5/x"
        assert infra.database_url_for("scheduler") == "postgresql+asyncpg://u@db:5/x"
        assert infra.database_url_for("gateway") is None
    assert not (tmp_path / "infra").exists()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        assert port not in MACHINE_PORTS


# ----------------------------------------------------------------------------------------- CLI


def test_cli_prints_urls_then_stops_on_sigterm(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "praxis_devstack.servers", "--dir", str(tmp_path), "--fast"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        credentials = Path(urls.pop("NATS_CREDENTIALS"))
        assert credentials.stat().st_mode & 0o777 == 0o600
        operator = json.loads(credentials.read_text())[OPERATOR]
        url = with_credentials(urls["NATS_URL"], OPERATOR, operator)
        db.run_sync(lambda: assert_nats_round_trip(url))
        db.run_sync(lambda: assert_nats_refuses_strangers(urls["NATS_URL"]))
        db.run_sync(lambda: assert_postgres_answers(urls["DATABASE_URL"]))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in urls.values()]
    assert all(port_refuses(port) for port in ports)


# ------------------------------------------------------------------------------- pytest plugin

PLUGIN_TESTS = """
    import asyncio, asyncpg, nats

    async def _nats(url):
        nc = await nats.connect(url, allow_reconnect=False)
        await nc.jetstream().add_stream(name="PLUGIN", subjects=["plugin.>"])
        await nc.close()

    async def _pg(url):
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return await conn.fetchval("SELECT current_database()")
        finally:
            await conn.close()

    def test_nats(nats_url):
        asyncio.run(_nats(nats_url))

    def test_databases(database_url, make_database):
        assert database_url.startswith("postgresql+asyncpg://")
        assert asyncio.run(_pg(database_url)) == "praxis"
        one, two = make_database("module_a"), make_database("module_a")
        assert one != two and one.startswith("postgresql+asyncpg://")
        assert asyncio.run(_pg(one)).startswith("module_a_")
"""

UNAVAILABLE_TESTS = """
    import pytest
    from praxis_devstack.pytest_plugin import server_unavailable

    @pytest.fixture
    def broken_server():
        server_unavailable("no server here")

    def test_needs_server(broken_server):
        pass
"""


def run_inner_pytest(tmp_path: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    argv = [sys.executable, "-m", "pytest", "-p", "praxis_devstack.pytest_plugin", "-rs"]
    argv += ["-p", "no:cacheprovider", "-q", str(tmp_path)]
    env = child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **env)
    return subprocess.run(
        argv, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )


def test_plugin_fixtures_start_real_servers(tmp_path: Path) -> None:
    result = run_inner_pytest(tmp_path, PLUGIN_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_plugin_skips_unavailable_server_outside_ci(tmp_path: Path) -> None:
    result = run_inner_pytest(tmp_path, UNAVAILABLE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "no server here" in result.stdout


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_plugin_fails_unavailable_server_in_ci(tmp_path: Path, ci: str) -> None:
    result = run_inner_pytest(tmp_path, UNAVAILABLE_TESTS, CI=ci)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout and "no server here" in result.stdout


def test_plugin_docker_requested_without_testcontainers_fails(tmp_path: Path) -> None:
    if importlib.util.find_spec("testcontainers") is not None:
        pytest.skip("testcontainers is installed here; this checks the error without it")
    source = "def test_needs_nats(nats_url):\n    pass\n"
    result = run_inner_pytest(tmp_path, source, PRAXIS_TEST_DOCKER="1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout and "testcontainers is not installed" in result.stdout


async def test_postgres_asks_every_client_for_a_password(postgres: PostgresServer) -> None:
    """Loopback is not trusted: before, any local process connected as the superuser."""
    no_password = f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/praxis"
    for dsn in (no_password, postgres.dsn_for("praxis", password="wrong")):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(dsn, timeout=10)
    assert (postgres.password_path.stat().st_mode & 0o777) == 0o600
    await assert_postgres_answers(postgres.dsn)


async def test_each_service_role_owns_only_its_schema(postgres: PostgresServer) -> None:
    """A service's login can use its own schema and nothing else: not another service's
    tables, not the public schema, and none of a superuser's powers (``COPY ... FROM
    PROGRAM`` ran a shell command as the server before)."""
    roles = {"alpha": "praxis_alpha", "beta": "praxis_beta"}
    passwords = postgres.provision_roles("praxis", roles)

    async def connect(role: str) -> asyncpg.Connection:
        return await asyncpg.connect(postgres.dsn_for("praxis", role, passwords[role]), timeout=10)

    alpha, beta = await connect("praxis_alpha"), await connect("praxis_beta")
    try:
        await beta.execute("CREATE TABLE IF NOT EXISTS beta.secrets (v text)")
        await beta.execute("INSERT INTO beta.secrets VALUES ('beta only')")
        await alpha.execute("CREATE TABLE IF NOT EXISTS alpha.mine (v text)")
        assert not await alpha.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        for statement in (
            "SELECT * FROM beta.secrets",
            "CREATE TABLE beta.planted (v text)",
            "CREATE TABLE public.planted (v text)",
            "COPY alpha.mine FROM PROGRAM 'id'",
            "CREATE DATABASE planted",
            "CREATE ROLE planted",
            "ALTER ROLE praxis_alpha SUPERUSER",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await alpha.execute(statement)
    finally:
        await alpha.close()
        await beta.close()
    # Provisioning again (every start) keeps the data and changes the passwords.
    again = postgres.provision_roles("praxis", roles)
    assert again["praxis_beta"] != passwords["praxis_beta"]
    beta = await asyncpg.connect(
        postgres.dsn_for("praxis", "praxis_beta", again["praxis_beta"]), timeout=10
    )
    try:
        assert await beta.fetchval("SELECT v FROM beta.secrets") == "beta only"
    finally:
        await beta.close()


def test_a_cluster_that_trusted_loopback_asks_for_passwords_after_its_next_start(
    tmp_path: Path,
) -> None:
    server = PostgresServer(tmp_path / "pg", fast=True)
    with server:
        (server.pgdata / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    with PostgresServer(tmp_path / "pg", fast=True) as again:
        dsn = f"postgresql://{again.user}@{again.host}:{again.port}/praxis"

        async def check() -> None:
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(dsn, timeout=10)
            await assert_postgres_answers(again.dsn)

        asyncio.run(check())
