"""Authentication and authorization of the HTTP API, over real HTTP and a real nats-server.

Two gateway replicas (uvicorn in-process, each with its own bus and token watcher) share the
session's nats-server; an OIDC identity provider is stood in for by a locally generated RSA key
whose JWKS a stdlib HTTP server serves on a free port. No service answers behind the gateways
(a forwarded request is a quick 503): the walk asserts only on the auth outcome.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from nats.aio.msg import Msg

from praxis_contracts import asyncapi
from praxis_contracts import headers as h
from praxis_contracts.errors import NotFound
from praxis_contracts.runs import SubmitRun
from praxis_contracts.topology import API_TOKENS
from praxis_gateway.app import Settings, create_app
from praxis_runtime.bus import Bus

pytestmark = pytest.mark.integration

ISSUER = "https://idp.praxis.test"
AUDIENCE = "praxis-api"
KID = "test-key"
ERROR_SHAPE = {"code", "message", "retryable", "details", "correlation_id"}

# Every route of the app and the scope it needs (None: public). The walk fails when a route is
# added, removed or renamed without this table (and auth.required_scope) being looked at.
RD, OP, AD = "read", "operate", "admin"
EXPECTED: dict[tuple[str, str], str | None] = {
    ("GET", "/openapi.json"): None,
    ("GET", "/asyncapi.json"): None,
    ("GET", "/docs"): None,
    ("GET", "/docs/oauth2-redirect"): None,
    ("GET", "/redoc"): None,
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("POST", "/api/v1/protocols/sources"): AD,
    ("GET", "/api/v1/protocols/sources"): RD,
    ("POST", "/api/v1/protocols/sources/{source_id}/sync"): AD,
    ("DELETE", "/api/v1/protocols/sources/{source_id}"): AD,
    ("GET", "/api/v1/protocols/definitions"): RD,
    ("POST", "/api/v1/protocols/runs"): OP,
    ("GET", "/api/v1/protocols/runs"): RD,
    ("GET", "/api/v1/protocols/runs/{run_id}"): RD,
    ("POST", "/api/v1/protocols/runs/{run_id}/actions"): OP,
    ("GET", "/api/v1/protocols/runs/{run_id}/calls"): RD,
    ("GET", "/api/v1/protocols/runs/{run_id}/calls/{sequence}/result"): RD,
    ("GET", "/api/v1/protocols/runs/{run_id}/logs"): RD,
    ("GET", "/api/v1/protocols/runs/{run_id}/events"): RD,
    ("GET", "/api/v1/events/live"): RD,
    ("GET", "/api/v1/events"): RD,
    ("POST", "/api/v1/workcells"): AD,
    ("GET", "/api/v1/workcells"): RD,
    ("GET", "/api/v1/workcells/{workcell}"): RD,
    ("PATCH", "/api/v1/workcells/{workcell}"): AD,
    ("DELETE", "/api/v1/workcells/{workcell}"): AD,
    ("GET", "/api/v1/workcells/{workcell}/snapshots"): RD,
    ("GET", "/api/v1/workcells/{workcell}/snapshots/{snapshot_id}"): RD,
    ("POST", "/api/v1/workcells/{workcell}/restore"): AD,
    ("POST", "/api/v1/workcells/{workcell}/drain"): OP,
    ("POST", "/api/v1/resources/{accession_id}/state"): OP,
    ("POST", "/api/v1/workcells/{workcell}/resume"): OP,
    ("GET", "/api/v1/locks"): RD,
    ("GET", "/api/v1/edges"): RD,
    ("POST", "/api/v1/locks/{asset_id}/force-release"): AD,
    ("GET", "/api/v1/catalog"): RD,
    ("POST", "/api/v1/tokens"): AD,
    ("GET", "/api/v1/tokens"): AD,
    ("DELETE", "/api/v1/tokens/{token_id}"): AD,
    ("GET", "/api/v1/dead-letters"): AD,
    ("GET", "/api/v1/dead-letters/{seq}"): AD,
    ("POST", "/api/v1/dead-letters/{seq}/replay"): AD,
}
for _kind in ("machines", "resources", "decks"):
    EXPECTED |= {
        ("GET", f"/api/v1/{_kind}"): RD,
        ("GET", f"/api/v1/{_kind}/{{accession_id}}"): RD,
        ("POST", f"/api/v1/{_kind}"): AD,
        ("PATCH", f"/api/v1/{_kind}/{{accession_id}}"): AD,
        ("DELETE", f"/api/v1/{_kind}/{{accession_id}}"): AD,
        ("GET", f"/api/v1/{_kind}/{{accession_id}}/status-history"): RD,
    }
RANK = {None: -1, RD: 0, OP: 1, AD: 2}


# -- the identity provider --------------------------------------------------------------------
class IdentityProvider:
    """An RSA key pair and its JWKS on a local HTTP server; issues JWTs."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = body.encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def token(self, key: Any = None, drop: tuple[str, ...] = (), **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if k not in drop}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": KID})


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.thread.start()
    yield provider
    provider.server.shutdown()
    provider.server.server_close()


# -- two gateway replicas ---------------------------------------------------------------------
class Gateway:
    def __init__(self, app: FastAPI, url: str) -> None:
        self.app = app
        self.url = url

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, timeout=30.0, headers=headers)


def _settings(nats_url: str, admin_token: str, idp: IdentityProvider) -> Settings:
    return Settings(
        nats_url=nats_url,
        praxis_admin_token=admin_token,
        oidc_issuer=ISSUER,
        oidc_jwks_url=idp.jwks_url,
        oidc_audience=AUDIENCE,
        request_timeout_seconds=2.0,
    )


@pytest.fixture(scope="module")
async def gateway(
    nats_url: str, admin_token: str, idp: IdentityProvider, serve_asgi: Any
) -> AsyncIterator[Gateway]:
    app = create_app(_settings(nats_url, admin_token, idp))
    async with serve_asgi(app) as url:
        yield Gateway(app, url)


@pytest.fixture(scope="module")
async def replica(
    gateway: Gateway, nats_url: str, admin_token: str, idp: IdentityProvider, serve_asgi: Any
) -> AsyncIterator[Gateway]:
    app = create_app(_settings(nats_url, admin_token, idp))
    async with serve_asgi(app) as url:
        yield Gateway(app, url)


async def create_token(gateway: Gateway, admin_token: str, *scopes: str) -> dict[str, Any]:
    async with gateway.http(admin_token) as http:
        name = f"{'-'.join(scopes) or 'none'}-{uuid.uuid4().hex[:6]}"
        response = await http.post("/api/v1/tokens", json={"name": name, "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def seen_by(replica: Gateway, gateway: Gateway, token_id: str) -> None:
    """Wait (pushed, bounded) until ``replica`` has applied what ``gateway`` wrote last."""
    found = gateway.app.state.tokens.index.get(uuid.UUID(token_id))
    assert found is not None
    async with asyncio.timeout(10):
        await replica.app.state.tokens.caught_up(found[1])


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_SHAPE and body["code"] == code
    assert body["correlation_id"] == response.headers["x-correlation-id"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    return body


# -- every route, every kind of caller --------------------------------------------------------
def app_routes(app: FastAPI) -> dict[tuple[str, str], bool]:
    """(method, path template) of every route in the app -> whether it is a FastAPI route."""
    found: dict[tuple[str, str], bool] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                found[(method, str(context.path))] = isinstance(route, APIRoute)
    return found


def concrete(path: str) -> str:
    parts = path.split("/")
    return "/".join(str(uuid.uuid4()) if p.startswith("{") else p for p in parts)


async def test_every_route_is_guarded_by_its_scope(gateway: Gateway, admin_token: str) -> None:
    routes = app_routes(gateway.app)
    assert set(routes) == set(EXPECTED), "classify new routes in EXPECTED and auth.py"
    callers: dict[str | None, str | None] = {None: None, "admin": admin_token}
    for scope in (RD, OP):
        callers[scope] = (await create_token(gateway, admin_token, scope))["token"]

    outcomes: list[str] = []
    for (method, path), needed in sorted(EXPECTED.items()):
        for held, token in callers.items():
            async with gateway.http(token) as http:
                body = {} if method in ("POST", "PATCH") else None
                response = await ask(http, method, concrete(path), json=body)
            status = response.status_code
            where = f"{method} {path} as {held}: {status} {response.text[:120]}"
            if needed is None:
                ok = status not in (401, 403)
            elif held is None:
                ok = status == 401 and response.json()["code"] == "unauthenticated"
                ok = ok and response.headers.get("www-authenticate", "").startswith("Bearer")
            elif RANK[held] >= RANK[needed]:
                ok = status not in (401, 403)
            else:
                ok = status == 403 and response.json()["details"]["required_scope"] == needed
            if not ok:
                outcomes.append(where)
    assert outcomes == []


async def ask(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """The response, its body read unless it is an event stream (a live one never ends)."""
    async with http.stream(method, url, **kwargs) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return httpx.Response(response.status_code, headers=response.headers)
        await response.aread()
        return response


def malformed(path: str) -> str:
    return "/".join("not-an-id" if p.startswith("{") else p for p in path.split("/"))


async def test_every_status_a_route_answers_is_documented(
    gateway: Gateway, admin_token: str
) -> None:
    """Each route of the API is asked as nobody, as the admin, with path parameters that are
    not ids, with a body that is not JSON and with one too large: every status it answers is
    stated in the OpenAPI document for that route, with the error shape. (No service answers
    here: what reaches one is a 503.)"""
    async with gateway.http() as http:
        document = (await http.get("/openapi.json")).json()
    undocumented: list[str] = []
    for (method, path), needed in sorted(EXPECTED.items()):
        if not path.startswith("/api/"):
            continue
        operation = document["paths"][path][method.lower()]
        documented = {int(s) for s in operation["responses"]}
        probes: list[tuple[str | None, str, Any]] = [
            (None, concrete(path), {}),
            (admin_token, concrete(path), {}),
            (admin_token, malformed(path), {}),
        ]
        if method in ("POST", "PATCH"):
            probes += [
                (admin_token, concrete(path), b"{"),
                (admin_token, concrete(path), b"[" * 3 + b"]" * 3),
                (admin_token, concrete(path), b"x" * (2 * 1024 * 1024)),
            ]
        for token, url, body in probes:
            async with gateway.http(token) as http:
                if isinstance(body, bytes):
                    response = await ask(http, method, url, content=body)
                else:
                    response = await ask(
                        http, method, url, json=body if method in ("POST", "PATCH") else None
                    )
            status = response.status_code
            if status not in documented:
                undocumented.append(f"{method} {path}: {status} {response.text[:100]}")
            elif status >= 400:
                content = operation["responses"][str(status)]["content"]
                assert content["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }, f"{method} {path} {status}"
                assert set(response.json()) == ERROR_SHAPE
        assert needed is None or {401, 403} <= documented
    assert undocumented == []
    error = document["components"]["schemas"]["Error"]
    assert set(error["properties"]) == ERROR_SHAPE


async def test_the_bus_is_documented_for_subscribers_without_a_token(gateway: Gateway) -> None:
    async with gateway.http() as http:
        response = await http.get("/asyncapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(asyncapi.document()))


async def test_openapi_declares_the_bearer_scheme_on_protected_routes(gateway: Gateway) -> None:
    async with gateway.http() as http:
        document = (await http.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert operations and all(op.get("security") == [{"HTTPBearer": []}] for op in operations)


async def test_credentials_are_checked_before_the_body_is_read(gateway: Gateway) -> None:
    async with gateway.http() as http:
        response = await http.post("/api/v1/protocols/runs", content=b"x" * (2 * 1024 * 1024))
    assert_error(response, 401, "unauthenticated")


@pytest.mark.parametrize("header", ["Basic YWRtaW46YWRtaW4=", "Bearer nope", "Bearer a.b.c"])
async def test_bad_credentials_are_401(gateway: Gateway, header: str) -> None:
    async with gateway.http() as http:
        response = await http.get("/api/v1/locks", headers={"Authorization": header})
    assert_error(response, 401, "unauthenticated")


# -- the token lifecycle, across replicas -----------------------------------------------------
async def test_token_lifecycle_reaches_every_replica(
    gateway: Gateway, replica: Gateway, admin_token: str, client: Bus
) -> None:
    created = await create_token(gateway, admin_token, OP)
    token, token_id = created["token"], created["id"]
    assert created["created_by"] == "bootstrap-admin" and created["scopes"] == [OP]

    async with gateway.http(admin_token) as http:
        listed = (await http.get("/api/v1/tokens")).json()
    (mine,) = [t for t in listed["items"] if t["id"] == token_id]
    assert "token" not in mine and "hash" not in mine and token not in json.dumps(listed)

    kv = await client.js.key_value(API_TOKENS.bucket)
    stored = (await kv.get(uuid.UUID(token_id).hex)).value or b""
    assert token.encode() not in stored  # only its hash is stored

    watcher = await kv.watch(uuid.UUID(token_id).hex)
    await seen_by(replica, gateway, token_id)
    async with replica.http(token) as http:
        assert (await http.get("/api/v1/locks")).status_code not in (401, 403)
        assert_error(await http.get("/api/v1/tokens"), 403, "forbidden")
    async with asyncio.timeout(10):  # last_used_at is written back (pushed to the watcher)
        while True:
            entry = await watcher.updates(timeout=10)
            if entry is not None and json.loads(entry.value or b"{}").get("last_used_at"):
                break
    await watcher.stop()

    async with gateway.http(admin_token) as http:
        revoked = (await http.delete(f"/api/v1/tokens/{token_id}")).json()
        again = (await http.delete(f"/api/v1/tokens/{token_id}")).json()
        assert_error(await http.delete(f"/api/v1/tokens/{uuid.uuid4()}"), 404, "not_found")
    assert revoked["revoked_at"] is not None and again["revoked_at"] == revoked["revoked_at"]

    await seen_by(replica, gateway, token_id)
    for served in (gateway, replica):
        async with served.http(token) as http:
            body = assert_error(await http.get("/api/v1/locks"), 401, "unauthenticated")
        assert "revoked" in body["message"]


async def test_token_input_is_validated(gateway: Gateway, admin_token: str) -> None:
    async with gateway.http(admin_token) as http:
        for bad in (
            {"name": "x", "scopes": []},
            {"name": "x", "scopes": ["root"]},
            {"name": "", "scopes": ["read"]},
            {"name": "x", "scopes": ["read"], "expires_in_seconds": 0},
        ):
            assert_error(await http.post("/api/v1/tokens", json=bad), 400, "invalid_request")
        response = await http.post(
            "/api/v1/tokens", json={"name": "soon", "scopes": ["read"], "expires_in_seconds": 60}
        )
    assert response.status_code == 201 and response.json()["expires_at"] is not None


# -- OIDC -------------------------------------------------------------------------------------
async def test_a_valid_oidc_token_gets_its_scope(gateway: Gateway, idp: IdentityProvider) -> None:
    reader = idp.token(scope="openid praxis:read")
    async with gateway.http(reader) as http:
        assert (await http.get("/api/v1/locks")).status_code not in (401, 403)
        body = assert_error(await http.post("/api/v1/protocols/runs", json={}), 403, "forbidden")
    assert body["details"]["required_scope"] == "operate"


@pytest.mark.parametrize(
    "change",
    [
        {"iss": "https://evil.example"},
        {"exp": int(time.time()) - 3600},
        {"aud": "another-api"},
        {"drop": ("sub",)},
        {"drop": ("exp",)},
        {"key": rsa.generate_private_key(public_exponent=65537, key_size=2048)},  # bad signature
    ],
    ids=["issuer", "expired", "audience", "no-sub", "no-exp", "signature"],
)
async def test_a_bad_oidc_token_is_401(
    gateway: Gateway, idp: IdentityProvider, change: dict[str, Any]
) -> None:
    token = idp.token(**{"scope": "praxis:admin", **change})
    async with gateway.http(token) as http:
        assert_error(await http.get("/api/v1/locks"), 401, "unauthenticated")


# -- who did it -------------------------------------------------------------------------------
async def test_mutating_calls_carry_the_principal(
    gateway: Gateway, admin_token: str, idp: IdentityProvider, client: Bus
) -> None:
    """A stand-in scheduler on the real bus records the SubmitRun the gateway sends."""
    received: asyncio.Queue[SubmitRun] = asyncio.Queue()

    async def answer(msg: Msg) -> None:
        received.put_nowait(SubmitRun.model_validate_json(msg.data))
        reply = NotFound("no such protocol").to_reply().model_dump_json().encode()
        await client.nc.publish(msg.reply, reply, headers={h.ERROR: "1"})

    sub = await client.nc.subscribe(SubmitRun.subject, cb=answer)
    await client.nc.flush()
    try:
        operator = await create_token(gateway, admin_token, OP)
        callers = {
            operator["token"]: f"token:{operator['name']}",
            idp.token(scope="praxis:operate"): "oidc:alice",
            admin_token: "bootstrap-admin",
        }
        for token, actor in callers.items():
            async with gateway.http(token) as http:
                # Who asks is the token's principal; a body cannot name another one.
                forged = await http.post(
                    "/api/v1/protocols/runs", json={"protocol_name": "mix", "actor": "forged"}
                )
                response = await http.post("/api/v1/protocols/runs", json={"protocol_name": "mix"})
            error = assert_error(forged, 400, "invalid_request")
            assert [e["loc"] for e in error["details"]["errors"]] == ["body.actor"]
            assert_error(response, 404, "not_found")
            async with asyncio.timeout(10):
                assert (await received.get()).actor == actor
    finally:
        await sub.unsubscribe()
