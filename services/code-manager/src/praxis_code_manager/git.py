"""Git and filesystem adapter: fetch a source, resolve a commit, archive its tree."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import git

from praxis_contracts.errors import SourceSyncFailed


class GitMirror:
    """A bare mirror of one remote repository under ``path``."""

    def __init__(self, path: Path, url: str, timeout: float) -> None:
        self.path = path
        self.url = url
        self.env = {"GIT_TERMINAL_PROMPT": "0", "GIT_HTTP_LOW_SPEED_TIME": str(int(timeout))}
        self.timeout = timeout

    def fetch(self) -> git.Repo:
        try:
            if not (self.path / "HEAD").exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                return git.Repo.clone_from(
                    self.url, self.path, mirror=True, env=self.env, kill_after_timeout=self.timeout
                )
            repo = git.Repo(self.path)
            repo.git.fetch("--prune", "origin", "+refs/*:refs/*", kill_after_timeout=self.timeout)
            return repo
        except git.GitCommandError as exc:
            raise SourceSyncFailed(f"git fetch of {self.url} failed: {exc.stderr.strip()}") from exc

    def resolve(self, repo: git.Repo, rev: str) -> str:
        """The full sha of ``rev``; a full sha is not trusted until git has the commit."""
        try:
            return str(repo.git.rev_parse("--verify", "--quiet", f"{rev}^{{commit}}"))
        except git.GitCommandError as exc:
            raise SourceSyncFailed(f"{self.url} has no commit or ref {rev!r}") from exc

    def archive(self, repo: git.Repo, commit: str) -> bytes:
        buffer = io.BytesIO()
        try:
            repo.archive(buffer, commit, format="tar")
        except git.GitCommandError as exc:
            raise SourceSyncFailed(f"cannot archive {self.url} at {commit}: {exc.stderr}") from exc
        return buffer.getvalue()


def archive_folder(folder: Path) -> tuple[str, bytes]:
    """A filesystem source: (content hash standing in for a commit, tar of the tree)."""
    if not folder.is_dir():
        raise SourceSyncFailed(f"{folder} is not a directory")
    digest = hashlib.sha1()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts):
            rel = path.relative_to(folder).as_posix()
            digest.update(rel.encode() + b"\0" + path.read_bytes())
            tar.add(path, arcname=rel)
    return digest.hexdigest(), buffer.getvalue()


def extract(archive: bytes, target: Path) -> Path:
    """Unpack an archive into ``target`` atomically (a finished target is reused as is)."""
    if target.exists():
        return target
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(staging, filter="data")
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process finished first
    return target
