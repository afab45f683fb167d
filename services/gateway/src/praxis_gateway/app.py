"""Gateway wiring: a FastAPI app over the bus; health, readiness and metrics included."""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats.errors
import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from starlette.exceptions import HTTPException

from praxis_contracts.asyncapi import document as bus_document
from praxis_contracts.errors import PraxisError
from praxis_contracts.permissions import GATEWAY, needs
from praxis_gateway import openapi
from praxis_gateway.auth import UI_PATH
from praxis_gateway.dead_letters import router as dead_letter_router
from praxis_gateway.errors import (
    on_http_error,
    on_payload_too_large,
    on_praxis_error,
    on_unexpected_error,
    on_validation_error,
)
from praxis_gateway.guard import MAX_JSON_DEPTH, MAX_JSON_DEPTH_CEILING, InputGuard
from praxis_gateway.inventory_routes import router as inventory_router
from praxis_gateway.oidc import OidcVerifier
from praxis_gateway.routes import SSE_KEEPALIVE_SECONDS, router
from praxis_gateway.security import Authenticate, Authenticator, authorize
from praxis_gateway.token_routes import router as token_router
from praxis_gateway.tokens import TokenStore
from praxis_gateway.ui import Dashboard
from praxis_runtime import tracing
from praxis_runtime.logging import configure_logging, correlation_id_var
from praxis_runtime.sandbox import harden
from praxis_runtime.service import bus_for
from praxis_runtime.settings import (
    MIN_ADMIN_TOKEN_LENGTH,
    ServiceSettings,
    read_secret_file,
    refuse_weak_secret,
)
from praxis_runtime.topology import verify
from praxis_runtime.tracing import SpanKind

REQUESTS = Counter("praxis_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("praxis_http_request_seconds", "HTTP latency", ["method", "route"])


@functools.cache
def _bus_document() -> dict[str, Any]:
    """The AsyncAPI document, built on its first request (it changes only with the contracts,
    and most gateways are never asked for it)."""
    return bus_document()


MAX_BODY_BYTES = 1024 * 1024
"""1 MiB: each body travels to a service as one NATS message, and NATS refuses messages over
its ``max_payload`` (1 MB by default), so a larger body could never be handled anyway."""


class Settings(ServiceSettings):
    service_name: str = "gateway"
    gateway_host: str = Field(default="127.0.0.1", description="GATEWAY_HOST")
    gateway_port: int = Field(default=8000, ge=0, description="GATEWAY_PORT (0 = any free port)")
    gateway_max_body_bytes: int = Field(
        default=MAX_BODY_BYTES,
        ge=1,
        description="GATEWAY_MAX_BODY_BYTES: larger request bodies get 413 payload_too_large",
    )
    gateway_max_json_depth: int = Field(
        default=MAX_JSON_DEPTH,
        ge=1,
        le=MAX_JSON_DEPTH_CEILING,
        description="GATEWAY_MAX_JSON_DEPTH: JSON (a body, property_filters) nested deeper gets "
        "400 invalid_request",
    )
    praxis_admin_token: SecretStr | None = Field(
        default=None,
        description="PRAXIS_ADMIN_TOKEN: a bearer equal to it is admin (principal "
        "bootstrap-admin); use it to create API tokens. Unset (and no PRAXIS_ADMIN_TOKEN_FILE): "
        "no bootstrap admin, only API tokens and OIDC",
    )
    praxis_admin_token_file: Path | None = Field(
        default=None,
        description="PRAXIS_ADMIN_TOKEN_FILE: a mounted file holding the admin token (instead "
        "of PRAXIS_ADMIN_TOKEN; surrounding whitespace is ignored)",
    )
    sse_keepalive_seconds: float = Field(
        default=SSE_KEEPALIVE_SECONDS,
        gt=0,
        le=300,
        description="SSE_KEEPALIVE_SECONDS: an idle run event stream sends a comment line this "
        "often, so proxies and load balancers do not close it during a long step",
    )
    oidc_issuer: str | None = Field(default=None, description="OIDC_ISSUER: the JWT's iss")
    oidc_jwks_url: str | None = Field(default=None, description="OIDC_JWKS_URL: its signing keys")
    oidc_audience: str | None = Field(
        default=None, description="OIDC_AUDIENCE: the JWT's aud (not checked if unset)"
    )
    oidc_scope_claim: str = Field(
        default="scope",
        description="OIDC_SCOPE_CLAIM: claim holding praxis:read|operate|admin (string or list)",
    )

    @field_validator("praxis_admin_token")
    @classmethod
    def _strong_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:  # set but empty is refused too: unset it to have no admin token
            refuse_weak_secret(value.get_secret_value(), "the token", MIN_ADMIN_TOKEN_LENGTH)
        return value

    @field_validator("praxis_admin_token_file")
    @classmethod
    def _strong_admin_token_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            token = read_secret_file(value)
            refuse_weak_secret(token, f"the content of {value}", MIN_ADMIN_TOKEN_LENGTH)
        return value

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if (self.oidc_issuer is None) != (self.oidc_jwks_url is None):
            raise ValueError("OIDC needs both OIDC_ISSUER and OIDC_JWKS_URL")
        return self

    @model_validator(mode="after")
    def _one_admin_token(self) -> Settings:
        if self.praxis_admin_token is not None and self.praxis_admin_token_file is not None:
            raise ValueError(
                "PRAXIS_ADMIN_TOKEN and PRAXIS_ADMIN_TOKEN_FILE are both set: set one "
                "(which is meant is unclear)"
            )
        return self


def admin_token(settings: Settings) -> str | None:
    """The bootstrap admin bearer: the content of ``PRAXIS_ADMIN_TOKEN_FILE`` (a mounted
    Secret) or ``PRAXIS_ADMIN_TOKEN``; None: nobody is the bootstrap admin."""
    if settings.praxis_admin_token_file is not None:
        return read_secret_file(settings.praxis_admin_token_file)
    if settings.praxis_admin_token is not None:
        return settings.praxis_admin_token.get_secret_value()
    return None


def authenticator_for(settings: Settings) -> Authenticator:
    oidc = None
    if settings.oidc_issuer and settings.oidc_jwks_url:
        oidc = OidcVerifier(
            settings.oidc_issuer,
            settings.oidc_jwks_url,
            settings.oidc_audience,
            settings.oidc_scope_claim,
        )
    return Authenticator(admin_token(settings), oidc)


def create_app(settings: Settings) -> FastAPI:
    authenticator = authenticator_for(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bus = bus_for(settings)
        await bus.connect()
        await verify(bus.js, needs(GATEWAY))
        tokens = TokenStore(bus.js)
        await tokens.start()
        app.state.bus = bus
        app.state.tokens = authenticator.tokens = tokens
        yield
        await tokens.stop()
        await bus.stop()

    app = FastAPI(
        title="Praxis",
        version="0.1.0",
        description="Protocol execution for lab automation.",
        lifespan=lifespan,
        dependencies=[Depends(authorize)],
    )
    app.include_router(router)
    app.include_router(inventory_router)
    app.include_router(token_router)
    app.include_router(dead_letter_router)
    openapi.install(app)
    app.state.max_json_depth = settings.gateway_max_json_depth
    app.state.sse_keepalive_seconds = settings.sse_keepalive_seconds
    app.add_exception_handler(PraxisError, on_praxis_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(nats.errors.MaxPayloadError, on_payload_too_large)
    app.add_exception_handler(Exception, on_unexpected_error)
    # Added first, so it runs inside ``_correlate``: its refusals carry the correlation id.
    app.add_middleware(
        InputGuard,
        max_body_bytes=settings.gateway_max_body_bytes,
        max_json_depth=settings.gateway_max_json_depth,
    )
    # Outside the input guard: a caller without credentials is refused before its body is read.
    app.add_middleware(Authenticate, authenticator=authenticator)
    app.middleware("http")(_correlate)
    _add_probes(app)
    app.mount(UI_PATH, Dashboard(), name="ui")
    return app


_CORRELATION_ID = re.compile(r"[!-~]{1,128}")
"""A caller's ``X-Correlation-Id`` is taken if it is up to 128 visible ASCII characters; it
travels on in NATS headers, events and logs, so anything else is replaced by a new one."""


def correlation_id(sent: str | None) -> str:
    """The caller's correlation id if usable (``_CORRELATION_ID``), else a new one."""
    if sent is not None and _CORRELATION_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


async def _correlate(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Outermost: every response, errors included, carries ``X-Correlation-Id``, the same id
    as an error body's ``correlation_id``.

    An exception no handler took is answered here, not by Starlette's outer error middleware:
    there the correlation id would already be gone (a 500 with ``correlation_id: null`` and no
    header)."""
    correlation = correlation_id(request.headers.get("x-correlation-id"))
    token = correlation_id_var.set(correlation)
    started = time.perf_counter()
    # A caller's ``traceparent`` makes the request part of its trace.
    with tracing.span(f"HTTP {request.method}", SpanKind.SERVER, request.headers) as span:
        try:
            response = await call_next(request)
        except Exception as exc:
            response = await on_unexpected_error(request, exc)
        finally:
            correlation_id_var.reset(token)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        if span is not None:
            span.update_name(f"{request.method} {route}")
            span.set_attribute("http.response.status_code", response.status_code)
    REQUESTS.labels(request.method, route, response.status_code).inc()
    LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
    response.headers["X-Correlation-Id"] = correlation
    return response


def _add_probes(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> PlainTextResponse:
        bus = getattr(request.app.state, "bus", None)
        ready = bus is not None and bus.connected
        return PlainTextResponse(
            "ok" if ready else "nats: failing", status_code=200 if ready else 503
        )

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi_document() -> JSONResponse:
        """The bus's AsyncAPI 3 document, for event subscribers (``praxis_contracts.asyncapi``)."""
        return JSONResponse(_bus_document())

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def serve(settings: Settings) -> None:
    harden()  # it holds the admin token: not readable by processes of its own user
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    tracing.configure(settings.service_name)  # only where an OTLP endpoint is configured
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_seconds),
    )
    tracing.shutdown()


__all__ = ["MAX_BODY_BYTES", "MAX_JSON_DEPTH", "Settings", "create_app", "serve"]
