"""What both clients share: where the API is, how they authenticate, how long they wait."""

from __future__ import annotations

import httpx

RECONNECT_MAX_SECONDS = 5.0


class Session:
    def __init__(self, base_url: str, token: str | None, *, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        # An idle run sends a keep-alive every 15 s (the gateway's SSE_KEEPALIVE_SECONDS): a
        # stream's read waits four of them before taking the connection for dead.
        self.stream_timeout = httpx.Timeout(timeout, read=max(timeout, 60.0))

    @staticmethod
    def resume_headers(last_event_id: int | None) -> dict[str, str]:
        return {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}

    @staticmethod
    def backoff(failures: int) -> float:
        """Seconds before reconnect number ``failures``: 0.1, 0.2, 0.4 ... up to 5."""
        return float(min(RECONNECT_MAX_SECONDS, 0.1 * 2 ** (failures - 1)))
