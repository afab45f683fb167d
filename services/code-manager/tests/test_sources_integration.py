"""Source policy, deletion, secrets by reference and out-of-process discovery, against real git
repositories, NATS and PostgreSQL (the code-manager runs in-process: a protocol module that took
the service down would take this test process with it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from praxis_code_manager.app import Settings, build_app
from praxis_contracts.base import Empty
from praxis_contracts.errors import NotFound, SourceRefused, SourceSyncFailed
from praxis_contracts.protocols import (
    DeleteProtocolSource,
    ListProtocolDefinitions,
    ListProtocolSources,
    ProtocolSource,
    ProtocolSourceSynced,
    RegisterProtocolSource,
    ResolveProtocol,
)
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_runtime.bus import Bus

pytestmark = pytest.mark.integration

SYNC_TIMEOUT = 60.0
TIMEOUT = 3.0  # per module: the looping module costs this much
SECRET = "s3cr3t-token-do-not-show"
REPO_ROOT = Path(__file__).resolve().parents[3]  # this checkout: "another repository on the host"

GOOD = """
from praxis_sdk import protocol_function


@protocol_function(version="1.0.0")
async def {name}(volume: float = 1.0) -> float:
    print("protocol output is not a discovery report")
    return volume
"""
BAD = {
    "exits": "import os\nos._exit(3)\n",
    "loops": "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile 1:\n    pass\n",
    "hogs": "hog = bytearray(2 * 1024**3)\n",
}


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secrets")
    (folder / "token").write_text(SECRET)
    return folder


@pytest.fixture(scope="module")
async def code_manager(
    nats_url: str,
    make_database: MakeDatabase,
    tmp_path_factory: pytest.TempPathFactory,
    services: Any,
    local_sources: dict[str, Any],
    secrets_dir: Path,
) -> Any:
    settings = Settings(
        nats_url=nats_url,
        database_url=make_database("cm_sources"),
        protocol_repo_dir=tmp_path_factory.mktemp("code-manager-sources"),
        health_port=None,
        graceful_timeout_seconds=5,
        discovery_timeout_seconds=TIMEOUT,
        discovery_memory_mb=512,
        source_secrets_dir=secrets_dir,
        **local_sources,
    )
    return await services(build_app, settings)


@pytest.fixture
async def cm(code_manager: Any, client: Bus) -> Bus:
    return client


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, int]]:
    """A TCP port on loopback that records whether anything connected to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock, sock.getsockname()[1]
    sock.close()


def source_name() -> str:
    return f"src-{uuid.uuid4().hex[:10]}"


def protocol_name() -> str:
    return f"p_{uuid.uuid4().hex[:10]}"


async def register(cm: Bus, **fields: Any) -> ProtocolSource:
    return await cm.request(RegisterProtocolSource(**fields), timeout=SYNC_TIMEOUT)


async def named(cm: Bus, name: str) -> list[ProtocolSource]:
    page = await cm.request(ListProtocolSources(filters={"limit": 500}))
    return [s for s in page.items if s.name == name]


def mirrors(code_manager: Any) -> set[str]:
    folder = code_manager.settings.protocol_repo_dir / "mirrors"
    return set(os.listdir(folder)) if folder.exists() else set()


# -- Part A: the policy ------------------------------------------------------------------------
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "file URL of another repository": ({"url": f"file://{REPO_ROOT}"}, "outside_roots"),
    "path of another repository": ({"url": str(REPO_ROOT)}, "outside_roots"),
    "filesystem outside the roots": ({"kind": "filesystem", "url": "/etc/apt"}, "outside_roots"),
    "http on loopback": ({"url": "http://127.0.0.1:{port}/repo.git"}, "scheme"),
    "https on loopback": ({"url": "https://127.0.0.1:{port}/repo.git"}, "address"),
    "scp-like on loopback": ({"url": "git@127.0.0.1:repo.git"}, "address"),
    "cloud metadata": ({"url": "https://169.254.169.254/latest"}, "address"),
    "ext transport": ({"url": "ext::sh -c touch% {marker}"}, "transport_helper"),
    "option injection": ({"url": "--upload-pack=touch {marker}"}, "option"),
    "option as ref": ({"url": "{repo}", "ref": "--output={marker}"}, "option"),
    "bad ref": ({"url": "{repo}", "ref": "main..x"}, "ref"),
    "bad commit": ({"url": "{repo}", "commit": "HEAD~1"}, "ref"),
    "password in URL": ({"url": "https://u:p@github.com/o/r.git"}, "credentials_in_url"),
    "unknown secret": ({"url": "{repo}", "credentials_ref": "file:nope"}, "credentials_ref"),
    "secret outside dir": ({"url": "{repo}", "credentials_ref": "file:../x"}, "credentials_ref"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_refused_source_is_a_422_naming_the_rule_and_leaves_nothing(
    code_manager: Any,
    cm: Bus,
    git_repo: Any,
    tmp_path: Path,
    listener: tuple[socket.socket, int],
    case: str,
) -> None:
    fields, rule = REFUSED[case]
    sock, port = listener
    marker = tmp_path / "pwned"
    git_repo.commit({"protos/good.py": GOOD.format(name=protocol_name())})
    values = {"port": port, "marker": marker, "repo": git_repo.url}
    fields = {k: v.format(**values) for k, v in fields.items()}
    name, before = source_name(), mirrors(code_manager)

    with pytest.raises(SourceRefused) as refused:
        await register(cm, name=name, **fields)

    assert refused.value.details["rule"] == rule
    assert refused.value.message.startswith(f"{rule}: ")
    assert await named(cm, name) == []
    assert mirrors(code_manager) == before
    assert not marker.exists()
    with pytest.raises(BlockingIOError):  # nothing connected to loopback
        sock.accept()
    reused = await register(cm, name=name, url=git_repo.url)
    assert reused.status == "synced"


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder outside SOURCE_ALLOWED_ROOTS (the session's temporary folder), beside it."""
    folder = Path(tempfile.mkdtemp(prefix="outside-", dir=tmp_path_factory.getbasetemp().parent))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def commit_symlink(git_repo: Any, name: str, target: str) -> str:
    (git_repo.path / name).parent.mkdir(parents=True, exist_ok=True)
    (git_repo.path / name).symlink_to(target)
    git_repo.repo.index.add([name])
    commit = git_repo.repo.index.commit("link", author=git_repo.AUTHOR, committer=git_repo.AUTHOR)
    return str(commit.hexsha)


def gitfile_out(tmp_path: Path, outside: Path, git_repo: Any) -> str:
    """A folder under the roots whose ``.git`` file names a repository outside them."""
    shutil.move(git_repo.path / ".git", outside / "real.git")
    (tmp_path / "door").mkdir()
    (tmp_path / "door" / ".git").write_text(f"gitdir: {outside / 'real.git'}\n")
    return f"file://{tmp_path / 'door'}"


def alternates_out(tmp_path: Path, outside: Path, git_repo: Any) -> str:
    """A bare repository under the roots whose objects are lent from outside them."""
    lender = outside / "lender"
    shutil.copytree(git_repo.path, lender, symlinks=True)
    borrower = tmp_path / "borrower.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", "--shared", str(lender), str(borrower)], check=True
    )
    return str(borrower)


def symlink_out(tmp_path: Path, outside: Path, git_repo: Any) -> str:
    """A repository under the roots holding (and having checked out) a link to a secret."""
    (outside / "secret.txt").write_text(SECRET)
    commit_symlink(git_repo, "protos/leak.py", str(outside / "secret.txt"))
    return str(git_repo.path)


@pytest.mark.parametrize(
    "door", [gitfile_out, alternates_out, symlink_out], ids=lambda f: f.__name__
)
async def test_a_local_repository_leading_out_of_the_roots_is_refused_and_leaves_nothing(
    code_manager: Any, cm: Bus, git_repo: Any, tmp_path: Path, outside: Path, door: Any
) -> None:
    git_repo.commit({"protos/good.py": GOOD.format(name=protocol_name())})
    url = door(tmp_path, outside, git_repo)
    name, before = source_name(), mirrors(code_manager)
    (root,) = code_manager.settings.source_allowed_roots

    with pytest.raises(SourceRefused) as refused:
        await register(cm, name=name, url=url)

    assert refused.value.details["rule"] == "outside_roots"
    assert refused.value.message.startswith("outside_roots: ")
    assert f"SOURCE_ALLOWED_ROOTS ({root})" in refused.value.message
    assert SECRET not in refused.value.message
    assert await named(cm, name) == []
    assert mirrors(code_manager) == before


async def test_a_commit_holding_a_link_out_of_its_tree_fails_the_sync_cleanly(
    code_manager: Any, cm: Bus, git_repo: Any
) -> None:
    git_repo.commit({"protos/good.py": GOOD.format(name=protocol_name())})
    up = commit_symlink(git_repo, "protos/up", "../../..")  # still under the roots
    leak = commit_symlink(git_repo, "protos/leak", "/etc/passwd")
    git_repo.repo.index.remove(["protos/up", "protos/leak"], working_tree=True)
    git_repo.repo.index.commit("no links", author=git_repo.AUTHOR, committer=git_repo.AUTHOR)

    for commit, link in ((up, "protos/up -> ../../.."), (leak, "protos/leak -> /etc/passwd")):
        name = source_name()
        with pytest.raises(SourceSyncFailed) as failed:
            await register(cm, name=name, url=git_repo.url, commit=commit)

        assert link in failed.value.message
        (source,) = await named(cm, name)
        assert source.status == "failed"
        assert link in (source.error or "")
        page = await cm.request(ListProtocolDefinitions(source_id=source.accession_id))
        assert page.items == []


async def test_a_failed_source_can_be_deleted_and_its_name_reused(
    code_manager: Any, cm: Bus, git_repo: Any, tmp_path: Path
) -> None:
    name = source_name()
    with pytest.raises(SourceSyncFailed):
        await register(cm, name=name, url=str(tmp_path / "no-such-repo"))
    (failed,) = await named(cm, name)
    assert failed.status == "failed"

    assert await cm.request(DeleteProtocolSource(source_id=failed.accession_id)) == Empty()

    assert await named(cm, name) == []
    protocol = protocol_name()
    git_repo.commit({"protos/good.py": GOOD.format(name=protocol)})
    again = await register(cm, name=name, url=git_repo.url)
    assert (again.status, again.accession_id != failed.accession_id) == ("synced", True)


async def test_deleting_a_source_removes_its_definitions_and_mirror(
    code_manager: Any, cm: Bus, git_repo: Any
) -> None:
    protocol = protocol_name()
    git_repo.commit({"protos/good.py": GOOD.format(name=protocol)})
    source = await register(cm, name=source_name(), url=git_repo.url)
    assert f"{source.accession_id}.git" in mirrors(code_manager)

    await cm.request(DeleteProtocolSource(source_id=source.accession_id))

    page = await cm.request(ListProtocolDefinitions(source_id=source.accession_id))
    assert page.items == []
    with pytest.raises(NotFound):
        await cm.request(ResolveProtocol(protocol_name=protocol))
    assert f"{source.accession_id}.git" not in mirrors(code_manager)
    with pytest.raises(NotFound):
        await cm.request(DeleteProtocolSource(source_id=source.accession_id))


async def test_credentials_are_kept_by_reference_only(
    code_manager: Any, cm: Bus, git_repo: Any, tap: Any
) -> None:
    git_repo.commit({"protos/good.py": GOOD.format(name=protocol_name())})
    name = source_name()
    synced = await tap(ProtocolSourceSynced, where=lambda e: e.source.name == name)

    source = await register(cm, name=name, url=git_repo.url, credentials_ref="file:token")

    assert source.credentials_ref == "file:token"
    page = await cm.request(ListProtocolSources(filters={"limit": 500}))
    event = await synced.next()
    for shown in (source, page, event):
        assert SECRET not in shown.model_dump_json()
    url = code_manager.settings.database_url.get_secret_value()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT row_to_json(s)::text FROM code_manager.protocol_sources s")
            )
            stored = [r[0] for r in rows]
    finally:
        await engine.dispose()
    assert any("file:token" in r for r in stored)
    assert not any(SECRET in r for r in stored)


# -- Part B: discovery out of process ----------------------------------------------------------
@pytest.mark.parametrize("bad", sorted(BAD))
async def test_a_module_that_exits_loops_or_hogs_memory_is_a_problem_of_its_own(
    cm: Bus, git_repo: Any, bad: str
) -> None:
    good, after = protocol_name(), protocol_name()
    git_repo.commit(
        {
            "protos/a_good.py": GOOD.format(name=good),
            f"protos/b_{bad}.py": BAD[bad],
            "protos/c_after.py": GOOD.format(name=after),  # discovered after the bad one
        }
    )

    source = await register(cm, name=source_name(), url=git_repo.url)

    assert source.status == "synced"
    (problem,) = source.problems
    assert problem.module == f"protos.b_{bad}"
    expected = {"exits": "status 3", "loops": f"longer than {TIMEOUT:g} s", "hogs": "MemoryError"}
    assert expected[bad] in problem.error
    page = await cm.request(ListProtocolDefinitions(source_id=source.accession_id))
    assert sorted(d.spec.name for d in page.items) == sorted([good, after])
    assert (await cm.request(ResolveProtocol(protocol_name=good))).parameters == {"volume": 1.0}


async def test_discovery_sees_none_of_the_services_environment(
    cm: Bus, git_repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRAXIS_TEST_SECRET_VARIABLE", SECRET)
    good = protocol_name()
    git_repo.commit(
        {
            "protos/good.py": GOOD.format(name=good),
            "protos/env.py": "import json, os\nraise RuntimeError(json.dumps(dict(os.environ)))\n",
        }
    )

    source = await register(cm, name=source_name(), url=git_repo.url)

    (problem,) = source.problems
    seen = json.loads(problem.error.partition("RuntimeError: ")[2])
    assert set(seen) <= {"PATH", "HOME", "LANG", "TMPDIR", "LC_CTYPE"}
    assert SECRET not in problem.error
