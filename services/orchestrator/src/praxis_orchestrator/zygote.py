"""The zygote: a warm, sandboxed process that forks one runner per run.

Started once per orchestrator (``praxis_orchestrator.isolation.Zygote``) in the service's sandbox
(``praxis_runtime.sandbox``: no credential, another user when root, Landlock: read the
interpreter and the protocol code cache, write its scratch folder, no network), it imports
PyLabRobot, the SDK and the adapters once, then waits on its control socket. For each run the
supervisor sends ``{"op": "fork", "run": id}`` with one end of a fresh socketpair (SCM_RIGHTS);
the zygote forks, answers with the child's pid, and the child:

- starts a session of its own (the supervisor kills its whole group),
- confines itself further (a nested Landlock domain: it may write only ``<scratch>/<run>``, and,
  from ABI 6, cannot signal the zygote or another run),
- serves its run (``praxis_orchestrator.runner``) over the socket it was given, then exits.

A fork costs milliseconds where a fresh interpreter importing PyLabRobot costs a second or more
(``make bench`` reports both). The zygote keeps no thread (forking is safe) and ignores
``SIGCHLD`` (its children are reaped at once: the supervisor learns a run's end from its channel).

Run as ``python -m praxis_orchestrator.zygote --fd N --scratch DIR`` (a socketpair end inherited
from the supervisor) or ``--listen PATH`` (a Unix socket in a shared folder: the Kubernetes
sidecar, a container of its own with no Secret mounted).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import importlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from praxis_runtime import landlock

PRELOAD = (
    "pylabrobot.resources",
    "pylabrobot.liquid_handling",
    "pylabrobot.plate_reading",
    "pylabrobot.heating_shaking",
    "pylabrobot.temperature_controlling",
    "pylabrobot.shaking",
    "praxis_sdk",
    "praxis_plr.live",
    "praxis_plr.remote",
    "praxis_orchestrator.runner",
)
MAX_REQUEST = 64 * 1024
RUN_CPU = 7 * 24 * 3600  # as ``isolation.RUN_CPU_SECONDS`` (not imported: nothing heavy here)


def preload() -> None:
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an optional hardware dependency: imported on demand instead
            print(f"zygote: could not preload {module}: {exc}", file=sys.stderr)


def receive(control: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request and the descriptors that came with it; ({}, []) when the supervisor left."""
    fds = array.array("i")
    data, ancillary, _, _ = control.recvmsg(MAX_REQUEST, socket.CMSG_LEN(4 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        return {}, list(fds)
    return json.loads(data), list(fds)


def serve(
    control: socket.socket,
    scratch: Path,
    runners: set[int] | None = None,
    reads: list[str] | None = None,
) -> None:
    """Fork a runner for every request until the supervisor closes the control socket; kill a
    runner's process group when asked (``{"op": "kill", "pid": N}``: only a runner of ours)."""
    runners = runners if runners is not None else set()
    while True:
        request, fds = receive(control)
        if not request:
            return
        if request.get("op") == "kill":
            for fd in fds:
                os.close(fd)
            pid = request.get("pid")
            killed = isinstance(pid, int) and pid in runners
            if killed and isinstance(pid, int):
                runners.discard(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            control.sendall(json.dumps({"killed": killed}).encode())
            continue
        run = str(request.get("run", ""))
        if request.get("op") != "fork" or len(fds) != 1 or not run.replace("-", "").isalnum():
            for fd in fds:
                os.close(fd)
            control.sendall(json.dumps({"error": "malformed fork request"}).encode())
            continue
        (channel,) = fds
        pid = os.fork()
        if pid == 0:
            control.close()
            _become_runner(channel, scratch / run, reads)
        os.close(channel)
        runners.add(pid)
        if len(runners) > 4096:  # long gone ones (reaped at once, SIGCHLD ignored)
            runners.intersection_update(_alive(runners))
        control.sendall(json.dumps({"pid": pid}).encode())


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.add(pid)
    return alive


def _become_runner(channel: int, scratch: Path, reads: list[str] | None) -> None:
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        scratch.mkdir(mode=0o700, exist_ok=True)
        os.chdir(scratch)
        os.environ["HOME"] = os.environ["TMPDIR"] = str(scratch)
        if landlock.abi_version() >= 1:
            # Nested: it may write only its own scratch folder; and, under a zygote that reads
            # /proc to check who connects (--listen), read only what a run needs.
            if reads is None:
                landlock.restrict(read=[], write=[scratch], writes_only=True)
            else:
                landlock.restrict(read=[Path(r) for r in reads], write=[scratch])
        from praxis_orchestrator.runner import run_child

        run_child(channel)
    finally:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m praxis_orchestrator.zygote")
    parser.add_argument("--fd", type=int, default=None, help="an inherited control socket")
    parser.add_argument("--listen", default=None, help="a Unix socket path to serve instead")
    parser.add_argument("--scratch", required=True, help="where runs get scratch folders")
    parser.add_argument("--code", default=None, help="--listen: the protocol code it reads")
    parser.add_argument("--memory-mb", type=int, default=4096, help="--listen: per process")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners are reaped at once
    scratch = Path(args.scratch)
    if args.fd is not None:  # spawned by the orchestrator's sandbox: already confined
        preload()
        serve(socket.socket(fileno=args.fd), scratch)
        return 0
    # The Kubernetes sidecar: a container of its own (no Secret mounted), listening on a
    # socket in a folder it shares with the orchestrator. It confines itself the way the
    # sandbox would have, once the socket is bound: reads the interpreter and the code, writes
    # only the runs' scratch folders, no TCP.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.listen)
    listener.bind(args.listen)
    listener.listen(1)
    from praxis_runtime.confine import apply
    from praxis_runtime.sandbox import own_confinement
    from praxis_runtime.spawner import descends_from, peer_pid

    code = [Path(args.code)] if args.code else []
    landlock.abi_version()  # looked up before confining (finding libc needs a temp folder)
    domain = own_confinement(
        read=[*code, Path("/proc")], write=[scratch], memory_mb=args.memory_mb, cpu_seconds=RUN_CPU
    )
    apply(domain)
    reads = [r for r in domain.read if r != "/proc"]
    preload()
    runners: set[int] = set()
    while True:  # one supervisor at a time; a new one (a restarted edge) takes over
        control, _ = listener.accept()
        with control:
            # A runner can reach the socket (Landlock does not confine connecting to a named
            # one): a connection from a process of ours is never a supervisor.
            if descends_from(peer_pid(control), os.getpid()):
                print("zygote: refused a connection from one of its runners", file=sys.stderr)
                continue
            serve(control, scratch, runners, reads)


if __name__ == "__main__":
    sys.exit(main())
