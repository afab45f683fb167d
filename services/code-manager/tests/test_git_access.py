"""git as the code-manager runs it: real git, an explicit environment, the policy's transports."""

from __future__ import annotations

import base64
import io
import shlex
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from praxis_code_manager.git import GitAccess, GitMirror, archive_folder, extract
from praxis_contracts.errors import SourceSyncFailed


def access(tmp_path: Path, protocols: str, **fields: Any) -> GitAccess:
    return GitAccess(protocols=protocols, timeout=30, home=tmp_path / "home", **fields)


def test_the_environment_is_explicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:password@db/praxis")
    monkeypatch.setenv("GIT_SSH_COMMAND", "touch /tmp/pwned")
    with access(tmp_path, "https:ssh").environment() as env:
        assert "DATABASE_URL" not in env
        assert env["GIT_SSH_COMMAND"].startswith("ssh -o BatchMode=yes")
        assert env["GIT_ALLOW_PROTOCOL"] == "https:ssh"
        config = {
            env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
            for i in range(int(env["GIT_CONFIG_COUNT"]))
        }
    assert config["protocol.file.allow"] == "never"
    assert config["http.followRedirects"] == "false"


def test_an_https_secret_is_a_header_never_in_the_url_or_errors(tmp_path: Path) -> None:
    git = access(tmp_path, "https", secret=b"tok3n\n", scheme="https", host="github.com")
    with git.environment() as env:
        config = {
            env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
            for i in range(int(env["GIT_CONFIG_COUNT"]))
        }
    expected = base64.b64encode(b"x-access-token:tok3n").decode()
    assert config["http.https://github.com/.extraHeader"] == f"Authorization: Basic {expected}"
    assert "http.extraHeader" not in config  # not for every host
    assert git.scrub("fatal: could not read tok3n from x") == "fatal: could not read *** from x"


def test_an_ssh_key_lives_in_a_private_file_for_one_command(tmp_path: Path) -> None:
    git = access(tmp_path, "ssh", secret=b"-----BEGIN KEY-----", scheme="ssh", host="github.com")
    with git.environment() as env:
        hosts = Path(shlex.split(env["GIT_SSH_COMMAND"])[-1])
        key = Path(hosts.read_text().split('"')[1])
        assert key.read_bytes() == b"-----BEGIN KEY-----\n"
        assert key.stat().st_mode & 0o077 == 0
        assert hosts.stat().st_mode & 0o077 == 0
    assert not key.exists()
    assert not hosts.exists()


def test_git_refuses_a_transport_the_policy_does_not_allow(tmp_path: Path, git_repo: Any) -> None:
    git_repo.commit({"a.py": "x = 1\n"})
    blocked = GitMirror(tmp_path / "m.git", f"file://{git_repo.path}", access(tmp_path, "https"))
    with pytest.raises(SourceSyncFailed, match="not allowed"):
        blocked.fetch()
    allowed = GitMirror(tmp_path / "ok.git", str(git_repo.path), access(tmp_path, "file"))
    allowed.fetch()
    assert len(allowed.resolve("HEAD")) == 40


def test_git_refuses_ext_even_if_it_got_past_the_policy(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    url = f"ext::sh -c touch% {marker}"
    mirror = GitMirror(tmp_path / "m.git", url, access(tmp_path, "https:ssh:file"))
    with pytest.raises(SourceSyncFailed):
        mirror.fetch()
    assert not marker.exists()


def test_a_folder_archive_leaves_out_links_out_of_it(tmp_path: Path) -> None:
    folder, outside = tmp_path / "folder", tmp_path / "secret.txt"
    folder.mkdir()
    outside.write_text("secret")
    (folder / "proto.py").write_text("x = 1\n")
    (folder / "leak.txt").symlink_to(outside)
    _, archive = archive_folder(folder)
    assert b"proto.py" in archive
    assert b"leak.txt" not in archive
    assert b"secret" not in archive


# -- secrets go to the source's host and no other ------------------------------------------------
@dataclass
class Recorder:
    """An HTTP server on loopback serving ``folder`` (a dumb-HTTP git repository, or nothing)
    and recording the Authorization header of every request it gets (None: none sent), by the
    host the request was for."""

    folder: Path
    redirect_to: str | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    @property
    def seen(self) -> list[str | None]:
        return [auth for _, auth in self.requests]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def recorders(tmp_path: Path) -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(folder: Path | None = None, redirect_to: str | None = None) -> Recorder:
        recorder = Recorder(folder or tmp_path, redirect_to)

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host", "").rpartition(":")[0]
                recorder.requests.append((host, self.headers.get("Authorization")))
                if recorder.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", recorder.redirect_to + self.path)
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=recorder.folder))
        recorder.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return recorder

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def served_repo(git_repo: Any, folder: Path, content: str) -> Path:
    """A bare copy of ``git_repo`` readable over dumb HTTP."""
    git_repo.commit({"a.py": content})
    subprocess.run(["git", "clone", "-q", "--bare", str(git_repo.path), str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "update-server-info"], check=True)
    return folder


def http_access(tmp_path: Path, recorder: Recorder, secret: bytes = b"tok3n") -> GitAccess:
    return access(
        tmp_path, "http", secret=secret, scheme="http", host="127.0.0.1", port=recorder.port
    )


def test_an_http_secret_goes_to_the_sources_host_and_port_alone(
    tmp_path: Path, recorders: Any
) -> None:
    source, other = recorders(), recorders()
    redirecting = recorders(redirect_to=other.url)
    git = http_access(tmp_path, source)
    header = "Basic " + base64.b64encode(b"x-access-token:tok3n").decode()

    with pytest.raises(SourceSyncFailed):
        git.run("ls-remote", f"{source.url}/repo.git")
    assert source.requests == [("127.0.0.1", header)]  # the declared host gets it

    for url in (
        f"{other.url}/repo.git",  # another port of the same address
        f"http://localhost:{source.port}/repo.git",  # another name for the same server
    ):
        with pytest.raises(SourceSyncFailed):
            git.run("ls-remote", url)
    with pytest.raises(SourceSyncFailed):  # a redirect is not followed
        http_access(tmp_path, redirecting).run("ls-remote", f"{redirecting.url}/repo.git")
    assert set(source.requests[1:]) <= {("localhost", None)}
    assert set(other.seen) <= {None}
    assert redirecting.seen == [header]  # its own secret, and nothing followed it


def test_a_changed_url_is_fetched_from_and_only_it_gets_the_secret(
    tmp_path: Path, recorders: Any, git_repo: Any
) -> None:
    first = recorders(served_repo(git_repo, tmp_path / "first" / "r.git", "x = 1\n").parent)
    second = recorders(served_repo(git_repo, tmp_path / "second" / "r.git", "x = 2\n").parent)
    mirror_path = tmp_path / "mirror.git"
    GitMirror(mirror_path, f"{first.url}/r.git", http_access(tmp_path, first, b"one")).fetch()
    first.requests.clear()

    moved = GitMirror(mirror_path, f"{second.url}/r.git", http_access(tmp_path, second, b"two"))
    moved.fetch()

    assert first.requests == []  # not the mirror's origin: the URL the source names now
    assert "Basic " + base64.b64encode(b"x-access-token:two").decode() in second.seen
    assert moved.resolve("main") == git_repo.repo.head.commit.hexsha


def test_an_ssh_key_is_offered_to_the_sources_host_alone(tmp_path: Path) -> None:
    git = access(tmp_path, "ssh", secret=b"-----BEGIN KEY-----", scheme="ssh", host="github.com")
    with git.environment() as env:
        ssh = shlex.split(env["GIT_SSH_COMMAND"])
        key = Path(ssh[-1]).read_text().split('"')[1]

        def identities(host: str) -> list[str]:
            out = subprocess.run([*ssh, "-G", host], env=env, capture_output=True, check=True)
            lines = out.stdout.decode().splitlines()
            return [line.split(" ", 1)[1] for line in lines if line.startswith("identityfile ")]

        assert key in identities("github.com")
        for other in ("gitlab.com", "github.com.evil.example", "140.82.121.4"):
            assert key not in identities(other)


def test_commands_that_stay_local_get_no_secret(
    tmp_path: Path, git_repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_repo.commit({"a.py": "x = 1\n"})
    mirror = GitMirror(tmp_path / "m.git", str(git_repo.path), access(tmp_path, "file"))
    mirror.fetch()
    mirror.access = access(
        tmp_path, "file", secret=b"-----BEGIN KEY-----", scheme="ssh", host="h.example"
    )
    secrets_seen: list[bytes | None] = []
    run = GitAccess.run

    def spy(self: GitAccess, *args: str, cwd: Path | None = None) -> bytes:
        secrets_seen.append(self.secret)
        return run(self, *args, cwd=cwd)

    monkeypatch.setattr(GitAccess, "run", spy)
    mirror.archive(mirror.resolve("main"))

    assert secrets_seen == [None, None]


# -- local repositories and trees --------------------------------------------------------------
def test_a_mirror_of_a_local_repository_keeps_none_of_its_alternates(
    tmp_path: Path, git_repo: Any
) -> None:
    git_repo.commit({"a.py": "x = 1\n"})
    borrower = tmp_path / "borrower.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", "--shared", str(git_repo.path), str(borrower)], check=True
    )
    assert (borrower / "objects" / "info" / "alternates").exists()

    mirror = GitMirror(tmp_path / "m.git", str(borrower), access(tmp_path, "file"))
    mirror.fetch()

    assert not (mirror.path / "objects" / "info" / "alternates").exists()
    assert b"a.py" in mirror.archive(mirror.resolve("main"))


def tar_of(*members: tuple[str, str | None]) -> bytes:
    """A tar of (name, symlink target or None for a small file)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, target in members:
            info = tarfile.TarInfo(name)
            if target is None:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"x\n"))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "link",
    [("protos/leak", "/etc/passwd"), ("protos/up", "../../.."), ("up", ".."), ("a/b", "../../x")],
)
def test_a_tree_with_a_link_out_of_it_is_a_failed_sync_leaving_nothing(
    tmp_path: Path, link: tuple[str, str]
) -> None:
    archive = tar_of(("protos/p.py", None), ("protos/fine", "p.py"), link)
    target = tmp_path / "trees" / "commit"

    with pytest.raises(SourceSyncFailed) as failed:
        extract(archive, target)

    assert f"{link[0]} -> {link[1]}" in failed.value.message
    assert not target.exists()
    assert list((tmp_path).rglob("*")) in ([], [tmp_path / "trees"])


def test_a_tree_with_links_inside_it_unpacks(tmp_path: Path) -> None:
    archive = tar_of(("protos/p.py", None), ("protos/same", "p.py"), ("top", "protos/../protos"))
    target = extract(archive, tmp_path / "tree")
    assert (target / "protos" / "same").read_text() == "x\n"


def test_a_committed_symlink_out_of_the_tree_fails_the_sync(tmp_path: Path, git_repo: Any) -> None:
    git_repo.commit({"protos/p.py": "x = 1\n"})
    (git_repo.path / "protos" / "leak").symlink_to("/etc/passwd")
    git_repo.repo.index.add(["protos/leak"])
    git_repo.repo.index.commit("leak", author=git_repo.AUTHOR, committer=git_repo.AUTHOR)
    mirror = GitMirror(tmp_path / "m.git", str(git_repo.path), access(tmp_path, "file"))
    mirror.fetch()
    archive = mirror.archive(mirror.resolve("main"))

    with pytest.raises(SourceSyncFailed, match=r"protos/leak -> /etc/passwd"):
        extract(archive, tmp_path / "tree")
