"""Runs ended, and how long runs and their phases took, from the status changes a commit hands
the outbox."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from praxis_contracts.common import RunStatus as S
from praxis_contracts.runs import RunStatusChanged
from praxis_runtime.publisher import Outgoing
from praxis_scheduler.metrics import Durations

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def changed(run: uuid.UUID, status: S, previous: S | None, seconds: float) -> Outgoing:
    event = RunStatusChanged(
        run_id=run, status=status, previous=previous, at=T0 + timedelta(seconds=seconds)
    )
    return Outgoing(event.routing_subject(), event.model_dump_json().encode())


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_ends_runs_and_phases_are_counted_and_timed() -> None:
    before = {
        "completed": value("praxis_runs_ended_total", status="completed"),
        "failed": value("praxis_runs_ended_total", status="failed"),
        "queued_sum": value("praxis_run_phase_seconds_sum", phase="queued"),
        "queued_count": value("praxis_run_phase_seconds_count", phase="queued"),
        "running_sum": value("praxis_run_phase_seconds_sum", phase="running"),
        "run_sum": value("praxis_run_seconds_sum", status="completed"),
        "run_count": value("praxis_run_seconds_count", status="completed"),
    }
    durations = Durations()
    seen, unseen = uuid.uuid4(), uuid.uuid4()
    durations(
        [
            changed(seen, S.QUEUED, None, 0),
            changed(seen, S.PENDING, S.QUEUED, 2),
            Outgoing("praxis.cmd.asset.release", b"{}"),
        ]
    )
    durations([changed(seen, S.RUNNING, S.PENDING, 3), changed(unseen, S.FAILED, S.RUNNING, 9)])
    durations([changed(seen, S.COMPLETED, S.RUNNING, 10)])

    assert value("praxis_runs_ended_total", status="completed") == before["completed"] + 1
    assert value("praxis_runs_ended_total", status="failed") == before["failed"] + 1
    queued = value("praxis_run_phase_seconds_sum", phase="queued") - before["queued_sum"]
    assert queued == 2.0
    assert value("praxis_run_phase_seconds_count", phase="queued") == before["queued_count"] + 1
    running = value("praxis_run_phase_seconds_sum", phase="running") - before["running_sum"]
    assert running == 7.0  # the run that began before this process is not timed
    assert value("praxis_run_seconds_sum", status="completed") - before["run_sum"] == 10.0
    assert value("praxis_run_seconds_count", status="completed") == before["run_count"] + 1
    assert durations._open == {}  # nothing kept once runs end
