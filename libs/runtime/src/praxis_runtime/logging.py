"""Structured logs carrying run and correlation ids from context variables."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

run_id_var: ContextVar[str | None] = ContextVar("praxis_run_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("praxis_correlation_id", default=None)

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
    *, run_id: object | None = None, correlation_id: str | None = None
) -> Iterator[None]:
    """Bind ids to every log line written inside the block."""
    tokens = []
    if run_id is not None:
        tokens.append((run_id_var, run_id_var.set(str(run_id))))
    if correlation_id is not None:
        tokens.append((correlation_id_var, correlation_id_var.set(correlation_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
