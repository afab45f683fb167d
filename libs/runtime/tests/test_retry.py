"""Backoff, written once: its delays, and a step kept at until it succeeds."""

from __future__ import annotations

import pytest

from praxis_runtime.retry import Backoff, until_done


def test_delays_double_from_first_up_to_the_cap_and_start_again_after_a_success() -> None:
    backoff = Backoff(first=0.1, cap=1.0)
    assert [backoff.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.succeeded()
    assert backoff.failed() == 0.1


def test_many_failures_never_overflow() -> None:
    backoff = Backoff(first=0.5, cap=10.0, failures=10_000)
    assert backoff.failed() == 10.0


async def test_a_step_is_tried_until_it_succeeds_and_its_value_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tries: list[int] = []

    async def step() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionRefusedError("PostgreSQL restarting")
        return "recorded"

    assert await until_done(step, "recording", first=0.0) == "recorded"
    assert len(tries) == 3
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["recording failed"] * 2
