"""Structured logs carrying run and correlation ids from context variables, and the context a
message carries on: its correlation id and its actor (who set the chain going)."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import Context, ContextVar, copy_context
from datetime import UTC, datetime
from typing import Any

from praxis_contracts import headers as h

run_id_var: ContextVar[str | None] = ContextVar("praxis_run_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("praxis_correlation_id", default=None)
actor_var: ContextVar[str | None] = ContextVar("praxis_actor", default=None)
"""Who set the current chain going: the HTTP principal the gateway authenticated, carried on
in the ``Praxis-Actor`` header of every message the chain causes (None: the system itself)."""

_SERVICE = {"name": "praxis"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, service, logger, message, ids, extras."""

    _RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": _SERVICE["name"],
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (run_id := run_id_var.get()) is not None:
            entry["run_id"] = run_id
        if (correlation_id := correlation_id_var.get()) is not None:
            entry["correlation_id"] = correlation_id
        for key, value in vars(record).items():
            if key not in self._RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{k}={v}"
            for k, v in (("run", run_id_var.get()), ("corr", correlation_id_var.get()))
            if v
        )
        base = f"{_SERVICE['name']:<14} {record.levelname:<7} {record.getMessage()}"
        text = f"{base} [{ids}]" if ids else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger to stderr in the chosen format."""
    _SERVICE["name"] = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("faststream", "nats", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@contextmanager
def log_context(
    *, run_id: object | None = None, correlation_id: str | None = None, actor: str | None = None
) -> Iterator[None]:
    """Bind ids to every log line written inside the block (and the actor to every message
    published inside it, ``context_headers``)."""
    tokens: list[tuple[ContextVar[str | None], Any]] = []
    if run_id is not None:
        tokens.append((run_id_var, run_id_var.set(str(run_id))))
    if correlation_id is not None:
        tokens.append((correlation_id_var, correlation_id_var.set(correlation_id)))
    if actor is not None:
        tokens.append((actor_var, actor_var.set(actor)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def context_headers(correlation: str | None = None) -> dict[str, str]:
    """The headers every outgoing message carries from the current context: the correlation id
    (``correlation``, the context's, or a new one) and the actor when there is one."""
    headers = {h.CORRELATION_ID: correlation or correlation_id_var.get() or uuid.uuid4().hex}
    if (actor := actor_var.get()) is not None:
        headers[h.ACTOR] = actor
    return headers


@contextmanager
def message_context(headers: Mapping[str, str] | None) -> Iterator[str]:
    """Handle a received message in its context: its correlation id (a new one if it has
    none, yielded) and its actor, carried on to what the handler publishes."""
    received = headers or {}
    correlation = received.get(h.CORRELATION_ID) or uuid.uuid4().hex
    actor = received.get(h.ACTOR) or None
    token = actor_var.set(actor)  # reset to the sender's, even to none
    try:
        with log_context(correlation_id=correlation):
            yield correlation
    finally:
        actor_var.reset(token)


def system_context() -> Context:
    """The current context acting for nobody: for work a message sets going that is not its
    sender's (serving other runs' reservations a release made possible, timers), so what it
    publishes names no actor rather than the wrong one."""
    context = copy_context()
    context.run(actor_var.set, None)
    return context
