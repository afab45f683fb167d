"""A child process whose output goes to a log file, with readiness waiting and clean stopping."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOG_TAIL_LINES = 40


class ServerStartError(RuntimeError):
    """A server could not be started (early exit, timeout or failed set-up step)."""


@dataclass(frozen=True)
class RunAs:
    """The system user (and its group) a child process runs as; used when we are root."""

    user: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, object]:
        """Keyword arguments for :class:`subprocess.Popen` / :func:`subprocess.run`."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@dataclass
class LoggedProcess:
    """A child process writing stdout and stderr to ``log_path`` (appended, never truncated)."""

    name: str
    argv: Sequence[str]
    log_path: Path
    run_as: RunAs | None = None
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    def start(self) -> None:
        """Spawn the process; its output is appended to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._popen = self._spawn(log)

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        extra = self.run_as.popen_kwargs() if self.run_as else {}
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=dict(self.env) if self.env is not None else None,
            **extra,
        )

    @property
    def pid(self) -> int:
        """The child's pid (it may have exited already)."""
        return self._require().pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or ``None`` while the child is running (or was never started)."""
        return None if self._popen is None else self._popen.poll()

    def running(self) -> bool:
        """Whether the child has been started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def log_since_start(self) -> str:
        """Everything the child (and the set-up steps around it) logged since :meth:`start`."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines logged since :meth:`start`."""
        return "\n".join(self.log_since_start().splitlines()[-lines:])

    def failure(self, message: str) -> ServerStartError:
        """A :class:`ServerStartError` carrying ``message`` and the log tail."""
        return ServerStartError(
            f"{self.name}: {message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``ready`` until it is true; raise if the child exits first or time runs out.

        This is start-up readiness only: the poll interval grows from 5 ms to 100 ms.
        """
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if ready():
                return
            code = self.returncode
            if code is not None:
                raise self.failure(f"exited with status {code} while waiting for {what}")
            if time.monotonic() >= deadline:
                raise self.failure(f"not {what} after {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    def stop(self, first_signal: int, *, timeout: float, then: Sequence[int] = ()) -> None:
        """Send ``first_signal``; escalate through ``then`` and finally SIGKILL on timeouts."""
        popen = self._popen
        if popen is None:
            return
        for sig in (first_signal, *then):
            if self._signal_and_wait(popen, sig, timeout):
                return
        popen.kill()
        popen.wait()

    @staticmethod
    def _signal_and_wait(popen: subprocess.Popen[bytes], sig: int, timeout: float) -> bool:
        if popen.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(sig)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _require(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._popen


def clean_env(drop_prefixes: Sequence[str] = ()) -> dict[str, str]:
    """A copy of ``os.environ`` without variables starting with any of ``drop_prefixes``."""
    return {
        key: value
        for key, value in os.environ.items()
        if not any(key.startswith(prefix) for prefix in drop_prefixes)
    }
