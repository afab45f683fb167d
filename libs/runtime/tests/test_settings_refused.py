"""A setting that would weaken a guarantee stops the service at start-up, with a message saying
which setting and why, before it connects to anything."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from praxis_runtime.settings import EX_CONFIG

pytestmark = pytest.mark.process  # starts processes: not in `make test-unit`


@pytest.mark.parametrize(
    ("service", "setting", "value", "why"),
    [
        ("praxis_asset_manager", "ASSET_LOCK_TIMEOUT_SECONDS", "2", "slow renewal"),
        ("praxis_scheduler", "INFRA_RETRY_SECONDS", "5", "dead-lettered"),
        ("praxis_orchestrator", "INFRA_RETRY_SECONDS", "59", "nothing may be lost"),
    ],
)
def test_a_service_refuses_a_setting_that_weakens_a_guarantee(
    service: str, setting: str, value: str, why: str
) -> None:
    env = {**os.environ, setting: value, "NATS_URL": "nats://127.0.0.1:1"}  # never reached
    argv = [sys.executable, "-m", service]
    done = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EX_CONFIG, done.stderr
    assert "refused to start" in done.stderr and setting in done.stderr and why in done.stderr
    assert "Traceback" not in done.stderr
