"""The error shape's guarantees that need no bus: unexpected errors, correlation ids, server
paths scrubbed, the JSON depth limit's arithmetic and setting.

The app is called in-process (``httpx.ASGITransport``, no lifespan): every request here is
answered by the gateway's middleware, handlers or a route added for the test, never by a
service.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from praxis_contracts.errors import InvalidRequest, Unavailable
from praxis_gateway.app import MAX_JSON_DEPTH, Settings, correlation_id, create_app
from praxis_gateway.errors import scrub
from praxis_gateway.guard import MAX_JSON_DEPTH_CEILING, json_depth, load_json

ADMIN = "a" * 40
ERROR_SHAPE = {"code", "message", "retryable", "details", "correlation_id"}


class NoBus:
    """Stands in for the bus: a request that gets past the gateway's checks ends here."""

    async def request(self, *_: Any, **__: Any) -> Any:
        raise Unavailable("no bus in this test")


def app_with_a_bug(**settings: Any) -> FastAPI:
    app = create_app(Settings(praxis_admin_token=ADMIN, **settings))
    app.state.bus = NoBus()

    @app.get("/api/v1/bug")
    async def bug() -> None:
        raise RuntimeError("/srv/praxis/secret/path in a message nobody should see")

    return app


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_with_a_bug(gateway_max_json_depth=3))
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", headers=headers
    ) as client:
        yield client


# -- unexpected errors --------------------------------------------------------------------------


async def test_an_unexpected_error_is_a_500_with_its_correlation_id(
    http: httpx.AsyncClient,
) -> None:
    """Answered where the correlation id is still known: it used to be Starlette's outer error
    middleware, after the id was gone (``correlation_id: null``, no header)."""
    response = await http.get("/api/v1/bug", headers={"X-Correlation-Id": "bug-1"})
    assert response.status_code == 500
    body = response.json()
    assert set(body) == ERROR_SHAPE
    assert body["code"] == "internal"
    assert body["correlation_id"] == response.headers["x-correlation-id"] == "bug-1"
    assert body["message"] == "RuntimeError while handling the request"  # nothing of the text


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("two words", False),
        ("", False),
        (None, False),
    ],
)
def test_a_callers_correlation_id_is_kept_if_usable(sent: str | None, kept: bool) -> None:
    chosen = correlation_id(sent)
    assert (chosen == sent) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", chosen)


# -- the depth limit ----------------------------------------------------------------------------


async def test_the_configured_depth_applies_to_bodies_and_property_filters(
    http: httpx.AsyncClient,
) -> None:
    """``gateway_max_json_depth=3`` in the fixture: three levels pass, four are refused."""
    ok = await http.post(
        "/api/v1/protocols/runs", json={"protocol_name": "p", "parameters": {"a": [1]}}
    )
    assert ok.json()["message"] == "no bus in this test"  # past the guard
    deep = await http.post(
        "/api/v1/protocols/runs", json={"protocol_name": "p", "parameters": {"a": [[1]]}}
    )
    assert deep.status_code == 400
    assert deep.json()["details"] == {"field": "body", "max_depth": 3}
    query = await http.get("/api/v1/machines", params={"property_filters": '{"a": [[[1]]]}'})
    assert query.status_code == 400
    assert query.json()["details"] == {"field": "query.property_filters", "max_depth": 3}
    shallow = await http.get("/api/v1/machines", params={"property_filters": '{"a": [[1]]}'})
    assert shallow.json()["message"] == "no bus in this test"


def test_the_depth_limit_is_64_and_configurable_up_to_its_ceiling(monkeypatch: Any) -> None:
    assert Settings().gateway_max_json_depth == MAX_JSON_DEPTH == 64
    monkeypatch.setenv("GATEWAY_MAX_JSON_DEPTH", str(MAX_JSON_DEPTH_CEILING))
    assert Settings().gateway_max_json_depth == MAX_JSON_DEPTH_CEILING
    monkeypatch.setenv("GATEWAY_MAX_JSON_DEPTH", str(MAX_JSON_DEPTH_CEILING + 1))
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (1, 0),
        ("x", 0),
        ([], 1),
        ({}, 1),
        ({"a": [1, {"b": None}]}, 3),
        ([[], [[[]]], []], 4),
    ],
)
def test_json_depth_counts_levels_of_arrays_and_objects(value: Any, depth: int) -> None:
    assert json_depth(value) == depth


def test_json_depth_stops_past_the_limit() -> None:
    assert json_depth(json.loads("[" * 500 + "]" * 500), stop_past=10) == 11


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"a":' * 10_000, "[" * 65 + "]" * 65, '{"a": ' * 65 + "1" + "}" * 65],
    ids=["arrays-unclosed", "objects-unclosed", "arrays-65", "objects-65"],
)
def test_load_json_refuses_too_deep_however_deep(text: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        load_json(text, max_depth=64, field="body")
    assert refused.value.details == {"field": "body", "max_depth": 64}


def test_load_json_leaves_malformed_json_to_its_caller() -> None:
    with pytest.raises(ValueError):
        load_json('{"a": ', max_depth=64, field="body")
    assert load_json("[" * 64 + "]" * 64, max_depth=64, field="body") is not None


# -- server paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        (
            "git fetch of /tmp/x/no-such-repo failed: fatal: '/tmp/x/no-such-repo' does not "
            "appear to be a git repository",
            "git fetch of …/no-such-repo failed: fatal: '…/no-such-repo' does not appear to be "
            "a git repository",
        ),
        (
            "could not create work tree dir '.praxis/code-manager/mirrors/abc': Permission denied",
            "could not create work tree dir '…/abc': Permission denied",
        ),
        ('File "/work/.venv/lib/python3.11/site-packages/x.py", line 3', 'File "…/x.py", line 3'),
        ("see ./a/b, ../c/d and ~/e/f", "see …/b, …/d and …/f"),
        (
            "cannot import m: boom\nTraceback (most recent call last):\n  File ...",
            "cannot import m: boom",
        ),
    ],
    ids=["absolute", "relative-dot-dir", "traceback-line", "relative", "traceback"],
)
def test_paths_in_a_services_message_are_cut_to_their_last_component(said: str, shown: str) -> None:
    assert scrub(said) == shown


@pytest.mark.parametrize(
    "said",
    [
        "git fetch of https://github.com/org/repo failed",
        "ssh://git@host:22/org/repo and git@host:org/repo.git",
        "file:///srv/protocols/repo is outside the allowed roots",
        "outside_roots: /etc is not allowed",
        "and/or a/b",
    ],
)
def test_urls_and_words_are_left_as_they_are(said: str) -> None:
    assert scrub(said) == said


def test_details_are_scrubbed_too() -> None:
    details = {"problems": [{"module": "p", "error": "in /srv/a/b/p.py"}], "n": 3}
    assert scrub(details) == {"problems": [{"module": "p", "error": "in …/p.py"}], "n": 3}
