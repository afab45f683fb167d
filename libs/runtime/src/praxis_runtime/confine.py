"""The first code a sandboxed child runs: it confines itself, then becomes the program.

``python -I -B -u -m praxis_runtime.confine <confinement JSON> <module or file.py> [args ...]``,
spawned by ``praxis_runtime.sandbox``. Before anything untrusted is imported the process:

- dies with its parent (``PR_SET_PDEATHSIG``) and never gains privileges again
  (``PR_SET_NO_NEW_PRIVS``);
- takes its resource limits: address space, CPU seconds, file size, open files, processes (the
  last only when it runs as a user of its own), no core dumps;
- restricts itself with Landlock (``praxis_runtime.landlock``) to reading the interpreter, the
  libraries and the folders it was given, writing only its scratch folder, no TCP, and no
  signal or abstract socket outside its domain.

Then the module (or the script file) runs as ``__main__`` with ``args``. Nothing here imports
more than the standard library, so the confinement is in place before any third-party code runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import runpy
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from praxis_runtime import landlock

PR_SET_PDEATHSIG = 1
MB = 1024 * 1024


@dataclass(frozen=True)
class Confinement:
    """What a sandboxed child may touch and use."""

    read: tuple[str, ...] = ()
    """Hierarchies it may read (and run programs from)."""
    write: tuple[str, ...] = ()
    """Hierarchies it may read and write (its scratch folder)."""
    memory_mb: int = 1024
    cpu_seconds: int = 3600
    file_mb: int = 256
    open_files: int = 1024
    processes: int | None = None
    """``RLIMIT_NPROC``: only set when the child runs as a user of its own (the limit counts
    every process of its user)."""
    landlock: bool = True
    """Confine with Landlock; the spawn is refused where the kernel has none, unless the
    child's user is its own and the deployment accepts that (see ``SandboxSettings``)."""
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Confinement:
        raw = json.loads(text)
        raw["read"], raw["write"] = tuple(raw["read"]), tuple(raw["write"])
        return cls(**raw)


def apply(confinement: Confinement) -> None:
    """Confine this process for good (see the module's docstring)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the line above: follow it
        os._exit(1)
    limits = [
        (resource.RLIMIT_AS, confinement.memory_mb * MB),
        (resource.RLIMIT_CPU, confinement.cpu_seconds),
        (resource.RLIMIT_FSIZE, confinement.file_mb * MB),
        (resource.RLIMIT_NOFILE, confinement.open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if confinement.processes is not None:
        limits.append((resource.RLIMIT_NPROC, confinement.processes))
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        ceiling = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (ceiling, ceiling))
    if confinement.landlock:
        landlock.restrict(map(Path, confinement.read), map(Path, confinement.write))
    elif libc.prctl(landlock.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def main(argv: list[str]) -> None:
    confinement = Confinement.from_json(argv[1])
    apply(confinement)
    program, args = argv[2], argv[3:]
    sys.argv = [program, *args]
    if program.endswith(".py"):
        runpy.run_path(program, run_name="__main__")
    else:
        runpy.run_module(program, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
