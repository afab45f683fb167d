"""Untrusted code runs in sandboxed child processes that hold no secret and cannot reach one.

Protocol modules are imported at discovery (code-manager) and protocols run (orchestrator) in
children spawned here, never in a service. What keeps a child away from the service's
credentials, in layers:

- **Nothing is given**: an explicit environment (no ``DATABASE_URL``, no NATS login, no token),
  a working folder of its own, no inherited descriptor but the ones named.
- **Another user** when the service runs as root (``SANDBOX_UID``, default 65534): the
  service's 0600 files (credentials, secrets) are not readable, its ``/proc/<pid>`` neither,
  and the child has no capability.
- **Landlock** (``praxis_runtime.landlock``, applied by the child itself before any untrusted
  import, ``praxis_runtime.confine``): it reads only the interpreter, its libraries and the
  folders it was given, writes only its scratch folder, opens no TCP connection (so it could
  not log in to NATS or PostgreSQL even with a password), signals nothing outside its domain.
- **The services are not dumpable** (``harden``): a process of the same user cannot read their
  memory or ``/proc/<pid>/environ``.
- **Limits**: address space, CPU seconds, file size, open files, processes; its own session, so
  the whole process group is killed with it, and the service is a *subreaper*: a process the
  child left behind (a double fork, ``setsid``) is adopted by the service and killed
  (``kill_strays``), recognised by the no-new-privileges flag every confined process carries.

A kernel without Landlock leaves only the first two layers; ``SANDBOX_REQUIRE_LANDLOCK`` (on by
default) then refuses to start a service that would run untrusted code. In Kubernetes the
children also run in a container of their own, with no Secret mounted (``deploy/k8s``: the
orchestrator's ``zygote``, the code-manager's ``sandbox``, where ``praxis_runtime.spawner``
starts them with ``start_confined`` as ``Sandbox.spawn`` does here). What uses a sandbox sees
it as a ``Spawner``: this module's ``Sandbox``, or the spawner's ``RemoteSandbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from praxis_runtime import landlock
from praxis_runtime.confine import Confinement
from praxis_runtime.settings import SandboxedSettings

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
NOBODY = 65534
SYSTEM_READ = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/share/zoneinfo",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
)
"""What an interpreter needs beyond its own folders: shared libraries, time zones, devices that
hold nothing."""


class SandboxRefused(RuntimeError):
    """The sandbox cannot give the protection this deployment asks for."""


class Child(Protocol):
    """A sandboxed child as its service uses it: ``asyncio.subprocess.Process`` when spawned
    here, ``praxis_runtime.spawner.RemoteProcess`` when spawned in a container of its own."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdin(self) -> asyncio.StreamWriter | None: ...
    @property
    def stdout(self) -> asyncio.StreamReader | None: ...
    @property
    def stderr(self) -> asyncio.StreamReader | None: ...
    async def wait(self) -> int: ...


class Spawner(Protocol):
    """What starts, signals and ends sandboxed children: ``Sandbox`` (here) or
    ``praxis_runtime.spawner.RemoteSandbox`` (in another container of the pod)."""

    def describe(self) -> str: ...
    def confinement(
        self,
        *,
        read: Iterable[Path] = (),
        write: Iterable[Path] = (),
        memory_mb: int = 1024,
        cpu_seconds: int = 3600,
        processes: int = 64,
    ) -> Confinement: ...
    async def spawn(
        self,
        module: str,
        args: Sequence[str],
        confinement: Confinement,
        *,
        cwd: Path,
        stdin: int = ...,
        stdout: int = ...,
        stderr: int = ...,
        limit: int = ...,
    ) -> Child: ...
    def signal(self, process: Child | int, sig: int) -> None: ...
    def kill(self, process: Child) -> None: ...
    def forget(self, process: Child) -> None: ...


class Sandbox:
    """Spawns confined children for one service; see the module's docstring."""

    def __init__(self, settings: SandboxedSettings | None = None) -> None:
        settings = settings or SandboxedSettings()
        self.abi = landlock.abi_version()
        self.root = os.geteuid() == 0
        uid, gid = settings.sandbox_uid, settings.sandbox_gid
        self.uid = (uid if uid is not None else NOBODY) if self.root else None
        self.gid = (gid if gid is not None else self.uid) if self.root else None
        if self.abi < 1 and settings.sandbox_require_landlock:
            raise SandboxRefused(
                "this kernel has no Landlock: untrusted code could read this service's files. "
                "Run on Linux 5.13 or newer with Landlock enabled (lsm=...,landlock), or set "
                "SANDBOX_REQUIRE_LANDLOCK=false where the code runs in a container of its own "
                "with no Secret mounted"
            )
        if self.uid is not None:
            _reachable(_interpreter_paths())
        self._children: set[int] = set()
        become_subreaper()  # what a child leaves behind is adopted here, and killed

    def describe(self) -> str:
        """One line on the protections in force (logged at start-up)."""
        layers = [f"user {self.uid}" if self.uid is not None else "the service's user"]
        if self.abi >= 1:
            parts = (
                ["files"]
                + (["TCP"] if self.abi >= 4 else [])
                + (["signals"] if self.abi >= 6 else [])
            )
            layers.append(f"Landlock ABI {self.abi} ({', '.join(parts)})")
        else:
            layers.append("no Landlock")
        return ", ".join(layers)

    def confinement(
        self,
        *,
        read: Iterable[Path] = (),
        write: Iterable[Path] = (),
        memory_mb: int = 1024,
        cpu_seconds: int = 3600,
        processes: int = 64,
    ) -> Confinement:
        """The confinement of a child reading ``read`` and writing ``write`` (its scratch)."""
        given = [str(p) for p in read]
        if self.uid is not None:
            _reachable(given)  # e.g. a tree under a 0700 temporary folder
        readable = [*_interpreter_paths(), *SYSTEM_READ, *given]
        return Confinement(
            read=tuple(dict.fromkeys(readable)),
            write=tuple(str(p) for p in write),
            memory_mb=memory_mb,
            cpu_seconds=cpu_seconds,
            processes=processes if self.uid is not None else None,
            landlock=self.abi >= 1,
        )

    async def spawn(
        self,
        module: str,
        args: Sequence[str],
        confinement: Confinement,
        *,
        cwd: Path,
        pass_fds: Sequence[int] = (),
        **streams: Any,
    ) -> asyncio.subprocess.Process:
        """Start ``python -m module args`` confined; ``streams`` are ``stdin``/``stdout``/
        ``stderr`` (and ``limit``) for ``asyncio.create_subprocess_exec``. ``cwd`` should be
        one of its write folders (its home)."""
        process = await start_confined(
            module,
            args,
            confinement,
            cwd=cwd,
            uid=self.uid,
            gid=self.gid,
            pass_fds=pass_fds,
            **streams,
        )
        self._children.add(process.pid)
        return process

    def signal(self, process: Child | int, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (pausing, resuming, killing)."""
        kill_group(process if isinstance(process, int) else process.pid, sig)

    def kill(self, process: Child) -> None:
        """Kill the child's whole process group at once (no clean-up of any kind)."""
        self.signal(process, signal.SIGKILL)

    def forget(self, process: Child) -> None:
        """The child was reaped: kill its group and whatever it left behind."""
        self.kill(process)
        self._children.discard(process.pid)
        kill_strays(self._children)


async def start_confined(
    module: str,
    args: Sequence[str],
    confinement: Confinement,
    *,
    cwd: Path,
    uid: int | None = None,
    gid: int | None = None,
    pass_fds: Sequence[int] = (),
    **streams: Any,
) -> asyncio.subprocess.Process:
    """``python -m praxis_runtime.confine <confinement> module args``: its write folders made
    (private; owned by ``uid`` when it runs as that user), nothing of this process's
    environment (``child_environment``), a session of its own (its group is killed with it), no
    descriptor but ``streams`` and ``pass_fds``. How ``Sandbox.spawn`` starts a child, and the
    spawner's host (``praxis_runtime.spawner``) in a sandbox container."""
    argv = [sys.executable, "-I", "-B", "-u", "-m", "praxis_runtime.confine"]
    argv += [confinement.to_json(), module, *args]
    identity: dict[str, Any] = {}
    if uid is not None:
        identity = {"user": uid, "group": gid, "extra_groups": []}
    for folder in confinement.write:
        _own(Path(folder), uid, gid)
    spawn: Any = asyncio.create_subprocess_exec  # ``identity`` and ``streams`` are Popen's
    process: asyncio.subprocess.Process = await spawn(
        *argv,
        env=child_environment(cwd),
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
        pass_fds=tuple(pass_fds),
        **identity,
        **streams,
    )
    return process


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group ``pid`` leads (a child started in a session of its own);
    nothing if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def own_confinement(
    *, read: Iterable[Path] = (), write: Iterable[Path] = (), memory_mb: int, cpu_seconds: int
) -> Confinement:
    """The confinement of a process that confines itself (``confine.apply``): a sandbox
    container's own program, the zygote in Kubernetes, which has no service to spawn it. No
    user switch (the container's user is its own); the rest as ``Sandbox.confinement``."""
    readable = [*_interpreter_paths(), *SYSTEM_READ, *(str(p) for p in read)]
    return Confinement(
        read=tuple(dict.fromkeys(readable)),
        write=tuple(str(p) for p in write),
        memory_mb=memory_mb,
        cpu_seconds=cpu_seconds,
        landlock=landlock.abi_version() >= 1,
    )


def child_environment(home: Path) -> dict[str, str]:
    """Only what an interpreter needs: nothing of the service's configuration or secrets."""
    return {"PATH": os.defpath, "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(home)}


def harden() -> None:
    """Make this service process unreadable to processes of its own user: no
    ``/proc/<pid>/mem`` or ``environ``, no ptrace (every service, at start)."""
    _prctl(PR_SET_DUMPABLE, 0)


def become_subreaper() -> None:
    """Adopt orphaned descendants (a double fork, ``setsid``) instead of init, so
    ``kill_strays`` can find them."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        log.warning("prctl(%d, %d) failed: %s", option, value, os.strerror(ctypes.get_errno()))


def kill_strays(live: Iterable[int] = ()) -> list[int]:
    """Kill (and reap) this process's children that are confined (their no-new-privileges
    flag says so) but not among ``live``: what a sandboxed child left running after it ended,
    adopted here because the service is a subreaper. The pids killed."""
    keep, me, killed = set(live), os.getpid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in keep:
            continue
        status = _status(int(entry.name))
        if status.get("PPid") != str(me) or status.get("NoNewPrivs") != "1":
            continue
        pid = int(entry.name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    for pid in killed:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    if killed:
        log.warning("killed %d processes sandboxed code left behind: %s", len(killed), killed)
    return killed


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(
        (key, value.strip())
        for key, _, value in (line.partition(":") for line in text.splitlines())
    )


def _interpreter_paths() -> list[str]:
    """The interpreter's folders and every import path (site-packages, the workspace's
    sources): what a child needs to start Python and import the SDK and PyLabRobot."""
    paths = [sys.prefix, sys.base_prefix, str(Path(sys.executable).parent)]
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    return list(dict.fromkeys(os.path.realpath(p) for p in paths))


def _reachable(paths: Iterable[str]) -> None:
    """Let the sandbox user walk to the interpreter (root's home is 0700 on many machines):
    only the traverse bit is added to folders that lack it, never read."""
    bits = stat.S_IXOTH
    for path in paths:
        for folder in (Path(path), *Path(path).parents):
            with contextlib.suppress(OSError):
                mode = folder.stat().st_mode
                if stat.S_ISDIR(mode) and not mode & bits:
                    folder.chmod(mode | bits)
                    log.info("made %s traversable for the sandbox user (o+x)", folder)


def _own(folder: Path, uid: int | None, gid: int | None) -> None:
    """Create the scratch folder, owned by the sandbox user, private to it."""
    folder.mkdir(parents=True, exist_ok=True)
    if uid is not None:
        os.chown(folder, uid, gid if gid is not None else uid)
    folder.chmod(0o700)
    if uid is not None:
        _reachable([str(folder.parent)])
