"""``praxis_devstack.cost``: CPU of a process tree from /proc, children reaped or alive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import nats
import pytest

from praxis_devstack.cost import Meter, Sample, per_run, tree_cpu_seconds
from praxis_devstack.servers import NatsServer, PostgresServer

pytestmark = pytest.mark.process  # starts processes: not in `make test-unit`

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def test_a_tree_counts_its_live_children_and_those_it_reaped() -> None:
    """The parent burns 0.3 s, a child it waits for 0.3 s (reaped: in the parent's cutime),
    and a child still running when sampled another 0.3 s."""
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {BURN.format(seconds=0.3)!r}], check=True)\n"
        f"live = subprocess.Popen([sys.executable, '-c', {BURN.format(seconds=0.3)!r} + "
        "'print(\"done\", flush=True)\\ntime.sleep(60)'], stdout=sys.stdout)\n"
        f"exec({BURN.format(seconds=0.3)!r})\n"
        "print('parent', flush=True)\n"
        "live.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        said = {parent.stdout.readline().strip(), parent.stdout.readline().strip()}
        assert said == {"done", "parent"}
        used = tree_cpu_seconds({"tree": parent.pid, "gone": 2**22 + 12345})
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()
    assert set(used) == {"tree"}  # a process that does not exist is left out
    assert 0.85 <= used["tree"] < 3.0, used


def test_figures_per_run() -> None:
    before = Sample({"scheduler": 1.0, "gateway": 2.0}, {"in_msgs": 10, "out_msgs": 20}, {})
    after = Sample(
        {"scheduler": 1.5, "gateway": 2.1, "new": 9.0},
        {"in_msgs": 110, "out_msgs": 420},
        {"transactions": 50},
    )
    figures = per_run(before, after, 100)
    assert figures["cpu_ms"] == {"scheduler": 5.0, "gateway": 1.0}  # highest first
    assert list(figures["cpu_ms"]) == ["scheduler", "gateway"]
    assert figures["cpu_ms_total"] == 6.0
    assert figures["nats_msgs"] == {"in_msgs": 1.0, "out_msgs": 4.0}
    assert "database" not in figures  # nothing to compare against


@pytest.mark.integration
async def test_a_meter_counts_what_real_servers_did(tmp_path: Path) -> None:
    """Between two samples: the messages published through a real nats-server, the statements
    and transactions a real PostgreSQL ran (``pg_stat_statements`` loaded), and its CPU."""
    with (
        NatsServer(tmp_path / "nats") as nats_server,
        PostgresServer(
            tmp_path / "pg", fast=True, settings={"shared_preload_libraries": "pg_stat_statements"}
        ) as postgres,
    ):
        meter = Meter(
            {"nats-server": nats_server.pid, "postgresql": postgres.pid},
            nats_monitor=nats_server.monitor_url,
            postgres_dsn=postgres.dsn,
        )
        await meter.start()
        assert meter.statements
        nc = await nats.connect(nats_server.url)
        conn = await asyncpg.connect(postgres.dsn)
        try:
            before = await meter.sample()
            for _ in range(50):
                await nc.publish("cost.test", b"x")
            await nc.flush()
            for _ in range(20):
                async with conn.transaction():
                    await conn.fetchval("SELECT count(*) FROM generate_series(1, 20000)")
            after = await meter.sample()
        finally:
            await conn.close()
            await nc.close()
    figures = per_run(before, after, 10)
    assert figures["nats_msgs"]["in_msgs"] >= 5.0  # 50 messages over 10 "runs"
    database = figures["database"]
    assert database["transactions"] == 2.0  # 20 COMMITs
    assert database["statements"] >= 6.0  # 20 x BEGIN, SELECT, COMMIT
    assert figures["cpu_ms"]["postgresql"] > 0
    assert set(figures["cpu_ms"]) == {"nats-server", "postgresql"}
