"""The whole system on one machine: servers, five service processes, demo workcell, examples."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import nats
from nats.js.api import DeliverPolicy

from praxis_client import AsyncClient, calls
from praxis_contracts.assets import WorkcellChanged
from praxis_contracts.errors import NotFound
from praxis_contracts.permissions import identity_for_service
from praxis_contracts.protocols import ProtocolSource
from praxis_contracts.topology import DEAD_LETTERS, dead_letter_subject
from praxis_devstack.cost import Meter
from praxis_devstack.servers import (
    LocalInfra,
    NatsServer,
    PostgresServer,
    default_base_dir,
    free_port,
)
from praxis_plr.layout import demo_workcell

SERVICES = ("scheduler", "code-manager", "asset-manager", "audit", "orchestrator", "gateway")
DEMO_WORKCELL = "demo"
EXAMPLES_SOURCE = "examples"


def admin_token_from_env() -> str:
    """``PRAXIS_ADMIN_TOKEN`` from the environment, else a new random one (per stack start)."""
    return os.environ.get("PRAXIS_ADMIN_TOKEN") or secrets.token_urlsafe(32)


SECRET_MARKERS = ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL", "PRIVATE", "_KEY", "DATABASE_URL")
"""Names of variables that hold a secret (or may): never passed on to a service unless it is
that service's own (``Stack._env``)."""


def service_environment(name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without any secret for ``name``'s process: no NATS login, database URL,
    token, password or key of anyone. The code-manager keeps ``SOURCE_SECRET_*`` (the private
    repositories' credentials it alone uses); what each service needs of its own is added by
    the caller."""
    kept: dict[str, str] = {}
    for key, value in environ.items():
        upper = key.upper()
        if upper.startswith("NATS_") and upper != "NATS_REPLICAS":
            continue  # the caller sets this service's NATS URL and login
        if upper.startswith("SOURCE_SECRET_"):
            if name == "code-manager":
                kept[key] = value
            continue
        if any(marker in upper for marker in SECRET_MARKERS):
            continue
        kept[key] = value
    return kept


def source_policy(env: Mapping[str, str], base_dir: Path) -> dict[str, str]:
    """The code-manager's source policy in the local stack: what the environment says, plus
    ``file`` and the stack's data folder (where the example repository lives): a developer's
    own ``SOURCE_ALLOWED_ROOTS`` (their repositories) and schemes are kept, not replaced."""
    schemes = [s.strip() for s in env.get("SOURCE_ALLOWED_SCHEMES", "https,ssh").split(",")]
    roots = [r.strip() for r in env.get("SOURCE_ALLOWED_ROOTS", "").split(",")]
    return {
        "SOURCE_ALLOWED_SCHEMES": ",".join(dict.fromkeys([*filter(None, schemes), "file"])),
        "SOURCE_ALLOWED_ROOTS": ",".join(dict.fromkeys([*filter(None, roots), str(base_dir)])),
    }


def orchestrator_name(workcell: str) -> str:
    """The stack's name of the process serving ``workcell`` beside the first one."""
    return f"orchestrator-{workcell}"


def service_of(name: str, first_workcell: str) -> tuple[str, str]:
    """A stack process's service and workcell: ``orchestrator`` serves the stack's first
    workcell, ``orchestrator-<w>`` serves ``w``; ``gateway-<port>`` is another gateway."""
    if name.startswith("orchestrator-"):
        return "orchestrator", name.removeprefix("orchestrator-")
    if name.startswith("gateway-"):  # another replica (``add_gateway``)
        return "gateway", first_workcell
    return name, first_workcell


def repo_root() -> Path:
    """The workspace root (where ``examples/`` lives), found from this file, not the cwd."""
    return default_base_dir(Path(__file__).resolve()).parent


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    health_url: str
    health_port: int = 0


@dataclass
class Stack:
    """Start with ``start()``, stop with ``stop()``; ``api`` is the gateway's base URL."""

    base_dir: Path = field(default_factory=default_base_dir)
    fast: bool = False
    environ: dict[str, str] | None = None  # NATS_URL / DATABASE_URL overrides; default os.environ
    service_env: dict[str, str] = field(default_factory=dict)  # extra environment, every service
    workcell: str = DEMO_WORKCELL  # the workcell the orchestrator serves
    workcells: tuple[str, ...] = ()  # more workcells with an orchestrator each from the start
    postgres_settings: dict[str, str] = field(default_factory=dict)  # the local server's
    infra: LocalInfra | None = None
    processes: list[ServiceProcess] = field(default_factory=list)
    api: str = ""
    gateway_port: int = 0
    admin_token: str = field(default_factory=admin_token_from_env)  # the gateway's admin bearer

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers for admin calls to ``api``."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def served(self) -> tuple[str, ...]:
        """Every workcell with an orchestrator in this stack (the first is ``workcell``)."""
        return tuple(dict.fromkeys((self.workcell, *self.workcells)))

    async def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        infra = LocalInfra(
            self.base_dir,
            fast=self.fast,
            environ=self.environ,
            workcells=self.served,
            postgres_settings=self.postgres_settings,
        )
        self.infra = await asyncio.to_thread(infra.start)
        gateway_port = int(os.environ.get("GATEWAY_PORT") or free_port())
        self.gateway_port = gateway_port
        self.api = f"http://127.0.0.1:{gateway_port}"
        for name in SERVICES:
            self.processes.append(self._spawn(name, gateway_port))
        for workcell in self.served[1:]:
            self.processes.append(self._spawn(orchestrator_name(workcell), gateway_port))
        await asyncio.gather(*(self._wait_ready(p) for p in self.processes))

    async def add_workcell(self, workcell: str) -> ServiceProcess | None:
        """Serve ``workcell`` too: its NATS identity and state store (the local server's
        authorization is reloaded; nothing else restarts), then its orchestrator. None if it
        is served already."""
        if workcell in self.served:
            return None
        assert self.infra is not None
        await asyncio.to_thread(self.infra.add_workcell, workcell)
        self.workcells = (*self.workcells, workcell)
        service = self._spawn(orchestrator_name(workcell), self.gateway_port)
        self.processes.append(service)
        await self._wait_ready(service)
        return service

    async def add_gateway(self) -> str:
        """One more gateway process beside the first (as a Deployment's second replica); its
        base URL once it is ready."""
        port = free_port()
        service = self._spawn(f"gateway-{port}", port, note="another gateway replica")
        self.processes.append(service)
        await self._wait_ready(service)
        return f"http://127.0.0.1:{port}"

    async def serve_registered_workcells(
        self, ready: asyncio.Event | None = None, started: asyncio.Queue[str] | None = None
    ) -> None:
        """Until cancelled: an orchestrator for every registered workcell, and for each one
        registered from now on (``WorkcellChanged`` events, pushed; the list is read once
        after subscribing, so none registered in between is missed). ``started`` gets each
        workcell whose orchestrator came up.

        Admitting a new workcell's identity reloads the server's authorization: a reply in
        flight at that moment can be refused by the server (it resets the responders'
        one-time reply permissions), so one request may time out (a retryable 504)."""
        assert self.infra is not None
        import nats  # the local stack's own client (operator identity)

        pending: asyncio.Queue[str] = asyncio.Queue()

        async def on_change(msg: Any) -> None:
            event = WorkcellChanged.model_validate_json(msg.data)
            if event.change in ("created", "updated"):
                pending.put_nowait(event.workcell)

        nc = await nats.connect(self.infra.nats_operator_url, max_reconnect_attempts=-1)
        try:
            await nc.subscribe(WorkcellChanged.subscription_subject(None), cb=on_change)
            await nc.flush()
            for name in await self._registered_workcells():
                pending.put_nowait(name)
            if ready is not None:
                ready.set()
            while True:
                workcell = await pending.get()
                try:
                    if await self.add_workcell(workcell) is not None:
                        print(f"  workcell     {workcell}: orchestrator started", flush=True)
                        if started is not None:
                            started.put_nowait(workcell)
                except Exception as exc:  # one workcell's failure never stops the others
                    print(f"  workcell     {workcell}: orchestrator failed: {exc}", flush=True)
        finally:
            await nc.close()

    async def _registered_workcells(self) -> list[str]:
        async with self.client() as praxis:
            return [w.name async for w in praxis.paginate(calls.list_workcells(limit=500))]

    def client(self, timeout: float = 60.0, max_connections: int = 10) -> AsyncClient:
        """A typed client of this stack's API, as its admin (``praxis_client``)."""
        return AsyncClient(
            self.api, self.admin_token, timeout=timeout, max_connections=max_connections
        )

    def _env(self, name: str, health_port: int, gateway_port: int) -> dict[str, str]:
        """``name``'s environment: this one's settings, without anybody's secrets, plus its
        own: its NATS login, its database role (the four services with a database), the admin
        bearer (the gateway), source secrets (the code-manager)."""
        assert self.infra is not None
        service, workcell = service_of(name, self.workcell)
        edge_dir = name  # each orchestrator has its own code cache and runs' scratch
        env = service_environment(service, os.environ)
        # The code-manager's source policy: the example repository is a local git repository
        env.update(source_policy(env, self.base_dir))
        env.update(self.service_env)
        env.update(
            NATS_URL=self.infra.nats_url,
            SERVICE_NAME=service,
            LOG_FORMAT=env.get("LOG_FORMAT", "text"),
            HEALTH_HOST="127.0.0.1",
            HEALTH_PORT=str(health_port),
            GATEWAY_PORT=str(gateway_port),
            PRAXIS_WORKCELL=workcell,
            PROTOCOL_REPO_DIR=str(self.base_dir / "code-manager"),
            PROTOCOL_CODE_CACHE_DIR=str(self.base_dir / edge_dir / "code"),
            RUN_SCRATCH_DIR=str(self.base_dir / edge_dir / "runs"),
        )
        database_url = self.infra.database_url_for(service)
        if database_url is not None:
            env["DATABASE_URL"] = database_url
        if service == "gateway":
            env["PRAXIS_ADMIN_TOKEN"] = self.admin_token
        env.update(self.infra.nats_env(identity_for_service(service, workcell)))
        return env

    def _spawn(
        self, name: str, gateway_port: int, health_port: int = 0, note: str = ""
    ) -> ServiceProcess:
        is_gateway = service_of(name, self.workcell)[0] == "gateway"
        health_port = gateway_port if is_gateway else (health_port or free_port())
        logs = self.base_dir / "logs"
        logs.mkdir(exist_ok=True)
        log = (logs / f"{name}.log").open("ab")
        if note:
            log.write(f"---- praxis-devstack: {note}\n".encode())
            log.flush()
        module = f"praxis_{service_of(name, self.workcell)[0].replace('-', '_')}"
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=self._env(name, health_port, gateway_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return ServiceProcess(
            name, process, log, f"http://127.0.0.1:{health_port}/readyz", health_port
        )

    async def _wait_ready(self, service: ServiceProcess, timeout: float = 90.0) -> None:
        """Start-up only: wait until the process answers its readiness probe."""
        deadline = asyncio.get_running_loop().time() + timeout
        delay = 0.05
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if service.process.poll() is not None:
                    raise RuntimeError(
                        f"{service.name} exited: see {self.base_dir}/logs/{service.name}.log"
                    )
                try:
                    if (await client.get(service.health_url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{service.name} did not become ready in {timeout:.0f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def seed(self) -> ProtocolSource:
        """Register the demo workcell and the bundled example protocols (a real git repo)."""
        async with self.client(timeout=300.0) as praxis:
            # Registered once: a restart keeps the workcell and the state runs left in it.
            try:
                await praxis.get_workcell(DEMO_WORKCELL)
            except NotFound:
                await praxis.register_workcell(DEMO_WORKCELL, assets=demo_workcell())
            existing = [s async for s in praxis.paginate(calls.list_sources(limit=100))]
            source = next((s for s in existing if s.name == EXAMPLES_SOURCE), None)
            repo = await asyncio.to_thread(make_example_repo, self.base_dir / "example-protocols")
            if source is None:
                return await praxis.register_source(EXAMPLES_SOURCE, str(repo), kind="git")
            return await praxis.sync_source(source.accession_id)

    async def dead_letter(self, subject: str, data: bytes, timeout: float = 30.0) -> int:
        """Publish ``data`` on ``subject`` as the NATS operator and wait (pushed) until its
        consumer dead-letters it: a malformed message for the tests of the operators' view.
        Returns its sequence in the dead-letter stream."""
        assert self.infra is not None
        nc = await nats.connect(self.infra.nats_operator_url)
        try:
            js = nc.jetstream()
            # Read from the dead-letter stream itself (an ordered consumer from now on): what
            # arrives is stored, with its sequence (a plain subscription can see the message
            # before the stream has stored it).
            arrived = await js.subscribe(
                dead_letter_subject(subject),
                stream=DEAD_LETTERS.name,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
            )
            await js.publish(subject, data)
            msg = await arrived.next_msg(timeout=timeout)
            return int(msg.metadata.sequence.stream)
        finally:
            await nc.close()

    def meter(self) -> Meter:
        """What the stack's processes cost (``praxis_devstack.cost``): each service with the
        processes it started, and the local nats-server and PostgreSQL."""
        assert self.infra is not None
        roots = {s.name: s.process.pid for s in self.processes if s.process.poll() is None}
        nats, postgres = self.infra.nats, self.infra.postgres
        if nats is not None:
            roots["nats-server"] = nats.pid
        if postgres is not None:
            roots["postgresql"] = postgres.pid
        return Meter(
            roots,
            nats_monitor=nats.monitor_url if nats is not None else None,
            postgres_dsn=postgres.dsn if postgres is not None else None,
        )

    def dead(self) -> list[str]:
        return [p.name for p in self.processes if p.process.poll() is not None]

    # -- one service at a time (faults, restarts) -----------------------------------------------
    def service(self, name: str) -> ServiceProcess:
        for service in self.processes:
            if service.name == name:
                return service
        raise KeyError(f"no service {name!r} in this stack")

    async def kill_service(
        self, name: str, sig: int = signal.SIGKILL, timeout: float = 30.0
    ) -> int | None:
        """Send ``sig`` to the service's process group (SIGKILL: no clean-up of any kind) and
        wait for the process to exit; returns its exit status. It stays listed (dead) until
        :meth:`start_service` replaces it."""
        service = self.service(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, sig)
        try:
            code = await asyncio.to_thread(service.process.wait, timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
            code = await asyncio.to_thread(service.process.wait, timeout)
        service.log.close()
        return code

    def start_service(self, name: str, note: str = "") -> ServiceProcess:
        """Start ``name`` again after it exited, on the same ports (the gateway's URL and the
        readiness probe stay valid); ``note`` is written to its log first. Returns at once:
        :meth:`wait_ready` waits for it."""
        old = self.service(name)
        index = self.processes.index(old)
        if old.process.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {old.process.pid})")
        old.log.close()
        self.processes[index] = self._spawn(name, self.gateway_port, old.health_port, note)
        return self.processes[index]

    async def wait_ready(self, name: str, timeout: float = 90.0) -> None:
        """Wait until ``name`` answers its readiness probe; raises if it exits or times out."""
        await self._wait_ready(self.service(name), timeout)

    async def probe(self, name: str, timeout: float = 2.0) -> bool:
        """One readiness probe of ``name``: True if it answers 200."""
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                return (await client.get(self.service(name).health_url)).status_code == 200
        except httpx.HTTPError:
            return False

    # -- the embedded servers (faults: stop and start on the same port and data) ----------------
    def _nats(self) -> NatsServer:
        if self.infra is None or self.infra.nats is None:
            raise RuntimeError("nats-server is not embedded in this stack (NATS_URL is set)")
        return self.infra.nats

    def _postgres(self) -> PostgresServer:
        if self.infra is None or self.infra.postgres is None:
            raise RuntimeError("PostgreSQL is not embedded in this stack (DATABASE_URL is set)")
        return self.infra.postgres

    async def stop_nats(self) -> None:
        """Graceful stop of the embedded nats-server (SIGTERM; its JetStream data stays)."""
        nats = self._nats()
        nats.keep_ports()
        await asyncio.to_thread(nats.stop)

    async def start_nats(self) -> None:
        """Start the embedded nats-server again on the same ports and data directory."""
        nats = self._nats()
        nats.keep_ports()
        await asyncio.to_thread(nats.start)

    async def stop_postgres(self) -> None:
        """Fast shutdown of the embedded PostgreSQL (clients are disconnected; data stays)."""
        postgres = self._postgres()
        postgres.keep_ports()
        await asyncio.to_thread(postgres.stop)

    async def start_postgres(self) -> None:
        """Start the embedded PostgreSQL again on the same port and data directory."""
        postgres = self._postgres()
        postgres.keep_ports()
        await asyncio.to_thread(postgres.start)

    async def stop_services(self, keep: tuple[str, ...] = ()) -> None:
        """SIGTERM every service process but those named in ``keep``, and wait for them."""
        stopping = [p for p in reversed(self.processes) if p.name not in keep]
        for service in stopping:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in stopping:
            try:
                await asyncio.to_thread(service.process.wait, 30)
            except subprocess.TimeoutExpired:
                service.process.kill()
            service.log.close()
        self.processes = [p for p in self.processes if p.name in keep]

    async def stop(self) -> None:
        await self.stop_services()
        if self.infra is not None:
            await asyncio.to_thread(self.infra.stop)


def make_example_repo(target: Path) -> Path:
    """Copy ``examples/protocols`` into a git repository and commit it if anything changed."""
    source = repo_root() / "examples" / "protocols"
    target.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(target), "-c", "user.name=Praxis", "-c", "user.email=praxis@localhost"]
    if not (target / ".git").exists():
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    for path in source.rglob("*.py"):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    subprocess.run([*git, "add", "-A"], check=True)
    changed = subprocess.run([*git, "diff", "--cached", "--quiet"], check=False).returncode != 0
    head = subprocess.run(
        [*git, "rev-parse", "-q", "--verify", "HEAD"], check=False, capture_output=True
    )
    has_head = head.returncode == 0
    if changed or not has_head:
        subprocess.run([*git, "commit", "-q", "-m", "Example protocols"], check=True)
    return target
