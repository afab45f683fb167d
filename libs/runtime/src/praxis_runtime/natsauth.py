"""nats-server authorization from the declaration in ``praxis_contracts.permissions``.

:func:`permissions` is pure: one identity's publish/subscribe allow lists. What JetStream needs
was measured by running the services' tests on a server with this config (nats-server logs every
``Permissions Violation``), not guessed, and ``tests/integration/test_nats_permission_matrix.py``
tries every identity against every JetStream verb, stream, bucket, store and subject family:

- Replies and push deliveries arrive on the identity's own inbox, ``_INBOX.<name>.>`` (the bus
  connects with that ``inbox_prefix``), so no identity can read another's replies or deliveries.
- Durable consumers are created by name *and filter*: ``$JS.API.CONSUMER.CREATE.<stream>.
  <durable>.<filter>`` (the bus sets the consumer name, so nats-py uses this form; the server
  checks the filter in the subject against the config). Only workcell X's orchestrator may create
  the consumer on ``praxis.cmd.orchestrator.execute.X``. The legacy
  ``$JS.API.CONSUMER.DURABLE.CREATE`` form, which names no filter, is allowed to nobody.
- Acks go to ``$JS.ACK.<stream>.<durable>.>``: only the consumer's owner can ack its messages.
- Keyed subjects narrow by key: ``orchestrator-X`` publishes run events only under
  ``<event>.X.*`` and KV writes only under ``asset.X.`` and ``edge.X.``; its state snapshots go
  to workcell X's own store.
- No service creates, updates, purges or deletes a stream: only ``provisioner`` may
  (``$JS.API.STREAM.CREATE|UPDATE|INFO``), and services only read stream information to check
  what they bind to. Deleting an object is a purge of its subject within the store, so an
  identity may purge only the stores it owns (its claims store; the asset-manager the state
  stores whose snapshots it prunes).
- What cannot be narrowed, and why: ephemeral ordered consumers (KV watches, object-store reads,
  the gateway's live event streams) are created by ``$JS.API.CONSUMER.CREATE.<stream>`` with no
  name or filter in the subject (nats-py's form for a consumer without a name), so an identity
  that may watch a bucket, or read events, may create any consumer on that one stream -- with a
  deliver subject only on its own inbox, since it can subscribe nowhere else. Such a consumer
  could squat the name of a durable another identity has not created yet; that stops that
  service's consumer, it never lets the squatter publish or read more than it already could.
  The any-workcell orchestrator identity (test fixtures only) reaches every workcell.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import bcrypt

from praxis_contracts.base import Command, Message
from praxis_contracts.deadletters import DeadLetterReplayed, ReplayDeadLetter
from praxis_contracts.permissions import (
    ANY_WORKCELL,
    OPERATOR,
    Bucket,
    Identity,
    identities,
    needs,
    services,
)
from praxis_contracts.topology import COMMANDS, DEAD_LETTERS, EVENTS, claims

API = "$JS.API"
BCRYPT_ROUNDS = 11
"""bcrypt cost of the shipped config (nats-server's own ``passwd`` tool uses 11)."""
DEV_BCRYPT_ROUNDS = 6
"""Cost for per-run random passwords of local stacks and tests: the server checks the hash at
every connect, and such passwords are long random strings, not guessable words."""


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def object_stream(bucket: str) -> str:
    # A store of any workcell (the test fixtures' identity): any stream name.
    return "*" if ANY_WORKCELL in bucket else f"OBJ_{bucket}"


def _stream_of(message_type: type[Message]) -> str:
    return COMMANDS.name if issubclass(message_type, Command) else EVENTS.name


def _bound(identity: Identity) -> list[str]:
    """What a service checks at start-up (``praxis_runtime.topology.verify``): the stream
    information of everything it binds to, nothing more."""
    topology = needs(identity)
    names = [
        *(s.name for s in topology.streams),
        *(kv_stream(k.bucket) for k in topology.key_values),
        *(object_stream(o.bucket) for o in topology.object_stores),
        *(object_stream(b.bucket) for b in identity.object_stores),
    ]
    return [f"{API}.STREAM.INFO.{name}" for name in dict.fromkeys(names)]


def _ephemeral_reader(stream: str) -> list[str]:
    """An ordered consumer on ``stream`` (watch, read): create, look up, flow control. Never
    delete: neither nats-py nor FastStream deletes one (the server drops it when inactive), and
    a delete could not be narrowed to ephemeral consumers."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _key_value(access: Bucket) -> list[str]:
    stream = kv_stream(access.bucket)
    allowed = [
        *_ephemeral_reader(stream),
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.MSG.GET.{stream}",
    ]
    if access.write:
        allowed.append(f"$KV.{access.bucket}.{access.keys}")
    return allowed


def _object_store(access: Bucket) -> list[str]:
    stream = object_stream(access.bucket)
    bucket = "*" if ANY_WORKCELL in access.bucket else access.bucket
    allowed = [
        *_ephemeral_reader(stream),
        f"{API}.STREAM.NAMES",  # nats-py's object get looks the stream up by subject
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.MSG.GET.{stream}",
    ]
    if access.write:  # deleting an object purges its chunks' subject
        allowed += [f"$O.{bucket}.>", f"{API}.STREAM.PURGE.{stream}"]
    return allowed


def _provisioning() -> list[str]:
    """The provisioner: create, update and inspect streams (buckets and stores are streams)."""
    return [
        f"{API}.INFO",
        f"{API}.STREAM.NAMES",
        f"{API}.STREAM.INFO.*",
        f"{API}.STREAM.CREATE.*",
        f"{API}.STREAM.UPDATE.*",
    ]


def permissions(identity: Identity) -> dict[str, Any]:
    """nats-server ``permissions`` of one identity (allow lists: all else is denied)."""
    if identity.admin:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    publish = [p.subject for p in identity.publishes]
    publish += [r.subscription_subject() for r in identity.requests]
    publish += _provisioning() if identity.provisions else _bound(identity)
    for consumer in identity.consumes:
        stream = _stream_of(consumer.message_type)
        durable = consumer.durable
        publish += [
            f"{API}.CONSUMER.INFO.{stream}.{durable}",
            f"{API}.CONSUMER.CREATE.{stream}.{durable}.{consumer.filter_subject}",
            f"$JS.ACK.{stream}.{durable}.>",
            consumer.dead_letter_subject,
        ]
    if identity.consumes:
        # Its dead letters' replays (``praxis_runtime.replay``): read one, announce the replay.
        publish += [
            f"{API}.STREAM.INFO.{DEAD_LETTERS.name}",
            f"{API}.STREAM.MSG.GET.{DEAD_LETTERS.name}",
            DeadLetterReplayed.subscription_subject(f"{identity.name}.*"),
        ]
    if identity.reads_events:
        publish += _ephemeral_reader(EVENTS.name)
    if identity.reads_dead_letters:  # its state, then one message by sequence
        dead = DEAD_LETTERS.name
        publish += [f"{API}.STREAM.INFO.{dead}", f"{API}.STREAM.MSG.GET.{dead}"]
    for kv in identity.key_values:
        publish += _key_value(kv)
    for store in identity.object_stores:
        publish += _object_store(store)
    if identity.claims:
        publish += _object_store(Bucket(claims(identity.name).bucket, write=True))
    if identity.uses_claims:
        for writer in services(()).values():
            if writer.claims and writer.name != identity.name:
                publish += _object_store(Bucket(claims(writer.name).bucket))
    subscribe = [f"{identity.inbox_prefix}.>", *(r.subject for r in identity.responds)]
    if identity.consumes:
        subscribe.append(ReplayDeadLetter.subscription_subject(f"{identity.name}.*"))
    result: dict[str, Any] = {
        "publish": {"allow": _unique(publish)},
        "subscribe": {"allow": _unique(subscribe)},
    }
    if identity.responds or identity.consumes:
        # A responder publishes its reply to the requester's inbox, which it may not publish to
        # otherwise: one reply per request received.
        result["allow_responses"] = {"max": 1}
    return result


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    """A bcrypt hash nats-server accepts in place of the password (``$2b$`` prefix)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def authorization_config(
    declared: Sequence[Identity],
    passwords: Mapping[str, str],
    *,
    rounds: int = BCRYPT_ROUNDS,
) -> str:
    """The ``authorization`` block for nats-server: one user per identity, bcrypt-hashed."""
    users = [
        {
            "user": identity.name,
            "password": hash_password(passwords[identity.name], rounds),
            "permissions": permissions(identity),
        }
        for identity in declared
    ]
    body = json.dumps({"users": users}, indent=2)
    return (
        "# Generated by praxis_runtime.natsauth from praxis_contracts.permissions: do not edit.\n"
        f"authorization: {body}\n"
    )


def random_passwords(names: Iterable[str]) -> dict[str, str]:
    return {name: secrets.token_urlsafe(24) for name in names}


@dataclass
class NatsAuth:
    """Identities and their passwords for one server; written as a server config file."""

    workcells: tuple[str, ...]
    passwords: dict[str, str] = field(default_factory=dict)
    rounds: int = DEV_BCRYPT_ROUNDS

    def __post_init__(self) -> None:
        missing = [i.name for i in self.identities if i.name not in self.passwords]
        self.passwords.update(random_passwords(missing))

    @property
    def identities(self) -> list[Identity]:
        return identities(self.workcells)

    def write(self, path: Path) -> Path:
        """Write the server config to ``path`` and the plain passwords, by identity, to
        ``credentials.json`` beside it (for a developer's tools); both mode 0600."""
        text = authorization_config(self.identities, self.passwords, rounds=self.rounds)
        write_private(path, text)
        write_private(path.with_name("credentials.json"), json.dumps(self.passwords, indent=2))
        return path

    def env_for(self, identity: str) -> dict[str, str]:
        """``NATS_USER`` / ``NATS_PASSWORD`` of ``identity`` (for a service's environment)."""
        return {"NATS_USER": identity, "NATS_PASSWORD": self.passwords[identity]}

    def url_for(self, url: str, identity: str = OPERATOR) -> str:
        """``url`` with ``identity``'s user and password in it (for tools taking a URL)."""
        return with_credentials(url, identity, self.passwords[identity])


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created so, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` falls under ``pattern`` as nats-server matches them (``*`` one
    token, ``>`` the rest); a literal ``*`` token in ``subject`` needs ``*`` or ``>`` there."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


def allows(permissions_of: Mapping[str, Any], action: str, subject: str) -> bool:
    """Whether ``permissions(...)`` lets its user ``action`` (publish or subscribe) ``subject``."""
    return any(subject_matches(p, subject) for p in permissions_of[action]["allow"])


# ------------------------------------------------------------------ ``nats-config`` command

NATS_AUTH_SECRET = "praxis-nats-auth"
"""Kubernetes Secret holding the server's ``auth.conf`` (bcrypt hashes only)."""
NATS_CREDENTIALS_SECRET = "praxis-nats-credentials"
"""Kubernetes Secret holding each identity's password, keyed by identity name."""


def secret_manifest(
    name: str,
    labels: Mapping[str, str],
    data: Mapping[str, str],
    namespace: str | None = None,
) -> str:
    """One ``v1/Secret`` (type Opaque) as YAML: one-line values JSON-quoted (a valid YAML
    scalar whatever they hold), multi-line ones as literal blocks."""
    lines = ["apiVersion: v1", "kind: Secret", "metadata:", f"  name: {name}"]
    if namespace:
        lines.append(f"  namespace: {namespace}")
    lines.append("  labels:")
    lines += [f"    {key}: {value}" for key, value in labels.items()]
    lines += ["type: Opaque", "stringData:"]
    for key, value in data.items():
        if "\n" in value:
            lines.append(f"  {key}: |")
            lines += [f"    {line}" if line else "" for line in value.splitlines()]
        else:
            lines.append(f"  {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def k8s_secrets(config: str, passwords: Mapping[str, str]) -> str:
    """Two Secrets: the server's authorization config, and the services' passwords."""

    def secret(name: str, component: str, data: Mapping[str, str]) -> str:
        labels = {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/part-of": "praxis",
            "app.kubernetes.io/component": component,
        }
        return secret_manifest(name, labels, data)

    header = (
        "# Generated by `python -m praxis_devstack nats-config --format k8s` from\n"
        "# praxis_contracts.permissions: regenerate, do not edit. The passwords here are\n"
        "# PLACEHOLDERS when generated with --placeholder-passwords: generate real ones (the\n"
        "# default) for anything but a throw-away cluster, and keep them out of git.\n"
    )
    return (
        header
        + secret(NATS_AUTH_SECRET, "message-broker-auth", {"auth.conf": config})
        + "---\n"
        + secret(NATS_CREDENTIALS_SECRET, "message-broker-credentials", dict(passwords))
    )


def add_arguments(sub: Any) -> None:
    """The ``nats-config`` sub-command of ``python -m praxis_devstack``."""
    p = sub.add_parser(
        "nats-config",
        help="nats-server authorization (users, permissions) for the declared identities "
        "(a deployment's Secrets, all of them: python -m praxis_runtime.secrets)",
    )
    p.add_argument(
        "--workcell",
        action="append",
        default=[],
        help="a workcell with an orchestrator (repeatable); '*' = one any-workcell identity",
    )
    p.add_argument(
        "--format",
        choices=("conf", "k8s"),
        default="conf",
        help="conf: the authorization block (include it in nats-server.conf); "
        "k8s: Secrets with that block and the identities' passwords",
    )
    p.add_argument(
        "--passwords",
        type=Path,
        default=None,
        help="JSON {identity: password} to use (others are generated at random)",
    )
    p.add_argument(
        "--placeholder-passwords",
        action="store_true",
        help="'change-me-<identity>' passwords (the shipped example only)",
    )
    p.add_argument("--rounds", type=int, default=BCRYPT_ROUNDS, help="bcrypt cost")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write here (mode 0600) instead of standard output",
    )
    p.add_argument(
        "--credentials-output",
        type=Path,
        default=None,
        help="with --format conf: also write the passwords as JSON here (mode 0600)",
    )


def command(args: Any) -> int:
    """Run ``nats-config``: print or write the config; passwords never go to a log."""
    declared = identities(args.workcell)
    passwords: dict[str, str] = {}
    if args.passwords is not None:
        passwords.update(json.loads(args.passwords.read_text()))
    if args.placeholder_passwords:
        passwords = {i.name: f"change-me-{i.name}" for i in declared} | passwords
    passwords = {**random_passwords(i.name for i in declared), **passwords}
    passwords = {i.name: passwords[i.name] for i in declared}
    config = authorization_config(declared, passwords, rounds=args.rounds)
    text = k8s_secrets(config, passwords) if args.format == "k8s" else config
    if args.output is None:
        print(text, end="")
    else:
        write_private(args.output, text)
    if args.credentials_output is not None:
        write_private(args.credentials_output, json.dumps(passwords, indent=2))
    return 0
