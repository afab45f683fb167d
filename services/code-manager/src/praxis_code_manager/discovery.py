"""Discovery out of process: protocol modules are imported in a child, never in the service.

One child imports the modules of a tree one after another and reports each (see
``discovery_child``). A child that dies, exceeds its time per module or its output limit is
killed with its process group; the module it was importing becomes a problem of the source and
a fresh child carries on with the modules after it. One child per tree (not per module) keeps
the interpreter and SDK start-up to once per sync when nothing goes wrong.

The child gets an explicit, minimal environment (no ``DATABASE_URL``, no NATS credentials), an
address-space limit (``RLIMIT_AS``) and a CPU-time limit as a backstop should this process die.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from praxis_contracts.errors import SourceSyncFailed
from praxis_contracts.protocols import DiscoveryProblem, ProtocolFunctionSpec

LINE_LIMIT = 1024 * 1024
START_ALLOWANCE = 30.0
"""Seconds the child may take to start (interpreter, SDK, PyLabRobot) when the per-module
limit is shorter: a cold start on a busy machine is not the protocol's fault."""
STDERR_TAIL = 500


@dataclass(frozen=True)
class DiscoveryLimits:
    timeout: float = 60.0  # per module (and for the child's start-up)
    memory_mb: int = 1024
    max_output_bytes: int = 8 * 1024 * 1024
    concurrency: int = 2


@dataclass
class Discovered:
    functions: list[ProtocolFunctionSpec] = field(default_factory=list)
    problems: list[DiscoveryProblem] = field(default_factory=list)


@dataclass
class _Round:
    """What one child reported before it finished or was stopped."""

    listed: list[str] | None = None
    done: set[str] = field(default_factory=set)
    current: str | None = None
    failure: str | None = None


class Discovery:
    def __init__(self, limits: DiscoveryLimits) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.concurrency)

    async def discover(self, root: Path, identity: str) -> Discovered:
        """Every protocol function in the tree at ``root``; each failing module is a problem."""
        found = Discovered()
        pending: list[str] | None = None
        async with self._slots:
            while pending is None or pending:
                round_ = await self._child(root, identity, pending, found)
                if pending is None:
                    if round_.listed is None:
                        raise SourceSyncFailed(f"discovery could not start: {round_.failure}")
                    pending = round_.listed
                pending = [m for m in pending if m not in round_.done]
                if round_.failure is None:
                    continue
                culprit = round_.current or (pending[0] if pending else None)
                if culprit is not None:
                    found.problems.append(DiscoveryProblem(module=culprit, error=round_.failure))
                    pending = [m for m in pending if m != culprit]
        return found

    async def _child(
        self, root: Path, identity: str, modules: list[str] | None, found: Discovered
    ) -> _Round:
        limits = self.limits
        cpu = int(limits.timeout * (len(modules) if modules else 1000)) + 5
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "praxis_code_manager.discovery_child",
            str(limits.memory_mb),
            str(cpu),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(root),
            cwd=root,
            start_new_session=True,
            limit=LINE_LIMIT,
        )
        assert process.stdin and process.stdout and process.stderr
        tail = bytearray()
        drain = asyncio.create_task(_keep_tail(process.stderr, tail))
        round_ = _Round()
        try:
            request = {"root": str(root), "identity": identity, "modules": modules}
            process.stdin.write(json.dumps(request).encode())
            with contextlib.suppress(ConnectionError):
                await process.stdin.drain()
            process.stdin.close()
            round_.failure = await self._read(process.stdout, round_, found)
            if round_.failure is None:
                await asyncio.wait_for(process.wait(), limits.timeout)
        except TimeoutError:
            round_.failure = f"took longer than {limits.timeout:g} s (stopped)"
        finally:
            _kill(process)
            await process.wait()
            await drain
        unfinished = round_.current is not None or (modules is None and round_.listed is None)
        if round_.failure is None and unfinished:
            round_.failure = _exit_reason(process.returncode, tail)
        return round_

    async def _read(
        self, stdout: asyncio.StreamReader, round_: _Round, found: Discovered
    ) -> str | None:
        """Read the child's lines until it closes its output; a failure's reason, or None."""
        total = 0
        wait = max(self.limits.timeout, START_ALLOWANCE)
        while True:
            try:
                line = await asyncio.wait_for(stdout.readline(), wait)
                wait = self.limits.timeout
            except ValueError:  # a line over LINE_LIMIT
                return f"wrote more than {LINE_LIMIT} bytes in one report (stopped)"
            if not line:
                return None  # the child closed its output: finished, or died (see _child)
            total += len(line)
            if total > self.limits.max_output_bytes:
                return f"reported more than {self.limits.max_output_bytes} bytes (stopped)"
            try:
                _take(json.loads(line), round_, found)
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                return f"malformed discovery report: {type(exc).__name__}"


def _take(report: dict[str, Any], round_: _Round, found: Discovered) -> None:
    if "modules" in report:
        round_.listed = [str(m) for m in report["modules"]]
    elif "begin" in report:
        round_.current = str(report["begin"])
    else:
        module = str(report["module"])
        specs = [ProtocolFunctionSpec.model_validate(f) for f in report["functions"]]
        found.functions.extend(specs)
        if report.get("error"):
            found.problems.append(DiscoveryProblem(module=module, error=str(report["error"])))
        round_.done.add(module)
        round_.current = None


def _child_env(root: Path) -> dict[str, str]:
    """Only what an interpreter needs: nothing of the service's configuration or secrets."""
    return {
        "PATH": os.defpath,
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _exit_reason(code: int | None, tail: bytearray) -> str:
    if code is not None and code < 0:
        what = f"was killed by {signal.Signals(-code).name}"
    else:
        what = f"exited with status {code}"
    last = bytes(tail).decode(errors="replace").strip().splitlines()[-1:]
    return f"importing it ended the discovery process ({what})" + (
        f": {last[0][:300]}" if last else ""
    )


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _keep_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    while chunk := await stream.read(65536):
        tail.extend(chunk)
        del tail[:-STDERR_TAIL]
