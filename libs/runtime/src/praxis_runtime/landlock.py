"""Landlock (Linux 5.13+): a process restricts itself, with no privilege, to what it may touch.

Used by sandboxed children (``praxis_runtime.confine``) before they import untrusted code. A
ruleset *handles* kinds of access (everything we know of, at the kernel's ABI version); each
rule then allows some of them beneath one directory (or on one file). Whatever is handled and
not allowed is denied to the process and every process it starts, for good. Per ABI version:

1. files: execute, read, write, make, remove beneath allowed hierarchies only;
2. renaming or linking a file across hierarchies (``REFER``);
3. truncating;
4. TCP bind and connect (denied outright: no rule allows any port);
5. device ioctls;
6. scopes: no signal to a process outside the domain, no abstract Unix socket outside it.

Nested domains only narrow: a process forked from a confined one may confine itself further
(a run's own scratch folder inside the zygote's), never widen what it inherited.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterable
from pathlib import Path

_SYSCALLS = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}
"""The same numbers on every architecture (the generic syscall table)."""

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ = EXECUTE | READ_FILE | READ_DIR
"""What a read-only hierarchy allows: read files, list folders, run programs."""
WRITE = (
    READ
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SYM
    | MAKE_FIFO
    | MAKE_SOCK
    | REFER
    | TRUNCATE
)
"""What a scratch hierarchy allows: everything but devices."""
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
"""The rights that apply to a single file (the rest are about folders)."""


class LandlockUnavailable(OSError):
    """The kernel has no Landlock (too old, or not enabled at boot)."""


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 if Landlock is unavailable."""
    if platform.system() != "Linux":
        return 0
    libc = _libc()
    version = libc.syscall(
        _SYSCALLS["create_ruleset"], None, ctypes.c_size_t(0), CREATE_RULESET_VERSION
    )
    return max(0, int(version))


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    ]


def restrict(
    read: Iterable[Path],
    write: Iterable[Path],
    *,
    deny_network: bool = True,
    writes_only: bool = False,
) -> int:
    """Confine this process (and its future children) to reading ``read`` and reading and
    writing ``write``; no TCP (ABI 4+); no signals or abstract sockets outside (ABI 6+).
    Paths that do not exist are skipped. Returns the ABI version used.

    ``writes_only``: this layer handles only the kinds of writing (a nested domain that narrows
    where an already confined process may write, leaving what it may read to the outer one).

    Raises:
        LandlockUnavailable: the kernel has no Landlock.
        OSError: a Landlock call failed.
    """
    abi = abi_version()
    if abi < 1:
        raise LandlockUnavailable("Landlock is not available on this kernel")
    libc = _libc()
    fs = _fs_rights(abi) & (~READ if writes_only else ~0)
    attr = _RulesetAttr(
        handled_access_fs=fs,
        handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 and deny_network else 0,
        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = 8 if abi < 4 else (16 if abi < 6 else 24)  # the struct grew with the ABI
    ruleset = libc.syscall(_SYSCALLS["create_ruleset"], ctypes.byref(attr), size, 0)
    if ruleset < 0:
        raise _error("landlock_create_ruleset")
    try:
        for path, rights in [*((p, READ) for p in read), *((p, WRITE) for p in write)]:
            _allow(libc, ruleset, Path(path), rights & fs)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _error("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_SYSCALLS["restrict_self"], ruleset, 0) != 0:
            raise _error("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _allow(libc: ctypes.CDLL, ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        beneath = _PathBeneath(allowed_access=rights, parent_fd=fd)
        if libc.syscall(
            _SYSCALLS["add_rule"], ruleset, RULE_PATH_BENEATH, ctypes.byref(beneath), 0
        ):
            raise _error(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _error(call: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{call}: {os.strerror(errno)}")
