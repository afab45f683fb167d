"""Runs ended are counted from what a commit hands the outbox: terminal statuses only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from prometheus_client import REGISTRY

from praxis_contracts.common import RunStatus
from praxis_contracts.runs import RunStatusChanged
from praxis_runtime.publisher import Outgoing
from praxis_scheduler.metrics import count_ended


def changed(status: RunStatus) -> Outgoing:
    event = RunStatusChanged(
        run_id=uuid.uuid4(), status=status, previous=RunStatus.RUNNING, at=datetime.now(UTC)
    )
    return Outgoing(event.routing_subject(), event.model_dump_json().encode())


def ended(status: str) -> float:
    return REGISTRY.get_sample_value("praxis_runs_ended_total", {"status": status}) or 0.0


def test_only_terminal_status_changes_count_as_ended() -> None:
    before = {s: ended(s) for s in ("completed", "failed", "running")}
    count_ended(
        [
            changed(RunStatus.COMPLETED),
            changed(RunStatus.RUNNING),
            changed(RunStatus.FAILED),
            changed(RunStatus.COMPLETED),
            Outgoing("praxis.cmd.asset.release", b"{}"),
        ]
    )
    assert ended("completed") == before["completed"] + 2
    assert ended("failed") == before["failed"] + 1
    assert ended("running") == before["running"] == 0
