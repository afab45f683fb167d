"""Each run's output, captured with its run id and published as ``RunLogged`` batches.

Two sources:

* ``protocol``: what the protocol prints or logs, in its runner process (``RunnerOutput``,
  installed there: ``sys.stdout``/``sys.stderr`` and a root logging handler send the lines over
  the run's channel);
* ``instrument``: what the instruments' backends print and PyLabRobot logs while they execute
  the run's commands, here in the supervisor. ``capture`` puts a tee on ``sys.stdout`` and
  ``sys.stderr`` and a handler on the ``pylabrobot`` logger once per process; while a run's
  command executes, ``current_log`` names the run (a context variable: each command is its own
  task), so its output goes to that run and still to the edge's own log.

``RunLog`` numbers a run's lines, cuts each to ``LOG_LINE_CHARS``, keeps at most ``MAX_LINES``
(then one line says how many more were dropped) and hands them to ``emit`` in batches of at most
``LOG_BATCH_LINES``, at once when a batch is full, else after ``FLUSH_SECONDS``, and at the end
(before the run's ``RunFinished``: the outbox keeps the order), each batch within
``LOG_BATCH_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from praxis_contracts.runs import LOG_BATCH_LINES, LOG_LINE_CHARS, LogLine, LogSource

MAX_LINES = 20_000
"""Lines kept per run; a protocol that prints in a loop does not flood the bus."""
FLUSH_SECONDS = 0.25

LOG_BATCH_BYTES = 256 * 1024
"""And at most this much JSON in one ``RunLogged``: 200 lines of 2,000 characters can pass NATS's
1 MB once non-ASCII text (up to 4 bytes a character) or escaped control characters are in it."""

current_log: ContextVar[RunLog | None] = ContextVar("praxis_run_log", default=None)


class Lines:
    """Text written to streams in pieces, given back as whole lines (a partial line waits for
    its end, or for ``rest``); each stream keeps the tag its first piece came with."""

    def __init__(self) -> None:
        self._partial: dict[str, tuple[str, Any]] = {}  # stream -> (text so far, its tag)

    def feed(self, stream: str, text: str, tag: Any = None) -> list[str]:
        held, held_tag = self._partial.pop(stream, ("", tag))
        complete, _, rest = (held + text).rpartition("\n")
        if rest:
            self._partial[stream] = (rest[: LOG_LINE_CHARS * 2], held_tag)
        return complete.splitlines() if complete else []

    def rest(self) -> list[tuple[str, Any]]:
        """The partial lines left (text, tag), once the writer is done."""
        left = list(self._partial.values())
        self._partial.clear()
        return left


class RunLog:
    """One run's lines on their way out; used from the event loop's thread."""

    def __init__(
        self,
        emit: Callable[[list[LogLine]], None],
        *,
        limit: int = MAX_LINES,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.emit = emit
        self.limit = limit
        self.flush_seconds = flush_seconds
        self.seq = 0
        self.dropped = 0
        self.closed = False
        self._pending: list[LogLine] = []
        self._lines = Lines()  # tagged with (source, level)
        self._timer: asyncio.TimerHandle | None = None

    def add(
        self, source: LogSource, level: str, logger: str | None, message: str, at: Any = None
    ) -> None:
        """One or more lines (split at newlines)."""
        if self.closed:
            return
        for text in message.splitlines() or [""]:
            if self.seq >= self.limit:
                self.dropped += 1
                continue
            self._append(source, level, logger, text, at)
        if len(self._pending) >= LOG_BATCH_LINES:
            self.flush()
        elif self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self.flush)

    def write(self, source: LogSource, level: str, stream: str, text: str) -> None:
        """Text written to a stream: whole lines go out, a partial one waits for its end."""
        lines = self._lines.feed(stream, text, (source, level))
        if lines:
            self.add(source, level, None, "\n".join(lines))

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            size, end = 0, 0
            while end < min(len(self._pending), LOG_BATCH_LINES):
                size += len(self._pending[end].model_dump_json().encode()) + 1
                if size > LOG_BATCH_BYTES and end > 0:
                    break
                end += 1
            batch, self._pending = self._pending[:end], self._pending[end:]
            self.emit(batch)

    def close(self) -> None:
        """The run ended: what is partial or pending goes out, and how many lines were dropped."""
        if self.closed:
            return
        for rest, (source, level) in self._lines.rest():
            self.add(source, level, None, rest)
        if self.dropped:
            self._append(
                "protocol", "WARNING", "praxis", f"{self.dropped} more lines were not kept", None
            )
        self.flush()
        self.closed = True

    def _append(
        self, source: LogSource, level: str, logger: str | None, text: str, at: Any
    ) -> None:
        self._pending.append(
            LogLine(
                seq=self.seq,
                at=at or datetime.now(UTC),
                source=source,
                level=(level or "INFO")[:20],
                logger=logger[:200] if logger else None,
                message=text[:LOG_LINE_CHARS],
            )
        )
        self.seq += 1


# -- the supervisor's side: instrument output ---------------------------------------------------


class _Tee(io.TextIOBase):
    """A process stream that also gives what is written during a run's command to that run."""

    def __init__(self, stream: TextIO, level: str, name: str) -> None:
        self.stream = stream
        self.level = level
        self.name = name

    def write(self, text: str) -> int:
        log = current_log.get()
        if log is not None:
            with contextlib.suppress(Exception):  # a run's log never breaks the output
                log.write("instrument", self.level, f"instrument-{self.name}", text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()


class _InstrumentLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log = current_log.get()
        if log is None:
            return
        with contextlib.suppress(Exception):
            log.add("instrument", record.levelname, record.name, record.getMessage())


_captured = False


def capture() -> None:
    """Route instrument output to the run whose command produces it (once per process)."""
    global _captured
    if _captured:
        return
    _captured = True
    sys.stdout = _Tee(sys.stdout, "INFO", "stdout")
    sys.stderr = _Tee(sys.stderr, "ERROR", "stderr")
    logging.getLogger("pylabrobot").addHandler(_InstrumentLog())


__all__ = ["LOG_BATCH_BYTES", "MAX_LINES", "Lines", "RunLog", "capture", "current_log"]
