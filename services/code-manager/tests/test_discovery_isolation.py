"""Discovery of hostile modules: they reach no secret, write nowhere, leave nothing running, and
delay no other source. Real git repositories, NATS, PostgreSQL and sandboxed children."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import git
import pytest

from praxis_code_manager.app import Settings, build_app
from praxis_contracts.errors import SourceSyncFailed
from praxis_contracts.protocols import ProtocolSource, RegisterProtocolSource
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_runtime.bus import Bus

pytestmark = pytest.mark.integration

MODULE_SECONDS = 4.0
SECRET = "discovery-must-never-see-this"
GOOD = """
from praxis_sdk import protocol_function


@protocol_function(version="1.0.0")
async def {name}(volume: float = 1.0) -> float:
    return volume
"""
LOOPS = "while True:\n    pass\n"

# Everything a hostile module tries at import; each attempt's outcome goes into the error it
# raises, which the source's ``problems`` show to any reader.
PROBE = """
import json, os, socket

def attempt(what):
    try:
        return "got: " + str(what())[:300]
    except Exception as exc:
        return "refused: " + type(exc).__name__

def read(path):
    with open(path) as f:
        return f.read()

def write(path):
    with open(path, "w") as f:
        f.write("x")
    return "written"

def connect():
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    return "connected"

def leave_a_process_behind():
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        second = os.fork()
        if second == 0:
            import time
            while True:
                time.sleep(1)
        os.write(write_end, str(second).encode())
        os._exit(0)
    os.waitpid(first, 0)
    return int(os.read(read_end, 32))

report = {{
    "parent_environ": attempt(lambda: read(f"/proc/{{os.getppid()}}/environ")),
    "service_environ": attempt(lambda: read("/proc/{service_pid}/environ")),
    "service_memory": attempt(lambda: read("/proc/{service_pid}/mem")),
    "secret_file": attempt(lambda: read("{secret_file}")),
    "write_outside": attempt(lambda: write("{outside}")),
    "write_tmp": attempt(lambda: write("/tmp/praxis-discovery-was-here")),
    "write_home": attempt(lambda: write(os.path.join(os.environ["HOME"], "scratch.txt"))),
    "connect": attempt(connect),
    "daemon": leave_a_process_behind(),
    "environ": sorted(os.environ),
}}
raise RuntimeError("PROBE" + json.dumps(report))
"""


@pytest.fixture(scope="module")
async def code_manager(
    nats_url: str,
    make_database: MakeDatabase,
    tmp_path_factory: pytest.TempPathFactory,
    services: Any,
    local_sources: dict[str, Any],
) -> Any:
    settings = Settings(
        nats_url=nats_url,
        database_url=make_database("cm_isolation"),
        protocol_repo_dir=tmp_path_factory.mktemp("code-manager-isolation"),
        health_port=None,
        graceful_timeout_seconds=5,
        discovery_timeout_seconds=MODULE_SECONDS,
        discovery_concurrency=2,
        **local_sources,
    )
    return await services(build_app, settings)


@pytest.fixture
async def cm(code_manager: Any, client: Bus) -> Bus:
    return client


def name() -> str:
    return f"p_{uuid.uuid4().hex[:10]}"


async def register(cm: Bus, url: str) -> ProtocolSource:
    request = RegisterProtocolSource(name=f"src-{uuid.uuid4().hex[:10]}", url=url)
    return await cm.request(request, timeout=300)


async def test_a_hostile_module_reaches_no_secret_writes_nowhere_and_leaves_nothing(
    cm: Bus, git_repo: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRAXIS_TEST_DISCOVERY_SECRET", SECRET)  # in the service's environment
    secret_file = tmp_path / "credentials.json"
    secret_file.write_text(json.dumps({"password": SECRET}))
    secret_file.chmod(0o600)
    outside = tmp_path / "written-by-discovery"
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    good = name()
    probe = PROBE.format(
        port=port, service_pid=os.getpid(), secret_file=secret_file, outside=outside
    )
    git_repo.commit({"protos/good.py": GOOD.format(name=good), "protos/probe.py": probe})

    try:
        source = await register(cm, git_repo.url)
    finally:
        listener.close()

    (problem,) = source.problems
    report = json.loads(problem.error.partition("PROBE")[2])
    for attempt in (
        "parent_environ",
        "service_environ",
        "service_memory",
        "secret_file",
        "write_outside",
        "write_tmp",
        "connect",
    ):
        assert report[attempt].startswith("refused"), (attempt, report[attempt])
    assert report["write_home"].startswith("got"), report  # its own scratch folder
    assert set(report["environ"]) <= {"PATH", "HOME", "LANG", "TMPDIR", "LC_CTYPE"}
    assert SECRET not in problem.error
    assert _nothing_written(outside, Path("/tmp/praxis-discovery-was-here"))
    # The process it left behind (double fork, new session) was killed with the child.
    assert not _alive(report["daemon"]), f"process {report['daemon']} still runs"


async def test_a_normal_source_is_discovered_at_once_behind_eight_looping_modules(
    cm: Bus, tmp_path: Path, eventually: Any
) -> None:
    """Eight sources whose modules loop at import are being discovered (each is given
    ``MODULE_SECONDS`` of running time); a source registered after them is discovered at
    once: it never waits for their turn to end."""
    hostile = []
    for index in range(8):
        repo = _repo(tmp_path / f"loop{index}", {"protos/loops.py": LOOPS})
        hostile.append(asyncio.create_task(register(cm, repo)))
    await eventually(lambda: len(_sandboxed_children()) >= 8, "eight children started", 60)
    good = name()
    repo = _repo(tmp_path / "good", {"protos/good.py": GOOD.format(name=good)})

    started = time.monotonic()
    source = await register(cm, repo)
    took = time.monotonic() - started

    assert source.status == "synced" and source.problems == []
    assert took < 10.0, f"the normal source waited {took:.1f} s behind the looping ones"
    for task in hostile:  # each hostile source fails on its own, after its own budget
        with pytest.raises(SourceSyncFailed) as failed:
            await task
        (problem,) = failed.value.details["problems"]
        assert "running time" in problem["error"], problem


def _repo(path: Path, files: dict[str, str]) -> str:
    repo = git.Repo.init(path, initial_branch="main")
    for relative, text in files.items():
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_text(text)
    repo.index.add(list(files))
    author = git.Actor("Praxis Tests", "tests@praxis.invalid")
    repo.index.commit("protocols", author=author, committer=author)
    return str(path)


def _nothing_written(*paths: Path) -> bool:
    return not any(path.exists() for path in paths)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" not in status


def _sandboxed_children() -> list[int]:
    """Processes of this test process that are confined (the no-new-privileges flag)."""
    me, found = str(os.getpid()), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry.name}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == me and fields.get("NoNewPrivs", "").strip() == "1":
            found.append(int(entry.name))
    return found
