"""The sandbox against real attempts: a confined child (as root here, and once as the service's
own user, as a non-root deployment runs it) reads no secret, writes nowhere but its scratch
folder, opens no TCP connection, signals nothing outside, and leaves nothing running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from praxis_runtime import landlock
from praxis_runtime.sandbox import Sandbox, kill_strays
from praxis_runtime.settings import SandboxedSettings

pytestmark = pytest.mark.skipif(
    landlock.abi_version() < 1 and os.environ.get("CI", "").lower() not in ("1", "true"),
    reason="Landlock is not available on this kernel",
)

SECRET = "the-sandbox-must-not-see-this"
PROBE = """
import json, os, socket, sys

def attempt(what):
    try:
        return "got: " + str(what())[:200]
    except Exception as exc:
        return "refused: " + type(exc).__name__

def read(path):
    with open(path) as f:
        return f.read()

def write(path):
    with open(path, "w") as f:
        f.write("x")
    return "written"

def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return "connected"

args = json.loads(sys.argv[1])
print(json.dumps({
    "secret": attempt(lambda: read(args["secret"])),
    "parent_environ": attempt(lambda: read(f"/proc/{os.getppid()}/environ")),
    "parent_memory": attempt(lambda: read(f"/proc/{args['parent']}/mem")),
    "signal_parent": attempt(lambda: os.kill(args["parent"], 0)),
    "write_outside": attempt(lambda: write(args["outside"])),
    "write_scratch": attempt(lambda: write(os.path.join(args["scratch"], "mine.txt"))),
    "read_given": attempt(lambda: read(args["given"])),
    "connect": attempt(lambda: connect(args["port"])),
    "environ": sorted(os.environ),
    "uid": os.getuid(),
}))
"""


async def probe(sandbox: Sandbox, tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"password": SECRET}))
    secret.chmod(0o600)
    given = tmp_path / "given"
    given.mkdir()
    (given / "probe.py").write_text(textwrap.dedent(PROBE))
    (given / "data.txt").write_text("readable")
    scratch = tmp_path / "scratch"
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    args = {
        "secret": str(secret),
        "parent": os.getpid(),
        "outside": str(tmp_path / "outside.txt"),
        "scratch": str(scratch),
        "given": str(given / "data.txt"),
        "port": server.sockets[0].getsockname()[1],
    }
    confinement = sandbox.confinement(read=[given], write=[scratch], memory_mb=512)
    try:
        process = await sandbox.spawn(
            str(given / "probe.py"),
            [json.dumps(args)],
            confinement,
            cwd=scratch,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        server.close()
    assert process.returncode == 0, err.decode()
    sandbox.forget(process)
    report: dict[str, Any] = json.loads(out)
    report["outside_written"] = (tmp_path / "outside.txt").exists()
    return report


def check(report: dict[str, Any]) -> None:
    for attempt in ("secret", "parent_environ", "parent_memory", "write_outside", "connect"):
        assert report[attempt].startswith("refused"), (attempt, report[attempt])
    if landlock.abi_version() >= 6:  # signals outside the domain: scoped from ABI 6
        assert report["signal_parent"].startswith("refused"), report["signal_parent"]
    assert report["write_scratch"] == "got: written"
    assert report["read_given"] == "got: readable"
    assert set(report["environ"]) <= {"PATH", "HOME", "LANG", "TMPDIR", "LC_CTYPE"}
    assert not report["outside_written"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a root service: children switch user")
async def test_a_child_of_a_root_service_runs_as_another_user_and_is_confined(
    tmp_path: Path,
) -> None:
    sandbox = Sandbox()
    report = await probe(sandbox, tmp_path)
    assert report["uid"] == sandbox.uid != 0
    check(report)


async def test_a_child_of_the_services_own_user_is_confined_by_landlock_alone(
    tmp_path: Path,
) -> None:
    """How a non-root deployment runs it (the child cannot switch user): Landlock alone keeps
    the service's files, memory and network from it. Here even as root, without a capability
    dropped, Landlock refuses what it does not allow."""
    sandbox = Sandbox()
    sandbox.uid = sandbox.gid = None  # the service's own user
    report = await probe(sandbox, tmp_path)
    assert report["uid"] == os.getuid()
    check(report)


def test_without_landlock_a_service_refuses_to_start_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from praxis_runtime import sandbox as module

    monkeypatch.setattr(module.landlock, "abi_version", lambda: 0)
    with pytest.raises(module.SandboxRefused, match="no Landlock"):
        Sandbox()
    accepted = Sandbox(SandboxedSettings(sandbox_require_landlock=False))
    assert "no Landlock" in accepted.describe()
    assert not accepted.confinement().landlock


async def test_what_a_child_leaves_behind_is_killed(tmp_path: Path) -> None:
    sandbox = Sandbox()
    script = tmp_path / "given" / "daemon.py"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            """
            import os, time
            first = os.fork()
            if first == 0:
                os.setsid()
                if os.fork() == 0:
                    while True:
                        time.sleep(1)
                os._exit(0)
            os.waitpid(first, 0)
            """
        )
    )
    scratch = tmp_path / "scratch"
    process = await sandbox.spawn(
        str(script), [], sandbox.confinement(read=[script.parent], write=[scratch]), cwd=scratch
    )
    assert await asyncio.wait_for(process.wait(), 60) == 0
    left = [pid for pid in _children() if pid != process.pid]
    assert left, "the daemon was not adopted by this (subreaper) process"

    sandbox.forget(process)

    assert not set(left) & set(_children())
    assert kill_strays() == []


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = Path(f"/proc/{entry.name}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields["PPid"].strip() == me and fields.get("NoNewPrivs", "").strip() == "1":
                found.append(int(entry.name))
    return found


def test_the_service_is_not_readable_by_its_own_user_once_hardened(tmp_path: Path) -> None:
    """``harden`` (every service at start): a process of the same user, without privileges,
    cannot read the service's environment. Checked between two processes of another user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run both processes as another user")
    code = textwrap.dedent(
        """
        import os, sys, time
        from praxis_runtime.sandbox import harden
        harden()
        print("ready", flush=True)
        time.sleep(30)
        """
    )
    service = _as_nobody([sys.executable, "-c", code], env={"PRAXIS_SECRET": SECRET})
    assert service.stdout is not None
    assert service.stdout.readline().strip() == b"ready"
    try:
        reader = _as_nobody(
            [sys.executable, "-c", f"print(open('/proc/{service.pid}/environ').read())"]
        )
        out, err = reader.communicate(timeout=30)
        assert reader.returncode != 0 and b"PermissionError" in err
        assert SECRET.encode() not in out
    finally:
        service.send_signal(signal.SIGKILL)
        service.wait()


def _as_nobody(argv: list[str], env: dict[str, str] | None = None) -> Any:
    import subprocess

    base = {"PATH": os.defpath, **(env or {})}
    return subprocess.Popen(
        argv,
        user=65534,
        group=65534,
        extra_groups=[],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_landlock_abi_is_known() -> None:
    assert landlock.abi_version() >= 0
    assert socket.AF_INET  # the probe above needs sockets
