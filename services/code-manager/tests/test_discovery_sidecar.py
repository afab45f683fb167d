"""The Kubernetes shape of discovery: its children run in a sandbox container of their own.

There the code-manager does not start them: it asks the container's program
(``python -m praxis_runtime.spawner --listen ...``, with no Secret mounted, confined once its
socket is bound) through the socket (``DISCOVERY_SOCKET``). Here that program is a process
started the same way, with an environment holding nothing, and ``Discovery`` uses a
``RemoteSandbox``: a normal tree is discovered; a hostile one reaches no secret, neither the
code-manager's nor the sandbox's, cannot have a sibling started outside its confinement, leaves
nothing running, and delays no other tree (pausing and resuming go through the host); nothing
but discovery is started; a code-manager that leaves takes its children with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from praxis_code_manager import app
from praxis_code_manager.discovery import Discovery, DiscoveryLimits
from praxis_runtime import landlock
from praxis_runtime.confine import Confinement
from praxis_runtime.spawner import RemoteSandbox, SpawnRefused

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(
        landlock.abi_version() < 1 and os.environ.get("CI", "").lower() not in ("1", "true"),
        reason="Landlock is not available on this kernel",
    ),
]

CHILD = "praxis_code_manager.discovery_child"
MODULE_SECONDS = 2.0
SECRET = "the-discovery-sidecar-must-never-see-this"
GOOD = """
from praxis_sdk import protocol_function


@protocol_function(version="1.0.0")
async def {name}(volume: float = 1.0) -> float:
    return volume
"""
LOOPS = "while True:\n    pass\n"

# What a hostile module tries at import; the outcomes go into the error it raises, which the
# source's problems show.
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

def ask_for_a_sibling():
    # A discovery child that may read everything, started beside this one.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect({socket_path!r})
        read_end, write_end = os.pipe()
        request = {{
            "op": "spawn",
            "module": {child!r},
            "args": [],
            "confinement": json.loads({wide!r}),
            "cwd": {sibling!r},
        }}
        fds = [read_end, write_end, write_end]
        socket.send_fds(sock, [json.dumps(request).encode() + b"\\n"], fds)
        return sock.recv(4096).decode()

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
    "service_environ": attempt(lambda: read("/proc/{service_pid}/environ")),
    "host_environ": attempt(lambda: read("/proc/{host_pid}/environ")),
    "parent_environ": attempt(lambda: read(f"/proc/{{os.getppid()}}/environ")),
    "secret_file": attempt(lambda: read({secret_file!r})),
    "write_outside": attempt(lambda: write({outside!r})),
    "sibling": attempt(ask_for_a_sibling),
    "daemon": leave_a_process_behind(),
    "environ": sorted(os.environ),
    "values": sorted(os.environ.values()),
}}
raise RuntimeError("PROBE" + json.dumps(report))
"""


class Sidecar:
    def __init__(self, folder: Path) -> None:
        self.trees = folder / "trees"
        self.scratch = folder / "scratch"
        self.socket = folder / "sandbox" / "sandbox.sock"
        for made in (self.trees, self.scratch, self.socket.parent):
            made.mkdir()
        argv = [sys.executable, "-m", "praxis_runtime.spawner", "--listen", str(self.socket)]
        argv += ["--module", CHILD, "--read", str(self.trees), "--write", str(self.scratch)]
        env = {"PATH": os.defpath, "HOME": str(self.scratch), "LANG": "C.UTF-8"}
        self.process = subprocess.Popen(argv, env=env, start_new_session=True)

    def discovery(self, concurrency: int = 2) -> Discovery:
        limits = DiscoveryLimits(timeout=MODULE_SECONDS, concurrency=concurrency)
        return Discovery(limits, RemoteSandbox(self.socket), self.scratch)

    def tree(self, files: dict[str, str]) -> Path:
        root = self.trees / uuid.uuid4().hex[:12]
        for relative, text in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text(text)
        return root

    def children(self) -> dict[int, str]:
        """The host's children (in this PID namespace here; another one in a pod): state."""
        found = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = _status(int(entry.name))
                if fields.get("PPid") == str(self.process.pid):
                    found[int(entry.name)] = fields.get("State", "?")[:1]
        return found


@pytest.fixture
def sidecar() -> Iterator[Sidecar]:
    folder = Path(tempfile.mkdtemp(prefix="discovery-"))  # a socket path has 108 bytes at most
    sidecar = Sidecar(folder)
    try:
        yield sidecar
    finally:
        sidecar.process.kill()
        sidecar.process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def name() -> str:
    return f"p_{uuid.uuid4().hex[:10]}"


async def test_a_normal_tree_is_discovered_through_the_sidecar(sidecar: Sidecar) -> None:
    good = name()
    root = sidecar.tree({"protos/good.py": GOOD.format(name=good)})

    found = await sidecar.discovery().discover(root, "source@commit")

    assert [f.qualname for f in found.functions] == [good] and found.problems == []
    assert list(sidecar.scratch.iterdir()) == []  # its scratch folder went with it
    assert sidecar.children() == {}


async def test_a_hostile_tree_is_contained_and_delays_no_other(
    sidecar: Sidecar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eventually: Any
) -> None:
    """Concurrency 1: the looping trees take turns (SIGSTOP, SIGCONT, sent by the host on
    the code-manager's word), a normal tree registered after them runs at once."""
    monkeypatch.setenv("PRAXIS_TEST_DISCOVERY_SECRET", SECRET)  # the code-manager's environment
    secret_file = tmp_path / "credentials.json"
    secret_file.write_text(json.dumps({"password": SECRET}))
    outside = tmp_path / "written-by-discovery"
    sibling = sidecar.scratch / "sibling"
    wide = Confinement(read=("/",), write=(str(sibling),), landlock=True).to_json()
    probe = PROBE.format(
        socket_path=str(sidecar.socket),
        child=CHILD,
        wide=wide,
        sibling=str(sibling),
        service_pid=os.getpid(),
        host_pid=sidecar.process.pid,
        secret_file=str(secret_file),
        outside=str(outside),
    )
    discovery = sidecar.discovery(concurrency=1)
    hostile = sidecar.tree(
        {
            "protos/a_probe.py": probe,
            "protos/b_loops.py": LOOPS,
            "protos/c_good.py": GOOD.format(name=name()),
        }
    )
    loops = [sidecar.tree({"protos/loops.py": LOOPS}) for _ in range(2)]
    tasks = [
        asyncio.create_task(discovery.discover(root, f"hostile{i}@commit"))
        for i, root in enumerate([hostile, *loops])
    ]
    await eventually(lambda: len(sidecar.children()) >= 3, "three children started", 30)
    await eventually(lambda: "T" in sidecar.children().values(), "one paused through the host", 10)

    good = name()
    started = time.monotonic()
    found = await discovery.discover(
        sidecar.tree({"protos/good.py": GOOD.format(name=good)}), "good@commit"
    )
    took = time.monotonic() - started

    assert [f.qualname for f in found.functions] == [good] and found.problems == []
    assert took < 10.0, f"the normal tree waited {took:.1f} s behind the looping ones"
    results = await asyncio.wait_for(asyncio.gather(*tasks), 120)

    problems = {p.module: p.error for p in results[0].problems}
    assert set(problems) == {"protos.a_probe", "protos.b_loops"}, problems
    assert len(results[0].functions) == 1  # its good module still counts
    assert "running time" in problems["protos.b_loops"]
    report = json.loads(problems["protos.a_probe"].partition("PROBE")[2])
    for attempt in (
        "service_environ",
        "host_environ",
        "parent_environ",
        "secret_file",
        "write_outside",
    ):
        assert report[attempt].startswith("refused"), (attempt, report[attempt])
    answer = report["sibling"]
    assert '"error"' in answer and '"pid"' not in answer, answer  # refused, or never reached
    assert not sibling.exists() and not outside.exists()
    assert set(report["environ"]) <= {"PATH", "HOME", "LANG", "TMPDIR", "LC_CTYPE"}
    assert SECRET not in json.dumps(report)
    for result in results[1:]:
        (problem,) = result.problems
        assert "running time" in problem.error, problem
    # The process the probe left behind (double fork, new session) was killed by the host.
    await eventually(lambda: not _alive(report["daemon"]), "the stray was killed", 10)
    assert sidecar.children() == {}


async def test_a_module_not_on_the_allow_list_is_refused(sidecar: Sidecar) -> None:
    sandbox = RemoteSandbox(sidecar.socket)
    home = sidecar.scratch / "other"
    with pytest.raises(SpawnRefused, match="not one this sandbox runs"):
        await sandbox.spawn(
            "praxis_runtime.spawner", ["--help"], sandbox.confinement(write=[home]), cwd=home
        )
    assert not home.exists() and sidecar.children() == {}


async def test_a_code_manager_that_leaves_takes_its_children_with_it(
    sidecar: Sidecar, eventually: Any
) -> None:
    sandbox = RemoteSandbox(sidecar.socket)
    home = sidecar.scratch / "waiting"
    process = await sandbox.spawn(
        CHILD, [], sandbox.confinement(read=[sidecar.trees], write=[home]), cwd=home
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.pid in sidecar.children()  # it waits for its request

    sandbox.forget(process)  # the connection closes, as when the code-manager goes away

    await eventually(lambda: sidecar.children() == {}, "the host killed it", 10)
    assert await asyncio.wait_for(process.stdout.read(), 10) == b""
    assert await asyncio.wait_for(process.wait(), 10) < 0
    assert sidecar.process.poll() is None  # the host serves on
    process.stdin.close()


def test_with_a_discovery_socket_no_local_sandbox_is_set_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A node without Landlock does not refuse the code-manager then: the container is the
    boundary, and discovery goes to it."""

    def refuse(*_: Any) -> None:
        raise AssertionError("a local sandbox was set up")

    used: list[Discovery] = []
    real = Discovery

    def recording(*args: Any) -> Discovery:
        used.append(real(*args))
        return used[-1]

    monkeypatch.setattr(app, "Sandbox", refuse)
    monkeypatch.setattr(app, "Discovery", recording)
    settings = app.Settings(
        protocol_repo_dir=tmp_path / "repos",
        discovery_socket=tmp_path / "sandbox.sock",
        discovery_scratch_dir=tmp_path / "scratch",
    )
    app.build_app(settings)
    (discovery,) = used
    assert isinstance(discovery.sandbox, RemoteSandbox)
    assert discovery.sandbox.socket_path == tmp_path / "sandbox.sock"
    assert discovery.scratch == tmp_path / "scratch"


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _alive(pid: int) -> bool:
    state = _status(pid).get("State", "Z")
    return not state.startswith(("Z", "X"))
