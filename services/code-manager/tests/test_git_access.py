"""git as the code-manager runs it: real git, an explicit environment, the policy's transports."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from praxis_code_manager.git import GitAccess, GitMirror, archive_folder
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
    git = access(tmp_path, "https", secret=b"tok3n\n", scheme="https")
    with git.environment() as env:
        values = [env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))]
    expected = base64.b64encode(b"x-access-token:tok3n").decode()
    assert f"Authorization: Basic {expected}" in values
    assert git.scrub("fatal: could not read tok3n from x") == "fatal: could not read *** from x"


def test_an_ssh_key_lives_in_a_private_file_for_one_command(tmp_path: Path) -> None:
    git = access(tmp_path, "ssh", secret=b"-----BEGIN KEY-----", scheme="ssh")
    with git.environment() as env:
        key = Path(env["GIT_SSH_COMMAND"].rpartition(" -i ")[2])
        assert key.read_bytes() == b"-----BEGIN KEY-----\n"
        assert key.stat().st_mode & 0o077 == 0
    assert not key.exists()


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
