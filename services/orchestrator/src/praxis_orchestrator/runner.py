"""The runner: one run's protocol in a sandboxed process of its own (the child side).

Forked by the zygote (``praxis_orchestrator.zygote``) with one end of the run's channel; it holds
no credential, reaches no network and writes only its scratch folder (``praxis_runtime.sandbox``,
narrowed per run). The supervisor (``praxis_orchestrator.isolation``) drives it:

1. ``prepare``: the protocol's code folder and function, the parameters, copies of the leased
   assets (``praxis_plr.remote.copy_layout``) with their live state, the initial state. The
   runner imports the code, validates the parameters, builds the copies (their instrument
   commands forwarded), and answers ``ready`` (or ``failed``: the run could not start).
2. ``go``: the protocol function is called. Its nested calls are reported (``call``), it
   pauses, resumes and is cancelled at checkpoints as the supervisor says (``pause``,
   ``resume``, ``cancel``); ``interrupt`` cancels its task; ``fence`` makes its next checkpoint
   raise ``LeaseLost``. Its loop ticks (``tick``) so a protocol that blocks is noticed.
3. ``finished``: its outcome, result or error (the protocol's own frames only), final state.

Whatever the protocol does to this process (monkeypatching, ``gc``, ``os._exit``, exhausting its
memory) stays here: the supervisor executes every instrument command and checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import socket
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

from praxis_contracts.assets import WorkcellLayout
from praxis_contracts.errors import ErrorCode, LeaseLost, PraxisError
from praxis_contracts.runs import LOG_LINE_CHARS
from praxis_orchestrator.channel import Channel, ChannelClosed
from praxis_orchestrator.runlog import MAX_LINES, Lines
from praxis_plr.live import LiveWorkcell
from praxis_plr.remote import apply, decode, encode, forward, raise_error, track_moves
from praxis_sdk.context import CallRecord, RunCancelled, RunContext, RunControl, current_run
from praxis_sdk.decorators import call_arguments, validate_parameters
from praxis_sdk.loader import SourceTree
from praxis_sdk.state import PraxisState

log = logging.getLogger("praxis.runner")

TRACEBACK_CHARS = 4000


class Runner:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.control = RunControl(on_pause=self._paused, on_resume=self._resumed)
        self.fenced: str | None = None
        self.moves_sent = 0  # moves by hand sent to the supervisor
        self.moves_answered = 0  # of which a later answer said whether they were refused
        self.protocol: asyncio.Task[dict[str, Any]] | None = None
        self.go = asyncio.Event()
        self.tick = 1.0
        self._prepare_message: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )

    async def serve(self) -> None:
        """Until the run ended (or the supervisor went away)."""
        reader = asyncio.create_task(self._read())
        output = ProtocolOutput(self.channel)
        try:
            prepare = await self._prepare_message
            output.install()  # what the protocol prints or logs, from its import on
            prepared = await self._prepare(prepare)
            if prepared is None:
                return
            ticker = asyncio.create_task(self._ticks())
            await self.go.wait()
            self.protocol = asyncio.create_task(self._call(*prepared))
            ended = await self.protocol
            ticker.cancel()
            output.close()
            await self.channel.send({"op": "finished", **ended})
        finally:
            reader.cancel()

    # -- messages from the supervisor ------------------------------------------------------------
    async def _read(self) -> None:
        try:
            while True:
                message = await self.channel.receive()
                self._dispatch(message)
        except ChannelClosed:
            os._exit(3)  # the supervisor is gone: nothing may run unsupervised

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "reply":
            waiting = self.replies.pop(int(message["id"]), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
        elif op == "prepare":
            if not self._prepare_message.done():
                self._prepare_message.set_result(message)
        elif op == "go":
            self.go.set()
        elif op == "pause":
            self.control.pause()
        elif op == "resume":
            self.control.resume()
        elif op == "cancel":
            self.control.cancel()
        elif op == "interrupt":
            if self.protocol is not None:
                self.protocol.cancel()
        elif op == "fence":
            self.fenced = str(message.get("message") or "a lease was lost")

    # -- preparing ------------------------------------------------------------------------------
    async def _prepare(self, message: dict[str, Any]) -> tuple[Any, dict[str, Any], Path] | None:
        root = Path(message["code_root"])
        try:
            tree = SourceTree(root, message["code_identity"])
            fn = tree.function(message["module"], message["qualname"])
            kwargs = validate_parameters(fn, message["parameters"])
            layout = WorkcellLayout.model_validate(message["layout"])
            copies = LiveWorkcell.copies(layout)
            objects = {name: copies.get(name) for name in copies.names()}
            apply(objects, {"states": message.get("states") or {}})
            for name in copies.machine_names():
                forward(copies.get(name), name, self._command)
            track_moves(objects, self._moved)
        except Exception as exc:
            await self.channel.send({"op": "failed", "error": _error(exc, None)})
            return None
        ctx = RunContext(
            run_id=uuid.UUID(message["run_id"]),
            state=PraxisState(message.get("initial_state") or {}),
            sink=_Sink(self.channel),
            control=self.control,
            on_checkpoint=self._fence,
        )
        for requirement, asset in message["bindings"].items():
            kwargs[requirement] = objects[asset]
        kwargs = call_arguments(fn, kwargs, ctx)
        self.ctx, self.objects = ctx, objects
        self.tick = float(message.get("tick", 1.0))
        await self.channel.send({"op": "ready"})
        return fn, kwargs, root

    # -- running ------------------------------------------------------------------------------
    async def _call(self, fn: Any, kwargs: dict[str, Any], root: Path) -> dict[str, Any]:
        current_run.set(self.ctx)
        try:
            result = await fn(**kwargs)
            await self._synced()  # a move by hand at the very end was refused: not completed
        except RunCancelled:
            return {"outcome": "cancelled", "state": self._state()}
        except asyncio.CancelledError:  # interrupted by the supervisor (a cancel's 2nd step)
            return {"outcome": "cancelled", "state": self._state()}
        except Exception as exc:
            return {"outcome": "failed", "error": _error(exc, root), "state": self._state()}
        return {"outcome": "completed", "result": _json_safe(result), "state": self._state()}

    def _state(self) -> dict[str, Any]:
        try:
            return self.ctx.state.to_dict()
        except Exception:
            return {}

    async def _fence(self) -> None:
        if self.fenced is not None:
            raise LeaseLost(self.fenced)
        await self._synced()

    def _moved(self, message: dict[str, Any]) -> None:
        """A leased labware asset moved by hand: the supervisor makes the same move, in order
        before any later command; whether it agreed is learnt at the next command, checkpoint
        or the end (``_synced``)."""
        self.channel.send_nowait(message)
        self.moves_sent += 1

    async def _synced(self) -> None:
        """Raise why a move by hand was refused, if one was since the last command."""
        if self.moves_sent > self.moves_answered:
            await self._request({"op": "sync"})

    async def _command(
        self, machine: str, target: str, method: str, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        return await self._request(
            {
                "op": "command",
                "machine": machine,
                "target": target,
                "method": method,
                "args": encode(args),
                "kwargs": encode(kwargs),
            }
        )

    async def _request(self, message: dict[str, Any]) -> Any:
        ident = next(self.ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[ident] = reply
        covered = self.moves_sent  # the supervisor handles them before this request
        await self.channel.send({**message, "id": ident})
        answer = await reply
        self.moves_answered = max(self.moves_answered, covered)
        apply(self.objects, answer.get("changes") or {})
        if "error" in answer:
            raise_error(answer["error"])
        return _resolve(answer.get("result"), self.objects)

    async def _paused(self) -> None:
        await self.channel.send({"op": "paused"})

    async def _resumed(self) -> None:
        await self.channel.send({"op": "resumed"})

    async def _ticks(self) -> None:
        while True:
            await self.channel.send({"op": "tick"})
            await asyncio.sleep(self.tick)


class _Sink:
    """Call records go to the supervisor, which publishes them."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def record(self, call: CallRecord) -> None:
        record = {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in call.__dict__.items()}
        for key in ("started_at", "finished_at"):
            if (at := getattr(call, key)) is not None:
                record[key] = at.isoformat()
        await self.channel.send({"op": "call", "record": _json_safe(record)})


def _resolve(value: Any, objects: dict[str, Any]) -> Any:
    """A command's result: resources the supervisor named become the runner's copies."""

    def copy_named(name: str) -> Any:
        for obj in objects.values():
            try:
                return obj if obj.name == name else obj.get_resource(name)
            except Exception:
                continue
        return name  # not among the copies: its name

    return decode(value, copy_named, result=True)


def _json_safe(value: Any) -> Any:
    """The protocol's result as JSON: what is not JSON becomes its ``repr``; NaN and the
    infinities become null (as the result is published)."""
    return json.loads(json.dumps(value, default=repr), parse_constant=lambda _: None)


def _error(exc: BaseException, root: Path | None) -> dict[str, Any]:
    """A run's error: its own message and a code, and the traceback of the protocol's own
    frames only, paths relative to its source tree."""
    if isinstance(exc, PraxisError):
        code, message = exc.code.value, exc.message
    else:
        code = (ErrorCode.PROTOCOL_ERROR if root else ErrorCode.PREPARATION_FAILED).value
        message = str(exc)
    return {
        "type": type(exc).__name__,
        "message": (message or type(exc).__name__)[:TRACEBACK_CHARS],
        "code": code,
        "traceback": _protocol_traceback(exc, root) if root else None,
    }


def _protocol_traceback(exc: BaseException, root: Path) -> str | None:
    base = str(root.resolve()) + os.sep
    lines = []
    for frame in traceback.extract_tb(exc.__traceback__):
        filename = str(Path(frame.filename).resolve())
        if not filename.startswith(base):
            continue
        lines.append(f'  File "{filename[len(base) :]}", line {frame.lineno}, in {frame.name}\n')
        if frame.line:
            lines.append(f"    {frame.line}\n")
    if not lines:
        return None
    last = traceback.format_exception_only(type(exc), exc)[-1]
    return ("Traceback (protocol frames):\n" + "".join(lines) + last)[-TRACEBACK_CHARS:]


def run_child(fd: int) -> None:
    """The forked runner's life: serve the run over the channel on ``fd``, then exit (no
    interpreter teardown: the protocol's atexit hooks do not run)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    async def main() -> None:
        sock = socket.socket(fileno=fd)
        channel = await Channel.open(sock)
        await Runner(channel).serve()
        await channel.close()

    try:
        asyncio.run(main())
    except BaseException:
        os._exit(1)
    os._exit(0)


class ProtocolOutput:
    """The protocol's output, sent line by line to the supervisor (``op: log``), which numbers,
    bounds and publishes it (``praxis_orchestrator.runlog``): ``print`` (stdout as INFO, stderr
    as ERROR) and every ``logging`` record from INFO up but the runner's own. At most
    ``MAX_LINES`` are sent; how many more there were goes with the last message."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.sent = 0
        self.dropped = 0
        self._lines = Lines()  # tagged with the stream's level

    def install(self) -> None:
        sys.stdout = _Stream(self, "stdout", "INFO", sys.stdout)
        sys.stderr = _Stream(self, "stderr", "ERROR", sys.stderr)
        root = logging.getLogger()
        root.addHandler(_LogToChannel(self))
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)

    def line(self, level: str, logger: str | None, message: str) -> None:
        if self.sent >= MAX_LINES:
            self.dropped += 1
            return
        self.sent += 1
        record = {"level": level, "logger": logger, "message": message[:LOG_LINE_CHARS]}
        with contextlib.suppress(Exception):  # the run's output never breaks the run
            self.channel.send_nowait({"op": "log", "lines": [record]})

    def write(self, stream: str, level: str, text: str) -> None:
        for line in self._lines.feed(stream, text, level):
            self.line(level, None, line)

    def close(self) -> None:
        for rest, level in self._lines.rest():
            self.line(level, None, rest)
        if self.dropped:
            with contextlib.suppress(Exception):
                self.channel.send_nowait({"op": "log", "lines": [], "dropped": self.dropped})


class _Stream(io.TextIOBase):
    def __init__(self, output: ProtocolOutput, name: str, level: str, raw: Any) -> None:
        self.output, self.name, self.level, self.raw = output, name, level, raw

    def write(self, text: str) -> int:
        self.output.write(self.name, self.level, text)
        return len(text)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # faulthandler and subprocesses still reach the real stream
        return int(self.raw.fileno())


class _LogToChannel(logging.Handler):
    def __init__(self, output: ProtocolOutput) -> None:
        super().__init__(logging.INFO)
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "praxis.runner":
            return  # the runner's own messages are the edge's, not the protocol's
        try:
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
        except Exception:
            return
        self.output.line(record.levelname, record.name, message)
