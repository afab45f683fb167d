"""Every Prometheus metric Praxis exports, declared once (the README's list is checked against
this module). Each service process serves those it feeds at its ``/metrics`` (the gateway at
its own port, the others at their health port).

Counters move as things happen; gauges are set when ``/metrics`` is scraped, from what the
service holds (its queue, its edge book, its outbox, its connection pool) or one indexed query,
through the service's scrape hooks (``Service.on_scrape``). Nothing is polled in between.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge, Histogram

ScrapeHook = Callable[[], Awaitable[None]]

# -- runs (scheduler) ------------------------------------------------------------------------------
RUNS = Gauge(
    "praxis_runs",
    "Runs not yet ended, by status (queued, running, paused, requires_intervention ...) and "
    "protocol.",
    ["status", "protocol"],
)
RUNS_ENDED = Counter(
    "praxis_runs_ended_total", "Runs that ended, by final status (as published).", ["status"]
)
RUN_SECONDS = Histogram(
    "praxis_run_seconds",
    "How long ended runs took from submission to their end, by final status.",
    ["status"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
RUN_PHASE_SECONDS = Histogram(
    "praxis_run_phase_seconds",
    "How long runs stayed in a status before the next (queued: the wait for assets and an "
    "edge; preparing; running ...).",
    ["phase"],
    buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
)
EDGES_LIVE = Gauge(
    "praxis_edges_live", "Orchestrator processes beating, by workcell.", ["workcell"]
)

# -- reservations (asset-manager) ------------------------------------------------------------------
RESERVATION_QUEUE = Gauge(
    "praxis_reservation_queue",
    "Runs waiting for their assets, an edge or a drained workcell, by requested workcell.",
    ["workcell"],
)
RESERVATION_OLDEST_SECONDS = Gauge(
    "praxis_reservation_oldest_wait_seconds",
    "How long the longest-waiting run has waited, by requested workcell.",
    ["workcell"],
)
LEASE_GRANTS = Counter(
    "praxis_lease_grants_total",
    "Reservations granted: at once (fast) or from the queue (queued).",
    ["path"],
)
RESERVATION_WAIT_SECONDS = Histogram(
    "praxis_reservation_wait_seconds",
    "How long a queued run waited for its grant.",
    buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)

# -- the audit trail ------------------------------------------------------------------------------
AUDIT_STORED = Counter("praxis_audit_events_stored_total", "Events the audit trail stored.")
AUDIT_LAG = Gauge(
    "praxis_audit_lag_events",
    "Events in the stream the audit trail has not stored yet (as of its last batch).",
)
AUDIT_GAP = Counter(
    "praxis_audit_gap_events_total",
    "Events that left the stream (age limit) before the audit trail could store them.",
)

# -- plumbing (every service) ----------------------------------------------------------------------
DEAD_LETTERS = Counter(
    "praxis_dead_letters_total",
    "Messages dead-lettered, by consuming service and original subject.",
    ["service", "subject"],
)
OUTBOX_BACKLOG = Gauge(
    "praxis_outbox_backlog",
    "Committed messages not yet published (in this process).",
    ["service"],
)
OUTBOX_OLDEST_SECONDS = Gauge(
    "praxis_outbox_oldest_seconds",
    "Age of the oldest committed message not yet published (0 when none).",
    ["service"],
)
DB_CONNECTIONS = Gauge(
    "praxis_db_connections",
    "Database connections of this process's pool: in use (checked_out) or idle.",
    ["service", "state"],
)
