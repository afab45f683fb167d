"""Git and filesystem adapter: fetch a source, resolve a commit, archive its tree.

git runs as a plain subprocess with an explicit environment: nothing of the service's own
(``DATABASE_URL``, NATS credentials) is inherited, no system or user git configuration is read,
and ``GIT_ALLOW_PROTOCOL`` holds git to the policy's transports, also on redirects (which are
off) and submodules. Credentials travel in the environment or a private temporary file, never in
the URL, the command line or an error message, and only to the host they were declared for: the
HTTP header is configured for that scheme, host and port alone, the SSH key in a ``Host`` block
of its own, every fetch names the source's URL (not whatever a mirror's ``origin`` says), and
commands that stay on this machine get no secret at all.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import os
import posixpath
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from praxis_contracts.errors import SourceSyncFailed

STDERR_LIMIT = 2000


@dataclass(frozen=True)
class GitAccess:
    """How git may reach a remote: allowed transports, an optional secret, a time limit."""

    protocols: str  # GIT_ALLOW_PROTOCOL, e.g. "https:ssh"
    timeout: float
    home: Path  # an empty HOME: no ~/.gitconfig, ~/.ssh of the service user
    secret: bytes | None = None
    scheme: str = "https"
    pin: str | None = None  # http.curloptResolve "host:port:address"
    host: str | None = None  # the host the secret is for: no other is ever offered it
    port: int | None = None

    def __post_init__(self) -> None:
        if self.secret is not None and not self.host:
            raise ValueError("a secret is given with the host it is for")

    def without_secret(self) -> GitAccess:
        """For commands that stay on this machine (rev-parse, archive): nothing to present."""
        return dataclasses.replace(self, secret=None)

    @contextlib.contextmanager
    def environment(self) -> Iterator[dict[str, str]]:
        self.home.mkdir(parents=True, exist_ok=True)
        config = {
            "protocol.file.allow": "always" if "file" in self.protocols.split(":") else "never",
            "http.followRedirects": "false",
            "submodule.recurse": "false",
        }
        if self.pin:
            config["http.curloptResolve"] = self.pin
        ssh = "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
        with contextlib.ExitStack() as stack:
            if self.secret is not None and self.host and self.scheme in ("http", "https"):
                token = self.secret.decode().strip()
                user_token = token if ":" in token else f"x-access-token:{token}"
                basic = base64.b64encode(user_token.encode()).decode()
                scope = http_scope(self.scheme, self.host, self.port)
                config[f"http.{scope}.extraHeader"] = f"Authorization: Basic {basic}"
            elif self.secret is not None and self.host:
                key = stack.enter_context(_private_file(self.home, self.secret))
                ssh_config = ssh_host_config(self.host, key).encode()
                hosts = stack.enter_context(_private_file(self.home, ssh_config))
                ssh += f" -o IdentitiesOnly=yes -F {shlex.quote(str(hosts))}"
            env = {
                "PATH": os.environ.get("PATH", os.defpath),
                "HOME": str(self.home),
                "LANG": "C",
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_ALLOW_PROTOCOL": self.protocols,
                "GIT_PROTOCOL_FROM_USER": "0",
                "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
                "GIT_HTTP_LOW_SPEED_TIME": str(max(1, int(self.timeout))),
                "GIT_SSH_COMMAND": ssh,
                "GIT_CONFIG_COUNT": str(len(config)),
            }
            for i, (key_, value) in enumerate(config.items()):
                env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key_, value
            yield env

    def run(self, *args: str, cwd: Path | None = None) -> bytes:
        """``git args``; raises ``SourceSyncFailed`` with git's (scrubbed) error on failure."""
        with self.environment() as env:
            process = subprocess.Popen(
                ["git", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own group: a timeout kills ssh/remote-https too
            )
            try:
                out, err = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise SourceSyncFailed(
                    f"git {args[0]} took longer than {self.timeout:.0f} s"
                ) from exc
        if process.returncode != 0:
            raise SourceSyncFailed(self.scrub(err.decode(errors="replace").strip()))
        return out

    def scrub(self, text: str) -> str:
        if self.secret:
            for token in {self.secret.decode(errors="replace").strip(), *self.secret.split()}:
                if token:
                    text = text.replace(str(token), "***")
        return text[-STDERR_LIMIT:]


def http_scope(scheme: str, host: str, port: int | None) -> str:
    """The URL git's ``http.<url>.*`` settings apply to: this scheme, host and port only (git
    compares the host exactly, and a port left out as the scheme's default)."""
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}{f':{port}' if port else ''}/"


def ssh_host_config(host: str, key: Path) -> str:
    """An ssh_config that offers ``key`` to ``host`` alone (``%`` is ssh's token sign)."""
    path = str(key).replace("%", "%%")
    return f'Host {host}\n    IdentityFile "{path}"\n    IdentitiesOnly yes\n'


@contextlib.contextmanager
def _private_file(folder: Path, content: bytes) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(dir=folder, prefix=".key-")  # mode 0600
    try:
        os.write(fd, content if content.endswith(b"\n") else content + b"\n")
        os.close(fd)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


class GitMirror:
    """A bare mirror of one remote repository under ``path``.

    A local path is cloned with ``--no-local``: through git's transport, as a remote would be,
    rather than git copying the object folder file by file, which would carry over the
    repository's alternates (objects lent from elsewhere) into the mirror for good. Fetches
    name ``url`` (the source's URL as checked now), never the mirror's ``origin``."""

    def __init__(self, path: Path, url: str, access: GitAccess) -> None:
        self.path = path
        self.url = url
        self.access = access

    def fetch(self) -> None:
        try:
            if not (self.path / "HEAD").exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(self.path, ignore_errors=True)
                self.access.run("clone", "--mirror", "--no-local", "--", self.url, str(self.path))
            else:
                self.access.run("fetch", "--prune", "--", self.url, "+refs/*:refs/*", cwd=self.path)
        except SourceSyncFailed as exc:
            raise SourceSyncFailed(f"git fetch of {self.url} failed: {exc.message}") from exc

    def resolve(self, rev: str) -> str:
        """The full sha of ``rev``; a full sha is not trusted until git has the commit."""
        try:
            out = self.access.without_secret().run(
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{rev}^{{commit}}",
                cwd=self.path,
            )
        except SourceSyncFailed as exc:
            raise SourceSyncFailed(f"{self.url} has no commit or ref {rev!r}") from exc
        return out.decode().strip()

    def archive(self, commit: str) -> bytes:
        try:
            return self.access.without_secret().run(
                "archive", "--format=tar", commit, cwd=self.path
            )
        except SourceSyncFailed as exc:
            raise SourceSyncFailed(f"cannot archive {self.url} at {commit}: {exc.message}") from exc


def archive_folder(folder: Path) -> tuple[str, bytes]:
    """A filesystem source: (content hash standing in for a commit, tar of the tree).

    Files whose real path leaves the folder (symlinks out of it) are left out. A file that
    cannot be read is a failed sync, not an error of the service's."""
    if not folder.is_dir():
        raise SourceSyncFailed(f"{folder} is not a directory")
    try:
        return _archive_folder(folder)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Path.resolve)
        raise SourceSyncFailed(f"cannot read {folder}: {exc}") from exc


def _archive_folder(folder: Path) -> tuple[str, bytes]:
    root = folder.resolve()
    digest = hashlib.sha1()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts):
            if not path.resolve().is_relative_to(root):
                continue
            rel = path.relative_to(folder).as_posix()
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + data)
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return digest.hexdigest(), buffer.getvalue()


def links_leaving(members: list[tarfile.TarInfo]) -> list[str]:
    """``name -> target`` of each link (or entry) in an archive that leads out of its tree: an
    absolute target, or one whose ``..`` climb above the top. Read as written (before anything
    is unpacked), so what it reports does not depend on what was unpacked first."""
    leaving = []
    for member in members:
        name = posixpath.normpath(member.name)
        target = name
        if member.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        elif member.islnk():
            target = posixpath.normpath(member.linkname)
        if any(p.startswith("/") or p == ".." or p.startswith("../") for p in (name, target)):
            link = f" -> {member.linkname[:200]}" if member.issym() or member.islnk() else ""
            leaving.append(f"{member.name[:200]}{link}")
    return leaving


def extract(archive: bytes, target: Path) -> Path:
    """Unpack an archive into ``target`` atomically (a finished target is reused as is).

    A tree holding a link out of itself (``leak -> /etc/passwd``, ``up -> ../..``) is a failed
    sync naming the links, checked before anything is unpacked; whatever else the unpacking
    refuses is one too, and leaves nothing behind."""
    if target.exists():
        return target
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        leaving = links_leaving(members)
        if leaving:
            shown = ", ".join(leaving[:5]) + (
                f" and {len(leaving) - 5} more" if len(leaving) > 5 else ""
            )
            raise SourceSyncFailed(f"the tree holds links leading out of it: {shown}")
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            tar.extractall(staging, members=members, filter="data")
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise SourceSyncFailed(f"cannot unpack the tree: {exc}") from exc
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process finished first
    return target
