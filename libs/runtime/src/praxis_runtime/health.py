"""A minimal HTTP endpoint for probes and metrics: /healthz, /readyz, /metrics.

Services other than the gateway have no HTTP API; this keeps them probe-able by Kubernetes without
pulling a web framework into every service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from praxis_runtime.metrics import ScrapeHook

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        checks: dict[str, ReadinessCheck],
        on_scrape: Sequence[ScrapeHook] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.checks = checks
        self.on_scrape = list(on_scrape)
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def readiness(self) -> dict[str, bool]:
        return {name: await check() for name, check in self.checks.items()}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "/"
            status, ctype, body = await self._route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok"
        if path == "/readyz":
            results = await self.readiness()
            text = "\n".join(f"{k}: {'ok' if v else 'failing'}" for k, v in results.items())
            status = "200 OK" if all(results.values()) else "503 Service Unavailable"
            return status, "text/plain", text.encode()
        if path == "/metrics":
            await scrape(self.on_scrape)
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest()
        return "404 Not Found", "text/plain", b"not found"


async def scrape(hooks: Sequence[ScrapeHook]) -> None:
    """Refresh the gauges before a scrape; one that fails leaves its last values (and says so
    in the log), the scrape still answers."""
    for hook in hooks:
        try:
            await hook()
        except Exception as exc:
            log.warning("metrics: %s failed: %r", getattr(hook, "__name__", hook), exc)
