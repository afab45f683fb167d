"""``python -m praxis_runtime.secrets``: every Secret of a deployment, with random values the
services accept, kept across re-runs (a workcell added changes nothing else), files 0600."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import bcrypt
import pytest

from praxis_contracts.permissions import identities
from praxis_devstack.servers import SERVICE_SCHEMAS
from praxis_runtime.secrets import (
    DATABASE_ROLES_SECRET,
    DATABASE_SCHEMAS,
    GATEWAY_SECRET,
    Refused,
    database_role,
    database_secret,
    generate,
    nats_secret,
    scram_sha256_verifier,
)
from praxis_runtime.settings import (
    MIN_ADMIN_TOKEN_LENGTH,
    MIN_PASSWORD_LENGTH,
    DatabaseSettings,
    ServiceSettings,
    database_url,
    refuse_weak_secret,
)

yaml = pytest.importorskip("yaml")

ROUNDS = 4
"""bcrypt's lowest cost: the tests check hashes, not their strength."""

TEMPLATE = "postgresql+asyncpg://{user}:{password}@db.internal:5432/praxis"


def run(out: Path, *workcells: str, **options: Any) -> dict[str, dict[str, Any]]:
    """Generate into ``out``; the Secrets written, by name."""
    options = {"database_url_template": TEMPLATE, "rounds": ROUNDS, **options}
    generate(out, list(workcells), **options)
    return secrets_in(out)


def secrets_in(out: Path) -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((out / "secrets.yaml").read_text()))
    assert all(doc["apiVersion"] == "v1" and doc["kind"] == "Secret" for doc in docs)
    return {doc["metadata"]["name"]: doc for doc in docs}


def passwords_of(found: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every plain secret (NATS passwords, admin token, database passwords), by Secret."""
    values = {}
    for name, doc in found.items():
        data = doc["stringData"]
        if "password" in data:
            values[name] = data["password"]
        elif "admin-token" in data:
            values[name] = data["admin-token"]
        elif "url" in data:
            values[name] = unquote(urlsplit(data["url"]).password or "")
    return values


def auth_users(found: dict[str, dict[str, Any]]) -> dict[str, str]:
    """user -> bcrypt hash in ``auth.conf``."""
    conf = found["praxis-nats-auth"]["stringData"]["auth.conf"]
    body = json.loads(conf.split("authorization: ", 1)[1])
    return {user["user"]: user["password"] for user in body["users"]}


def test_every_secret_of_two_workcells(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    found = run(out, "w1", "w2", namespace="praxis")
    names = [i.name for i in identities(["w1", "w2"])]
    assert "orchestrator-w1" in names and "orchestrator-w2" in names
    assert set(found) == {
        "praxis-nats-auth",
        *(f"praxis-nats-{name}" for name in names),
        "praxis-gateway",
        "praxis-database-scheduler",
        "praxis-database-code-manager",
        "praxis-database-asset-manager",
        "praxis-database-audit",
        "praxis-database-roles",
    }
    keys = {name: set(doc["stringData"]) for name, doc in found.items()}
    assert keys["praxis-nats-auth"] == {"auth.conf"}
    assert keys["praxis-gateway"] == {"admin-token"}
    assert keys["praxis-database-roles"] == {"roles.sql"}
    assert all(keys[f"praxis-nats-{name}"] == {"password"} for name in names)
    assert all(keys[database_secret(s)] == {"url"} for s in DATABASE_SCHEMAS)
    for doc in found.values():
        assert doc["type"] == "Opaque"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "praxis"
        assert doc["metadata"]["namespace"] == "praxis"
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization == {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["secrets.yaml"],
    }


def test_the_secrets_are_valid_kubernetes_objects(tmp_path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in run(tmp_path / "out", "w1").values():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_no_namespace_unless_asked(tmp_path: Path) -> None:
    found = run(tmp_path / "out", "w1")
    assert all("namespace" not in doc["metadata"] for doc in found.values())


def test_values_are_random_distinct_and_accepted_by_the_services(tmp_path: Path) -> None:
    first = passwords_of(run(tmp_path / "a", "w1", "w2"))
    second = passwords_of(run(tmp_path / "b", "w1", "w2"))
    values = [*first.values(), *second.values()]
    assert len(set(values)) == len(values) == 2 * (10 + 1 + 4)
    for name, value in first.items():
        minimum = MIN_ADMIN_TOKEN_LENGTH if name == GATEWAY_SECRET else MIN_PASSWORD_LENGTH
        assert refuse_weak_secret(value, name, minimum) == value
    found = secrets_in(tmp_path / "a")
    nats = found[nats_secret("orchestrator-w1")]["stringData"]["password"]
    assert ServiceSettings(nats_user="orchestrator-w1", nats_password=nats)
    for service in DATABASE_SCHEMAS:
        url = found[database_secret(service)]["stringData"]["url"]
        assert urlsplit(url).username == database_role(service)
        assert urlsplit(url).hostname == "db.internal"
        assert database_url(DatabaseSettings(database_url=url)) == url


def test_auth_conf_holds_hashes_that_verify_against_the_passwords(tmp_path: Path) -> None:
    out = tmp_path / "out"
    found = run(out, "w1", "w2")
    users = auth_users(found)
    assert set(users) == {i.name for i in identities(["w1", "w2"])}
    for user, hashed in users.items():
        password = found[nats_secret(user)]["stringData"]["password"]
        assert password not in found["praxis-nats-auth"]["stringData"]["auth.conf"]
        assert bcrypt.checkpw(password.encode(), hashed.encode()), user
    assert (out / "nats-auth.conf").read_text() == found["praxis-nats-auth"]["stringData"][
        "auth.conf"
    ]


def test_roles_sql_creates_each_role_with_a_verifier_never_the_password(tmp_path: Path) -> None:
    found = run(tmp_path / "out", "w1")
    sql = found[DATABASE_ROLES_SECRET]["stringData"]["roles.sql"]
    assert "SET LOCAL password_encryption = 'scram-sha-256';" in sql
    for service, schema in DATABASE_SCHEMAS.items():
        role = database_role(service)
        assert f'CREATE ROLE "{role}" LOGIN;' in sql
        assert f'ALTER ROLE "{role}" PASSWORD \'SCRAM-SHA-256$4096:' in sql
        assert f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{role}";' in sql
    for name, password in passwords_of(found).items():
        assert password not in sql, name
    assert (tmp_path / "out" / "roles.sql").read_text() == sql


def test_the_roles_are_those_of_local_runs() -> None:
    """Same schemas and role names as ``praxis_devstack`` sets up (``make run``, the tests)."""
    assert DATABASE_SCHEMAS == SERVICE_SCHEMAS
    assert {database_role(s) for s in SERVICE_SCHEMAS} == {
        f"praxis_{schema}" for schema in SERVICE_SCHEMAS.values()
    }


def test_scram_verifier_answers_rfc_7677s_example_exchange() -> None:
    """RFC 7677's exchange (user ``user``, password ``pencil``): with the verifier a server
    stores, the client's proof checks out and the server signs as the RFC says."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_sha256_verifier("pencil", salt=salt)
    scheme, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    assert (scheme, iterations_salt) == ("SCRAM-SHA-256", "4096:W22ZaJ0SNY7soEsUEjb6gQ==")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    ).encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    signature = hmac.digest(stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = hmac.digest(server_key, auth_message, "sha256")
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_files_are_private(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    run(out, "w1")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    files = sorted(p.name for p in out.iterdir())
    assert files == ["kustomization.yaml", "nats-auth.conf", "roles.sql", "secrets.yaml"]
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_third_workcell_keeps_every_existing_password(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = passwords_of(run(out, "w1", "w2"))
    after_found = run(out, "w1", "w2", "w3")
    after = passwords_of(after_found)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {nats_secret("orchestrator-w3")}
    assert after[nats_secret("orchestrator-w3")] not in before.values()
    users = auth_users(after_found)
    assert "orchestrator-w3" in users
    assert bcrypt.checkpw(
        after[nats_secret("orchestrator-w3")].encode(), users["orchestrator-w3"].encode()
    )
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_new_database_template_keeps_the_database_passwords(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = passwords_of(run(out, "w1"))
    template = "postgresql+asyncpg://{user}:{password}@pg.other:6432/praxis"
    found = run(out, "w1", database_url_template=template)
    assert passwords_of(found) == before
    url = found[database_secret("scheduler")]["stringData"]["url"]
    assert urlsplit(url).hostname == "pg.other"


def test_rotate_replaces_every_value(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = passwords_of(run(out, "w1"))
    after = passwords_of(run(out, "w1", rotate=True))
    assert set(after) == set(before)
    assert not set(after.values()) & set(before.values())


def test_an_unlisted_workcell_is_kept_unless_pruned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out, "w1", "w2")
    with pytest.raises(Refused, match="w2: list them again"):
        run(out, "w1")
    found = run(out, "w1", prune=True)
    assert nats_secret("orchestrator-w2") not in found
    assert "orchestrator-w2" not in auth_users(found)


def test_a_placeholder_put_into_the_directory_is_not_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out, "w1")
    path = out / "secrets.yaml"
    text = path.read_text()
    found = secrets_in(out)
    token = found[GATEWAY_SECRET]["stringData"]["admin-token"]
    path.write_text(text.replace(token, "change-me-to-a-long-random-token"))
    with pytest.raises(Refused, match="placeholder"):
        run(out, "w1")
    assert passwords_of(run(out, "w1", rotate=True))[GATEWAY_SECRET] != token


@pytest.mark.parametrize(
    "content", [b"", b"apiVersion: v1\nkind: ConfigMap\n", b"stringData: {}\n", b"\xff\xfe"]
)
def test_a_secrets_file_not_written_here_is_refused(content: bytes, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "secrets.yaml").write_bytes(content)
    with pytest.raises(Refused, match="--rotate"):
        run(out, "w1")
    assert (out / "secrets.yaml").read_bytes() == content


def test_a_secret_whose_value_cannot_be_read_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out, "w1")
    path = out / "secrets.yaml"
    found = secrets_in(out)
    password = found[nats_secret("scheduler")]["stringData"]["password"]
    path.write_text(path.read_text().replace(f'password: "{password}"', f"password: {password}"))
    with pytest.raises(Refused, match="praxis-nats-scheduler in the output directory"):
        run(out, "w1")


@pytest.mark.parametrize(
    ("workcells", "why"),
    [
        ((), "at least one --workcell"),
        (("*",), "test fixtures"),
        (("Bench_1",), "lowercase letters"),
        (("w" * 64,), "at most 63"),
    ],
)
def test_bad_workcells_are_refused(workcells: tuple[str, ...], why: str, tmp_path: Path) -> None:
    with pytest.raises(Refused, match=why):
        run(tmp_path / "out", *workcells)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("postgresql+asyncpg://praxis@db/praxis", "must contain {user} and {password}"),
        ("postgresql://{user}@db/praxis", "must contain {password}"),
        ("mysql://{user}:{password}@db/praxis", "postgresql:// URL"),
    ],
)
def test_bad_templates_are_refused(template: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(Refused, match=why):
        run(tmp_path / "out", "w1", database_url_template=template)


# ------------------------------------------------------------------------------- command


def command(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "praxis_runtime.secrets", *args]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)


def test_help() -> None:
    done = command("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--workcell", "--output-dir", "--namespace", "--database-url-template"):
        assert option in done.stdout
    assert "--rotate" in done.stdout


def test_the_command_writes_and_never_prints_a_secret(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = command("--workcell", "w1", "--output-dir", str(out), "--rounds", str(ROUNDS))
    assert done.returncode == 0, done.stderr
    assert "roles.sql" in done.stdout
    for value in passwords_of(secrets_in(out)).values():
        assert value not in done.stdout + done.stderr
    again = command("--workcell", "w2", "--output-dir", str(out), "--rounds", str(ROUNDS))
    assert again.returncode == 1
    assert "refused" in again.stderr and "Traceback" not in again.stderr


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.mark.integration
@pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")),
    reason="creates cluster-wide roles: only on the tests' own PostgreSQL",
)
async def test_roles_sql_on_postgresql_lets_each_service_in_with_its_url(
    make_database: Any, tmp_path: Path
) -> None:
    """What an operator runs once on the external PostgreSQL: then each service's URL logs in
    (SCRAM, the verifier computed here) as a role owning only its schema."""
    asyncpg = pytest.importorskip("asyncpg")
    admin = urlsplit(make_database("secrets"))
    template = (
        f"postgresql+asyncpg://{{user}}:{{password}}@{admin.netloc.split('@')[1]}{admin.path}"
    )
    found = run(tmp_path / "out", "w1", database_url_template=template)
    superuser = await asyncpg.connect(admin._replace(scheme="postgresql").geturl(), timeout=10)
    try:
        sql = found[DATABASE_ROLES_SECRET]["stringData"]["roles.sql"]
        await superuser.execute(sql)
        await superuser.execute(sql)  # idempotent
    finally:
        await superuser.close()
    for service, schema in DATABASE_SCHEMAS.items():
        url = urlsplit(found[database_secret(service)]["stringData"]["url"])
        conn = await asyncpg.connect(url._replace(scheme="postgresql").geturl(), timeout=10)
        try:
            await conn.execute(f'CREATE TABLE "{schema}".probe (v int)')
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE public.probe (v int)")
        finally:
            await conn.close()
