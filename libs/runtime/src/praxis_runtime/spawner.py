"""Sandboxed children started in another container of the pod, for a service that asks.

Why: in Kubernetes a service that runs untrusted code keeps it out of its own container, where
its Secrets are mounted. The children run in a ``sandbox`` container that holds no Secret, no
credential and no service account token; the service asks for each child over a Unix socket in
a folder both containers mount (the code-manager's ``DISCOVERY_SOCKET``). The other layers of
``praxis_runtime.sandbox`` still hold: each child is started as ``Sandbox.spawn`` starts one
(``start_confined``) and confines itself (``praxis_runtime.confine``) before any untrusted import.

``python -m praxis_runtime.spawner --listen PATH --module M [--read DIR] [--write DIR]`` is the
*host*, the sandbox container's program. It binds the socket, becomes a subreaper (what a child
leaves behind is adopted and killed, ``kill_strays``) and confines itself for good. Landlock
domains only narrow, so its own domain is the union of what its children may need: the
interpreter, ``--read`` (the trees they import), ``--write`` (their scratch folders), and
``/proc`` for itself (to find strays). Each child narrows it to its own tree and scratch folder.

The protocol, one connection per child, one JSON object a line:

1. The client sends ``{"op": "spawn", "module", "args", "confinement", "cwd"}`` with three
   descriptors (SCM_RIGHTS): the child's stdin, stdout and stderr, pipe ends the client made.
   ``module`` must be one the host was started with (``--module``): a client that was taken
   over cannot make it run anything else. ``cwd`` must be one of the confinement's write folders.
2. The host starts the child, closes its copies of the descriptors, answers ``{"pid": N}``.
3. The client may send ``{"op": "signal", "signal": S}`` (SIGSTOP, SIGCONT or SIGKILL), for the
   child's process group: its pid means nothing in the client's PID namespace, and the client
   never signals it itself.
4. When the child ends, the host kills its group and what it left behind, answers
   ``{"exit": returncode}`` (negative: the signal that killed it) and closes.

A client that closes first has its child killed. Anything malformed is answered
``{"error": why}``: before the child started, nothing is started; after, the child is killed.
A connection from one of the host's own descendants is refused: Landlock does not govern
connecting to a named socket, and a child must not have a sibling started with a wider
confinement than its own.

The client is ``RemoteSandbox``: the part of ``Sandbox`` a service uses (a ``Spawner``), its
children ``RemoteProcess``es (pipes for streams, the returncode from the host's answer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from praxis_runtime import landlock
from praxis_runtime.confine import Confinement, apply
from praxis_runtime.logging import configure_logging
from praxis_runtime.sandbox import (
    Child,
    _status,
    become_subreaper,
    kill_group,
    kill_strays,
    own_confinement,
    start_confined,
)

log = logging.getLogger("praxis_runtime.spawner")  # also when run as __main__

MAX_LINE = 64 * 1024
"""A request or an answer (a confinement lists a few dozen paths)."""
STREAMS = 3
"""stdin, stdout, stderr."""
MAX_FDS = 8
"""Descriptors received at once: more than ``STREAMS`` is refused, not kept."""
SIGNALS = frozenset({signal.SIGSTOP, signal.SIGCONT, signal.SIGKILL})
"""What a client may send its child: pause, resume (``FairShare``), kill."""
HOST_CPU_SECONDS = 10 * 365 * 24 * 3600
"""The host's own CPU time (it runs as long as its pod); each child has its own limit."""
CONNECT_SECONDS = 60.0
"""How long a client waits for the socket to appear (both containers start together)."""


class Refused(ValueError):
    """A request the host does not serve."""


class SpawnRefused(OSError):
    """The host did not start the child (refused it, or could not be reached)."""


@dataclass(frozen=True)
class SpawnRequest:
    module: str
    args: tuple[str, ...]
    confinement: Confinement
    cwd: Path


# --------------------------------------------------------------------------- the protocol


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def parse_spawn(
    line: bytes, fds: int, modules: Collection[str], landlock_required: bool
) -> SpawnRequest:
    """The spawn request in ``line`` (with ``fds`` descriptors), or ``Refused`` saying why."""
    request = _object(line)
    if request.get("op") != "spawn":
        raise Refused("not a spawn request")
    if set(request) != {"op", "module", "args", "confinement", "cwd"}:
        raise Refused(f"a spawn request has module, args, confinement, cwd; got {sorted(request)}")
    if fds != STREAMS:
        raise Refused(f"a spawn request comes with {STREAMS} descriptors, not {fds}")
    module, args, cwd = request["module"], request["args"], request["cwd"]
    if not isinstance(module, str) or module not in modules:
        raise Refused(f"module {str(module)[:100]!r} is not one this sandbox runs")
    if not isinstance(args, list) or not all(_text(a) for a in args):
        raise Refused("args must be a list of strings")
    confinement = parse_confinement(request["confinement"], landlock_required)
    if not _path(cwd) or cwd not in confinement.write:
        raise Refused("cwd must be one of the confinement's write folders")
    return SpawnRequest(module, tuple(args), confinement, Path(cwd))


def parse_confinement(raw: Any, landlock_required: bool) -> Confinement:
    """A ``Confinement`` as ``Confinement.to_json`` wrote it, every field of the right type."""
    names = {f.name for f in fields(Confinement)}
    if not isinstance(raw, dict) or set(raw) != names:
        raise Refused(f"a confinement has the fields {sorted(names)}")
    for key in ("read", "write"):
        if not isinstance(raw[key], list) or not all(_path(p) for p in raw[key]):
            raise Refused(f"confinement {key} must be a list of absolute paths")
    for key in ("memory_mb", "cpu_seconds", "file_mb", "open_files"):
        if not _positive(raw[key]):
            raise Refused(f"confinement {key} must be a positive integer")
    if raw["processes"] is not None and not _positive(raw["processes"]):
        raise Refused("confinement processes must be a positive integer or null")
    if not isinstance(raw["landlock"], bool) or (landlock_required and not raw["landlock"]):
        raise Refused("the child confines itself with Landlock where the kernel has it")
    extra = raw["extra"]
    if not isinstance(extra, dict) or not all(_text(k) and _text(v) for k, v in extra.items()):
        raise Refused("confinement extra must map strings to strings")
    return Confinement(**{**raw, "read": tuple(raw["read"]), "write": tuple(raw["write"])})


def parse_signal(line: bytes) -> int:
    """The signal a ``{"op": "signal", "signal": S}`` line asks for."""
    command = _object(line)
    sig = command.get("signal")
    if set(command) != {"op", "signal"} or command["op"] != "signal" or type(sig) is not int:
        raise Refused("a command is {'op': 'signal', 'signal': S}")
    if sig not in SIGNALS:
        raise Refused(f"signal {sig} is not one a client may send (SIGSTOP, SIGCONT, SIGKILL)")
    return sig


def _object(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise Refused("not JSON") from exc
    if not isinstance(value, dict):
        raise Refused("not a JSON object")
    return value


def _text(value: Any) -> bool:
    return isinstance(value, str) and "\0" not in value


def _path(value: Any) -> bool:
    return _text(value) and os.path.isabs(value)


def _positive(value: Any) -> bool:
    return type(value) is int and value > 0


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process ``pid`` is a descendant of ``ancestor`` (or cannot be told apart from
    one: it is gone). Pid 0 is a process of another PID namespace (another container)."""
    if pid == 0:
        return False
    for _ in range(4096):  # a chain longer than that is a loop (a pid reused meanwhile)
        parent = _status(pid).get("PPid")
        if parent is None or not parent.isdigit():
            return True
        pid = int(parent)
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return True


def host_confinement(read: Iterable[Path], write: Iterable[Path], memory_mb: int) -> Confinement:
    """The host's own domain: what any of its children may need, and ``/proc`` (its strays)."""
    return own_confinement(
        read=[*read, Path("/proc")],
        write=write,
        memory_mb=memory_mb,
        cpu_seconds=HOST_CPU_SECONDS,
    )


# --------------------------------------------------------------------------- the host


class Host:
    """Serves spawn requests on a listening socket; see the module's docstring."""

    def __init__(self, modules: Collection[str]) -> None:
        self.modules = frozenset(modules)
        self.abi = landlock.abi_version()
        self.live: set[int] = set()
        self._starting = asyncio.Lock()  # no stray hunt while a child starts (not yet live)

    async def serve(self, listener: socket.socket) -> None:
        """Accept connections until cancelled; then every child is killed."""
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                connection, _ = await loop.sock_accept(listener)
                task = asyncio.create_task(self.handle(connection))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, connection: socket.socket) -> None:
        """One connection: one child, from its request to its end."""
        connection.setblocking(False)
        fds: list[int] = []
        try:
            try:
                if descends_from(peer_pid(connection), os.getpid()):
                    raise Refused("a sandboxed process may not ask for another")
                line, rest = await _receive_request(connection, fds)
                request = parse_spawn(line, len(fds), self.modules, self.abi >= 1)
                async with self._starting:
                    process = await start_confined(
                        request.module,
                        request.args,
                        request.confinement,
                        cwd=request.cwd,
                        stdin=fds[0],
                        stdout=fds[1],
                        stderr=fds[2],
                    )
                    self.live.add(process.pid)
            except (Refused, OSError) as exc:  # OSError: e.g. a folder outside its domain
                log.warning("refused a spawn request: %s", exc)
                with contextlib.suppress(OSError):
                    await _send(connection, encode({"error": str(exc)}))
                return
            finally:
                _close(fds)
            await self._supervise(connection, process, request.module, rest)
        finally:
            connection.close()

    async def _supervise(
        self,
        connection: socket.socket,
        process: asyncio.subprocess.Process,
        module: str,
        rest: bytes,
    ) -> None:
        pid = process.pid
        log.info("child %d started (%s)", pid, module)
        exited = asyncio.create_task(process.wait())
        commands = asyncio.create_task(_commands(connection, process, rest))
        try:
            with contextlib.suppress(OSError):
                await _send(connection, encode({"pid": pid}))
            await asyncio.wait({exited, commands}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                why = None if commands.exception() else commands.result()
                kill_group(pid)  # the client left, or asked for something it may not
                if why is not None:
                    log.warning("child %d killed: %s", pid, why)
                    with contextlib.suppress(OSError):
                        await _send(connection, encode({"error": why}))
        finally:
            commands.cancel()
            if not exited.done():
                kill_group(pid)
            code = await exited
            kill_group(pid)  # what it left in its group
            async with self._starting:
                self.live.discard(pid)
                kill_strays(self.live)  # and what it left elsewhere (adopted here)
        log.info("child %d ended (%d)", pid, code)
        with contextlib.suppress(OSError):
            await _send(connection, encode({"exit": code}))


async def _commands(
    connection: socket.socket, process: asyncio.subprocess.Process, buffer: bytes
) -> str | None:
    """Carry out the client's signals until it closes (None) or sends something it may not
    (why)."""
    loop = asyncio.get_running_loop()
    while True:
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            try:
                sig = parse_signal(line)
            except Refused as exc:
                return str(exc)
            if process.returncode is None:
                kill_group(process.pid, sig)
        if len(buffer) > MAX_LINE:
            return "a command longer than any"
        try:
            chunk = await loop.sock_recv(connection, 4096)
        except OSError:
            return None
        if not chunk:
            return None
        buffer += chunk


async def _receive_request(connection: socket.socket, fds: list[int]) -> tuple[bytes, bytes]:
    """The request line and what came after it; its descriptors are added to ``fds``."""
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_LINE:
            raise Refused(f"a request longer than {MAX_LINE} bytes")
        while True:
            try:
                chunk, received, flags, _ = socket.recv_fds(
                    connection, MAX_LINE, MAX_FDS, socket.MSG_CMSG_CLOEXEC
                )
                break
            except BlockingIOError:
                await _ready(connection, write=False)
        fds.extend(received)
        if flags & socket.MSG_CTRUNC:
            raise Refused(f"more than {MAX_FDS} descriptors")
        if not chunk:
            raise Refused("the connection closed before a whole request")
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def peer_pid(connection: socket.socket) -> int:
    """The pid of the process at the other end (0: another PID namespace)."""
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return int(pid)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


async def _send(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send ``data`` (with ``fds`` on its first byte) on a non-blocking socket."""
    loop = asyncio.get_running_loop()
    while fds:
        try:
            sent = socket.send_fds(sock, [data], list(fds))
        except BlockingIOError:
            await _ready(sock, write=True)
            continue
        data, fds = data[sent:], ()
    if data:
        await loop.sock_sendall(sock, data)


async def _ready(sock: socket.socket, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(sock.fileno(), wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(sock.fileno())


def listen(path: Path) -> socket.socket:
    """The host's socket at ``path`` (a stale one replaced), for its own user alone; it
    appears there listening already (a client or a probe finding it may connect)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    making = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(making)
    listener.bind(str(making))
    os.chmod(making, 0o600)
    listener.listen(64)
    os.replace(making, path)
    return listener


async def _serve_until_stopped(host: Host, listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(host.serve(listener))
    for sig in (signal.SIGTERM, signal.SIGINT):  # PID 1 in its container: no default action
        loop.add_signal_handler(sig, serving.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m praxis_runtime.spawner",
        description="Start sandboxed children for a service in another container of the pod.",
    )
    parser.add_argument("--listen", type=Path, required=True, help="the Unix socket to serve")
    parser.add_argument(
        "--module", dest="modules", action="append", required=True, help="a module it may run"
    )
    parser.add_argument("--read", type=Path, action="append", default=[], help="children read")
    parser.add_argument("--write", type=Path, action="append", default=[], help="scratch")
    parser.add_argument(
        "--memory-mb", type=int, default=4096, help="address space, its own and any child's"
    )
    args = parser.parse_args(argv)
    missing = [str(p) for p in [*args.read, *args.write] if not p.is_dir()]
    if missing:  # Landlock would skip them: every child would fail, and nothing say why
        parser.error(f"no such folder: {', '.join(missing)}")
    configure_logging("sandbox")
    become_subreaper()
    host = Host(args.modules)  # before confining itself: finding libc runs programs
    listener = listen(args.listen)
    apply(host_confinement(args.read, args.write, args.memory_mb))
    log.info(
        "serving %s at %s (%s)",
        ", ".join(sorted(host.modules)),
        args.listen,
        f"Landlock ABI {host.abi}" if host.abi >= 1 else "no Landlock",
    )
    asyncio.run(_serve_until_stopped(host, listener))
    return 0


# --------------------------------------------------------------------------- the client


class RemoteProcess:
    """A child the host started, as far as a service uses ``asyncio.subprocess.Process``:
    ``pid`` (in the host's PID namespace: never signalled here), streams, ``wait`` and
    ``returncode`` (negative for a signal), from the host's answers on the connection."""

    def __init__(
        self,
        pid: int,
        control: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader | None,
        stderr: asyncio.StreamReader | None,
    ) -> None:
        self.pid = pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None
        self._writer = control[1]
        self._ended = asyncio.Event()
        self._follow = asyncio.create_task(self._until_exit(control[0]))

    async def wait(self) -> int:
        await self._ended.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Ask the host to signal the child's group (nothing once it ended)."""
        if self._ended.is_set() or self._writer.is_closing():
            return
        self._writer.write(encode({"op": "signal", "signal": int(sig)}))

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Close the connection: a child still running is killed by the host."""
        self._writer.close()

    async def _until_exit(self, reader: asyncio.StreamReader) -> None:
        code = -signal.SIGKILL  # the host went away: its children went with it
        try:
            while line := await reader.readline():
                answer = json.loads(line)
                if isinstance(answer, dict) and type(answer.get("exit")) is int:
                    code = answer["exit"]
                    break
                log.warning("sandbox host about child %d: %s", self.pid, line[:300])
            else:
                log.warning("sandbox host closed the connection of child %d", self.pid)
        except (OSError, ValueError) as exc:
            log.warning("sandbox host connection of child %d: %r", self.pid, exc)
        finally:
            self.returncode = code
            self._ended.set()
            self._writer.close()


class RemoteSandbox:
    """The ``Spawner`` of a service whose children run in a sandbox container: each is asked
    of the host at ``socket_path``; see the module's docstring."""

    def __init__(self, socket_path: Path, connect_seconds: float = CONNECT_SECONDS) -> None:
        self.socket_path = socket_path
        self.connect_seconds = connect_seconds
        self._children: dict[int, RemoteProcess] = {}

    def describe(self) -> str:
        return f"in a container of its own, reached at {self.socket_path}"

    def confinement(
        self,
        *,
        read: Iterable[Path] = (),
        write: Iterable[Path] = (),
        memory_mb: int = 1024,
        cpu_seconds: int = 3600,
        processes: int = 64,
    ) -> Confinement:
        """As ``Sandbox.confinement``, without a user switch (the container's user is the
        children's; ``processes`` is a limit per user, so not set)."""
        return own_confinement(read=read, write=write, memory_mb=memory_mb, cpu_seconds=cpu_seconds)

    async def spawn(
        self,
        module: str,
        args: Sequence[str],
        confinement: Confinement,
        *,
        cwd: Path,
        stdin: int = asyncio.subprocess.PIPE,
        stdout: int = asyncio.subprocess.PIPE,
        stderr: int = asyncio.subprocess.PIPE,
        limit: int = 2**16,
    ) -> RemoteProcess:
        """Start ``module`` in the sandbox container; streams are ``PIPE`` or ``DEVNULL``."""
        request = encode(
            {
                "op": "spawn",
                "module": module,
                "args": list(args),
                "confinement": json.loads(confinement.to_json()),
                "cwd": str(cwd),
            }
        )
        ours: list[int | None] = [None, None, None]
        theirs: list[int] = []
        connection: socket.socket | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            for index, (how, reads) in enumerate(((stdin, True), (stdout, False), (stderr, False))):
                ours[index], child_end = _stream(how, child_reads=reads)
                theirs.append(child_end)
            connection = await self._connect()
            await _send(connection, request, theirs)
            _close(theirs)  # the child's now (the host closes its copies once it started)
            reader, writer = await asyncio.open_unix_connection(sock=connection, limit=MAX_LINE)
            answer = _answer(await reader.readline())
            if type(answer.get("pid")) is not int:
                why = answer.get("error", "it closed the connection")
                raise SpawnRefused(f"the sandbox did not start {module}: {why}")
            fd_in, fd_out, fd_err = ours
            ours = [None, None, None]  # the streams' from here on
            process = RemoteProcess(
                answer["pid"],
                (reader, writer),
                await _pipe_writer(fd_in) if fd_in is not None else None,
                await _pipe_reader(fd_out, limit) if fd_out is not None else None,
                await _pipe_reader(fd_err, limit) if fd_err is not None else None,
            )
        except BaseException:
            _close(theirs)
            _close([fd for fd in ours if fd is not None])
            if writer is not None:
                writer.close()  # a child that started is killed by the host
            elif connection is not None:
                connection.close()
            raise
        self._children[process.pid] = process
        return process

    def signal(self, process: Child | int, sig: int) -> None:
        """Have the host signal the child's group (a pid of its namespace, never one here)."""
        child = self._children.get(process if isinstance(process, int) else process.pid)
        if child is not None:
            child.send_signal(sig)

    def kill(self, process: Child) -> None:
        self.signal(process, signal.SIGKILL)

    def forget(self, process: Child) -> None:
        """Done with the child: the host has killed its group and what it left behind when
        it ended (or does so now, as the connection closes)."""
        child = self._children.pop(process.pid, None)
        if child is not None:
            child.close()

    async def _connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_seconds
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, str(self.socket_path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if loop.time() >= deadline:
                    raise SpawnRefused(f"no sandbox answers at {self.socket_path}") from exc
                await asyncio.sleep(0.2)
            except BaseException:
                sock.close()
                raise


def _answer(line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line) if line else {}
    except ValueError:
        return {"error": "a malformed answer"}
    return answer if isinstance(answer, dict) else {"error": "a malformed answer"}


def _stream(how: int, *, child_reads: bool) -> tuple[int | None, int]:
    """(our end or None, the child's end) for a stream given as ``PIPE`` or ``DEVNULL``."""
    if how == asyncio.subprocess.DEVNULL:
        return None, os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    if how != asyncio.subprocess.PIPE:
        raise ValueError("a remote child's streams are PIPE or DEVNULL")
    read, write = os.pipe()
    return (write, read) if child_reads else (read, write)


async def _pipe_writer(fd: int) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
    transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(fd, "wb", 0))
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def _pipe_reader(fd: int, limit: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    return reader


if __name__ == "__main__":
    sys.exit(main())
