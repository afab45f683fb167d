"""The run lifecycle as a pure state machine.

Events reach the scheduler at least once and, across consumers, in any order: a late
``RunStarted`` may arrive after ``RunFinished``. Transitions therefore only move a run forward;
anything else is ignored (and reported), which makes every event handler idempotent.
"""

from __future__ import annotations

from praxis_contracts.common import RunStatus

S = RunStatus

_STAGE = {
    S.QUEUED: 0,
    S.PENDING: 1,
    S.PREPARING: 2,
    S.RUNNING: 3,
    S.PAUSING: 3,
    S.PAUSED: 3,
    S.RESUMING: 3,
    S.CANCELING: 4,
    S.REQUIRES_INTERVENTION: 5,
    S.COMPLETED: 9,
    S.FAILED: 9,
    S.CANCELLED: 9,
}

_WITHIN_RUNNING = {
    S.RUNNING: {S.PAUSING, S.PAUSED, S.CANCELING},
    S.PAUSING: {S.PAUSED, S.RESUMING, S.RUNNING, S.CANCELING},
    S.PAUSED: {S.RESUMING, S.RUNNING, S.CANCELING},
    S.RESUMING: {S.RUNNING, S.PAUSING, S.CANCELING},
}


def can_transition(current: RunStatus, new: RunStatus) -> bool:
    """Whether a run in ``current`` may move to ``new``."""
    if current.is_terminal or current == new:
        return False
    if new in _WITHIN_RUNNING.get(current, set()):
        return True
    return _STAGE[new] > _STAGE[current]


EXECUTING = frozenset({S.PREPARING, S.RUNNING, S.PAUSING, S.PAUSED, S.RESUMING, S.CANCELING})
"""Statuses in which an edge has (or had) the run: only an edge or an operator can end them."""

_CONTROL_FROM: dict[str, frozenset[RunStatus]] = {
    "pause": frozenset({S.RUNNING, S.RESUMING}),
    "resume": frozenset({S.PAUSED, S.PAUSING}),
    "cancel": frozenset({S.QUEUED, S.PENDING, S.REQUIRES_INTERVENTION} | EXECUTING),
    "resolve": frozenset({S.REQUIRES_INTERVENTION}),
    "retry": frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.REQUIRES_INTERVENTION}),
}


def allowed(action: str, current: RunStatus) -> bool:
    """Whether an operator may take ``action`` on a run in ``current``."""
    return current in _CONTROL_FROM[action]


def cancel_target(current: RunStatus, edge_has_it: bool) -> RunStatus:
    """Where a cancel takes a run: the edge winds down a run it executes (``canceling``, then
    ``cancelled`` at its next checkpoint); a run no edge has (still queued, never dispatched, or
    lost with its edge) is cancelled by the scheduler at once."""
    if current in EXECUTING and edge_has_it:
        return S.CANCELING
    return S.CANCELLED


def refusal(
    run_status: RunStatus,
    run_workcell: str | None,
    run_edge: str | None,
    workcell: str,
    edge: str,
    reported: RunStatus | None = None,
) -> str | None:
    """Why a run event from ``edge`` of ``workcell`` (``reported``: the status it reports, None
    for a call record) is not to be believed, or None. Only the edge running the run speaks for
    it: its workcell's orchestrator (the server lets nobody else publish under its key), and the
    process that took it (``run_edge``, once one is recorded). Before the run starts, another
    process of the workcell may take over a redelivered command."""
    if run_workcell is None:
        return "the run was dispatched to no workcell"
    if workcell != run_workcell:
        return f"reported by workcell {workcell!r}; the run is on {run_workcell!r}"
    if run_edge is None or edge == run_edge:
        return None
    if reported in (S.PREPARING, S.RUNNING) and run_status in (S.PENDING, S.PREPARING):
        return None  # a redelivered command taken by another process before it started
    return f"reported by edge process {edge}; the run is on {run_edge}"


def finished_reason(outcome: RunStatus, error: str | None, cleanup: list[str]) -> str:
    """What the history says of a run the edge reports ended: its error, or the outcome, and
    what the edge did to leave the machines safe (at most 2,000 characters)."""
    reason = error if error else f"{outcome} on the edge"
    if cleanup:
        reason = f"{reason}; clean-up: {'; '.join(cleanup)}"[:2000]
    return reason


RESERVED_REASON = "assets reserved"
"""What the history says of a queued run whose assets were granted."""

SUBMITTED_REASON = "submitted"
"""What the history says of a new run."""
