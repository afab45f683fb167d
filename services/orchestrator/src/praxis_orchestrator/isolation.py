"""Each run's protocol runs in a sandboxed process of its own, forked from a warm zygote.

Why a process: protocol code is arbitrary, and not fully trusted, Python. In the orchestrator's
process it could read the process's memory and environment (the edge's NATS login), switch the
asset guard off for every later run (``current_view``, the wrapped backend methods' originals),
reach other runs' objects (``gc.get_objects``), end every run on the edge (``os._exit``), or
change process-wide PyLabRobot settings under the others. In a process of its own it can do all
of that to itself only. The orchestrator (the *supervisor*) keeps everything that matters: the
edge's login, the heartbeat, the lease keepers, the event stream, and the live PyLabRobot objects
with their backends; the runner holds no credential and reaches no network.

Why the supervisor keeps the live objects and executes every instrument command: a machine is
set up once (homing a STAR takes minutes) by one long-lived process and its backend's I/O belongs
to one event loop. So the runner works on *copies* of its leased assets (``praxis_plr.remote``:
same classes, names, geometry, state), and each instrument command a protocol sends becomes a
message: the supervisor executes it on the live object inside the run's ``WorkcellView`` (fence,
leased machine, leased resources: ``praxis_plr.guard``), one command per machine at a time
(two runs sharing a shareable machine never drive it at once), and answers with the result and
what changed, which the runner loads into its copies. Nothing a protocol does to its own process
can send a command the supervisor did not check.

Why a zygote: a fresh interpreter importing PyLabRobot costs a second or more; the zygote
(``praxis_orchestrator.zygote``) is started once, in the service's sandbox
(``praxis_runtime.sandbox``), imports everything, and forks a runner per run in milliseconds.
Each runner narrows its confinement further (its own scratch folder; no signal to the zygote or
another run). ``make bench`` reports the cold start, the per-run cost and the per-command cost.

A cancel escalates (``Executor``): the runner's next checkpoint raises ``RunCancelled``; then its
protocol task is cancelled (``interrupt``); then its process group is killed. Killing a runner
never interrupts an instrument command: commands run in the supervisor, which lets the one under
way finish (within the escalation's bound) before the run ends ``cancelled``. Only a command
that does not finish in that bound is cancelled, and the run ends ``requires_intervention``.
A runner whose loop stops turning (blocking code, a busy loop) stops sending its ticks: the
supervisor reports ``RunBlocked`` once per stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from praxis_orchestrator.channel import Channel, ChannelClosed
from praxis_orchestrator.runlog import RunLog, current_log
from praxis_plr.guard import WorkcellView, current_view
from praxis_plr.remote import CodecError, RunObjects, decode, encode, error_reply
from praxis_runtime.confine import Confinement
from praxis_runtime.sandbox import Sandbox

log = logging.getLogger(__name__)

RUN_CPU_SECONDS = 7 * 24 * 3600
"""CPU seconds a runner may use (a long protocol mostly waits on its instruments)."""
FORK_TIMEOUT = 120.0
"""How long a fork may take, the zygote's first start (imports) included."""


class RunnerFailed(RuntimeError):
    """A runner could not be started, or the zygote is gone for good."""


class Zygote:
    """This orchestrator's zygote, started in its sandbox; forks a ``RunnerLink`` per run.

    With ``socket_path`` (``ZYGOTE_SOCKET``: Kubernetes) the zygote is not started here but
    runs in a container of its own beside the orchestrator's, with no Secret mounted, and is
    reached through a Unix socket in a folder both mount. Its runners are then in another PID
    namespace: they are killed by the zygote (``kill``), never by a PID looked up here."""

    def __init__(
        self,
        sandbox: Sandbox | None,
        code_root: Path,
        scratch: Path,
        memory_mb: int,
        socket_path: Path | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.code_root = code_root
        self.scratch = scratch
        self.memory_mb = memory_mb
        self.socket_path = socket_path
        self.process: asyncio.subprocess.Process | None = None
        self.control: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._io = threading.Lock()  # one request and its answer at a time on ``control``
        self.forks = 0

    def confinement(self) -> Confinement:
        assert self.sandbox is not None
        return self.sandbox.confinement(
            read=[self.code_root],
            write=[self.scratch],
            memory_mb=self.memory_mb,
            cpu_seconds=RUN_CPU_SECONDS,
            processes=4096,
        )

    async def start(self) -> None:
        self.code_root.mkdir(parents=True, exist_ok=True)
        if self.socket_path is not None:
            self.control = await self._connect(self.socket_path)
            log.info("zygote reached at %s (a container of its own)", self.socket_path)
            return
        assert self.sandbox is not None, "a zygote is spawned only with a sandbox"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = await self.sandbox.spawn(
                "praxis_orchestrator.zygote",
                ["--fd", str(theirs.fileno()), "--scratch", str(self.scratch)],
                self.confinement(),
                cwd=self.scratch,
                pass_fds=[theirs.fileno()],
            )
        finally:
            theirs.close()
        self.control = ours
        log.info("zygote %d started (%s)", self.process.pid, self.sandbox.describe())

    async def fork(self, run_id: uuid.UUID) -> RunnerLink:
        """A new runner for ``run_id``, connected; the zygote is (re)started as needed."""
        async with self._lock:
            for attempt in range(2):
                if self.control is None or self._dead():
                    await self._restart()
                try:
                    return await asyncio.wait_for(self._fork(run_id), FORK_TIMEOUT)
                except (OSError, ValueError, TimeoutError) as exc:
                    log.warning("forking a runner failed (attempt %d): %r", attempt + 1, exc)
                    await self._restart()
        raise RunnerFailed("the zygote could not fork a runner")

    async def _fork(self, run_id: uuid.UUID) -> RunnerLink:
        assert self.control is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = json.dumps({"op": "fork", "run": str(run_id)}).encode()
        control = self.control
        try:
            answer = await asyncio.to_thread(self._ask, control, request, [theirs.fileno()])
        finally:
            theirs.close()
        if not answer:
            ours.close()
            raise OSError("the zygote closed its control socket")
        pid = int(json.loads(answer)["pid"])
        self.forks += 1
        return RunnerLink(pid, await Channel.open(ours), kill=self.kill)

    def _ask(self, control: socket.socket, request: bytes, fds: list[int]) -> bytes:
        with self._io:
            socket.send_fds(control, [request], fds)
            return control.recv(4096)

    def kill(self, pid: int) -> None:
        """Kill runner ``pid`` and its process group, at once."""
        if self.socket_path is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            return
        control = self.control
        if control is None:
            return  # the zygote is gone, and its runners with their channels
        request = json.dumps({"op": "kill", "pid": pid}).encode()
        try:
            control.settimeout(5.0)
            self._ask(control, request, [])
        except OSError as exc:
            log.warning("asking the zygote to kill runner %d failed: %r", pid, exc)
        finally:
            with contextlib.suppress(OSError):
                control.settimeout(None)

    async def _connect(self, path: Path) -> socket.socket:
        """The sidecar's socket, waiting for it to appear (both containers start together)."""
        deadline = asyncio.get_running_loop().time() + FORK_TIMEOUT
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                await asyncio.to_thread(sock.connect, str(path))
                return sock
            except OSError as exc:
                sock.close()
                if asyncio.get_running_loop().time() > deadline:
                    raise RunnerFailed(f"no zygote answers at {path}: {exc}") from exc
                await asyncio.sleep(0.5)

    def _dead(self) -> bool:
        if self.socket_path is not None:
            return self.control is None
        return self.process is None or self.process.returncode is not None

    async def _restart(self) -> None:
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        process, self.process = self.process, None
        if process is not None and self.sandbox is not None:
            self.sandbox.kill(process)
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
            self.sandbox.forget(process)


Hook = Callable[[dict[str, Any]], Awaitable[None] | None]


class RunnerLink:
    """The supervisor's end of one run's runner: prepare it, start it, steer it, execute its
    instrument commands, learn how it ended."""

    def __init__(
        self, pid: int, channel: Channel, kill: Callable[[int], None] | None = None
    ) -> None:
        self.pid = pid
        self.channel = channel
        self._kill = kill or _kill_group
        self.objects: RunObjects | None = None
        self.view: WorkcellView | None = None
        self.locks: dict[str, asyncio.Lock] = {}
        self.on_call: Hook = lambda record: None
        self.on_log: Hook = lambda message: None
        self.output: RunLog | None = None
        """Where the output of this run's instrument commands goes (``runlog``)."""
        self.on_paused: Hook = lambda message: None
        self.on_resumed: Hook = lambda message: None
        self.last_tick = asyncio.get_running_loop().time()
        self.commands: set[asyncio.Task[None]] = set()
        self.ended: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._serving: asyncio.Task[None] | None = None
        self.killed = False
        self.refused: dict[str, Any] | None = None  # why a move by hand was refused

    def attach(
        self, objects: RunObjects, view: WorkcellView, locks: dict[str, asyncio.Lock]
    ) -> None:
        """What the run may command: its leased live objects, its view (the guard), the
        machines' locks (one command per machine at a time, whichever run sends it)."""
        self.objects, self.view, self.locks = objects, view, locks

    async def prepare(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``prepare``; its answer: ``ready``, or ``failed`` with the error."""
        self._serving = asyncio.create_task(self._serve())
        await self.channel.send({"op": "prepare", **message})
        return await asyncio.shield(self._ready)

    async def send(self, op: str, **fields: Any) -> None:
        """A control message (``go``, ``pause``, ``resume``, ``cancel``, ``interrupt``,
        ``fence``); nothing if the runner is gone."""
        with contextlib.suppress(ConnectionError, OSError):
            await self.channel.send({"op": op, **fields})

    def kill(self) -> None:
        """Kill the runner's process group (a cancel's last step, or a shutdown)."""
        if self.killed:
            return
        self.killed = True
        self._kill(self.pid)

    async def close(self) -> None:
        self.kill()
        if self.objects is not None:
            self.objects.close()
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        await self.channel.close()

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the instrument commands under way; whether they all
        finished (else they are cancelled: those instruments' state is unknown)."""
        if not self.commands:
            return True
        _, late = await asyncio.wait(set(self.commands), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
        return not late

    # -- what the runner sends ------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while True:
                message = await self.channel.receive()
                await self._handle(message)
        except ChannelClosed:
            pass
        except Exception:
            log.exception("runner %d: its channel failed", self.pid)
        finally:
            self._end({"outcome": "failed", "lost": True})

    async def _handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "tick":
            self.last_tick = asyncio.get_running_loop().time()
        elif op == "move":
            self._move(message)  # before any later command: the read loop keeps the order
        elif op == "sync":
            await self._reply(message, {})
        elif op == "command":
            task = asyncio.create_task(self._command(message))
            self.commands.add(task)
            task.add_done_callback(self.commands.discard)
        elif op == "call":
            await _maybe(self.on_call(message))
        elif op == "log":
            await _maybe(self.on_log(message))
        elif op == "paused":
            await _maybe(self.on_paused(message))
        elif op == "resumed":
            await _maybe(self.on_resumed(message))
        elif op in ("ready", "failed"):
            if not self._ready.done():
                self._ready.set_result(message)
        elif op == "finished":
            self._end(message)

    def _end(self, message: dict[str, Any]) -> None:
        if not self._ready.done():
            self._ready.set_result({"op": "failed", "lost": True})
        if not self.ended.done():
            self.ended.set_result(message)

    def _move(self, message: dict[str, Any]) -> None:
        """A leased labware asset moved by hand in the runner: moved here too, or refused (the
        runner's next command, checkpoint or end then fails with why)."""
        assert self.objects is not None
        if self.refused is not None:
            return
        try:
            parent = message.get("parent")
            self.objects.move(
                str(message.get("child")),
                None if parent is None else str(parent),
                message.get("location"),
            )
        except Exception as exc:
            log.warning("runner %d: a move by hand was refused: %s", self.pid, exc)
            self.refused = error_reply(exc)

    async def _reply(self, message: dict[str, Any], reply: dict[str, Any]) -> None:
        assert self.objects is not None
        answer = {"op": "reply", "id": message.get("id"), **reply}
        if self.refused is not None:
            answer["error"] = self.refused
        else:
            self.objects.settle()
        answer["changes"] = self.objects.changes()
        with contextlib.suppress(ConnectionError, OSError):
            await self.channel.send(answer)

    async def _command(self, message: dict[str, Any]) -> None:
        objects, view = self.objects, self.view
        assert objects is not None and view is not None
        if self.refused is not None:  # a refused move: no command after it goes out
            await self._reply(message, {})
            return
        objects.settle()  # labware lifted by hand is off its site when the command runs
        machine = str(message.get("machine"))
        reply: dict[str, Any] = {"op": "reply", "id": message.get("id")}
        try:
            method = objects.method(machine, str(message.get("target")), str(message.get("method")))
            args = decode(message.get("args") or [], objects.resolve)
            kwargs = decode(message.get("kwargs") or {}, objects.resolve)
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise CodecError("a command's arguments are a list and a dict")
            lock = self.locks.setdefault(machine, asyncio.Lock())
            async with lock:
                token = current_view.set(view)
                output = current_log.set(self.output)  # its prints and logs are this run's
                try:
                    result = await method(*args, **kwargs)
                finally:
                    current_log.reset(output)
                    current_view.reset(token)
            reply["result"] = encode(result, result=True)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            reply["error"] = error_reply(exc)
            if len(self.commands) <= 1:  # no other command of the run has queued operations
                objects.undo_pending()
        reply["changes"] = objects.changes()
        try:
            await self.channel.send(reply)
        except (ConnectionError, OSError):
            pass  # the runner is gone
        except ValueError as exc:  # whatever went wrong, the runner is answered
            log.error("runner %d: a command's answer could not be sent: %s", self.pid, exc)
            error = error_reply(CodecError(f"the instrument's answer could not be sent: {exc}"))
            with contextlib.suppress(ConnectionError, OSError):
                await self.channel.send({"op": "reply", "id": message.get("id"), "error": error})


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _maybe(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value
