"""Offline checks of the Kubernetes base in deploy/k8s (no cluster, no kubectl/kustomize).

The kustomization is rendered by a deliberately tiny loader (``namespace`` + plain-file
``resources`` only); every document is validated against the Kubernetes OpenAPI schemas
shipped with ``kubernetes-validate`` and then checked against Praxis' deployment rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import kubernetes_validate
import pytest
import yaml

from praxis_contracts.permissions import identities, identity_for_service
from praxis_runtime.natsauth import NATS_AUTH_SECRET, NATS_CREDENTIALS_SECRET, permissions

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
NAMESPACE = "praxis"
IMAGE = "ghcr.io/praxis-lab/praxis:0.1.0"
# Oldest cluster minor we support + newest schema set the installed package ships.
KUBERNETES_VERSIONS = ("1.33", kubernetes_validate.latest_version())

SERVICES = {
    "scheduler": "praxis_scheduler",
    "code-manager": "praxis_code_manager",
    "asset-manager": "praxis_asset_manager",
    "gateway": "praxis_gateway",
    "orchestrator": "praxis_orchestrator",
}
DB_SERVICES = {"scheduler", "code-manager", "asset-manager"}
DB_SECRET = "praxis-database"
GATEWAY_SECRET = "praxis-gateway"
CONFIG_MAP = "praxis-config"
CONFIG = {
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
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
}


# --------------------------------------------------------------------------- loader


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Minimal ``kustomize build``: plain-file resources + the namespace transformer."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
    assert not unsupported, f"test loader does not understand {sorted(unsupported)}; extend it"
    namespace = kustomization.get("namespace")
    docs: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = directory / entry
        assert path.is_file(), f"resource {entry!r} must be a file in {directory}"
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if namespace and doc["kind"] not in CLUSTER_SCOPED_KINDS:
                doc["metadata"]["namespace"] = namespace
            docs.append(doc)
    return docs


DOCS = render_kustomization(K8S_DIR)


def doc_id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


def deployments() -> dict[str, dict[str, Any]]:
    return by_kind("Deployment")


def workloads() -> Iterator[dict[str, Any]]:
    yield from (d for d in DOCS if d["kind"] in {"Deployment", "StatefulSet"})


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The service's own container (named after it); a pod may have a sandbox beside it."""
    name = deployment["metadata"]["name"]
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def all_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for w in workloads():
        for c in containers(w):
            yield f"{doc_id(w)}:{c['name']}", w, c


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --------------------------------------------------------------------------- render + schema


def test_render_is_consistent() -> None:
    ids = [doc_id(d) for d in DOCS]
    assert len(ids) == len(set(ids)), f"duplicate objects: {ids}"
    assert "Namespace/praxis" in ids
    for doc in DOCS:
        if doc["kind"] not in CLUSTER_SCOPED_KINDS:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc_id(doc)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_schema_valid(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{doc_id(doc)} invalid for Kubernetes {version} at {where}: {exc.message}")


# --------------------------------------------------------------------------- inventory


def test_expected_workloads_exist() -> None:
    assert set(deployments()) == set(SERVICES)
    assert set(by_kind("StatefulSet")) == {"nats"}
    assert set(by_kind("ConfigMap")) == {CONFIG_MAP}
    assert set(by_kind("Secret")) == {
        DB_SECRET,
        NATS_AUTH_SECRET,
        NATS_CREDENTIALS_SECRET,
        GATEWAY_SECRET,
    }


def test_labels_and_selectors() -> None:
    pods = {}
    for w in workloads():
        template_labels = w["spec"]["template"]["metadata"]["labels"]
        for labels in (w["metadata"]["labels"], template_labels):
            assert labels["app.kubernetes.io/name"] == w["metadata"]["name"], doc_id(w)
            assert labels["app.kubernetes.io/part-of"] == "praxis", doc_id(w)
            assert labels.get("app.kubernetes.io/component"), doc_id(w)
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template_labels.items(), doc_id(w)
        pods[doc_id(w)] = w
    for svc in by_kind("Service").values():
        matched = [
            w
            for w in pods.values()
            if svc["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"Service/{svc['metadata']['name']} selects {len(matched)}"
        port_names = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (svc["metadata"]["name"], port)


# --------------------------------------------------------------------------- every container


def test_no_latest_or_untagged_images() -> None:
    for name, _, c in all_containers():
        image = c["image"]
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], f"{name}: {image}"
        assert not image.endswith(":latest"), f"{name}: {image}"
    for name, d in deployments().items():
        assert {c["image"] for c in containers(d)} == {IMAGE}, name


def test_probes() -> None:
    for name, _, c in all_containers():
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for kind in ("livenessProbe", "readinessProbe"):
            assert kind in c, f"{name} has no {kind}"
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            if kind in c and "httpGet" in c[kind]:
                port = c[kind]["httpGet"]["port"]
                assert port in ports or port in ports.values(), f"{name} {kind} port {port}"


def test_resources() -> None:
    for name, _, c in all_containers():
        resources = c.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{name} {bound}"


def test_security_context() -> None:
    for name, w, c in all_containers():
        pod_sc = w["spec"]["template"]["spec"].get("securityContext", {})
        sc = {**pod_sc, **c.get("securityContext", {})}  # container level wins
        assert sc.get("runAsNonRoot") is True, name
        assert sc.get("runAsUser") == 10001, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not sc.get("privileged"), name


def test_writable_paths_are_volumes() -> None:
    for name, w, c in all_containers():
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"].get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for mount_name in mounts.values():
            assert mount_name in volumes or mount_name in claims, f"{name}: {mount_name}"
        assert "/tmp" in mounts, f"{name}: read-only root fs needs an emptyDir at /tmp"
        assert "emptyDir" in volumes[mounts["/tmp"]], name


# --------------------------------------------------------------------------- deployments


def test_deployment_basics() -> None:
    for name, d in deployments().items():
        pod = d["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 30, name
        c = main_container(d)
        assert c["command"] == ["python", "-m", SERVICES[name]], name
        refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
        assert CONFIG_MAP in refs, f"{name} must load {CONFIG_MAP} with envFrom"


def test_configmap() -> None:
    assert by_kind("ConfigMap")[CONFIG_MAP]["data"] == CONFIG


def test_every_configmap_key_is_a_setting_some_service_reads() -> None:
    from praxis_asset_manager.app import Settings as AssetManager
    from praxis_code_manager.app import Settings as CodeManager
    from praxis_gateway.app import Settings as Gateway
    from praxis_orchestrator.app import Settings as Orchestrator
    from praxis_scheduler.app import Settings as Scheduler

    read = {
        name.upper()
        for settings in (AssetManager, CodeManager, Gateway, Orchestrator, Scheduler)
        for name in settings.model_fields
    }
    assert set(CONFIG) <= read, set(CONFIG) - read


def test_health_endpoints() -> None:
    for name, d in deployments().items():
        c = main_container(d)
        port = 8000 if name == "gateway" else 8080
        variable = "GATEWAY_PORT" if name == "gateway" else "HEALTH_PORT"
        assert env(c)[variable]["value"] == str(port), name
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            probe = c[kind]["httpGet"]
            assert probe["path"] == path, (name, kind)
            assert ports.get(probe["port"], probe["port"]) == port, (name, kind)


def test_gateway_service() -> None:
    svc = by_kind("Service")["gateway"]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 80
    c = main_container(deployments()["gateway"])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[port["targetPort"]] == 8000


def test_database_url_only_from_secret_and_only_where_needed() -> None:
    secret = by_kind("Secret")[DB_SECRET]
    assert set(secret.get("stringData", {}) | secret.get("data", {})) == {"DATABASE_URL"}
    for doc in DOCS:
        if doc["kind"] != "Secret":
            assert "DATABASE_URL" not in json.dumps(doc.get("data", {})), doc_id(doc)
    for name, d in deployments().items():
        pod = d["spec"]["template"]["spec"]
        c = main_container(d)
        if name in DB_SERVICES:
            var = env(c)["DATABASE_URL"]
            assert "value" not in var, f"{name}: DATABASE_URL must not be a literal"
            assert var["valueFrom"]["secretKeyRef"] == {"name": DB_SECRET, "key": "DATABASE_URL"}
        else:
            assert "DATABASE_URL" not in env(c), name
            assert DB_SECRET not in json.dumps(pod), f"{name} must not reference {DB_SECRET}"
    for name, _, c in all_containers():
        maybe = env(c).get("DATABASE_URL")
        assert maybe is None or "value" not in maybe, name


def test_code_manager_repo_dir() -> None:
    d = deployments()["code-manager"]
    c = main_container(d)
    assert env(c)["PROTOCOL_REPO_DIR"]["value"] == "/var/lib/praxis/repos"
    assert "/var/lib/praxis/repos" in {m["mountPath"] for m in c["volumeMounts"]}


def test_orchestrator_runs_once_on_its_workcell() -> None:
    d = deployments()["orchestrator"]
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    pod = d["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"praxis.dev/workcell": "demo"}
    assert {
        "key": "praxis.dev/edge",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    c = main_container(d)
    assert env(c)["PRAXIS_WORKCELL"]["value"] == "demo"
    cache_dir = env(c)["PROTOCOL_CODE_CACHE_DIR"]["value"]
    assert cache_dir == "/var/cache/praxis/code"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/var/cache/praxis" in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/cache/praxis"]]


def test_protocol_code_runs_in_a_container_holding_no_credential() -> None:
    """The zygote and the runs it forks: no Secret, no env from one, no service account
    token, only emptyDir volumes; the code read-only; the socket shared with the orchestrator
    at ZYGOTE_SOCKET; separate PID namespaces (runners are killed by the zygote)."""
    d = deployments()["orchestrator"]
    pod = d["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("shareProcessNamespace", False)
    (zygote,) = [c for c in pod["containers"] if c["name"] == "zygote"]
    assert zygote["command"][:3] == ["python", "-m", "praxis_orchestrator.zygote"]
    assert "envFrom" not in zygote
    assert all("valueFrom" not in e for e in zygote.get("env", []))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in zygote["volumeMounts"]}
    assert all(set(volumes[m["name"]]) == {"name", "emptyDir"} for m in mounts.values())
    assert mounts["/var/cache/praxis"].get("readOnly") is True
    main = main_container(d)
    socket_path = env(main)["ZYGOTE_SOCKET"]["value"]
    assert zygote["command"][zygote["command"].index("--listen") + 1] == socket_path
    main_mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    folder = socket_path.rsplit("/", 1)[0]
    assert main_mounts[folder] == mounts[folder]["name"]  # one volume, both containers
    assert (
        zygote["command"][zygote["command"].index("--scratch") + 1]
        == (env(main)["RUN_SCRATCH_DIR"]["value"])
    )


def test_discovery_runs_in_a_container_holding_no_credential() -> None:
    """The code-manager's sandbox and the discovery children it starts: no Secret, no env from
    one, no service account token, only emptyDir volumes; it may run discovery alone; the
    socket shared with the code-manager at DISCOVERY_SOCKET, the scratch folders at
    DISCOVERY_SCRATCH_DIR (one volume, the same path in both); the trees read-only and nothing
    else of the code-manager's (not its git mirrors or git's home, where keys are written)."""
    d = deployments()["code-manager"]
    pod = d["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("shareProcessNamespace", False)  # its children's pids are its own
    (sandbox,) = [c for c in pod["containers"] if c["name"] == "sandbox"]
    command = sandbox["command"]
    assert command[:3] == ["python", "-m", "praxis_runtime.spawner"]

    def options(flag: str) -> list[str]:
        return [command[i + 1] for i, word in enumerate(command) if word == flag]

    assert options("--module") == ["praxis_code_manager.discovery_child"]
    assert "envFrom" not in sandbox
    assert all("valueFrom" not in e for e in sandbox.get("env", []))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in sandbox["volumeMounts"]}
    assert all(set(volumes[m["name"]]) == {"name", "emptyDir"} for m in mounts.values())
    main = main_container(d)
    main_mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}

    (socket_path,) = options("--listen")
    assert env(main)["DISCOVERY_SOCKET"]["value"] == socket_path
    folder = socket_path.rsplit("/", 1)[0]
    assert main_mounts[folder] == mounts[folder]["name"]  # one volume, both containers
    (scratch,) = options("--write")
    assert env(main)["DISCOVERY_SCRATCH_DIR"]["value"] == scratch
    assert main_mounts[scratch] == mounts[scratch]["name"]
    assert not mounts[scratch].get("readOnly")
    (trees,) = options("--read")
    assert trees == env(main)["PROTOCOL_REPO_DIR"]["value"] + "/trees"
    assert main_mounts[trees] == mounts[trees]["name"] and mounts[trees]["readOnly"] is True
    shared = {m["name"] for m in mounts.values()} & set(main_mounts.values())
    assert shared == {main_mounts[folder], main_mounts[scratch], main_mounts[trees]}
    for kind in ("livenessProbe", "readinessProbe"):
        assert sandbox[kind]["exec"]["command"] == ["test", "-S", socket_path]


def test_provisioning_is_a_job_of_the_provisioner_identity_alone() -> None:
    (job,) = by_kind("Job").values()
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"][:3] == ["python", "-m", "praxis_runtime.provision"]
    assert c["command"][3:] == ["--workcell", "demo"]
    assert env(c)["NATS_USER"]["value"] == "provisioner"
    ref = env(c)["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": NATS_CREDENTIALS_SECRET, "key": "provisioner"}
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for name, d in deployments().items():
        assert env(main_container(d))["NATS_USER"]["value"] != "provisioner", name


# --------------------------------------------------------------------------- NATS


def test_nats() -> None:
    sts = by_kind("StatefulSet")["nats"]
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == "nats"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    repo, tag = c["image"].rsplit(":", 1)
    assert repo in {"nats", "docker.io/library/nats"}
    major, minor = (int(x) for x in tag.split("-")[0].split(".")[:2])
    assert (major, minor) >= (2, 12), c["image"]
    assert c["args"] == ["-c", "/etc/nats/auth/auth.conf", "-js", "-sd", "/data", "-m", "8222"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/nats/auth"]]["secret"]["secretName"] == NATS_AUTH_SECRET
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/data"] == claim["metadata"][
        "name"
    ]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for kind in ("livenessProbe", "readinessProbe"):
        probe = c[kind]["httpGet"]
        assert probe["path"] == "/healthz?js-enabled-only=true", kind
        assert ports.get(probe["port"], probe["port"]) == 8222, kind

    svc = by_kind("Service")["nats"]
    assert svc["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "client": 4222,
        "monitor": 8222,
    }
    assert CONFIG["NATS_URL"] == f"nats://{svc['metadata']['name']}:4222"


# --------------------------------------------------------------------------- NATS identities


def test_every_service_connects_to_nats_as_its_own_identity() -> None:
    passwords = by_kind("Secret")[NATS_CREDENTIALS_SECRET]["stringData"]
    for name, d in deployments().items():
        c = main_container(d)
        workcell = env(c).get("PRAXIS_WORKCELL", {}).get("value")
        identity = identity_for_service(name, workcell)
        assert env(c)["NATS_USER"]["value"] == identity, name
        password = env(c)["NATS_PASSWORD"]
        assert "value" not in password, f"{name}: NATS_PASSWORD must not be a literal"
        ref = {"name": NATS_CREDENTIALS_SECRET, "key": identity}
        assert password["valueFrom"]["secretKeyRef"] == ref, name
        assert identity in passwords, name
    assert "NATS_PASSWORD" not in CONFIG and "NATS_USER" not in CONFIG


def test_the_shipped_nats_authorization_is_the_declared_one() -> None:
    """secret-nats.yaml is regenerated, not edited: its permissions are what the generator
    makes of the declaration today, and each password matches its user's hash."""
    config = by_kind("Secret")[NATS_AUTH_SECRET]["stringData"]["auth.conf"]
    users = json.loads(config.split("authorization:", 1)[1])["users"]
    passwords = by_kind("Secret")[NATS_CREDENTIALS_SECRET]["stringData"]
    declared = identities(["demo"])
    assert [u["user"] for u in users] == [i.name for i in declared] == list(passwords)
    for user, identity in zip(users, declared, strict=True):
        assert user["permissions"] == permissions(identity), (
            f"{identity.name}: regenerate deploy/k8s/secret-nats.yaml with "
            "`python -m praxis_devstack nats-config --workcell demo --format k8s "
            "--placeholder-passwords --output deploy/k8s/secret-nats.yaml`"
        )
        assert bcrypt.checkpw(passwords[identity.name].encode(), user["password"].encode())
