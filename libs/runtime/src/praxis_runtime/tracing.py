"""Traces across processes: one submission's path through the gateway, NATS, every service and
the edge joined as one trace (OpenTelemetry, W3C trace context in message headers).

Off unless configured: with neither ``OTEL_EXPORTER_OTLP_ENDPOINT`` nor
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set, ``configure`` does nothing and every function here
returns at once (no span, no header, no OpenTelemetry SDK loaded). Configured, spans go by
OTLP/HTTP to that endpoint (the exporter's own ``OTEL_EXPORTER_OTLP_*`` settings apply), in
batches, from a background thread.

What makes a span: an HTTP request at the gateway (``SERVER``), a request sent on the bus
(``CLIENT``), a request answered or a message handled (``SERVER`` / ``CONSUMER``, child of the
sender's). Messages published, directly or through the outbox, carry the current context
(``traceparent``), so a command committed by one handler continues its trace in the next
service.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACEPARENT = "traceparent"

_provider: Any = None
_tracer: trace.Tracer | None = None


def enabled() -> bool:
    return _tracer is not None


def configure(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Export this process's spans as ``service`` if an OTLP endpoint is configured; True if
    so. Called once per process, at start-up."""
    global _provider, _tracer
    if _tracer is not None or not any(environ.get(v) for v in ENDPOINT_VARIABLES):
        return _tracer is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _provider = TracerProvider(resource=Resource.create({"service.name": service}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("praxis")
    log.info("traces exported by OTLP as %s", service)
    return True


def shutdown() -> None:
    """Export what is buffered, then stop (at the end of the process)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current span's context in ``headers`` (``traceparent``), if tracing is on."""
    if _tracer is not None:
        propagate.inject(headers)


@contextmanager
def span(
    name: str,
    kind: SpanKind,
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, str] | None = None,
) -> Iterator[trace.Span | None]:
    """A span (the current one inside), child of the context in ``parent`` headers if given,
    else of the current span."""
    if _tracer is None:
        yield None
        return
    context = propagate.extract(dict(parent)) if parent is not None else None
    # An exception leaving the span is recorded on it and marks it failed.
    with _tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=dict(attributes or {})
    ) as current:
        yield current


__all__ = ["SpanKind", "configure", "enabled", "inject", "shutdown", "span"]
