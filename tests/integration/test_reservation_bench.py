"""``make bench``'s reservation figures, taken small against a real asset-manager, so the
benchmark keeps measuring what the README says it measures."""

from __future__ import annotations

from typing import Any

import pytest

from praxis_asset_manager.app import Settings, build_app
from praxis_devstack.bench_reservations import SET_SIZE, measure_reservations
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity

pytestmark = pytest.mark.integration

WAKE_UPS = (
    "wake_up_after_lease_left_bucket_ms",
    "wake_up_after_delete_request_ms",
    "wake_up_after_release_command_ms",
)


async def test_the_reservation_bench_reports_every_phase(
    nats_url: str, nats_identity: NatsIdentity, make_database: MakeDatabase, services: Any
) -> None:
    settings = Settings(
        **nats_identity("asset-manager"),
        database_url=make_database("bench"),
        health_port=None,
        edge_placement=False,  # no orchestrator here: runs are placed without one
    )
    await services(build_app, settings)

    report = await measure_reservations(nats_url, 8)

    assert report["assets_per_reservation"] == SET_SIZE
    assert report["one_requester"]["reservations"] == 8
    assert report["sixteen_requesters"]["reservations"] == 16 * 4
    paced = report["sixteen_requesters_paced"]
    assert paced["reservations"] >= 16
    assert paced["offered_per_s"] == pytest.approx(
        0.75 * report["sixteen_requesters"]["reservations_per_s"], abs=0.1
    )
    for phase in ("one_requester", "sixteen_requesters", "sixteen_requesters_paced"):
        latency = report[phase]["grant_latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] < 30_000
    for name in WAKE_UPS:
        assert 0 < report[name]["p50"] <= report[name]["p99"] < 30_000
    # Each round's tombstone is committed after its delete request starts: the clocks agree.
    from_commit, from_request = (report[name]["p50"] for name in WAKE_UPS[:2])
    assert from_commit <= from_request
