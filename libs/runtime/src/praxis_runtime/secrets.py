"""``python -m praxis_runtime.secrets``: every secret of a Kubernetes deployment, generated.

One command, run by whoever deploys (it ships with the runtime, not with the dev tools), writes
into an output directory that an overlay lists as a resource:

- ``kustomization.yaml``: ``resources: [secrets.yaml]`` (no namespace: the overlay sets it);
- ``secrets.yaml``: the Secrets the manifests mount (names and keys are an interface: see the
  constants below), all labelled ``app.kubernetes.io/part-of: praxis``:

  * ``praxis-nats-auth`` / ``auth.conf``: nats-server's authorization (bcrypt hashes only);
  * ``praxis-nats-<identity>`` / ``password``: one per NATS identity of
    ``praxis_contracts.permissions`` (``orchestrator-<workcell>`` per workcell);
  * ``praxis-gateway`` / ``admin-token``: the bootstrap admin bearer;
  * ``praxis-database-<service>`` / ``url``: the ``DATABASE_URL`` of each service with a
    database, as its own PostgreSQL role (the template filled in);
  * ``praxis-database-roles`` / ``roles.sql``: what an operator runs once on the external
    PostgreSQL to create those roles (SCRAM verifiers only, no plain password);

- ``nats-auth.conf`` and ``roles.sql``: the same two, for use outside Kubernetes.

Every file is mode 0600 in a directory created 0700. Re-running keeps every password already in
``secrets.yaml`` (a workcell added gets a new identity, the others are untouched: running
services keep working); ``--rotate`` replaces them all. A workcell in the directory but not on
the command line is refused unless ``--prune`` (its orchestrator would lose its password).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_bytes, token_urlsafe
from urllib.parse import quote, urlsplit

from praxis_contracts.permissions import ANY_WORKCELL, identities, orchestrator_identity_name
from praxis_runtime.natsauth import (
    BCRYPT_ROUNDS,
    NATS_AUTH_SECRET,
    authorization_config,
    secret_manifest,
    write_private,
)
from praxis_runtime.settings import (
    MIN_ADMIN_TOKEN_LENGTH,
    MIN_PASSWORD_LENGTH,
    database_password,
    refuse_weak_secret,
)

NATS_AUTH_KEY = "auth.conf"
NATS_PASSWORD_KEY = "password"
GATEWAY_SECRET = "praxis-gateway"
GATEWAY_TOKEN_KEY = "admin-token"
DATABASE_URL_KEY = "url"
DATABASE_ROLES_SECRET = "praxis-database-roles"
DATABASE_ROLES_KEY = "roles.sql"

DATABASE_SCHEMAS = {
    "scheduler": "scheduler",
    "code-manager": "code_manager",
    "asset-manager": "asset_manager",
    "audit": "audit",
}
"""The services with a database and the schema each owns (as ``praxis_devstack`` sets them up:
``SERVICE_SCHEMAS`` there, checked equal by the tests)."""

DEFAULT_DATABASE_URL_TEMPLATE = "postgresql+asyncpg://{user}:{password}@postgres:5432/praxis"
SCRAM_ITERATIONS = 4096
"""PostgreSQL's own default (``scram_iterations``)."""

_WORKCELL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A workcell of a Kubernetes deployment names Secrets and Deployments: a DNS label."""

_QUOTED_VALUE = re.compile(r'  ([-A-Za-z0-9._]+): (".*")')


class Refused(Exception):
    """The output directory or the arguments do not allow generating (message for the user)."""


def nats_secret(identity: str) -> str:
    """The Secret holding ``identity``'s NATS password (key ``password``)."""
    return f"praxis-nats-{identity}"


def database_secret(service: str) -> str:
    """The Secret holding ``service``'s database URL (key ``url``)."""
    return f"praxis-database-{service}"


def database_role(service: str) -> str:
    """The PostgreSQL login role of ``service`` (``praxis_<schema>``, as in local runs)."""
    return f"praxis_{DATABASE_SCHEMAS[service]}"


# ------------------------------------------------------------------------------- PostgreSQL


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677): given to ``ALTER
    ROLE ... PASSWORD`` it is stored as is, so ``roles.sql`` (and any statement log) holds no
    plain password. The generated passwords are ASCII, which SASLprep leaves unchanged."""
    salt = token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def roles_sql(database: str, passwords: Mapping[str, str]) -> str:
    """Statements creating each service's login role (``passwords``: service -> password),
    owning only its schema of ``database``: what local runs set up (``praxis_devstack``),
    for an external PostgreSQL. Idempotent: re-running it sets the passwords again."""
    db = _identifier(database)
    lines = [
        "-- Generated by `python -m praxis_runtime.secrets`: run it once, as a superuser,",
        f"-- connected to database {database!r} (again after --rotate), e.g.",
        f"--   psql 'postgresql://postgres@HOST/{database}' -v ON_ERROR_STOP=1 -f roles.sql",
        "-- Each service gets a login role owning only its schema. The passwords are SCRAM",
        "-- verifiers: this file holds no plain password.",
        "BEGIN;",
        "SET LOCAL password_encryption = 'scram-sha-256';",
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
    ]
    for service, password in passwords.items():
        role, schema = database_role(service), DATABASE_SCHEMAS[service]
        r, sch = _identifier(role), _identifier(schema)
        lines += [
            "",
            f"-- {service}",
            "DO $$ BEGIN",
            f"    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {_literal(role)}) THEN",
            f"        CREATE ROLE {r} LOGIN;",
            "    END IF;",
            "END $$;",
            f"ALTER ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;",
            f"ALTER ROLE {r} PASSWORD {_literal(scram_sha256_verifier(password))};",
            f"GRANT CONNECT ON DATABASE {db} TO {r};",
            f"CREATE SCHEMA IF NOT EXISTS {sch} AUTHORIZATION {r};",
            f"ALTER SCHEMA {sch} OWNER TO {r};",
            "-- Tables made before the role existed (one shared login before) become its own.",
            "DO $$ DECLARE item record; BEGIN",
            "    FOR item IN SELECT c.relname, c.relkind FROM pg_class c",
            "        JOIN pg_namespace n ON n.oid = c.relnamespace",
            f"        WHERE n.nspname = {_literal(schema)} AND c.relkind IN ('r', 'p', 'S', 'v')",
            "    LOOP",
            "        EXECUTE format('ALTER %s %I.%I OWNER TO %I',",
            "            CASE item.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'",
            f"            ELSE 'TABLE' END, {_literal(schema)}, item.relname, {_literal(role)});",
            "    END LOOP;",
            "END $$;",
        ]
    lines += ["", "COMMIT;"]
    return "\n".join(lines) + "\n"


def _check_template(template: str) -> str:
    """The database named by ``template``; refused unless it is a PostgreSQL URL with both
    ``{user}`` and ``{password}`` in it."""
    missing = [p for p in ("{user}", "{password}") if p not in template]
    if missing:
        raise Refused(f"--database-url-template must contain {' and '.join(missing)}")
    parts = urlsplit(_fill(template, "user", "password"))
    if not parts.scheme.startswith("postgres") or not parts.hostname:
        raise Refused("--database-url-template must be a postgresql:// URL with a host")
    return parts.path.lstrip("/") or "praxis"


def _fill(template: str, user: str, password: str) -> str:
    return template.replace("{user}", quote(user, safe="")).replace(
        "{password}", quote(password, safe="")
    )


# ------------------------------------------------------------------------------- the files


@dataclass
class Generated:
    """What one run produced (nothing secret: for the summary and the tests)."""

    files: list[Path]
    kept: list[str] = field(default_factory=list)
    """Secrets whose value was already in the directory and is unchanged."""
    created: list[str] = field(default_factory=list)
    """Secrets with a new value."""
    dropped: list[str] = field(default_factory=list)
    """Secrets of pruned workcells."""


def read_existing(path: Path) -> dict[str, dict[str, str]]:
    """The one-line values of the Secrets in a ``secrets.yaml`` this command wrote: name ->
    key -> value (multi-line values, the regenerated ones, are left out; a Secret whose
    values are all multi-line maps to an empty dict)."""
    found: dict[str, dict[str, str]] = {}
    for document in re.split(r"(?m)^---[ \t]*$", path.read_text()):
        name = re.search(r"(?m)^  name: (\S+)[ \t]*$", document)
        if name is None:
            continue
        data = found.setdefault(name.group(1), {})
        in_data = False
        for line in document.splitlines():
            if line.rstrip() == "stringData:":
                in_data = True
            elif in_data and not line.startswith("  "):
                in_data = bool(line == "")  # a blank line inside a block value
            elif in_data and (match := _QUOTED_VALUE.fullmatch(line)):
                data[match.group(1)] = json.loads(match.group(2))
    return found


@dataclass
class _Values:
    """The values to write, each either kept from the directory or new."""

    existing: dict[str, dict[str, str]]
    rotate: bool
    kept: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def get(self, secret: str, key: str, minimum: int, *, in_url: bool = False) -> str:
        """The value of ``secret``'s ``key`` already in the directory (``in_url``: the
        password in the URL there), else a new random one."""
        if self.rotate or secret not in self.existing:
            self.created.append(secret)
            return token_urlsafe(32 if secret == GATEWAY_SECRET else 24)
        stored = self.existing[secret].get(key)
        if stored is not None and in_url:
            stored = database_password(stored)
        if stored is None:
            raise Refused(
                f"{secret} in the output directory has no readable {key!r} (edited by hand?): "
                "restore it, or pass --rotate to replace every secret"
            )
        try:
            refuse_weak_secret(stored, f"{secret}'s {key}", minimum)
        except ValueError as exc:
            raise Refused(f"{exc} (or pass --rotate to replace every secret)") from None
        self.kept.append(secret)
        return stored


def _read_output(path: Path, rotate: bool) -> dict[str, dict[str, str]]:
    """The Secrets already in ``path`` (none if it does not exist). One that cannot be read is
    refused unless ``rotate``: generating anew would silently change every password."""
    if not path.exists():
        return {}
    try:
        existing = read_existing(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if rotate:
            return {}
        raise Refused(f"cannot read {path} ({exc}): pass --rotate to replace it") from None
    if not existing and not rotate:
        raise Refused(
            f"{path} holds no Secret this command wrote: move it away, or pass --rotate to "
            "replace it"
        )
    return existing


def _existing_workcells(existing: Mapping[str, Mapping[str, str]]) -> set[str]:
    prefix = nats_secret(orchestrator_identity_name(""))  # praxis-nats-orchestrator-
    return {name.removeprefix(prefix) for name in existing if name.startswith(prefix)}


def _check_workcells(workcells: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(workcells))
    if not unique:
        raise Refused("name at least one --workcell (each gets its orchestrator's identity)")
    for workcell in unique:
        if workcell == ANY_WORKCELL:
            raise Refused("the any-workcell identity '*' is for test fixtures, not deployments")
        if not _WORKCELL.fullmatch(workcell):
            raise Refused(
                f"workcell {workcell!r}: in a Kubernetes deployment a workcell names Secrets and "
                "Deployments, so it must be lowercase letters, digits and '-' (at most 63)"
            )
    return unique


def generate(
    output_dir: Path,
    workcells: Sequence[str],
    *,
    database_url_template: str = DEFAULT_DATABASE_URL_TEMPLATE,
    namespace: str | None = None,
    rotate: bool = False,
    prune: bool = False,
    rounds: int = BCRYPT_ROUNDS,
) -> Generated:
    """Write the deployment's Secrets into ``output_dir`` (see the module doc)."""
    wanted = _check_workcells(workcells)
    database = _check_template(database_url_template)
    secrets_path = output_dir / "secrets.yaml"
    existing = _read_output(secrets_path, rotate)
    unlisted = sorted(_existing_workcells(existing) - set(wanted))
    if unlisted and not prune:
        raise Refused(
            f"{output_dir} also holds workcell(s) {', '.join(unlisted)}: list them again with "
            "--workcell (their passwords are kept), or pass --prune to remove them"
        )
    values = _Values(existing, rotate)
    declared = identities(wanted)
    passwords = {
        i.name: values.get(nats_secret(i.name), NATS_PASSWORD_KEY, MIN_PASSWORD_LENGTH)
        for i in declared
    }
    admin_token = values.get(GATEWAY_SECRET, GATEWAY_TOKEN_KEY, MIN_ADMIN_TOKEN_LENGTH)
    db_passwords = {
        service: values.get(
            database_secret(service), DATABASE_URL_KEY, MIN_PASSWORD_LENGTH, in_url=True
        )
        for service in DATABASE_SCHEMAS
    }
    auth_conf = authorization_config(declared, passwords, rounds=rounds)
    roles = roles_sql(database, db_passwords)

    def secret(name: str, component: str, data: Mapping[str, str]) -> str:
        labels = {"app.kubernetes.io/part-of": "praxis", "app.kubernetes.io/component": component}
        return secret_manifest(name, labels, data, namespace)

    documents = [
        secret(NATS_AUTH_SECRET, "message-broker-auth", {NATS_AUTH_KEY: auth_conf}),
        *(
            secret(nats_secret(name), "message-broker-credentials", {NATS_PASSWORD_KEY: pw})
            for name, pw in passwords.items()
        ),
        secret(GATEWAY_SECRET, "api-credentials", {GATEWAY_TOKEN_KEY: admin_token}),
        *(
            secret(
                database_secret(service),
                "database-credentials",
                {DATABASE_URL_KEY: _fill(database_url_template, database_role(service), pw)},
            )
            for service, pw in db_passwords.items()
        ),
        secret(DATABASE_ROLES_SECRET, "database-roles", {DATABASE_ROLES_KEY: roles}),
    ]
    header = (
        "# Generated by `python -m praxis_runtime.secrets`: REAL SECRETS. Keep this file out of\n"
        "# git (or seal/encrypt it); re-run the command to add a workcell (passwords are kept).\n"
    )
    files = {
        secrets_path: header + "---\n".join(documents),
        output_dir / "kustomization.yaml": (
            "# Generated by `python -m praxis_runtime.secrets`: list this directory in an\n"
            "# overlay's resources (the overlay sets the namespace).\n"
            "apiVersion: kustomize.config.k8s.io/v1beta1\n"
            "kind: Kustomization\n"
            "resources:\n"
            "  - secrets.yaml\n"
        ),
        output_dir / "nats-auth.conf": auth_conf,
        output_dir / "roles.sql": roles,
    }
    try:
        _private_dir(output_dir)
        for path, text in files.items():
            _replace_private(path, text)
    except OSError as exc:
        raise Refused(f"cannot write {exc.filename or output_dir}: {exc.strerror}") from None
    written = {
        NATS_AUTH_SECRET,
        GATEWAY_SECRET,
        DATABASE_ROLES_SECRET,
        *(nats_secret(n) for n in passwords),
        *(database_secret(s) for s in DATABASE_SCHEMAS),
    }
    return Generated(
        files=list(files),
        kept=values.kept,
        created=values.created,
        dropped=sorted(set(existing) - written),
    )


def _private_dir(path: Path) -> None:
    """Create ``path`` readable by its owner only (an existing directory keeps its mode: the
    files in it are 0600 anyway)."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True)
        path.chmod(0o700)  # whatever the umask


def _replace_private(path: Path, text: str) -> None:
    """Write ``path`` (mode 0600) all at once: an interrupted run leaves the old file whole,
    never half of a new one (the passwords in it are what running services use)."""
    partial = path.with_name(f".{path.name}.partial")
    write_private(partial, text)
    os.replace(partial, path)


# ------------------------------------------------------------------------------- command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m praxis_runtime.secrets",
        description="Generate the NATS authorization and every Secret of a Praxis deployment "
        "(NATS passwords, the gateway's admin token, the database URLs and roles) into "
        "OUTPUT_DIR: list it in a kustomize overlay's resources. Re-running keeps the "
        "passwords already there.",
    )
    parser.add_argument(
        "--workcell",
        action="append",
        default=[],
        required=True,
        help="a workcell of the deployment (repeat): its orchestrator gets an identity",
    )
    parser.add_argument(
        "--output-dir", type=Path, required=True, help="where to write (created mode 0700)"
    )
    parser.add_argument(
        "--namespace",
        default="praxis",
        help="metadata.namespace of the Secrets (default: praxis; '' for none)",
    )
    parser.add_argument(
        "--database-url-template",
        default=DEFAULT_DATABASE_URL_TEMPLATE,
        help="each service's DATABASE_URL, {user} and {password} filled in "
        f"(default: {DEFAULT_DATABASE_URL_TEMPLATE})",
    )
    parser.add_argument(
        "--rotate", action="store_true", help="new values for every secret (restart everything)"
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="drop the identities of workcells in OUTPUT_DIR that are not listed",
    )
    parser.add_argument(
        "--rounds", type=int, default=BCRYPT_ROUNDS, help=f"bcrypt cost (default {BCRYPT_ROUNDS})"
    )
    args = parser.parse_args(argv)
    if not 4 <= args.rounds <= 31:
        parser.error("--rounds must be between 4 and 31")
    try:
        done = generate(
            args.output_dir,
            args.workcell,
            database_url_template=args.database_url_template,
            namespace=args.namespace or None,
            rotate=args.rotate,
            prune=args.prune,
            rounds=args.rounds,
        )
    except Refused as exc:
        print(f"{parser.prog}: refused: {exc}", file=sys.stderr)
        return 1
    _summary(done, args)
    return 0


def _summary(done: Generated, args: argparse.Namespace) -> None:
    """What was written and what to do next; never a secret (this may go to a CI log)."""
    out = args.output_dir
    print(f"wrote (mode 0600): {', '.join(str(p) for p in done.files)}")
    if done.created:
        print(f"new: {', '.join(done.created)}")
    if done.kept:
        print(f"kept: {', '.join(done.kept)}")
    if done.dropped:
        print(f"dropped: {', '.join(done.dropped)}")
    print(
        "next:\n"
        f"  - list {out} in your kustomize overlay's resources; keep it out of git;\n"
        f"  - run {out / 'roles.sql'} once on PostgreSQL as a superuser "
        "(psql URL -v ON_ERROR_STOP=1 -f roles.sql), again after --rotate;\n"
        "  - after adding a workcell: apply, restart nats-server's pods (new auth.conf), "
        "re-run the provisioning job with every --workcell."
    )


if __name__ == "__main__":
    sys.exit(main())
