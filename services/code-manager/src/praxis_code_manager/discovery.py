"""Discovery out of process: protocol modules are imported in a sandboxed child, never here.

One child imports the modules of a tree one after another and reports each (see
``discovery_child``). A child that dies, exceeds its time per module or its output limit is
killed with its process group; the module it was importing becomes a problem of the source and
a fresh child carries on with the modules after it. One child per tree (not per module) keeps
the interpreter and SDK start-up to once per sync when nothing goes wrong.

Children run in the service's ``Sandbox`` (``praxis_runtime.sandbox``): no credential, another
user when the service is root, Landlock (read the tree and the interpreter, write a scratch
folder of their own, no network), limits, killed with their process group and whatever they
leave behind. In Kubernetes (``DISCOVERY_SOCKET``) they run in a container of their own with no
Secret mounted, asked of it through a ``RemoteSandbox`` (``praxis_runtime.spawner``): the same
confinement, and every signal goes through the sandbox object, never to a pid looked up here
(that pid is of another PID namespace).

**Nobody waits behind a module that hangs.** Children share the CPU by *least attained
service* (``FairShare``): at most ``DISCOVERY_CONCURRENCY`` run at once, those that have run the
least so far; the others are paused (SIGSTOP) and take turns every ``SLICE_SECONDS``. A new
source's child has run for no time at all, so it runs at once however many modules loop
elsewhere, and a short import finishes in its first turn. A module's budget
(``DISCOVERY_TIMEOUT_SECONDS``) counts the time its child actually ran, so being paused costs
a slow module nothing but wall-clock time, and only its own source waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from praxis_contracts.errors import SourceSyncFailed
from praxis_contracts.protocols import DiscoveryProblem, ProtocolFunctionSpec
from praxis_runtime.sandbox import Spawner

LINE_LIMIT = 1024 * 1024
START_ALLOWANCE = 30.0
"""Running seconds the child may take to start (interpreter, SDK, PyLabRobot) when the
per-module limit is shorter: a cold start on a busy machine is not the protocol's fault."""
STDERR_TAIL = 500
SLICE_SECONDS = 0.5
"""How long the children that run take their turn before the least-served paused ones run."""
CHECK_SECONDS = 0.25
"""How often a waiting read looks at its child's running time."""


@dataclass(frozen=True)
class DiscoveryLimits:
    timeout: float = 60.0  # running seconds per module (and for the child's start-up)
    memory_mb: int = 1024
    max_output_bytes: int = 8 * 1024 * 1024
    concurrency: int = 2  # children running at once; the others are paused


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


class Share:
    """One child's share of the CPU: the seconds it has run, and whether it runs now."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.attained = 0.0
        self.running_since: float | None = None

    def used(self, now: float) -> float:
        """Seconds it has run up to ``now``."""
        since = self.running_since
        return self.attained + (now - since if since is not None else 0.0)


class FairShare:
    """Least-attained-service scheduling of children: ``concurrency`` run at once, the ones
    that ran least; the rest are paused with SIGSTOP and resumed with SIGCONT, and turns are
    retaken every ``slice_seconds`` while some wait. ``send`` signals a child's process group
    (the sandbox's ``signal``)."""

    def __init__(
        self,
        concurrency: int,
        send: Callable[[int, int], None],
        slice_seconds: float = SLICE_SECONDS,
    ) -> None:
        self.concurrency = concurrency
        self.send = send
        self.slice = slice_seconds
        self._shares: dict[int, Share] = {}
        self._timer: asyncio.TimerHandle | None = None

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def paused(self) -> int:
        return sum(1 for s in self._shares.values() if s.running_since is None)

    def join(self, pid: int) -> Share:
        """A child started (it runs already): it takes its turn, or waits for one."""
        share = Share(pid)
        share.running_since = self.now()
        self._shares[pid] = share
        self._rebalance()
        return share

    def leave(self, share: Share) -> None:
        self._shares.pop(share.pid, None)
        self._rebalance()

    def used(self, share: Share) -> float:
        return share.used(self.now())

    def _rebalance(self) -> None:
        now = self.now()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ordered = sorted(self._shares.values(), key=lambda s: (s.used(now), s.pid))
        for index, share in enumerate(ordered):
            runs = index < self.concurrency
            if runs and share.running_since is None:
                self.send(share.pid, signal.SIGCONT)
                share.running_since = now
            elif not runs and share.running_since is not None:
                self.send(share.pid, signal.SIGSTOP)
                share.attained += now - share.running_since
                share.running_since = None
        if len(ordered) > self.concurrency:
            self._timer = asyncio.get_running_loop().call_later(self.slice, self._rebalance)


class Discovery:
    def __init__(self, limits: DiscoveryLimits, sandbox: Spawner, scratch: Path) -> None:
        self.limits = limits
        self.sandbox = sandbox
        self.scratch = scratch
        self.fair = FairShare(limits.concurrency, sandbox.signal)

    async def discover(self, root: Path, identity: str) -> Discovered:
        """Every protocol function in the tree at ``root``; each failing module is a problem."""
        found = Discovered()
        pending: list[str] | None = None
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
        scratch = self.scratch / uuid.uuid4().hex
        confinement = self.sandbox.confinement(
            read=[root], write=[scratch], memory_mb=limits.memory_mb, cpu_seconds=cpu
        )
        process = await self.sandbox.spawn(
            "praxis_code_manager.discovery_child",
            [],
            confinement,
            cwd=scratch,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        assert process.stdin and process.stdout and process.stderr
        share = self.fair.join(process.pid)
        tail = bytearray()
        drain = asyncio.create_task(_keep_tail(process.stderr, tail))
        round_ = _Round()
        try:
            request = {"root": str(root), "identity": identity, "modules": modules}
            process.stdin.write(json.dumps(request).encode())
            with contextlib.suppress(ConnectionError):
                await process.stdin.drain()
            process.stdin.close()
            round_.failure = await self._read(process.stdout, round_, found, share)
        finally:
            self.fair.leave(share)
            self.sandbox.kill(process)  # its output is read: whatever it does now is moot
            await process.wait()
            self.sandbox.forget(process)
            await drain
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        unfinished = round_.current is not None or (modules is None and round_.listed is None)
        if round_.failure is None and unfinished:
            round_.failure = _exit_reason(process.returncode, tail)
        return round_

    async def _read(
        self, stdout: asyncio.StreamReader, round_: _Round, found: Discovered, share: Share
    ) -> str | None:
        """Read the child's lines until it closes its output; a failure's reason, or None.
        Each line must come within the per-module budget of the child's *running* time."""
        total = 0
        budget = max(self.limits.timeout, START_ALLOWANCE)
        mark = self.fair.used(share)
        while True:
            left = budget - (self.fair.used(share) - mark)
            if left <= 0:
                return f"took longer than {budget:g} s of running time (stopped)"
            try:
                line = await asyncio.wait_for(stdout.readline(), min(left, CHECK_SECONDS))
            except TimeoutError:
                continue
            except ValueError:  # a line over LINE_LIMIT
                return f"wrote more than {LINE_LIMIT} bytes in one report (stopped)"
            if not line:
                return None  # the child closed its output: finished, or died (see _child)
            budget, mark = self.limits.timeout, self.fair.used(share)
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


def _exit_reason(code: int | None, tail: bytearray) -> str:
    if code is not None and code < 0:
        what = f"was killed by {signal.Signals(-code).name}"
    else:
        what = f"exited with status {code}"
    last = bytes(tail).decode(errors="replace").strip().splitlines()[-1:]
    return f"importing it ended the discovery process ({what})" + (
        f": {last[0][:300]}" if last else ""
    )


async def _keep_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    while chunk := await stream.read(65536):
        tail.extend(chunk)
        del tail[:-STDERR_TAIL]
