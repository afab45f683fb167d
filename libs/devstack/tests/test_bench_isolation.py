"""``make bench``'s isolation phase, taken small: every figure is reported, and the guarded
commands really went through a guarded backend."""

from __future__ import annotations

from praxis_devstack.bench_isolation import measure_isolation


async def test_the_isolation_bench_reports_per_run_and_per_command_costs() -> None:
    report = await measure_isolation(runs=3, pairs=5)

    per_run = report["per_run"]
    assert per_run["runs"] == 3 and per_run["start_run_stop_ms"]["p50"] > 0
    per_command = report["per_command"]
    assert per_command["commands"] == 10
    for mode in ("unguarded_us", "guarded_us"):
        assert set(per_command[mode]) == {"p50", "p99", "mean", "max"}
    assert isinstance(per_command["guard_overhead_us_median"], float)
