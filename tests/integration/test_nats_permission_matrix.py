"""Every identity against every JetStream verb, stream, bucket, store and subject family.

A real nats-server runs the generated authorization for two workcells, ``wc-x`` and ``wc-y``,
provisioned by ``praxis_devstack.servers.provision_blocking``. Then every declared identity
(``praxis_contracts.permissions.identities``) tries, for real:

- every JetStream API verb on every stream, the key-value buckets' ``KV_<bucket>`` and the
  object stores' ``OBJ_<store>`` included (create, update, info, purge, delete, message get and
  delete, direct get, snapshot, restore, consumer create in every form, info, list, delete, next,
  pause, acks, flow control, account info, stream names and list);
- get, watch, put, delete and purge of keys of every bucket: keys of its own workcell and of the
  other one (``asset.wc-x.<id>`` against ``asset.wc-y.<id>``, ``edge.wc-x.<id>`` ...);
- get, put, overwrite and delete of objects of every store (``praxis_state_<workcell>`` and
  ``praxis_claims_<identity>`` included);
- publishing every message type on its routing subject, under keys of its own and of the other
  workcell, dead-lettering it, sending every request (``praxis.rpc...``) to a real responder,
  answering it (subscribing), and subscribing to every subject family and another's inbox.

What is *expected* comes from an oracle written here from the rules of
``praxis_contracts.permissions`` (its docstring, and issue 15: no service identity creates,
updates, seals, purges or deletes a stream, bucket or store; ``orchestrator-<w>`` publishes only
its workcell's run events, touches only lease keys of its workcell and writes only its
workcell's state store; event subscribers are read-only). The oracle reads the declaration's
data (``Identity.publishes``, ``consumes``, ``key_values`` ...) but never
``praxis_runtime.natsauth``, which generates the server config under test. The test passes only
if exactly the expected operations succeed and every other one is refused.

How a refusal is seen without waiting: nats-server answers a denied publish or subscription with
``-ERR 'Permissions Violation ...'`` naming the subject, in order with what else it sends the
connection, and nats-py hands it to the error callback in that order. So once a last message
(the *barrier*: a publish to the identity's own inbox, refused to all but the operator, who
receives it) is refused or received, every refusal of what was sent before it is known (a PING
is no barrier: nats-py writes it ahead of publishes still buffered). What was allowed got an
answer: a JetStream API reply, a stream's PubAck, the responder's reply, or the server's
no-responders status. A
JetStream API verb counts as allowed when JetStream answered it, even with an error of its own
(``stream name in subject does not match request``): authorization is decided before that. Where
a verb would destroy what later checks use, it is harmless as sent (a purge filtered on a subject
with no message, a message delete of a sequence that does not exist, an update with the
stream's own config); deleting streams and consumers comes last, and the ``provisioner``
identity then provisions everything again (``praxis_runtime.topology.provision``).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from praxis_contracts import headers as h
from praxis_contracts.assets import ForceReleaseLease, Lease
from praxis_contracts.base import Command, Message, Request, all_message_types
from praxis_contracts.deadletters import REPLAY_TYPES, DeadLetterReplayed, ReplayDeadLetter
from praxis_contracts.permissions import (
    OPERATOR,
    PROVISIONER,
    Identity,
    Topology,
    identities,
    topology,
)
from praxis_contracts.runs import RunFinished
from praxis_contracts.topology import (
    DEAD_LETTERS,
    EVENTS,
    claims,
    dead_letter_subject,
)
from praxis_devstack.pytest_plugin import server_unavailable
from praxis_devstack.servers import NatsServer, provision_blocking
from praxis_runtime.bus import Bus, Handlers
from praxis_runtime.natsauth import NatsAuth  # generates the config under test; not the oracle
from praxis_runtime.provision import Settings as ProvisionSettings
from praxis_runtime.provision import provision_deployment
from praxis_runtime.topology import provision

pytestmark = pytest.mark.integration

WORKCELLS = ("wc-x", "wc-y")
DECLARED = identities(WORKCELLS)
BY_NAME = {i.name: i for i in DECLARED}
TOPOLOGY = topology(WORKCELLS)
BUCKETS = [kv.bucket for kv in TOPOLOGY.key_values]
STORES = [*(store.bucket for store in TOPOLOGY.object_stores), claims(OPERATOR).bucket]
"""Every object store; the operator's claims store is provisioned for tools and tests
(``praxis_devstack.servers.provision_blocking``) although the operator declares none."""
MAIN_STREAMS = [stream.name for stream in TOPOLOGY.streams]
STREAM_SUBJECTS = {stream.name: stream.subjects for stream in TOPOLOGY.streams}
ALL_STREAMS = [
    *MAIN_STREAMS,
    *(f"KV_{bucket}" for bucket in BUCKETS),
    *(f"OBJ_{store}" for store in STORES),
]
ID = uuid.uuid4().hex
"""The entity-id token of every key tried (a run, an asset, a token)."""
TIMEOUT = 10.0
"""Bound for one answer; everything normally resolves in milliseconds (generous for slow CI)."""
BATCH = 200


# ------------------------------------------------------------------------------------- oracle


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one token or more."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or token not in ("*", have[index]):
            return False
    return len(want) == len(have)


def stream_of(message_type: type[Message]) -> str:
    """The stream that stores ``message_type`` (by the streams' declared subjects)."""
    subject = message_type.subscription_subject("k")
    found = [
        name
        for name, subjects in STREAM_SUBJECTS.items()
        if any(matches(s, subject) for s in subjects)
    ]
    assert len(found) == 1, (message_type, found)
    return found[0]


def kv_access(identity: Identity, bucket: str) -> tuple[bool, str] | None:
    """(writable, keys it may write) when ``identity`` uses ``bucket``."""
    for access in identity.key_values:
        if access.bucket == bucket:
            return access.write, access.keys
    return None


def claims_owners() -> list[str]:
    """Identities with a claims store of their own (``claims``: they send large bodies)."""
    return [i.name for i in DECLARED if i.claims]


def store_access(identity: Identity, store: str) -> str | None:
    """``"write"``, ``"read"`` or None: the identity's use of object store ``store``."""
    for access in identity.object_stores:
        if access.bucket == store:
            return "write" if access.write else "read"
    if identity.claims and store == claims(identity.name).bucket:
        return "write"  # its own claims: only it writes (and deletes) them
    readable = {claims(owner).bucket for owner in claims_owners()}
    if (identity.requests or identity.responds) and store in readable:
        return "read"  # whoever requests or responds reads every claims store
    return None


def reads_stream(identity: Identity, stream: str) -> bool:
    """May open ephemeral (ordered) consumers on ``stream``: watch a bucket, read a store,
    read the live events."""
    if stream == EVENTS.name:
        return identity.reads_events
    if stream.startswith("KV_"):
        return kv_access(identity, stream.removeprefix("KV_")) is not None
    if stream.startswith("OBJ_"):
        return store_access(identity, stream.removeprefix("OBJ_")) is not None
    return False


def reads_dead_letters(identity: Identity, stream: str) -> bool:
    """The operators' view (the gateway), and every consumer: it reads one of its own dead
    letters to replay it (``praxis_runtime.replay``)."""
    return stream == DEAD_LETTERS.name and (identity.reads_dead_letters or bool(identity.consumes))


def replays(identity: Identity, key: str) -> bool:
    """A consumer answers and announces the replays of its dead letters, under its name."""
    return bool(identity.consumes) and key.split(".", maxsplit=1)[0] == identity.name


def uses_bus(identity: Identity) -> bool:
    return bool(identity.publishes or identity.consumes or identity.requests or identity.responds)


def binds(identity: Identity, stream: str) -> bool:
    """Services bind to what exists and check it at start-up (stream information): the bus's
    streams if they use the bus, the buckets and stores they use. A read-only event subscriber
    reads events and nothing else."""
    if stream in MAIN_STREAMS:
        return uses_bus(identity) or (stream == EVENTS.name and identity.reads_events)
    return reads_stream(identity, stream)


def owns_durable(identity: Identity, stream: str, durable: str) -> bool:
    return any(
        c.durable == durable and stream_of(c.message_type) == stream for c in identity.consumes
    )


def reads_any_store(identity: Identity) -> bool:
    return any(store_access(identity, store) for store in STORES)


PROVISIONING = {"INFO", "STREAM.NAMES", "STREAM.INFO", "STREAM.CREATE", "STREAM.UPDATE"}
"""What provisioning does: look, create, update (sealing is an update). It never deletes or
purges: ``praxis_runtime.provision`` creates what is missing and aligns what exists."""


def may_js(
    identity: Identity, verb: str, stream: str = "", consumer: str = "", filt: str = ""
) -> bool:
    """The oracle for one JetStream API verb."""
    if identity.admin:
        return True
    if identity.provisions:
        return verb in PROVISIONING
    if verb == "STREAM.INFO":
        return binds(identity, stream) or reads_dead_letters(identity, stream)
    if verb == "STREAM.NAMES":  # nats-py finds an object's stream by subject to read it
        return reads_any_store(identity)
    if verb in ("STREAM.MSG.GET", "DIRECT.GET.SUBJECT"):
        # Bucket and store reads, never the bus's streams; in the forms the clients send: a
        # message get, a direct get naming the subject (not by sequence: nobody reads so).
        # Dead letters are read one by one (a message get by sequence) by who may read them.
        if verb == "STREAM.MSG.GET" and reads_dead_letters(identity, stream):
            return True
        return stream not in MAIN_STREAMS and reads_stream(identity, stream)
    if verb == "STREAM.PURGE":
        # Deleting or replacing an object purges its chunks' subject (a filter in the request
        # body, not in the subject): a store's writers purge it, nobody else purges anything.
        return stream.startswith("OBJ_") and (
            store_access(identity, stream.removeprefix("OBJ_")) == "write"
        )
    if verb in ("CONSUMER.CREATE", "FC"):  # an ephemeral consumer, its flow control
        return reads_stream(identity, stream)
    if verb == "CONSUMER.CREATE.NAMED":  # only the declared durable, with its declared filter
        return any(
            stream_of(c.message_type) == stream
            and c.durable == consumer
            and c.message_type.subscription_subject(c.key) == filt
            for c in identity.consumes
        )
    if verb == "CONSUMER.INFO":
        # Its own durables; an ephemeral consumer's name is the server's, so a reader of a
        # stream looks up any consumer of that stream.
        return owns_durable(identity, stream, consumer) or reads_stream(identity, stream)
    if verb == "ACK":
        return owns_durable(identity, stream, consumer)
    return False  # delete, list, next, pause, snapshot, restore, legacy durable create, ...


def may_publish(identity: Identity, message_type: type[Message], key: str | None) -> bool:
    if identity.admin:
        return True
    if message_type is DeadLetterReplayed:
        return key is not None and replays(identity, key)
    for allowed in identity.publishes:
        if allowed.message_type is not message_type:
            continue
        if not message_type.keyed:
            return key is None
        if key is not None and (allowed.key is None or matches(allowed.key, key)):
            return True
    return False


def may_dead_letter(identity: Identity, routing_subject: str) -> bool:
    """A consumer dead-letters what it consumes (and cannot process)."""
    return identity.admin or any(
        matches(c.message_type.subscription_subject(c.key), routing_subject)
        for c in identity.consumes
    )


def may_write_key(identity: Identity, bucket: str, key: str) -> bool:
    if identity.admin:
        return True
    access = kv_access(identity, bucket)
    return access is not None and access[0] and matches(access[1], key)


def may_read_bucket(identity: Identity, bucket: str) -> bool:
    return identity.admin or kv_access(identity, bucket) is not None


def may_read_store(identity: Identity, store: str) -> bool:
    return identity.admin or store_access(identity, store) is not None


def may_write_store(identity: Identity, store: str) -> bool:
    return identity.admin or store_access(identity, store) == "write"


def may_subscribe(identity: Identity, subject: str) -> bool:
    """Replies and push deliveries arrive on its own inbox; responders answer their requests;
    nothing else is read by subscription (streams are read through consumers)."""
    if identity.admin:
        return True
    if matches(f"_INBOX.{identity.name}.>", subject):
        return True
    if subject.startswith(f"{ReplayDeadLetter.subject}."):
        return replays(identity, subject.removeprefix(f"{ReplayDeadLetter.subject}."))
    return any(r.subject == subject for r in identity.responds)


# ---------------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Result:
    identity: str
    family: str
    operation: str
    expected: bool
    actual: bool | str
    """True: it succeeded; False: it was refused; a string: neither (what happened)."""

    @property
    def wrong(self) -> bool:
        return self.actual is not self.expected

    def __str__(self) -> str:
        want = "allowed" if self.expected else "refused"
        got = self.actual if isinstance(self.actual, str) else ("refused", "allowed")[self.actual]
        return f"{self.identity}: {self.operation}: expected {want}, got {got}"


@dataclass(frozen=True)
class Probe:
    """One publish (with a reply subject: everything allowed is answered) or subscription."""

    family: str
    operation: str
    subject: str
    expected: bool
    payload: bytes = b""
    subscribe: bool = False
    answered: bool = True
    """Whether an allowed publish must get an answer (acks and flow control get none)."""


VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"')


@dataclass
class Prober:
    """A connection as one identity, with the permission violations the server reported."""

    identity: Identity
    nc: Client
    violations: set[tuple[str, str]] = field(default_factory=set)
    history: list[tuple[str, str]] = field(default_factory=list)
    """Every violation, in the order reported (an operation counts those after its start)."""
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    answers: dict[str, asyncio.Future[Msg]] = field(default_factory=dict)
    sequence: int = 0

    def on_error(self, error: Exception) -> None:
        text = str(error).lower()
        found = VIOLATION.search(text)
        if found is None:
            self.errors.append(text)
            return
        self.violations.add((found.group(1), found.group(2)))
        self.history.append((found.group(1), found.group(2)))
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def denied(self, subject: str, subscribe: bool = False) -> bool:
        return ("subscription" if subscribe else "publish", subject.lower()) in self.violations

    def refusal(self, denies: Callable[[str], bool], since: int = 0) -> str | None:
        """A publish refused after the ``since``-th violation whose subject ``denies`` names."""
        for kind, subject in self.history[since:]:
            if kind == "publish" and denies(subject):
                return subject
        return None

    async def refused(self, denies: Callable[[str], bool], since: int = 0) -> str:
        """The first such refused publish (waits for it)."""
        while (subject := self.refusal(denies, since)) is None:
            await self.changed.wait()
        return subject

    async def barrier(self) -> None:
        """Return once the server has handled everything sent before (see the docstring)."""
        subject = self.reply_subject()
        received = self.answers[subject] = asyncio.get_running_loop().create_future()
        since = len(self.history)
        await self.nc.publish(subject, b"barrier")
        refused = asyncio.ensure_future(self.refused(subject.lower().__eq__, since))
        try:
            await asyncio.wait({received, refused}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
            assert received.done() or refused.done(), "no barrier: the server did not answer"
        finally:
            refused.cancel()
            self.answers.pop(subject, None)

    def reply_subject(self) -> str:
        self.sequence += 1
        return f"_INBOX.{self.identity.name}.matrix.{self.sequence}"

    async def on_answer(self, msg: Msg) -> None:
        answer = self.answers.get(msg.subject)
        if answer is not None and not answer.done():
            answer.set_result(msg)

    async def run(self, probes: Sequence[Probe]) -> list[Result]:
        """Send ``probes`` in batches; after each batch's barrier every refusal is known."""
        tried = {(p.subject, p.subscribe) for p in probes}
        assert len(tried) == len(probes), "a refusal names the subject: one probe per subject"
        results = []
        for start in range(0, len(probes), BATCH):
            batch = probes[start : start + BATCH]
            subscriptions, waiting = [], []
            for probe in batch:
                if probe.subscribe:
                    subscriptions.append(await self.nc.subscribe(probe.subject))
                    continue
                reply = self.reply_subject()
                self.answers[reply] = asyncio.get_running_loop().create_future()
                waiting.append(reply)
                await self.nc.publish(probe.subject, probe.payload, reply)
            await self.barrier()
            for subscription in subscriptions:
                await subscription.unsubscribe()
            replies = iter(waiting)
            for probe in batch:
                reply = "" if probe.subscribe else next(replies)
                actual: bool | str = not self.denied(probe.subject, probe.subscribe)
                if actual and probe.answered and not probe.subscribe:
                    try:
                        await asyncio.wait_for(self.answers[reply], TIMEOUT)
                    except TimeoutError:
                        actual = "neither refused nor answered"
                self.answers.pop(reply, None)
                results.append(
                    Result(
                        self.identity.name, probe.family, probe.operation, probe.expected, actual
                    )
                )
        return results

    async def attempt(
        self,
        family: str,
        operation: str,
        expected: bool,
        action: Awaitable[Any],
        denies: Callable[[str], bool],
    ) -> Result:
        """Run a client operation (several requests): refused as soon as one of its requests is
        (``denies`` names their subjects), allowed if it completes."""
        since = len(self.history)
        task = asyncio.ensure_future(action)
        watch = asyncio.ensure_future(self.refused(denies, since))
        done, _ = await asyncio.wait({task, watch}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
        actual: bool | str
        if watch in done:
            actual = False
        elif task in done and task.exception() is None:
            actual = True
        else:
            await self.barrier()  # a refusal on its way explains the failure
            problem = task.exception() if task in done else "no answer"
            actual = False if self.refusal(denies, since) else f"failed: {problem!r}"
        for pending in (task, watch):
            while not pending.done():  # again if it cleans up after a cancel (and waits)
                pending.cancel()
                await asyncio.wait({pending}, timeout=0.05)
        await asyncio.gather(task, watch, return_exceptions=True)
        return Result(self.identity.name, family, operation, expected, actual)


# ---------------------------------------------------------------------------- what is tried


def sample_subject(stream: str) -> str:
    """A concrete subject of ``stream`` nothing is stored under."""
    if stream.startswith("KV_"):
        return f"$KV.{stream.removeprefix('KV_')}.matrix.none"
    if stream.startswith("OBJ_"):
        return f"$O.{stream.removeprefix('OBJ_')}.C.matrix-none"
    return STREAM_SUBJECTS[stream][0].replace(">", "matrix.none")


def declared_durables() -> list[tuple[str, str, str]]:
    """(stream, durable, filter) of every declared consumer, and of each orchestrator's
    durable filtered on the other workcell's subject."""
    found = []
    for identity in DECLARED:
        for c in identity.consumes:
            stream = stream_of(c.message_type)
            found.append((stream, c.durable, c.message_type.subscription_subject(c.key)))
            for workcell in WORKCELLS:
                if c.key in WORKCELLS and workcell != c.key:
                    found.append((stream, c.durable, c.message_type.subscription_subject(workcell)))
    return list(dict.fromkeys(found))


def jetstream_probes(identity: Identity, configs: dict[str, dict[str, Any]]) -> list[Probe]:
    """Every JetStream API verb on every stream; deletions come later (``deletion_probes``)."""
    name = identity.name
    probes: list[Probe] = []

    def api(verb: str, subject: str, payload: Any = None, **where: str) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        probes.append(Probe("jetstream", subject, subject, may_js(identity, verb, **where), body))

    api("INFO", "$JS.API.INFO")
    api("STREAM.NAMES", "$JS.API.STREAM.NAMES", {})
    api("STREAM.LIST", "$JS.API.STREAM.LIST", {})
    api("STREAM.CREATE", "$JS.API.STREAM.CREATE.MATRIX_NEW", {"name": "MATRIX_MISMATCH"})
    stepdown = "$JS.API.META.LEADER.STEPDOWN"  # a single server ignores it: no answer
    probes.append(Probe("jetstream", stepdown, stepdown, may_js(identity, "META"), answered=False))
    durables = declared_durables()
    for stream in ALL_STREAMS:
        s, sample = {"stream": stream}, sample_subject(stream)
        deliver = f"_INBOX.{name}.deliver"
        api("STREAM.INFO", f"$JS.API.STREAM.INFO.{stream}", None, **s)
        api("STREAM.CREATE", f"$JS.API.STREAM.CREATE.{stream}", configs[stream], **s)
        api("STREAM.UPDATE", f"$JS.API.STREAM.UPDATE.{stream}", configs[stream], **s)
        api("STREAM.PURGE", f"$JS.API.STREAM.PURGE.{stream}", {"filter": sample}, **s)
        api("STREAM.MSG.GET", f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": 1}, **s)
        api("STREAM.MSG.DELETE", f"$JS.API.STREAM.MSG.DELETE.{stream}", {"seq": 2**40}, **s)
        api("DIRECT.GET", f"$JS.API.DIRECT.GET.{stream}", {"seq": 1}, **s)
        api("DIRECT.GET.SUBJECT", f"$JS.API.DIRECT.GET.{stream}.{sample}", None, **s)
        api("STREAM.SNAPSHOT", f"$JS.API.STREAM.SNAPSHOT.{stream}", {}, **s)
        api("STREAM.RESTORE", f"$JS.API.STREAM.RESTORE.{stream}", {}, **s)
        api("STREAM.LEADER.STEPDOWN", f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", {}, **s)
        api("STREAM.PEER.REMOVE", f"$JS.API.STREAM.PEER.REMOVE.{stream}", {"peer": "x"}, **s)
        api("CONSUMER.LIST", f"$JS.API.CONSUMER.LIST.{stream}", {}, **s)
        api("CONSUMER.NAMES", f"$JS.API.CONSUMER.NAMES.{stream}", {}, **s)
        ephemeral = {
            "deliver_subject": f"{deliver}.{stream}",
            "ack_policy": "none",
            "deliver_policy": "new",
            "inactive_threshold": 5_000_000_000,
        }
        api(
            "CONSUMER.CREATE",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            {"stream_name": stream, "config": ephemeral},
            **s,
        )
        consumers = [("matrix-probe", ""), ("matrix-probe", sample)]
        consumers += [(durable, filt) for st, durable, filt in durables if st == stream]
        for durable, filt in consumers:
            config = {
                "name": durable,
                "durable_name": durable,
                "deliver_subject": f"{deliver}.{durable}",
                "deliver_group": durable,
                "ack_policy": "explicit",
                "deliver_policy": "new",
            }
            subject = f"$JS.API.CONSUMER.CREATE.{stream}.{durable}"
            if filt:
                config["filter_subject"] = filt
                subject += f".{filt}"
            api(
                "CONSUMER.CREATE.NAMED",
                subject,
                {"stream_name": stream, "config": config},
                stream=stream,
                consumer=durable,
                filt=filt,
            )
        for durable in dict.fromkeys(d for d, _ in consumers):
            c = {"stream": stream, "consumer": durable}
            legacy = {"stream_name": stream, "config": {"durable_name": durable}}
            api(
                "CONSUMER.DURABLE.CREATE",
                f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
                legacy,
                **c,
            )
            api("CONSUMER.INFO", f"$JS.API.CONSUMER.INFO.{stream}.{durable}", None, **c)
            api(
                "CONSUMER.MSG.NEXT",
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                {"batch": 1, "no_wait": True},
                **c,
            )
            api("CONSUMER.PAUSE", f"$JS.API.CONSUMER.PAUSE.{stream}.{durable}", {}, **c)
            api(
                "CONSUMER.LEADER.STEPDOWN",
                f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{durable}",
                {},
                **c,
            )
            ack = f"$JS.ACK.{stream}.{durable}.1.1.1.1.1"
            probes.append(
                Probe("jetstream", ack, ack, may_js(identity, "ACK", **c), b"+ACK", answered=False)
            )
        fc = f"$JS.FC.{stream}.matrix.1"
        probes.append(Probe("jetstream", fc, fc, may_js(identity, "FC", **s), answered=False))
    return probes


def deletion_probes(identity: Identity) -> list[Probe]:
    """Deleting every consumer tried before, then every stream: the very last checks."""
    probes = []
    durables = [(s, d) for s, d, _ in declared_durables()]
    durables += [(stream, "matrix-probe") for stream in ALL_STREAMS]
    for stream, durable in dict.fromkeys(durables):
        subject = f"$JS.API.CONSUMER.DELETE.{stream}.{durable}"
        may = may_js(identity, "CONSUMER.DELETE", stream=stream, consumer=durable)
        probes.append(Probe("jetstream", subject, subject, may))
    for stream in ALL_STREAMS:
        subject = f"$JS.API.STREAM.DELETE.{stream}"
        probes.append(
            Probe("jetstream", subject, subject, may_js(identity, "STREAM.DELETE", stream=stream))
        )
    return probes


def keys_of(message_type: type[Message]) -> list[str | None]:
    """Keys to try: under either workcell, none of a workcell, and no key at all; a replay's
    under each identity (``<identity>.<durable>``)."""
    if not message_type.keyed:
        return [None]
    if message_type in REPLAY_TYPES:
        return [None, *(f"{i.name}.matrix-durable" for i in DECLARED)]
    return [None, f"wc-x.{ID}", f"wc-y.{ID}", ID, "wc-x", "wc-y"]


def subject_probes(identity: Identity) -> list[Probe]:
    """Every message type published (and dead-lettered) under every key, every request sent
    and answered, every subject family subscribed, every other inbox written to."""
    probes = []
    for message_type in all_message_types():
        if issubclass(message_type, Request):
            for key in keys_of(message_type):
                subject = message_type.subject if key is None else f"{message_type.subject}.{key}"
                may_ask = identity.admin or (
                    message_type in identity.requests and (key is None) != message_type.keyed
                )
                probes.append(Probe("request", f"request {subject}", subject, may_ask, b"{}"))
                may_answer = may_subscribe(identity, subject)
                probes.append(
                    Probe("subscribe", f"subscribe {subject}", subject, may_answer, subscribe=True)
                )
            continue
        kind = "command" if issubclass(message_type, Command) else "event"
        for key in keys_of(message_type):
            subject = message_type.subject if key is None else f"{message_type.subject}.{key}"
            label = subject.replace(ID, "<id>")
            may = may_publish(identity, message_type, key)
            probes.append(Probe(kind, f"publish {label}", subject, may, b'{"probe": true}'))
            dead = dead_letter_subject(subject)
            may = may_dead_letter(identity, subject)
            label = dead.replace(ID, "<id>")
            probes.append(Probe("dead-letter", f"publish {label}", dead, may, b"{}"))
        family = message_type.subscription_subject()
        probes.append(
            Probe(
                "subscribe",
                f"subscribe {family}",
                family,
                may_subscribe(identity, family),
                subscribe=True,
            )
        )
    for foreign in (
        "praxis.evt.matrix.unknown",
        "praxis.cmd.matrix",
        "praxis.rpc.matrix.x",
        "praxis.matrix",
        "matrix",
        f"$KV.praxis_matrix.{ID}",
        "$O.praxis_matrix.M.x",
    ):
        probes.append(
            Probe(
                "foreign", f"publish {foreign.replace(ID, '<id>')}", foreign, identity.admin, b"{}"
            )
        )
    for other in DECLARED:
        if other.name != identity.name:
            inbox = f"_INBOX.{other.name}.matrix-forged"
            probes.append(Probe("inbox", f"publish {inbox}", inbox, identity.admin, b"{}"))
            subject = f"_INBOX.{other.name}.>"
            probes.append(
                Probe(
                    "inbox",
                    f"subscribe {subject}",
                    subject,
                    may_subscribe(identity, subject),
                    subscribe=True,
                )
            )
    for family in (
        f"_INBOX.{identity.name}.>",
        "_INBOX.>",
        ">",
        "praxis.>",
        "praxis.evt.>",
        "praxis.cmd.>",
        "praxis.dlq.>",
        "praxis.rpc.>",
        "$KV.>",
        "$O.>",
        "$JS.>",
        "$JS.API.>",
        "$JS.ACK.>",
        "$SYS.>",
    ):
        probes.append(
            Probe(
                "subscribe",
                f"subscribe {family}",
                family,
                may_subscribe(identity, family),
                subscribe=True,
            )
        )
    return probes


def store_probes(identity: Identity) -> list[Probe]:
    """Writing an object's chunk and its metadata straight to every store's subjects (what a
    put sends after reading the object's metadata, which a writer without read may skip)."""
    probes = []
    for store in STORES:
        for kind in ("C", "M"):
            subject = f"$O.{store}.{kind}.{ID}"
            label = f"publish $O.{store}.{kind}.<id>"
            probes.append(Probe("object", label, subject, may_write_store(identity, store), b"x"))
    return probes


def kv_keys(identity: str) -> list[str]:
    """Keys of either workcell's assets and edges, and a key of no workcell (a token id), each
    of one identity (what one identity writes and deletes, no other reads)."""
    entity = f"{ID}-{identity}"
    return [f"{kind}.{w}.{entity}" for kind in ("asset", "edge") for w in WORKCELLS] + [entity]


def watched(identity: str) -> str:
    """A key one identity watches (nobody writes it)."""
    return f"watched.{ID}-{identity}"


async def kv_operations(prober: Prober) -> list[Result]:
    identity, js = prober.identity, prober.nc.jetstream(timeout=TIMEOUT)

    def bucket(name: str) -> KeyValue:
        return KeyValue(name=name, stream=f"KV_{name}", pre=f"$KV.{name}.", js=js, direct=False)

    async def on(name: str, key: str) -> list[Result]:
        kv = bucket(name)
        label = f"{name} {key.replace(f'{ID}-{identity.name}', '<id>')}"
        read = f"$js.api.stream.msg.get.kv_{name}"
        written = f"$kv.{name}.{key}".lower()
        may_write = may_write_key(identity, name, key)
        results = [
            await prober.attempt(
                "kv", f"get {label}", may_read_bucket(identity, name), kv.get(key), read.__eq__
            )
        ]
        for verb, action in (
            ("put", lambda: kv.put(key, b"matrix")),
            ("delete", lambda: kv.delete(key)),
            ("purge", lambda: kv.purge(key)),
        ):
            results.append(
                await prober.attempt("kv", f"{verb} {label}", may_write, action(), written.__eq__)
            )
        return results

    async def watch(name: str) -> Result:
        kv, stream = bucket(name), f"kv_{name}"
        key = watched(identity.name)

        async def first_update() -> None:
            watcher = await kv.watch(key)
            try:
                # nats-py marks the end of the initial values with None, and puts it first when
                # its consumer's info came back before the value was counted pending: skip it.
                async with asyncio.timeout(TIMEOUT):
                    while (entry := await watcher.updates(TIMEOUT)) is None:
                        pass
                assert entry.value == b"seed", entry
            finally:
                await watcher.stop()

        def denies(subject: str) -> bool:
            return subject.startswith(
                (f"$js.api.consumer.create.{stream}", f"$js.api.consumer.info.{stream}.")
            ) or subject.startswith(f"$js.fc.{stream}.")

        may = may_read_bucket(identity, name)
        return await prober.attempt("kv", f"watch {name}", may, first_update(), denies)

    keys = kv_keys(identity.name)
    found: list[Result] = []
    for results in await asyncio.gather(*(on(b, k) for b in BUCKETS for k in keys)):
        found += results
    found += await asyncio.gather(*(watch(b) for b in BUCKETS))
    return found


async def object_operations(prober: Prober) -> list[Result]:
    identity, js = prober.identity, prober.nc.jetstream(timeout=TIMEOUT)

    async def on(store: str) -> list[Result]:
        objects = ObjectStore(name=store, stream=f"OBJ_{store}", js=js)
        stream = f"obj_{store}".lower()

        def touches(*verbs: str, names: bool = False, data: bool = False) -> Callable[[str], bool]:
            def denies(subject: str) -> bool:
                tokens = subject.split(".")
                if names and subject == "$js.api.stream.names":
                    return True
                if data and subject.startswith(f"$o.{store}."):
                    return True
                return stream in tokens and any(subject.startswith(f"$js.api.{v}.") for v in verbs)

            return denies

        async def get() -> None:
            result = await objects.get("matrix/seed")
            assert result.data == b"seed", result.data

        async def put_twice() -> None:
            await objects.put(f"matrix/{identity.name}/put", b"first")
            await objects.put(f"matrix/{identity.name}/put", b"second")  # replaces: a purge

        reading = touches(
            "stream.msg.get", "direct.get", "consumer.create", "consumer.info", names=True
        )
        writing = touches("stream.msg.get", "direct.get", "stream.purge", data=True)
        return [
            await prober.attempt(
                "object",
                f"get {store}",
                may_read_store(identity, store),
                get(),
                lambda s: reading(s) or s.startswith(f"$js.fc.{stream}."),
            ),
            await prober.attempt(
                "object",
                f"put and replace {store}",
                may_write_store(identity, store),
                put_twice(),
                writing,
            ),
            await prober.attempt(
                "object",
                f"delete {store}",
                may_write_store(identity, store),
                objects.delete(f"matrix/{identity.name}/delete"),
                writing,
            ),
        ]

    found: list[Result] = []
    for outcome in await asyncio.gather(*(on(store) for store in STORES)):
        found += outcome
    return found


# ------------------------------------------------------------------------------------ the run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    yield from _server(tmp_path_factory)


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server no other test of this module answers requests on."""
    yield from _server(tmp_path_factory)


def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    auth = NatsAuth(WORKCELLS)
    nats_server = NatsServer(tmp_path_factory.mktemp("nats-permission-matrix"), auth=auth)
    try:
        nats_server.start()
    except Exception as exc:
        server_unavailable(f"could not start nats-server: {exc}")
    provision_blocking(nats_server.operator_url, WORKCELLS)
    yield nats_server
    nats_server.stop()


async def connect(server: NatsServer, identity: Identity) -> Prober:
    assert server.auth is not None
    prober: Prober | None = None

    async def on_error(error: Exception) -> None:
        assert prober is not None
        prober.on_error(error)

    nc = await nats.connect(
        server.url,
        user=identity.name,
        password=server.auth.passwords[identity.name],
        inbox_prefix=f"_INBOX.{identity.name}",
        error_cb=on_error,
        allow_reconnect=False,
    )
    prober = Prober(identity, nc)
    await nc.subscribe(f"_INBOX.{identity.name}.matrix.>", cb=prober.on_answer)
    return prober


async def seed(operator: Client) -> dict[str, dict[str, Any]]:
    """A value under every key and an object in every store to read (and delete); the streams'
    own configs (what a harmless create or update sends)."""
    js = operator.jetstream(timeout=TIMEOUT)

    async def values(bucket: str) -> None:
        kv = await js.key_value(bucket)
        for identity in DECLARED:
            for key in (*kv_keys(identity.name), watched(identity.name)):
                await kv.put(key, b"seed")

    async def objects(store: str) -> None:
        objects = await js.object_store(store)
        await objects.put("matrix/seed", b"seed")
        for identity in DECLARED:
            await objects.put(f"matrix/{identity.name}/delete", b"delete me")

    await asyncio.gather(*map(values, BUCKETS), *map(objects, STORES))
    configs = {}
    for stream in ALL_STREAMS:
        reply = await operator.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=TIMEOUT)
        configs[stream] = json.loads(reply.data)["config"]
    return configs


async def respond(server: NatsServer) -> list[Prober]:
    """Each request type's declared responder, answering every request."""
    responders = []
    for identity in DECLARED:
        if identity.admin or not (identity.responds or identity.consumes):
            continue
        prober = await connect(server, identity)

        async def answer(msg: Msg, nc: Client = prober.nc) -> None:
            await nc.publish(msg.reply, b'{"answered": true}')

        for request in identity.responds:
            await prober.nc.subscribe(request.subject, cb=answer)
        if identity.consumes:  # the replays of its dead letters
            replays = ReplayDeadLetter.subscription_subject(f"{identity.name}.*")
            await prober.nc.subscribe(replays, cb=answer)
        await prober.nc.flush()
        responders.append(prober)
    return responders


@pytest.fixture(scope="module")
async def matrix(server: NatsServer) -> AsyncIterator[list[Result]]:
    probers = [await connect(server, identity) for identity in DECLARED]
    responders = await respond(server)
    operator = next(p for p in probers if p.identity.name == OPERATOR)
    try:
        configs = await seed(operator.nc)

        async def everything(prober: Prober) -> list[Result]:
            probes = [
                *jetstream_probes(prober.identity, configs),
                *subject_probes(prober.identity),
                *store_probes(prober.identity),
            ]
            found = await prober.run(probes)
            found += await kv_operations(prober)
            found += await object_operations(prober)
            return found

        results: list[Result] = []
        for found in await asyncio.gather(*(everything(p) for p in probers)):
            results += found
        # Deletions last, the operator's (which succeed) after everyone else's.
        for prober in sorted(probers, key=lambda p: p.identity.admin):
            results += await prober.run(deletion_probes(prober.identity))
        # What the operator deleted, the provisioner creates again (as provisioning does).
        provisioner = next(p for p in probers if p.identity.provisions)
        wanted = Topology(
            TOPOLOGY.streams, TOPOLOGY.key_values, (*TOPOLOGY.object_stores, claims(OPERATOR))
        )
        created = await provision(provisioner.nc.jetstream(timeout=TIMEOUT), wanted)
        assert len(created) == len(ALL_STREAMS), created
        for prober in (*probers, *responders):
            assert not prober.errors, (prober.identity.name, prober.errors)
        for prober in responders:  # their replies are allowed: one per request received
            assert not prober.violations, (prober.identity.name, prober.violations)
        yield results
    finally:
        for prober in (*probers, *responders):
            await prober.nc.close()


def check(results: Iterable[Result], *families: str) -> None:
    chosen = [r for r in results if r.family in families]
    tried = {r.identity for r in chosen}
    assert tried == set(BY_NAME), f"not tried as {set(BY_NAME) - tried}"
    assert any(r.expected for r in chosen) and not all(r.expected for r in chosen)
    wrong = [str(r) for r in chosen if r.wrong]
    assert not wrong, f"{len(wrong)} of {len(chosen)} differ from the rules:\n" + "\n".join(wrong)


def test_every_identity_against_every_jetstream_verb_and_stream(matrix: list[Result]) -> None:
    check(matrix, "jetstream")


def test_every_identity_against_every_subject_family(matrix: list[Result]) -> None:
    check(matrix, "event", "command", "dead-letter", "request", "subscribe", "inbox", "foreign")


def test_every_identity_against_every_key_value_bucket(matrix: list[Result]) -> None:
    check(matrix, "kv")


def test_every_identity_against_every_object_store(matrix: list[Result]) -> None:
    check(matrix, "object")


# ------------------------------------------------- what subject permissions cannot stop alone


async def test_the_shipped_provisioning_step_runs_as_the_provisioner(server: NatsServer) -> None:
    """It connects with the provisioner's inbox (the only one it may receive on); before, every
    JetStream request of the Kubernetes Job timed out."""
    assert server.auth is not None
    settings = ProvisionSettings(
        nats_url=server.url,
        nats_user=PROVISIONER,
        nats_password=server.auth.passwords[PROVISIONER],
    )
    await provision_deployment(settings, WORKCELLS)  # idempotent: all exists


async def stored(operator: Client, subject: str) -> bool:
    try:
        await operator.jetstream(timeout=TIMEOUT).get_last_msg(EVENTS.name, subject)
    except NotFoundError:
        return False
    return True


def bus_of(server: NatsServer, identity: str) -> Bus:
    assert server.auth is not None
    password = server.auth.passwords[identity]
    return Bus(server.url, identity, user=identity, password=password)


async def test_an_event_stored_from_a_jetstream_reply_is_handled_by_no_one(
    server: NatsServer,
) -> None:
    """nats-server sends a JetStream reply to whatever reply subject the request names: a
    direct get of an object orchestrator-wc-x wrote, "answered" to a wc-y run event's subject,
    is stored as that event with a body of x's choosing. The server cannot refuse it; the
    consumers do: such a message carries the reply's ``Nats-Stream`` headers, and is
    dead-lettered, never handled."""
    operator = await connect(server, BY_NAME[OPERATOR])
    x = await connect(server, BY_NAME["orchestrator-wc-x"])
    scheduler = bus_of(server, "scheduler")
    handled: asyncio.Queue[RunFinished] = asyncio.Queue()
    handlers: Handlers[None] = Handlers()

    @handlers.consume(RunFinished, durable="scheduler-run-finished")
    async def on_finished(event: RunFinished, _: None) -> None:
        handled.put_nowait(event)

    run = uuid.uuid4()
    forged = RunFinished(
        run_id=run, workcell="wc-y", edge_instance="e", outcome="completed", at=datetime.now(UTC)
    )
    dead = dead_letter_subject(forged.routing_subject())
    letters = await operator.nc.jetstream().subscribe(dead, ordered_consumer=True)
    await scheduler.connect()
    try:
        scheduler.include(handlers, None)
        await scheduler.start()
        store = ObjectStore("praxis_state_wc-x", "OBJ_praxis_state_wc-x", x.nc.jetstream())
        info = await store.put(f"wc-x/{uuid.uuid4()}", forged.model_dump_json().encode())
        chunk = f"$O.praxis_state_wc-x.C.{info.nuid}"
        subject = forged.routing_subject()
        await x.nc.publish(f"$JS.API.DIRECT.GET.OBJ_praxis_state_wc-x.{chunk}", b"", subject)
        letter = await asyncio.wait_for(letters.next_msg(TIMEOUT), TIMEOUT)
        assert await stored(operator.nc, subject)  # the server took it (the gap)
        assert "stored from a JetStream reply" in (letter.headers or {})[h.DEAD_LETTER_REASON]
        assert handled.empty()
    finally:
        await scheduler.stop()
        await x.nc.close()
        await operator.nc.close()


async def test_a_message_delivered_by_a_consumer_is_no_request(own_server: NatsServer) -> None:
    """nats-server delivers a push consumer's messages to any deliver subject: orchestrator-wc-x
    can make its own store's consumer deliver to ``praxis.rpc.asset.force_release``, a request
    only the gateway may send. The responder answers only requests with a reply subject in an
    inbox; the delivery's is ``$JS.ACK...``: never handled. A real request still is."""
    x = await connect(own_server, BY_NAME["orchestrator-wc-x"])
    responder = bus_of(own_server, "asset-manager")
    gateway = bus_of(own_server, "gateway")
    asked: asyncio.Queue[ForceReleaseLease] = asyncio.Queue()
    handlers: Handlers[None] = Handlers()
    lease = Lease(
        asset_id=uuid.uuid4(),
        asset_name="plate",
        lease_key="asset.wc-y.x",
        run_id=uuid.uuid4(),
        token=1,
        acquired_at=datetime.now(UTC),
        renewed_at=datetime.now(UTC),
        expires_at=None,
        age_seconds=0.0,
        seconds_left=None,
    )

    @handlers.rpc(ForceReleaseLease)
    async def force_release(request: ForceReleaseLease, _: None) -> Lease:
        asked.put_nowait(request)
        return lease

    await responder.connect()
    await gateway.connect()
    try:
        responder.include(handlers, None)
        await responder.start()
        store = ObjectStore("praxis_state_wc-x", "OBJ_praxis_state_wc-x", x.nc.jetstream())
        body = ForceReleaseLease(asset_id=uuid.uuid4(), reason="forged").model_dump_json()
        info = await store.put(f"wc-x/{uuid.uuid4()}", body.encode())
        config = ConsumerConfig(
            deliver_subject=ForceReleaseLease.subject,
            filter_subject=f"$O.praxis_state_wc-x.C.{info.nuid}",
        )
        assert own_server.auth is not None
        witness = await nats.connect(
            own_server.url,
            user="asset-manager",
            password=own_server.auth.passwords["asset-manager"],
            inbox_prefix="_INBOX.asset-manager",
        )
        seen = await witness.subscribe(ForceReleaseLease.subject)
        await witness.flush()
        await x.nc.jetstream().add_consumer("OBJ_praxis_state_wc-x", config)
        delivered = await seen.next_msg(TIMEOUT)  # the responder got it too, on its connection
        assert delivered.reply.startswith("$JS.ACK.")
        await witness.close()
        # The real request, sent after, is answered; the delivery before it was refused.
        real = ForceReleaseLease(asset_id=uuid.uuid4(), reason="real")
        assert await gateway.request(real) == lease
        assert (await asked.get()).reason == "real"
        assert asked.empty()
    finally:
        await gateway.stop()
        await responder.stop()
        await x.nc.close()
