"""The AsyncAPI document: every message type in it, every reference resolving, requests with
their replies, and the checked-in copy equal to what the contracts say."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from praxis_contracts.asyncapi import document
from praxis_contracts.base import Event, Request, all_message_types

CHECKED_IN = Path(__file__).resolve().parents[1] / "asyncapi.json"


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for k, v in node.items() if k != "$ref" for r in refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_message_type_has_a_channel_a_message_and_an_operation() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    for message_type in all_message_types():
        name = message_type.__name__
        channel = doc["channels"][name]
        address = message_type.subject + (".{key}" if message_type.keyed else "")
        assert channel["address"] == address
        assert ("parameters" in channel) == message_type.keyed
        payload = resolve(doc, doc["components"]["messages"][name]["payload"]["$ref"])
        expected = message_type.model_json_schema(ref_template="#/components/schemas/{model}")
        expected.pop("$defs", None)  # shared: under components.schemas
        assert payload == expected
        verb = "send" if issubclass(message_type, Event) else "receive"
        operation = doc["operations"][f"{verb}{name}"]
        assert operation["action"] == verb
        assert operation["channel"] == {"$ref": f"#/channels/{name}"}


def test_every_reference_resolves() -> None:
    doc = document()
    found = refs(doc)
    assert len(found) > 300
    for ref in found:
        resolve(doc, ref)  # a KeyError names the one that does not


def test_a_request_names_its_reply_and_the_error_reply() -> None:
    doc = document()
    for request in [t for t in all_message_types() if issubclass(t, Request)]:
        reply = doc["operations"][f"receive{request.__name__}"]["reply"]
        channel = resolve(doc, reply["channel"]["$ref"])
        assert set(channel["messages"]) == {request.reply_type.__name__, "ErrorReply"}


def test_the_checked_in_document_is_what_the_contracts_say() -> None:
    current = json.dumps(document(), indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        CHECKED_IN.write_text(current)
        return
    assert CHECKED_IN.read_text() == current, (
        "the bus's contracts changed: regenerate libs/contracts/asyncapi.json with "
        "`UPDATE_SNAPSHOTS=1 .venv/bin/pytest libs/contracts` and commit it"
    )
