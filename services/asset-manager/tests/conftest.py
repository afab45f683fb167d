"""The asset-manager as most of its integration tests run it: in-process, its own database."""

from __future__ import annotations

from typing import Any

import pytest

from praxis_asset_manager.app import Settings, build_app
from praxis_contracts.topology import ASSET_LEASES
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity
from praxis_runtime.bus import Bus
from praxis_runtime.leases import LeaseStore


@pytest.fixture(scope="module")
async def asset_manager(
    request: pytest.FixtureRequest,
    nats_identity: NatsIdentity,
    make_database: MakeDatabase,
    services: Any,
) -> Any:
    """The asset-manager service, serving, with a database of the test module's own."""
    settings = Settings(
        **nats_identity("asset-manager"),
        database_url=make_database(request.module.__name__.rpartition(".")[2]),
        health_port=None,
        graceful_timeout_seconds=5,
        edge_placement=False,  # no orchestrator here: runs are placed without one
    )
    return await services(build_app, settings)


@pytest.fixture
async def am(asset_manager: Any, client: Bus) -> Bus:
    """The client bus, once the asset-manager is serving."""
    return client


@pytest.fixture
def leases(client: Bus) -> LeaseStore:
    """The lease bucket, read and written as the test's own client."""
    return LeaseStore(client.publisher, ASSET_LEASES.bucket)
