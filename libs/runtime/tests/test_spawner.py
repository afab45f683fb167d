"""The spawner's protocol, strict at every step: requests are checked field by field before
anything starts, descriptors come three at a time or are refused (and never kept), only pause,
resume and kill may be asked, and a client that leaves takes its child with it. Against a host
started as its container starts it (``python -m praxis_runtime.spawner``, confined), running a
harmless module (``json.tool``: it waits for its input, then echoes it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from praxis_runtime import landlock
from praxis_runtime.sandbox import own_confinement
from praxis_runtime.spawner import (
    MAX_FDS,
    MAX_LINE,
    Refused,
    RemoteSandbox,
    SpawnRefused,
    descends_from,
    encode,
    parse_signal,
    parse_spawn,
)

pytestmark = pytest.mark.skipif(
    landlock.abi_version() < 1 and os.environ.get("CI", "").lower() not in ("1", "true"),
    reason="Landlock is not available on this kernel",
)

MODULE = "json.tool"


def request(scratch: str = "/scratch/a", **changes: Any) -> dict[str, Any]:
    confinement = json.loads(
        own_confinement(write=[Path(scratch)], memory_mb=512, cpu_seconds=60).to_json()
    )
    base = {"op": "spawn", "module": MODULE, "args": [], "confinement": confinement, "cwd": scratch}
    return {**base, **changes}


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


# --------------------------------------------------------------------------- pure checks


def test_a_well_formed_request_is_what_it_says() -> None:
    spawn = parse_spawn(line(request(args=["--sort-keys"])), 3, {MODULE}, True)
    assert (spawn.module, spawn.args, spawn.cwd) == (MODULE, ("--sort-keys",), Path("/scratch/a"))
    assert spawn.confinement.write == ("/scratch/a",) and spawn.confinement.landlock


def confinement(**changes: Any) -> dict[str, Any]:
    return {**request()["confinement"], **changes}


@pytest.mark.parametrize(
    ("data", "fds", "why"),
    [
        (b"{not json", 3, "not JSON"),
        (b"[1, 2]", 3, "not a JSON object"),
        (line(request(op="fork")), 3, "not a spawn request"),
        (line({**request(), "env": {"DATABASE_URL": "x"}}), 3, "a spawn request has"),
        (line({k: v for k, v in request().items() if k != "cwd"}), 3, "a spawn request has"),
        (line(request()), 2, "3 descriptors, not 2"),
        (line(request()), 4, "3 descriptors, not 4"),
        (line(request(module="os")), 3, "not one this sandbox runs"),
        (line(request(module=["json.tool"])), 3, "not one this sandbox runs"),
        (line(request(args="--sort-keys")), 3, "args must be a list of strings"),
        (line(request(args=[1])), 3, "args must be a list of strings"),
        (line(request(args=["a\0b"])), 3, "args must be a list of strings"),
        (line(request(confinement="{}")), 3, "a confinement has the fields"),
        (line(request(confinement={"read": []})), 3, "a confinement has the fields"),
        (line(request(confinement=confinement(read=["etc"]))), 3, "absolute paths"),
        (line(request(confinement=confinement(write="/"))), 3, "absolute paths"),
        (line(request(confinement=confinement(memory_mb=0))), 3, "memory_mb must be a positive"),
        (line(request(confinement=confinement(cpu_seconds=True))), 3, "cpu_seconds"),
        (line(request(confinement=confinement(open_files="9"))), 3, "open_files"),
        (line(request(confinement=confinement(processes=-1))), 3, "processes"),
        (line(request(confinement=confinement(landlock=False))), 3, "with Landlock"),
        (line(request(confinement=confinement(extra={"a": 1}))), 3, "extra"),
        (line(request(cwd="/elsewhere")), 3, "cwd must be one of"),
        (line(request(cwd="scratch/a")), 3, "cwd must be one of"),
    ],
)
def test_a_malformed_request_is_refused_saying_why(data: bytes, fds: int, why: str) -> None:
    with pytest.raises(Refused, match=why):
        parse_spawn(data, fds, {MODULE}, True)


def test_without_landlock_on_the_kernel_a_child_is_not_asked_for_it() -> None:
    spawn = parse_spawn(line(request(confinement=confinement(landlock=False))), 3, {MODULE}, False)
    assert not spawn.confinement.landlock


def test_a_client_may_pause_resume_and_kill_and_nothing_else() -> None:
    for sig in (signal.SIGSTOP, signal.SIGCONT, signal.SIGKILL):
        assert parse_signal(line({"op": "signal", "signal": int(sig)})) == sig
    for bad in (
        {"op": "signal", "signal": int(signal.SIGTERM)},
        {"op": "signal", "signal": "SIGKILL"},
        {"op": "signal", "signal": True},
        {"op": "signal", "signal": 9, "pid": 1},
        {"op": "kill", "signal": 9},
    ):
        with pytest.raises(Refused):
            parse_signal(line(bad))


def test_a_descendant_is_told_apart() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert descends_from(child.pid, os.getpid())
        assert not descends_from(os.getpid(), child.pid)
        assert not descends_from(os.getpid(), os.getpid())
        assert not descends_from(0, os.getpid())  # another PID namespace: another container
    finally:
        child.kill()
        child.wait()
    assert descends_from(child.pid, os.getpid())  # gone: cannot be told apart, so refused


# --------------------------------------------------------------------------- against a host


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    """A host as its container runs it (its own program, an environment holding nothing)."""
    folder = Path(tempfile.mkdtemp(prefix="spawner-"))  # a socket path has 108 bytes at most
    scratch = folder / "scratch"
    scratch.mkdir()
    path = folder / "sandbox.sock"
    argv = [sys.executable, "-m", "praxis_runtime.spawner", "--listen", str(path)]
    argv += ["--module", MODULE, "--write", str(scratch)]
    env = {"PATH": os.defpath, "HOME": str(scratch), "LANG": "C.UTF-8"}
    process = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield path, scratch, process
    finally:
        process.kill()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def ask(path: Path, data: bytes, fds: list[int], *, close: bool = False) -> list[dict[str, Any]]:
    """Send ``data`` with ``fds`` as a raw client; the host's answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        socket.send_fds(sock, [data], fds)
        if close:
            sock.shutdown(socket.SHUT_WR)
        answers = b""
        with contextlib.suppress(ConnectionResetError):  # it closed with our request unread
            while chunk := sock.recv(65536):
                answers += chunk
    return [json.loads(a) for a in answers.splitlines()]


def pipes(count: int) -> tuple[list[int], list[int]]:
    """``count`` pipes: (read ends to send, write ends kept)."""
    ends = [os.pipe() for _ in range(count)]
    return [r for r, _ in ends], [w for _, w in ends]


def nobody_reads(write_end: int) -> bool:
    """No read end of this pipe is open anywhere (the host kept no copy)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.write(write_end, b"x")
        except BrokenPipeError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("count", [0, 1, 2, 4, MAX_FDS + 2])
def test_a_request_with_the_wrong_number_of_descriptors_is_refused_and_none_is_kept(
    host: tuple[Path, Path, subprocess.Popen[bytes]], count: int
) -> None:
    path, scratch, _ = host
    send, keep = pipes(count)
    try:
        (answer,) = ask(path, encode(request(str(scratch / "wrong-fds"))), send)
        for fd in send:
            os.close(fd)
        assert "descriptors" in answer["error"], answer
        assert all(nobody_reads(fd) for fd in keep)
    finally:
        for fd in keep:
            os.close(fd)
    assert not (scratch / "wrong-fds").exists()  # nothing was started


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"{not json}\n", "not JSON"),
        (encode(request(module="os")), "not one this sandbox runs"),
        (encode(request(cwd="/tmp")), "cwd must be one of"),
        (b"x" * (MAX_LINE + 10), "longer than"),
    ],
)
def test_a_malformed_request_over_the_socket_is_answered_and_nothing_starts(
    host: tuple[Path, Path, subprocess.Popen[bytes]], data: bytes, why: str
) -> None:
    path, _, _ = host
    send, keep = pipes(3)
    try:
        (answer,) = ask(path, data, send)
        assert why in answer["error"], answer
    finally:
        for fd in send + keep:
            os.close(fd)


def test_a_request_cut_short_starts_nothing(
    host: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    path, scratch, process = host
    send, keep = pipes(3)
    try:
        answers = ask(path, encode(request(str(scratch / "cut")))[:-20], send, close=True)
    finally:
        for fd in send + keep:
            os.close(fd)
    assert answers == [{"error": "the connection closed before a whole request"}]
    assert not (scratch / "cut").exists()
    assert process.poll() is None  # the host serves on


async def test_a_child_runs_with_pipes_and_its_exit_is_reported(
    host: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    path, scratch, _ = host
    sandbox = RemoteSandbox(path)
    home = scratch / "echo"
    process = await sandbox.spawn(
        MODULE, ["--sort-keys"], sandbox.confinement(write=[home]), cwd=home
    )
    assert process.stdin and process.stdout and process.stderr
    process.stdin.write(b'{"b": 1, "a": 2}')
    await process.stdin.drain()
    process.stdin.close()
    out = await asyncio.wait_for(process.stdout.read(), 30)
    assert json.loads(out) == {"a": 2, "b": 1} and out.index(b'"a"') < out.index(b'"b"')
    assert await asyncio.wait_for(process.wait(), 30) == 0 == process.returncode
    assert await process.stderr.read() == b""
    sandbox.forget(process)


async def test_a_module_not_on_the_allow_list_is_refused(
    host: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    path, scratch, _ = host
    sandbox = RemoteSandbox(path)
    home = scratch / "other"
    with pytest.raises(SpawnRefused, match="not one this sandbox runs"):
        await sandbox.spawn("http.server", [], sandbox.confinement(write=[home]), cwd=home)
    assert not home.exists()


async def test_signals_go_through_the_host_to_the_childs_group(
    host: tuple[Path, Path, subprocess.Popen[bytes]], eventually: Any
) -> None:
    path, scratch, _ = host
    sandbox = RemoteSandbox(path)
    home = scratch / "signals"
    process = await sandbox.spawn(MODULE, [], sandbox.confinement(write=[home]), cwd=home)
    await eventually(lambda: _state(process.pid) == "S", "it waits for its input", 30)

    sandbox.signal(process.pid, signal.SIGSTOP)
    # The host reads its clients' messages when it gets the CPU: on a loaded machine (the
    # whole suite, 2 cores) 10 s was once not enough.
    await eventually(lambda: _state(process.pid) == "T", "paused by the host", 30)
    sandbox.signal(process, signal.SIGCONT)
    await eventually(lambda: _state(process.pid) in ("S", "R"), "resumed by the host", 30)
    sandbox.kill(process)
    assert await asyncio.wait_for(process.wait(), 30) == -signal.SIGKILL
    sandbox.forget(process)
    sandbox.signal(process.pid, signal.SIGSTOP)  # forgotten: nothing, nowhere


async def test_a_signal_a_client_may_not_send_kills_the_child(
    host: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    path, scratch, _ = host
    home = scratch / "sigterm"
    send, keep = pipes(3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        await asyncio.to_thread(sock.connect, str(path))
        socket.send_fds(sock, [encode(request(str(home)))], send)
        for fd in send:
            os.close(fd)
        reader = sock.makefile("rb")
        pid = json.loads(await asyncio.to_thread(reader.readline))["pid"]
        sock.sendall(encode({"op": "signal", "signal": int(signal.SIGTERM)}))
        answers = [json.loads(a) for a in await asyncio.to_thread(reader.readlines)]
    for fd in keep:
        os.close(fd)
    assert answers[0]["error"].startswith("signal 15 is not one a client may send"), answers
    assert answers[1:] == [{"exit": -signal.SIGKILL}]
    assert _state(pid) is None


async def test_a_client_that_leaves_takes_its_child_with_it(
    host: tuple[Path, Path, subprocess.Popen[bytes]], eventually: Any
) -> None:
    path, scratch, _ = host
    sandbox = RemoteSandbox(path)
    home = scratch / "left"
    process = await sandbox.spawn(MODULE, [], sandbox.confinement(write=[home]), cwd=home)
    assert process.stdout is not None
    await eventually(lambda: _state(process.pid) == "S", "it waits for its input", 30)

    sandbox.forget(process)  # the connection closes; the child never got its input

    await eventually(lambda: _state(process.pid) is None, "the host killed it", 10)
    assert await asyncio.wait_for(process.stdout.read(), 10) == b""
    assert await asyncio.wait_for(process.wait(), 10) == -signal.SIGKILL


def _state(pid: int) -> str | None:
    """The process's state letter (S sleeping, T stopped), None once it is gone or a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    state = fields["State"].strip()[0]
    return None if state in "ZX" else state
