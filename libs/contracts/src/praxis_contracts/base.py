"""Message base classes: every wire message is a frozen pydantic model that knows its subject.

Subject grammar, broad to narrow so wildcards work:

- ``praxis.cmd.<context>.<action>[.<key>]``  JetStream commands (work queue, one consumer group)
- ``praxis.evt.<context>.<aggregate>.<action>[.<key>]``  JetStream events (audit, fan-out)
- ``praxis.rpc.<context>.<name>``  core NATS request/reply (queries and synchronous commands)

A ``<key>`` (entity ids, one token or more) is appended only where a consumer filters on it or a
permission narrows by it: run events are keyed ``<workcell>.<run id>`` (only the workcell's edge
may publish them; live per-run streams filter on the run), orchestrator commands by workcell name
(edge routing). A consumer of a keyed type takes every key with ``<subject>.>``.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

SUBJECT_ROOT = "praxis"


class Message(BaseModel):
    """A wire message. Event readers ignore unknown fields so evolution stays additive;
    commands and requests refuse them (see ``Command``, ``Request``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    subject: ClassVar[str]
    """Base subject of the message type; the routing subject may add a key token."""

    keyed: ClassVar[bool] = False
    """Whether the routing subject ends in an entity-id token (see ``subject_key``)."""

    def subject_key(self) -> str:
        """The entity-id token for keyed messages. Keyed subclasses override this."""
        raise NotImplementedError(f"{type(self).__name__} is not keyed")

    def routing_subject(self) -> str:
        """The concrete subject this instance is published on."""
        if self.keyed:
            return f"{self.subject}.{self.subject_key()}"
        return self.subject

    @classmethod
    def subscription_subject(cls, key: str | None = None) -> str:
        """The subject to subscribe to: one key (pattern), or every key (``>``) of a keyed
        type."""
        if not cls.keyed:
            return cls.subject
        return f"{cls.subject}.{key or '>'}"


class Command(Message):
    """An imperative instruction delivered once through a JetStream work queue. An unknown
    field is refused (dead-lettered): a command someone sent must not be half carried out."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Message):
    """A past-tense fact published on the events stream; any number of subscribers."""


ReplyT = TypeVar("ReplyT", bound=BaseModel)


class Request(Message, Generic[ReplyT]):
    """A request/reply message (query or synchronous command) with a declared reply type. An
    unknown field is refused (``invalid_request`` naming it): nothing asked for is ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reply_type: ClassVar[type[BaseModel]]


class Empty(BaseModel):
    """A reply without content."""

    model_config = ConfigDict(frozen=True)


def all_message_types() -> list[type[Message]]:
    """Every concrete message class defined under ``praxis_contracts`` (for snapshots/guards)."""
    for module in (
        "assets",
        "audit",
        "deadletters",
        "inventory",
        "protocols",
        "runs",
        "state",
    ):  # at call time: no cycle
        importlib.import_module(f"praxis_contracts.{module}")
    found: dict[str, type[Message]] = {}
    stack: list[type[Any]] = [Command, Event, Request]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            stack.append(sub)
            if "subject" in sub.__dict__ and sub.__module__.startswith("praxis_contracts"):
                found[f"{sub.__module__}.{sub.__qualname__}"] = sub
    return [found[k] for k in sorted(found)]


def event_types() -> dict[str, type[Event]]:
    """Every event type by its name on the wire and in the live streams,
    ``context.aggregate.action`` (its subject without ``praxis.evt.``)."""
    prefix = f"{SUBJECT_ROOT}.evt."
    return {
        cls.subject.removeprefix(prefix): cls
        for cls in all_message_types()
        if issubclass(cls, Event) and cls.subject.startswith(prefix)
    }
