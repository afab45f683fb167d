"""The run context: who is running, the run's state, call logging and run control."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from praxis_sdk.state import PraxisState

CallStatus = Literal["running", "completed", "failed", "cancelled"]


@dataclass(frozen=True)
class CallRecord:
    """One protocol-function call of a run, nested calls pointing at their parent."""

    call_id: uuid.UUID
    run_id: uuid.UUID
    parent_call_id: uuid.UUID | None
    sequence: int
    function: str
    version: str
    arguments: dict[str, Any]
    status: CallStatus
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    result: Any = None
    result_body: str | None = None
    """The whole result's JSON when ``result`` is only its marker (the edge keeps it)."""


class CallSink(Protocol):
    """Where call records go (the orchestrator publishes them)."""

    async def record(self, call: CallRecord) -> None: ...


class RunCancelled(Exception):
    """Raised at a checkpoint when an operator cancelled the run."""


class RunControl:
    """Pause/resume/cancel signals, observed at every protocol-function boundary.

    A pause takes effect when the protocol reaches its next checkpoint (never in the middle of
    an instrument operation); ``on_pause`` / ``on_resume`` report when it really waits.

    The signals may come from another thread and event loop than the protocol's: ``bind`` names
    the loop the protocol runs on, and its waiting is woken there (``call_soon_threadsafe``).
    What the flags say is plain attributes, read at once by either side.
    """

    def __init__(
        self,
        on_pause: Callable[[], Awaitable[None]] | None = None,
        on_resume: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._wake = asyncio.Event()  # waited on by the protocol's loop only
        self._pause_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.cancelled = False
        self.blocked = False
        self.on_pause = on_pause
        self.on_resume = on_resume

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The protocol runs on ``loop``: signals from elsewhere wake it there."""
        self._loop = loop

    def pause(self) -> None:
        self._pause_requested = True

    def resume(self) -> None:
        self._pause_requested = False
        self._notify()

    def cancel(self) -> None:
        self.cancelled = True
        self._pause_requested = False
        self._notify()

    @property
    def paused(self) -> bool:
        return self._pause_requested

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._wake.set()
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: nothing waits any more
            loop.call_soon_threadsafe(self._wake.set)

    async def checkpoint(self) -> None:
        """Wait while paused; raise ``RunCancelled`` once cancelled."""
        if self.cancelled:
            raise RunCancelled("run cancelled")
        if not self._pause_requested:
            return
        self.blocked = True
        try:
            if self.on_pause is not None:
                await self.on_pause()
            # Cleared and re-checked with no await between: a resume or cancel signalled from
            # another thread either is seen here or wakes the wait.
            while self._pause_requested and not self.cancelled:
                self._wake.clear()
                await self._wake.wait()
        finally:
            self.blocked = False
        if self.cancelled:
            raise RunCancelled("run cancelled")
        if self.on_resume is not None:
            await self.on_resume()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass
class RunContext:
    """Context of one run, propagated to nested protocol-function calls."""

    run_id: uuid.UUID
    state: PraxisState
    sink: CallSink | None = None
    control: RunControl = field(default_factory=RunControl)
    on_checkpoint: Callable[[], Awaitable[None]] | None = None
    parent_call_id: uuid.UUID | None = None
    _sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_sequence(self) -> int:
        return next(self._sequence)

    def nested(self, call_id: uuid.UUID) -> RunContext:
        """The context for calls made inside the call ``call_id``."""
        return RunContext(
            run_id=self.run_id,
            state=self.state,
            sink=self.sink,
            control=self.control,
            on_checkpoint=self.on_checkpoint,
            parent_call_id=call_id,
            _sequence=self._sequence,
        )


current_run: ContextVar[RunContext | None] = ContextVar("praxis_current_run", default=None)
