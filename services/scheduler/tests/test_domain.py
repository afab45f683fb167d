"""The run state machine: runs only move forward, so late or repeated events are ignored."""

from __future__ import annotations

import itertools

import pytest

from praxis_contracts.common import TERMINAL_STATUSES, RunStatus
from praxis_scheduler.domain import can_transition

S = RunStatus
HAPPY_PATH = [S.QUEUED, S.PENDING, S.PREPARING, S.RUNNING, S.COMPLETED]


@pytest.mark.parametrize(("current", "new"), list(itertools.pairwise(HAPPY_PATH)))
def test_forward_moves_are_allowed(current: RunStatus, new: RunStatus) -> None:
    assert can_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.QUEUED, S.FAILED),  # reservation failed
        (S.PENDING, S.RUNNING),  # the preparing event is late
        (S.PREPARING, S.FAILED),
        (S.RUNNING, S.CANCELLED),
        (S.PAUSED, S.COMPLETED),
        (S.CANCELING, S.CANCELLED),
    ],
)
def test_skipping_ahead_is_allowed(current: RunStatus, new: RunStatus) -> None:
    assert can_transition(current, new)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_terminal_states_never_move(terminal: RunStatus) -> None:
    assert [s for s in RunStatus if can_transition(terminal, s)] == []


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.COMPLETED, S.RUNNING),
        (S.FAILED, S.PREPARING),
        (S.RUNNING, S.PREPARING),
        (S.PREPARING, S.PENDING),
        (S.PENDING, S.QUEUED),
        (S.PAUSED, S.PREPARING),
        (S.CANCELING, S.RUNNING),
    ],
)
def test_late_lower_stage_events_are_rejected(current: RunStatus, new: RunStatus) -> None:
    assert not can_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.RUNNING, S.PAUSING),
        (S.PAUSING, S.PAUSED),
        (S.PAUSED, S.RESUMING),
        (S.RESUMING, S.RUNNING),
        (S.PAUSED, S.RUNNING),
        (S.RUNNING, S.CANCELING),
        (S.PAUSED, S.CANCELING),
    ],
)
def test_pause_and_resume_move_within_running(current: RunStatus, new: RunStatus) -> None:
    assert can_transition(current, new)


@pytest.mark.parametrize("status", list(RunStatus))
def test_same_status_is_not_a_transition(status: RunStatus) -> None:
    assert not can_transition(status, status)


def test_every_pair_of_statuses_is_decided() -> None:
    """No status is missing from the state machine (a missing one would raise KeyError)."""
    decided = {(a, b): can_transition(a, b) for a in RunStatus for b in RunStatus}
    assert len(decided) == len(RunStatus) ** 2


def test_no_cycle_outside_the_running_stage() -> None:
    """Outside pause/resume, no two statuses can each reach the other."""
    within_running = {S.RUNNING, S.PAUSING, S.PAUSED, S.RESUMING}
    cycles = [
        (a, b)
        for a, b in itertools.combinations(RunStatus, 2)
        if can_transition(a, b) and can_transition(b, a) and not {a, b} <= within_running
    ]
    assert cycles == []
