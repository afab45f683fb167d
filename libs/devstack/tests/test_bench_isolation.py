"""``make bench``'s isolation phase, taken small: every figure is reported, the runs really ran
in runner processes, and the commands really went through the supervisor's guarded backend."""

from __future__ import annotations

import pytest

from praxis_devstack.bench_isolation import measure_isolation

pytestmark = pytest.mark.process  # starts runner processes: not in `make test-unit`


async def test_the_isolation_bench_reports_cold_start_per_run_and_per_command_costs() -> None:
    report = await measure_isolation(runs=3, pairs=5, fresh=1)

    cold = report["cold_start"]
    assert cold["zygote_and_first_run_ms"] > 0
    assert cold["fresh_interpreter_imports_ms"]["p50"] > 0
    per_run = report["per_run"]
    assert per_run["runs"] == 3 and per_run["fork_prepare_call_end_ms"]["p50"] > 0
    per_command = report["per_command"]
    assert per_command["commands"] == 10
    for mode in ("unguarded_us", "guarded_us", "in_runner_us"):
        assert set(per_command[mode]) == {"p50", "p99", "mean", "max"}
    # Ten commands timed inside the runner: each a round trip to the supervisor.
    assert per_command["in_runner_us"]["p50"] > per_command["unguarded_us"]["p50"]
    assert isinstance(per_command["isolation_overhead_us_median"], float)
