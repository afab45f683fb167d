"""The typed client (``libs/client``) covers the HTTP API: every documented operation has a call,
with the reply type the gateway documents, and every call is a documented operation."""

from __future__ import annotations

import inspect
import re
from typing import Any, get_args

from praxis_client import calls
from praxis_client.calls import Call
from praxis_gateway.app import Settings, create_app

ARGUMENTS: dict[str, Any] = {
    "action": "pause",
    "outcome": "failed",
    "scopes": ["read"],
    "sequence": 0,
    "reason": "r",
    "kind": "machine",
}


def client_operations() -> dict[tuple[str, str], str]:
    """``{(method, path template): reply type name}`` of every call builder (each asset kind)."""
    found: dict[tuple[str, str], str] = {}
    for builder in vars(calls).values():
        if not inspect.isfunction(builder) or not str(
            inspect.signature(builder).return_annotation
        ).startswith("Call["):
            continue
        params = inspect.signature(builder).parameters.values()
        for kind in get_args(calls.AssetKind):
            arguments = {
                p.name: kind if p.name == "kind" else ARGUMENTS.get(p.name, "X")
                for p in params
                if p.default is inspect.Parameter.empty
            }
            call: Call[Any] = builder(**arguments)
            template = re.sub(r"/(X|0)(?=/|$)", "/{}", call.path)
            found[(call.method, template)] = call.reply.__name__ if call.reply else "None"
    # The live streams are not Calls (its reply is text/event-stream): the clients' ``events``.
    found[("GET", calls.run_events_path("{}"))] = "None"
    found[("GET", calls.LIVE_EVENTS_PATH)] = "None"
    return found


def documented_operations() -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for path, operations in create_app(Settings()).openapi()["paths"].items():
        for method, operation in operations.items():
            ok = next(
                (
                    operation["responses"][s]
                    for s in ("200", "201", "204")
                    if s in operation["responses"]
                ),
                {},
            )
            schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
            reply = schema.get("$ref", "").rsplit("/", 1)[-1] or "None"
            found[(method.upper(), re.sub(r"\{[^}]+\}", "{}", path))] = reply
    return found


def test_the_client_has_every_documented_operation_with_its_reply_type() -> None:
    documented = documented_operations()
    client = {k: v for k, v in client_operations().items() if k[1].startswith("/api/")}
    assert len(documented) > 40
    assert sorted(set(documented) - set(client)) == [], "operations the client lacks"
    assert sorted(set(client) - set(documented)) == [], "client calls the API does not have"
    wrong = {op: (client[op], reply) for op, reply in documented.items() if client[op] != reply}
    assert wrong == {}
