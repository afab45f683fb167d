"""Contract guard rails: schema snapshot, subject grammar, purity, errors, validation."""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import praxis_contracts
from praxis_contracts.assets import ReserveAssets
from praxis_contracts.base import Command, Event, Message, Request, all_message_types
from praxis_contracts.common import SearchFilters
from praxis_contracts.errors import (
    ErrorCode,
    ErrorReply,
    NotFound,
    PraxisError,
    error_from_reply,
)
from praxis_contracts.runs import RunStatusChanged, SubmitRun
from praxis_contracts.topology import COMMANDS, DEAD_LETTERS, EVENTS, STREAMS, dead_letter_subject

SRC = Path(praxis_contracts.__file__).resolve().parent
SNAPSHOT = Path(__file__).with_name("schema_snapshot.json")
ALLOWED_THIRD_PARTY = frozenset({"pydantic", "typing_extensions", "praxis_contracts"})


def _import_all_contract_modules() -> None:
    for info in pkgutil.iter_modules(praxis_contracts.__path__, "praxis_contracts."):
        importlib.import_module(info.name)


_import_all_contract_modules()
MESSAGES = all_message_types()
COMMAND_TYPES = [t for t in MESSAGES if issubclass(t, Command)]
EVENT_TYPES = [t for t in MESSAGES if issubclass(t, Event)]
REQUEST_TYPES = [t for t in MESSAGES if issubclass(t, Request)]


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def nats_match(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` one or more trailing tokens."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


def sample_key_instance(cls: type[Message]) -> Message:
    """An instance carrying only the fields a keyed message derives its key from."""
    return cls.model_construct(
        run_id=uuid.UUID(int=7),
        workcell_name="wc-key",
        workcell="wc-key",
        asset_id=uuid.UUID(int=7),
        identity="scheduler",
        consumer="scheduler-reserved",
    )


# -- schema snapshot -------------------------------------------------------------------------


def current_schemas() -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {qualified(t): t for t in MESSAGES}
    for request in REQUEST_TYPES:
        models[qualified(request.reply_type)] = request.reply_type
    models[qualified(ErrorReply)] = ErrorReply
    snapshot = {
        name: {
            "subject": getattr(model, "subject", None),
            "keyed": getattr(model, "keyed", None),
            "schema": model.model_json_schema(),
        }
        for name, model in sorted(models.items())
    }
    normalised: dict[str, Any] = json.loads(json.dumps(snapshot, sort_keys=True))
    return normalised


def test_schema_snapshot_matches() -> None:
    current = current_schemas()
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        return
    assert SNAPSHOT.exists(), f"{SNAPSHOT} is missing: run with UPDATE_SNAPSHOTS=1 to create it"
    committed = json.loads(SNAPSHOT.read_text())
    changed = sorted(
        name
        for name in committed.keys() | current.keys()
        if committed.get(name) != current.get(name)
    )
    assert not changed, (
        f"wire contracts changed: {changed}. If the change is deliberate (and additive), "
        "regenerate the snapshot with `UPDATE_SNAPSHOTS=1 .venv/bin/pytest "
        "libs/contracts/tests/test_contracts.py` and commit schema_snapshot.json; a breaking "
        "change needs a new type and subject instead."
    )


def test_snapshot_covers_every_message_and_reply() -> None:
    names = set(current_schemas())
    assert len(MESSAGES) >= 20
    assert {qualified(t) for t in MESSAGES} <= names
    assert {qualified(r.reply_type) for r in REQUEST_TYPES} <= names


def test_all_message_types_needs_no_prior_imports() -> None:
    """A guard built on ``all_message_types()`` must not depend on who imported what first."""
    code = "import praxis_contracts\nprint(len(praxis_contracts.all_message_types()))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert int(out.stdout.strip()) == len(MESSAGES)


# -- subject grammar -------------------------------------------------------------------------


def test_nats_matcher_semantics() -> None:
    assert nats_match("praxis.evt.>", "praxis.evt.a.b.c")
    assert not nats_match("praxis.evt.>", "praxis.evt")
    assert nats_match("praxis.cmd.*.x", "praxis.cmd.a.x")
    assert not nats_match("praxis.cmd.*", "praxis.cmd.a.b")
    assert not nats_match("praxis.cmd.a", "praxis.cmd.a.b")
    assert not nats_match("praxis.cmd.a.b", "praxis.cmd.a")


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        (Command, r"^praxis\.cmd\.[a-z_]+\.[a-z_]+$"),
        (Event, r"^praxis\.evt\.[a-z_]+\.[a-z_]+\.[a-z_]+$"),
        (Request, r"^praxis\.rpc\.[a-z_]+\.[a-z_]+$"),
    ],
)
def test_subject_grammar(kind: type[Message], pattern: str) -> None:
    types = [t for t in MESSAGES if issubclass(t, kind)]
    assert types
    bad = {t.__name__: t.subject for t in types if not re.match(pattern, t.subject)}
    assert not bad


def test_every_message_is_exactly_one_kind() -> None:
    for t in MESSAGES:
        kinds = [k for k in (Command, Event, Request) if issubclass(t, k)]
        assert len(kinds) == 1, t


def test_subjects_are_unique() -> None:
    by_subject: dict[str, list[str]] = {}
    for t in MESSAGES:
        by_subject.setdefault(t.subject, []).append(t.__name__)
    assert {s: n for s, n in by_subject.items() if len(n) > 1} == {}


def test_no_subject_is_a_prefix_of_another_keyed_subject() -> None:
    """A keyed subscription ``X.*`` must not also catch the messages of a type at ``X.y``."""
    for keyed in (t for t in MESSAGES if t.keyed):
        wildcard = keyed.subscription_subject()
        caught = [
            t.__name__ for t in MESSAGES if t is not keyed and nats_match(wildcard, t.subject)
        ]
        assert not caught, (keyed.__name__, caught)


def test_keyed_subjects() -> None:
    keyed = [t for t in MESSAGES if t.keyed]
    assert keyed
    run = str(uuid.UUID(int=7))
    for t in keyed:
        assert t.subscription_subject().endswith(".>")
        assert t.subscription_subject("k1") == f"{t.subject}.k1"
        instance = sample_key_instance(t)
        key = instance.subject_key()
        # Entity ids; an edge's run events carry their workcell first (its permissions); a
        # dead letter's replay names the identity and the durable consumer.
        assert key in {run, "wc-key", f"wc-key.{run}", "scheduler.scheduler-reserved"}
        assert instance.routing_subject() == f"{t.subject}.{key}"
        assert nats_match(t.subscription_subject(), instance.routing_subject())


def test_unkeyed_subjects_route_on_their_subject() -> None:
    for t in (t for t in MESSAGES if not t.keyed):
        assert t.subscription_subject() == t.subject
        assert t.subscription_subject("ignored") == t.subject
        with pytest.raises(NotImplementedError):
            t.model_construct().subject_key()


def test_commands_and_events_never_under_rpc() -> None:
    for t in COMMAND_TYPES + EVENT_TYPES:
        assert not t.subject.startswith("praxis.rpc."), t


def routing_subjects(t: type[Message]) -> list[str]:
    return [t.subject, f"{t.subject}.some-key"] if t.keyed else [t.subject]


def capturing_streams(subject: str) -> list[str]:
    return [s.name for s in STREAMS if any(nats_match(p, subject) for p in s.subjects)]


def test_request_subjects_are_not_captured_by_any_stream() -> None:
    captured = {t.subject: capturing_streams(t.subject) for t in REQUEST_TYPES}
    assert {s: c for s, c in captured.items() if c} == {}


def test_commands_and_events_are_captured_by_exactly_one_stream() -> None:
    expected = {Command: COMMANDS.name, Event: EVENTS.name}
    for t in COMMAND_TYPES + EVENT_TYPES:
        kind = Command if issubclass(t, Command) else Event
        for subject in routing_subjects(t):
            assert capturing_streams(subject) == [expected[kind]], subject


def test_dead_letters_of_commands_and_events_land_in_the_dead_letter_stream() -> None:
    for t in COMMAND_TYPES + EVENT_TYPES:
        for subject in routing_subjects(t):
            assert capturing_streams(dead_letter_subject(subject)) == [DEAD_LETTERS.name]


# -- purity ----------------------------------------------------------------------------------


def imported_top_levels(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def forbidden_imports(source: str) -> set[str]:
    return {
        name
        for name in imported_top_levels(source)
        if name not in sys.stdlib_module_names and name not in ALLOWED_THIRD_PARTY
    }


def test_purity_checker_catches_framework_imports() -> None:
    source = "import json\nfrom faststream.nats import NatsBroker\nimport sqlalchemy.orm\n"
    assert forbidden_imports(source) == {"faststream", "sqlalchemy"}


def test_contracts_import_only_stdlib_and_pydantic() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 5
    offenders = {
        str(path.relative_to(SRC)): sorted(bad)
        for path in files
        if (bad := forbidden_imports(path.read_text()))
    }
    assert offenders == {}


# -- errors ----------------------------------------------------------------------------------


def error_classes() -> list[type[PraxisError]]:
    found: list[type[PraxisError]] = []
    stack: list[type[PraxisError]] = [PraxisError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return [c for c in found if c is not PraxisError and c.__module__ == "praxis_contracts.errors"]


def test_every_error_code_has_one_exception_class() -> None:
    codes = [cls.code for cls in error_classes()]
    assert sorted(codes) == sorted(ErrorCode)


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_error_round_trips_through_reply(cls: type[PraxisError]) -> None:
    error = cls("it went wrong", run_id="r-1", attempts=3, nested={"a": [1, 2]})
    reply = error.to_reply()
    assert reply.code == cls.code
    assert reply.retryable is cls.retryable
    rebuilt = error_from_reply(ErrorReply.model_validate_json(reply.model_dump_json()))
    assert type(rebuilt) is cls
    assert rebuilt.message == "it went wrong"
    assert rebuilt.details == {"run_id": "r-1", "attempts": 3, "nested": {"a": [1, 2]}}
    assert str(rebuilt) == "it went wrong"


def test_error_from_reply_accepts_any_details() -> None:
    """``details`` is free-form on the wire; a key named like a parameter must not break it."""
    reply = ErrorReply(code=ErrorCode.NOT_FOUND, message="gone", details={"message": "inner"})
    error = error_from_reply(reply)
    assert isinstance(error, NotFound)
    assert error.message == "gone"
    assert error.details == {"message": "inner"}


def test_error_reply_json_round_trip() -> None:
    reply = ErrorReply(
        code=ErrorCode.NO_MATCHING_ASSETS,
        message="no plate",
        retryable=False,
        details={"requirements": ["plate"]},
    )
    data = json.loads(reply.model_dump_json())
    assert data["code"] == "no_matching_assets"
    assert ErrorReply.model_validate_json(reply.model_dump_json()) == reply


def test_error_reply_ignores_unknown_fields_and_rejects_unknown_codes() -> None:
    reply = ErrorReply.model_validate({"code": "timeout", "message": "m", "future_field": 1})
    assert reply.code is ErrorCode.TIMEOUT
    with pytest.raises(ValidationError):
        ErrorReply.model_validate({"code": "no_such_code", "message": "m"})


# -- validation ------------------------------------------------------------------------------


def test_submit_run_needs_a_protocol() -> None:
    with pytest.raises(ValidationError, match="protocol_name or definition_id"):
        SubmitRun()
    assert SubmitRun(protocol_name="transfer").protocol_name == "transfer"
    definition_id = uuid.uuid4()
    assert SubmitRun(definition_id=definition_id).definition_id == definition_id


def test_submit_run_priority_is_bounded() -> None:
    with pytest.raises(ValidationError):
        SubmitRun(protocol_name="p", priority=101)


@pytest.mark.parametrize("bad", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"colour": "red"}])
def test_search_filters_reject_bad_input(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SearchFilters(**bad)


def test_messages_are_frozen_events_ignore_unknown_fields_commands_refuse_them() -> None:
    run = SubmitRun.model_validate({"protocol_name": "p"})
    with pytest.raises(ValidationError):
        run.protocol_name = "other"  # type: ignore[misc]
    # A request or command someone sent must not be half carried out: an unknown field (a
    # misspelling, a feature this version lacks) is refused, naming it.
    for message, body in (
        (SubmitRun, {"protocol_name": "p"}),
        (ReserveAssets, {"run_id": str(uuid.uuid4()), "requirements": []}),
    ):
        with pytest.raises(ValidationError, match="added_later"):
            message.model_validate({**body, "added_later": True})
    # An event's readers stay compatible with a newer publisher's additions.
    changed = RunStatusChanged.model_validate(
        {
            "run_id": str(uuid.uuid4()),
            "status": "queued",
            "previous": None,
            "reason": "x",
            "at": "2030-01-01T00:00:00Z",
            "added_later": True,
        }
    )
    assert not hasattr(changed, "added_later")
    for cls in all_message_types():
        forbid = issubclass(cls, (Command, Request))
        assert (cls.model_config.get("extra") == "forbid") is forbid, cls
