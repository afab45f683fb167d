"""The NATS permission declaration (``praxis_contracts.permissions``) against reality: the
message types, the services' handler registrations, the gateway's requests, and what the
generated nats-server config lets each identity do. Real-server proofs are in
tests/integration/test_nats_authorization.py."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from praxis_contracts.base import Command, Event, Message, Request, all_message_types
from praxis_contracts.deadletters import REPLAY_TYPES
from praxis_contracts.permissions import (
    ANY_WORKCELL,
    GATEWAY,
    OPERATOR,
    Consumes,
    Identity,
    identities,
    identity_for_service,
    needs,
    orchestrator,
    services,
)
from praxis_contracts.runs import ControlRunExecution, ExecuteRun, RunFinished, RunStatusChanged
from praxis_contracts.topology import dead_letter_subject
from praxis_runtime.bus import Handlers
from praxis_runtime.natsauth import (
    allows,
    authorization_config,
    kv_stream,
    object_stream,
    permissions,
    subject_matches,
)

WORKCELLS = ("wc-x", "wc-y")
DECLARED = identities(WORKCELLS)
BY_NAME = {i.name: i for i in DECLARED}
CONTEXT_OWNER = {
    "asset": "asset-manager",
    "code": "code-manager",
    "scheduler": "scheduler",
    "orchestrator": "orchestrator",
    "audit": "audit",
}
"""Who owns each ``<context>`` token of ``praxis.<kind>.<context>...``."""


def owner(identity: Identity) -> str:
    return "orchestrator" if identity.name.startswith("orchestrator") else identity.name


def context_of(message_type: type[Message]) -> str:
    return message_type.subject.split(".")[2]


def service_handlers() -> dict[str, list[Handlers[Any]]]:
    """Each service identity's handler groups, as the services register them."""
    from praxis_orchestrator.handlers import handlers_for

    def group(module: str) -> Handlers[Any]:
        handlers: Handlers[Any] = importlib.import_module(module).handlers
        return handlers

    return {
        "scheduler": [group("praxis_scheduler.handlers")],
        "asset-manager": [
            group("praxis_asset_manager.handlers"),
            group("praxis_asset_manager.inventory_handlers"),
            group("praxis_asset_manager.snapshots"),
        ],
        "code-manager": [group("praxis_code_manager.handlers")],
        "gateway": [],
        "orchestrator-wc-x": [handlers_for("wc-x")],
    }


@pytest.mark.parametrize("message_type", all_message_types(), ids=lambda t: t.__name__)
def test_every_message_type_has_an_owner_that_may_send_it(message_type: type[Message]) -> None:
    if message_type in REPLAY_TYPES:  # every consumer's, under its own identity's key
        for identity in DECLARED:
            allowed = permissions(identity)
            verb = "subscribe" if issubclass(message_type, Request) else "publish"
            own = message_type.subscription_subject(f"{identity.name}.some-durable")
            other = message_type.subscription_subject("somebody-else.some-durable")
            assert allows(allowed, verb, own) == bool(identity.consumes or identity.admin)
            assert not allows(allowed, verb, other) or identity.admin
        return
    if issubclass(message_type, Request):
        senders = [i.name for i in DECLARED if message_type in i.responds]
        assert len(senders) == 1, f"{message_type.__name__} is answered by {senders}"
        assert owner(BY_NAME[senders[0]]) == CONTEXT_OWNER[context_of(message_type)]
        return
    senders = [owner(i) for i in DECLARED if not i.admin and message_type in published(i)]
    assert senders, f"nobody may publish {message_type.__name__}"
    if issubclass(message_type, Event):  # an event is published by its context alone
        assert set(senders) == {CONTEXT_OWNER[context_of(message_type)]}, senders


def published(identity: Identity) -> set[type[Message]]:
    return {p.message_type for p in identity.publishes}


def test_events_of_one_context_are_published_by_that_context_only() -> None:
    for identity in DECLARED:
        for message_type in published(identity):
            if issubclass(message_type, Event):
                assert CONTEXT_OWNER[context_of(message_type)] == owner(identity)


@pytest.mark.parametrize(
    "name", ["scheduler", "asset-manager", "code-manager", "orchestrator-wc-x"]
)
def test_handlers_subscribe_only_to_what_their_identity_may_consume(name: str) -> None:
    identity = BY_NAME[name]
    groups = service_handlers()[name]
    registered_rpcs = {r.request_type for g in groups for r in g.rpcs}
    registered = {Consumes(c.message_type, c.durable, c.key) for g in groups for c in g.consumers}
    assert registered_rpcs == set(identity.responds)
    assert registered == set(identity.consumes)
    allowed = permissions(identity)
    for rpc in registered_rpcs:
        assert allows(allowed, "subscribe", rpc.subject)
    for consumer in registered:
        stream = (
            "PRAXIS_COMMANDS" if issubclass(consumer.message_type, Command) else "PRAXIS_EVENTS"
        )
        create = f"$JS.API.CONSUMER.CREATE.{stream}.{consumer.durable}.{consumer.filter_subject}"
        assert allows(allowed, "publish", create)
        assert allows(allowed, "publish", f"$JS.ACK.{stream}.{consumer.durable}.1.2.3.4.5")
        # What the bus dead-letters a message of that consumer to.
        routing = consumer.filter_subject.replace("*", "some-key").replace(">", "a.b")
        assert allows(allowed, "publish", dead_letter_subject(routing))


def test_every_service_identity_is_declared_and_named_as_the_stack_names_it() -> None:
    for service in ("scheduler", "asset-manager", "code-manager", "gateway"):
        assert identity_for_service(service) in services(WORKCELLS)
    assert identity_for_service("orchestrator", "wc-x") == "orchestrator-wc-x"
    with pytest.raises(KeyError):
        identity_for_service("nobody")


def test_the_gateway_may_send_every_request_its_routes_send() -> None:
    used: set[type[Message]] = set()
    for module in ("praxis_gateway.routes", "praxis_gateway.inventory_routes"):
        namespace = vars(importlib.import_module(module))
        used |= {
            v for v in namespace.values() if isinstance(v, type) and issubclass(v, Request)
        } - {Request}
    assert used <= set(GATEWAY.requests), used - set(GATEWAY.requests)
    allowed = permissions(GATEWAY)
    assert all(allows(allowed, "publish", r.subscription_subject("k.k")) for r in GATEWAY.requests)


@pytest.mark.parametrize("identity", DECLARED, ids=lambda i: i.name)
def test_every_identity_may_check_what_it_binds_to_and_read_only_its_own_inbox(
    identity: Identity,
) -> None:
    allowed = permissions(identity)
    topology = needs(identity)
    streams = [s.name for s in topology.streams]
    streams += [kv_stream(k.bucket) for k in topology.key_values]
    streams += [object_stream(o.bucket) for o in topology.object_stores]
    for stream in streams:
        assert allows(allowed, "publish", f"$JS.API.STREAM.INFO.{stream}")
    assert allows(allowed, "subscribe", f"_INBOX.{identity.name}.abc")
    if not identity.admin:
        others = [i for i in DECLARED if i.name != identity.name]
        assert not any(allows(allowed, "subscribe", f"_INBOX.{o.name}.abc") for o in others)
        for verb in ("DELETE", "PURGE"):
            assert not allows(allowed, "publish", f"$JS.API.STREAM.{verb}.PRAXIS_EVENTS")
            assert not allows(allowed, "publish", f"$JS.API.STREAM.{verb}.KV_praxis_api_tokens")
        for verb in ("CREATE", "UPDATE"):  # the provisioner's alone
            may = allows(allowed, "publish", f"$JS.API.STREAM.{verb}.KV_praxis_api_tokens")
            assert may == identity.provisions, (identity.name, verb)
        assert not allows(allowed, "publish", "$JS.API.CONSUMER.DURABLE.CREATE.PRAXIS_COMMANDS.x")


def test_only_a_workcells_orchestrator_publishes_its_run_events() -> None:
    finished = RunFinished.subscription_subject("wc-x.run-1")
    status = RunStatusChanged.subscription_subject("run-1")
    for identity in DECLARED:
        allowed = permissions(identity)
        may_finish = allows(allowed, "publish", finished)
        may_status = allows(allowed, "publish", status)
        if identity.admin:
            continue
        assert may_finish == (identity.name == "orchestrator-wc-x"), identity.name
        assert may_status == (identity.name == "scheduler"), identity.name
        lease = "$KV.praxis_asset_leases.asset.wc-x.some-asset"
        may_lease = allows(allowed, "publish", lease)
        assert may_lease == (identity.name in ("orchestrator-wc-x", "asset-manager")), identity
    gateway = permissions(GATEWAY)
    assert not any(allows(gateway, "publish", f"praxis.{kind}.x.y") for kind in ("evt", "cmd"))


def test_only_workcell_x_orchestrator_consumes_its_commands() -> None:
    for message_type, durable in (
        (ExecuteRun, "orchestrator-wc-x"),
        (ControlRunExecution, "orchestrator-control-wc-x"),
    ):
        subject = message_type.subscription_subject("wc-x")
        create_theirs = f"$JS.API.CONSUMER.CREATE.PRAXIS_COMMANDS.{durable}.{subject}"
        create_own = f"$JS.API.CONSUMER.CREATE.PRAXIS_COMMANDS.orchestrator-wc-y.{subject}"
        for identity in DECLARED:
            allowed = permissions(identity)
            may = allows(allowed, "publish", create_theirs) or allows(
                allowed, "publish", create_own
            )
            assert may == (identity.name in ("orchestrator-wc-x", OPERATOR)), identity.name
            if not identity.admin:
                unfiltered = "$JS.API.CONSUMER.CREATE.PRAXIS_COMMANDS"
                assert not allows(allowed, "publish", unfiltered)
                acks = f"$JS.ACK.PRAXIS_COMMANDS.{durable}.1.1.1.1.1"
                assert allows(allowed, "publish", acks) == (identity.name == "orchestrator-wc-x")
    heartbeat = "$KV.praxis_edges.edge.wc-x.instance"
    writers = [i.name for i in DECLARED if allows(permissions(i), "publish", heartbeat)]
    assert writers == ["orchestrator-wc-x", OPERATOR]


def test_the_any_workcell_orchestrator_consumes_every_workcell() -> None:
    allowed = permissions(orchestrator(ANY_WORKCELL))
    subject = ExecuteRun.subscription_subject("wc-z")
    assert allows(allowed, "publish", f"$JS.API.CONSUMER.CREATE.PRAXIS_COMMANDS.any.{subject}")


def test_the_subject_matcher_follows_the_server() -> None:
    assert subject_matches("a.*.c", "a.b.c") and not subject_matches("a.*.c", "a.b.c.d")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    assert subject_matches("a.*", "a.*") and not subject_matches("a.b", "a.*")


def test_the_config_hashes_every_password_and_names_every_identity() -> None:
    passwords = {i.name: f"secret-{i.name}" for i in DECLARED}
    text = authorization_config(DECLARED, passwords, rounds=4)
    assert "secret-" not in text
    assert text.count('"password": "$2b$04$') == len(DECLARED)
    for identity in DECLARED:
        assert f'"user": "{identity.name}"' in text
    assert '"allow_responses"' in text
