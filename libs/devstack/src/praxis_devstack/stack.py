"""The whole system on one machine: servers, five service processes, demo workcell, examples."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from praxis_devstack.servers import LocalInfra, default_base_dir, free_port
from praxis_plr.layout import demo_workcell

SERVICES = ("scheduler", "code-manager", "asset-manager", "orchestrator", "gateway")
DEMO_WORKCELL = "demo"
EXAMPLES_SOURCE = "examples"


def repo_root() -> Path:
    """The workspace root (where ``examples/`` lives), found from this file, not the cwd."""
    return default_base_dir(Path(__file__).resolve()).parent


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    health_url: str


@dataclass
class Stack:
    """Start with ``start()``, stop with ``stop()``; ``api`` is the gateway's base URL."""

    base_dir: Path = field(default_factory=default_base_dir)
    fast: bool = False
    environ: dict[str, str] | None = None  # NATS_URL / DATABASE_URL overrides; default os.environ
    infra: LocalInfra | None = None
    processes: list[ServiceProcess] = field(default_factory=list)
    api: str = ""

    async def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        infra = LocalInfra(self.base_dir, fast=self.fast, environ=self.environ)
        self.infra = await asyncio.to_thread(infra.start)
        gateway_port = int(os.environ.get("GATEWAY_PORT") or free_port())
        self.api = f"http://127.0.0.1:{gateway_port}"
        for name in SERVICES:
            self.processes.append(self._spawn(name, gateway_port))
        await asyncio.gather(*(self._wait_ready(p) for p in self.processes))

    def _env(self, name: str, health_port: int, gateway_port: int) -> dict[str, str]:
        assert self.infra is not None
        env = dict(os.environ)
        env.update(
            NATS_URL=self.infra.nats_url,
            DATABASE_URL=self.infra.database_url,
            SERVICE_NAME=name,
            LOG_FORMAT=env.get("LOG_FORMAT", "text"),
            HEALTH_HOST="127.0.0.1",
            HEALTH_PORT=str(health_port),
            GATEWAY_PORT=str(gateway_port),
            PRAXIS_WORKCELL=DEMO_WORKCELL,
            PROTOCOL_REPO_DIR=str(self.base_dir / "code-manager"),
            PROTOCOL_CODE_CACHE_DIR=str(self.base_dir / "orchestrator" / "code"),
        )
        return env

    def _spawn(self, name: str, gateway_port: int) -> ServiceProcess:
        health_port = gateway_port if name == "gateway" else free_port()
        logs = self.base_dir / "logs"
        logs.mkdir(exist_ok=True)
        log = (logs / f"{name}.log").open("ab")
        module = f"praxis_{name.replace('-', '_')}"
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=self._env(name, health_port, gateway_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return ServiceProcess(name, process, log, f"http://127.0.0.1:{health_port}/readyz")

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

    async def seed(self) -> dict[str, Any]:
        """Register the demo workcell and the bundled example protocols (a real git repo)."""
        async with httpx.AsyncClient(base_url=self.api, timeout=300.0) as client:
            drafts = [d.model_dump(mode="json") for d in demo_workcell()]
            response = await client.post(
                "/api/v1/workcells", json={"name": DEMO_WORKCELL, "assets": drafts}
            )
            response.raise_for_status()
            existing = (await client.get("/api/v1/protocols/sources", params={"limit": 100})).json()
            source = next((s for s in existing["items"] if s["name"] == EXAMPLES_SOURCE), None)
            repo = await asyncio.to_thread(make_example_repo, self.base_dir / "example-protocols")
            if source is None:
                response = await client.post(
                    "/api/v1/protocols/sources",
                    json={"name": EXAMPLES_SOURCE, "kind": "git", "url": str(repo)},
                )
            else:
                response = await client.post(
                    f"/api/v1/protocols/sources/{source['accession_id']}/sync"
                )
            response.raise_for_status()
            return dict(response.json())

    def dead(self) -> list[str]:
        return [p.name for p in self.processes if p.process.poll() is not None]

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
