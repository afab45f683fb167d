"""The bus as an AsyncAPI 3 document, generated from the contracts.

Every message type (``base.all_message_types``) becomes a channel at its subject (a keyed type's
address ends in ``{key}``), a message with its JSON schema and the headers it may carry, and an
operation saying what Praxis does with it: it *sends* events (subscribers receive them), and
*receives* commands and requests, answering a request on the caller's reply inbox with its reply
type, or with ``ErrorReply`` and the ``Praxis-Error`` header. The gateway serves it at
``/asyncapi.json``; ``libs/contracts/asyncapi.json`` is the copy checked in, which a test keeps
equal to what the contracts say (``UPDATE_SNAPSHOTS=1`` regenerates it).
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel

from praxis_contracts import headers as h
from praxis_contracts.base import Command, Event, Message, Request, all_message_types
from praxis_contracts.errors import ErrorReply

VERSION = "3.0.0"

HEADERS: dict[str, str] = {
    h.MSG_ID: "Unique per message: JetStream drops a copy published again within its window.",
    h.CORRELATION_ID: "The request that caused it, followed through every service and event.",
    h.CAUSATION_ID: "The message that caused it.",
    h.ERROR: "On a reply: the body is an ErrorReply.",
    h.CLAIM: "The body was too large to travel inline: the object in the claims store that "
    "holds it.",
    h.CLAIM_SHA256: "SHA-256 (hex) of the claimed body.",
    h.DEAD_LETTER_REASON: "On a dead letter: why it could not be handled.",
    h.DEAD_LETTER_SUBJECT: "On a dead letter: the subject it was sent on.",
}


def _summary(cls: type) -> str:
    return (inspect.getdoc(cls) or cls.__name__).split("\n\n")[0].replace("\n", " ")


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _channel(path: str) -> dict[str, str]:
    return {"$ref": f"#/channels/{path}"}


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two schemas are named {name}: give one another name")


def _message(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    _schema(model, schemas)
    return {
        "name": model.__name__,
        "title": model.__name__,
        "summary": _summary(model),
        "contentType": "application/json",
        "headers": _ref("schemas", "Headers"),
        "payload": _ref("schemas", model.__name__),
    }


def document() -> dict[str, Any]:
    """The AsyncAPI 3 document of every message type."""
    types = sorted(all_message_types(), key=lambda t: t.__name__)
    names = [t.__name__ for t in types]
    if len(set(names)) != len(names):
        raise ValueError("two message types share a name")
    schemas: dict[str, Any] = {
        "Headers": {
            "type": "object",
            "properties": {
                name: {"type": "string", "description": why} for name, why in HEADERS.items()
            },
        }
    }
    messages: dict[str, Any] = {"ErrorReply": _message(ErrorReply, schemas)}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for message_type in types:
        name = message_type.__name__
        messages[name] = _message(message_type, schemas)
        channel: dict[str, Any] = {
            "address": message_type.subject + (".{key}" if message_type.keyed else ""),
            "description": _summary(message_type),
            "messages": {name: _ref("messages", name)},
        }
        if message_type.keyed:
            channel["parameters"] = {
                "key": {"description": "The entity the message is about (see subject_key)."}
            }
        channels[name] = channel
        operations[f"{_verb(message_type)}{name}"] = _operation(
            message_type, messages, channels, schemas
        )
    return {
        "asyncapi": VERSION,
        "info": {
            "title": "Praxis",
            "version": "1",
            "description": "Commands, events and requests on NATS (JetStream for commands and "
            "events, core NATS request/reply for requests). Subjects: "
            "praxis.cmd.<context>.<action>[.<key>], "
            "praxis.evt.<context>.<aggregate>.<action>[.<key>], praxis.rpc.<context>.<name>.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "nats:4222",
                "protocol": "nats",
                "description": "The deployment's NATS (NATS_URL); each identity may use only "
                "the subjects its role needs.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _verb(message_type: type[Message]) -> str:
    return "send" if issubclass(message_type, Event) else "receive"


def _operation(
    message_type: type[Message],
    messages: dict[str, Any],
    channels: dict[str, Any],
    schemas: dict[str, Any],
) -> dict[str, Any]:
    name = message_type.__name__
    operation: dict[str, Any] = {
        "action": _verb(message_type),
        "channel": _channel(name),
        "summary": (
            "Praxis publishes it on the events stream; any number of subscribers."
            if issubclass(message_type, Event)
            else "Delivered once through the commands work queue."
            if issubclass(message_type, Command)
            else "A request: the reply comes on the caller's inbox."
        ),
        "messages": [_channel(f"{name}/messages/{name}")],
    }
    if issubclass(message_type, Request):
        reply_type: type[BaseModel] = message_type.reply_type
        reply = reply_type.__name__
        if reply not in messages:
            messages[reply] = _message(reply_type, schemas)
        channels[f"{name}Reply"] = {
            "address": None,
            "description": f"The reply to {name}: the caller's inbox.",
            "messages": {
                reply: _ref("messages", reply),
                "ErrorReply": _ref("messages", "ErrorReply"),
            },
        }
        operation["reply"] = {
            "channel": _channel(f"{name}Reply"),
            "messages": [
                _channel(f"{name}Reply/messages/{reply}"),
                _channel(f"{name}Reply/messages/ErrorReply"),
            ],
        }
    return operation


__all__ = ["document"]
