"""What both clients share: where the API is, how they authenticate, how long they wait."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx

from praxis_client.errors import ConnectionFailed
from praxis_client.events import StreamEvent

RECONNECT_MAX_SECONDS = 5.0


@dataclass
class Followed:
    """Where a followed event stream is, for both clients' loops: the last event id seen (sent
    back as ``Last-Event-ID`` on reconnecting) and the failures in a row."""

    path: str
    reconnects: int
    last_event_id: int | None
    failures: int = 0

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.last_event_id)} if self.last_event_id is not None else {}

    def seen(self, event: StreamEvent) -> None:
        self.failures = 0
        if event.id is not None:
            self.last_event_id = event.id

    def failed(self, cause: BaseException | None) -> int:
        """One more failure in a row (``cause``: the transport's, or None for a stream closed
        before its end); ``ConnectionFailed`` past ``reconnects``."""
        self.failures += 1
        if self.failures > self.reconnects:
            what = repr(cause) if cause is not None else "kept closing"
            raise ConnectionFailed(f"event stream {self.path}: {what}") from cause
        return self.failures


@dataclass(frozen=True)
class Probe:
    """What the API's public endpoints say of it (``praxis doctor``): whether it answers and is
    ready (connected to NATS), its version, its clock, and how long an answer took."""

    reachable: bool
    ready: bool = False
    version: str | None = None
    server_time: datetime | None = None
    round_trip_ms: float | None = None
    problem: str | None = None

    def clock_skew_seconds(self, sent_at: datetime) -> float | None:
        """The server's clock minus this machine's (``sent_at``: when the probe was sent),
        allowing for half the round trip. The Date header is cut to the second: the server's
        time was within the second after it, taken at its middle (±0.5 s)."""
        if self.server_time is None or self.round_trip_ms is None:
            return None
        local = sent_at + timedelta(milliseconds=self.round_trip_ms / 2)
        return (self.server_time + timedelta(seconds=0.5) - local).total_seconds()


def probe_of(
    ready: httpx.Response | None, document: httpx.Response | None, took_ms: float
) -> Probe:
    if ready is None:
        return Probe(reachable=False, problem="no answer")
    version = None
    if document is not None and document.status_code == 200:
        version = str(document.json().get("info", {}).get("version"))
    date = ready.headers.get("Date")
    return Probe(
        reachable=True,
        ready=ready.status_code == 200,
        version=version,
        server_time=parsedate_to_datetime(date) if date else None,
        round_trip_ms=took_ms,
        problem=None if ready.status_code == 200 else ready.text[:200],
    )


class Session:
    def __init__(self, base_url: str, token: str | None, *, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        # An idle run sends a keep-alive every 15 s (the gateway's SSE_KEEPALIVE_SECONDS): a
        # stream's read waits four of them before taking the connection for dead.
        self.stream_timeout = httpx.Timeout(timeout, read=max(timeout, 60.0))

    @staticmethod
    def backoff(failures: int) -> float:
        """Seconds before reconnect number ``failures``: 0.1, 0.2, 0.4 ... up to 5."""
        return float(min(RECONNECT_MAX_SECONDS, 0.1 * 2 ** (failures - 1)))
