"""Backoff after failures, written once: the delays (``first``, doubling, at most ``cap``)
and a loop that keeps at a step until it succeeds (a dependency's outage delays the work,
never loses it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Backoff:
    """The delay before the next try: ``first`` after one failure, doubling after each
    further one, never above ``cap``; back to ``first`` once something succeeded."""

    first: float = 0.1
    cap: float = 2.0
    failures: int = 0

    def failed(self) -> float:
        """Count a failure; the delay to wait before trying again."""
        delay = min(self.cap, self.first * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        self.failures = 0

    async def pause(self) -> None:
        """Count a failure and wait its delay."""
        await asyncio.sleep(self.failed())


async def until_done(
    step: Callable[[], Awaitable[T]], what: str, *, first: float = 0.1, cap: float = 2.0
) -> T:
    """``step()`` again and again, with backoff, until it returns (its value); every failure is
    logged with ``what`` was being done. Cancelling the caller stops it."""
    backoff = Backoff(first, cap)
    while True:
        try:
            return await step()
        except Exception as exc:
            delay = backoff.failed()
            log.warning("%s failed (%r); again in %.2f s", what, exc, delay)
            await asyncio.sleep(delay)
