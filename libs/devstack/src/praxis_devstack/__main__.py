"""``python -m praxis_devstack run|demo|bench|chaos|proof|nats-config``: the local stack, the
demo, the benchmark, the chaos harness, the production-shape proof, the nats-server
authorization config."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from praxis_client import StreamEvent
from praxis_contracts.common import RunStatus
from praxis_contracts.runs import RunView
from praxis_devstack.bench import bench
from praxis_devstack.chaos import ChaosOptions, chaos
from praxis_devstack.proof import proof
from praxis_devstack.stack import DEMO_WORKCELL, Stack
from praxis_runtime import natsauth


async def run(_: argparse.Namespace) -> int:
    stack = Stack()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("starting NATS (JetStream), PostgreSQL and the six services ...", flush=True)
    try:
        await stack.start()
        source = await stack.seed()
        assert stack.infra is not None
        # An orchestrator for every registered workcell, and each one registered from now on.
        workcells = asyncio.create_task(stack.serve_registered_workcells())
        print(
            f"\nPraxis is serving.\n"
            f"  API          {stack.api}/api/v1\n"
            f"  API docs     {stack.api}/docs\n"
            f"  dashboard    {stack.api}/ui/ (sign in with the admin token below)\n"
            f"  NATS         {stack.infra.nats_url} (identities and passwords: "
            f"{stack.base_dir}/nats/credentials.json)\n"
            f"  PostgreSQL   {_without_password(stack.infra.database_url)} "
            f"({_pg_password_note(stack)})\n"
            f"  logs         {stack.base_dir}/logs/\n"
            f"  workcell     {DEMO_WORKCELL}: liquid handler, deck, tip rack, 2 plates, reader\n"
            f"               (each workcell registered gets an orchestrator of its own)\n"
            f"  protocols    {source.name} @ {(source.commit or '')[:12]} (git: {source.url})\n\n"
            f"  admin token  {stack.admin_token}\n"
            f"               ({_token_origin()}; send it as 'Authorization: Bearer <token>')\n"
            f"  command line .venv/bin/praxis login {stack.api} --token <the admin token>\n\n"
            f"Try: curl -s -XPOST {stack.api}/api/v1/protocols/runs "
            f"-H 'authorization: Bearer {stack.admin_token}' "
            f"-H 'content-type: application/json' "
            f'-d \'{{"protocol_name": "transfer", "parameters": {{"volume": 25}}}}\'\n'
            f"Ctrl-C stops everything.",
            flush=True,
        )
        await stop.wait()
        workcells.cancel()
    finally:
        print("\nstopping ...", flush=True)
        await stack.stop()
    return 0


def _without_password(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1@", url)


def _pg_password_note(stack: Stack) -> str:
    assert stack.infra is not None
    if stack.infra.postgres is None:
        return "external"
    return (
        f"superuser password: {stack.infra.postgres.password_path}; each service has a role "
        "of its own owning only its schema"
    )


def _token_origin() -> str:
    if os.environ.get("PRAXIS_ADMIN_TOKEN"):
        return "PRAXIS_ADMIN_TOKEN from the environment"
    return "generated for this start: set PRAXIS_ADMIN_TOKEN to choose it"


async def demo(args: argparse.Namespace) -> int:
    # A fresh workcell every time (``make run``'s keeps the state runs left in its plates, and a
    # few demos would empty the source plate).
    with tempfile.TemporaryDirectory(prefix="praxis-demo-") as base:
        return await _demo(args, Stack(base_dir=Path(base), fast=True))


async def _demo(args: argparse.Namespace, stack: Stack) -> int:
    try:
        print("starting the stack ...", flush=True)
        await stack.start()
        await stack.seed()
        async with stack.client() as praxis:
            run = await praxis.submit_run(
                "transfer",
                workcell=DEMO_WORKCELL,
                parameters={"volume": args.volume, "wells": ["A1", "B1"]},
                assets={"source_plate": "source_plate", "dest_plate": "dest_plate"},
            )
            print(
                f"submitted run {run.accession_id}: transfer {args.volume} uL per well, A1 and "
                "B1, source_plate -> dest_plate"
            )
            async for event in praxis.events(run.accession_id):
                _print_event(event)
            run = await praxis.get_run(run.accession_id)
        return _verdict(run, args.volume)
    finally:
        await stack.stop()


def _print_event(event: StreamEvent) -> None:
    data = event.data
    detail = data.get("status") or data.get("outcome") or data.get("function") or ""
    if "function" in data:
        detail = f"{data['function']} {data['status']}"
    print(f"  {event.type:<40}{detail}", flush=True)


def _verdict(run: RunView, volume: float) -> int:
    print(f"\nrun {run.accession_id}: {run.status}; result {run.result}")
    if run.status != RunStatus.COMPLETED:
        print(f"FAILED: {run.error}")
        return 1
    states = run.asset_states or {}
    ok = True
    for well in ("A1", "B1"):
        src = states["source_plate"][f"source_plate_well_{well}"]["volume"]
        dst = states["dest_plate"][f"dest_plate_well_{well}"]["volume"]
        print(f"  {well}: source_plate {src} uL, dest_plate {dst} uL (volume trackers)")
        ok &= dst >= volume and src <= 200 - volume
    print("OK: the liquid moved" if ok else "FAILED: the volume trackers do not show the transfer")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m praxis_devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start everything and serve until Ctrl-C")
    p_demo = sub.add_parser("demo", help="run the example transfer and check the liquid moved")
    p_demo.add_argument("--volume", type=float, default=50.0)
    p_bench = sub.add_parser("bench", help="submit->start latency and no-op throughput")
    p_bench.add_argument("--runs", type=int, default=200)
    p_bench.add_argument("--concurrency", type=int, default=32)
    p_bench.add_argument("--output", default=None, help="also write the JSON report here")
    p_bench.add_argument(
        "--no-scale", action="store_true", help="skip the lab-scale phase (its own stack, ~1 min)"
    )
    _chaos_arguments(sub)
    p_proof = sub.add_parser(
        "proof",
        help="the production shape locally: a 3-node NATS cluster at R3, two workcells; kill -9 "
        "a NATS node, restart every service in turn (each edge while a protocol runs)",
    )
    p_proof.add_argument("--runs", type=int, default=80, help="workload runs at least")
    p_proof.add_argument("--in-flight", type=int, default=4, help="active runs per workcell")
    p_proof.add_argument("--seed", type=int, default=1)
    p_proof.add_argument(
        "--protocol-seconds", type=float, default=30.0, help="the protocol an edge restarts under"
    )
    p_proof.add_argument("--base-dir", default=None, help="data and logs (default: a temp folder)")
    p_proof.add_argument("--keep", action="store_true", help="keep the base dir if all is well")
    p_proof.add_argument("--output", default=None, help="write the JSON report here")
    natsauth.add_arguments(sub)
    args = parser.parse_args(argv)
    if args.command == "nats-config":
        return natsauth.command(args)
    if args.command == "chaos" and any("=" not in item for item in args.env):
        parser.error("--env takes KEY=VALUE")
    command = {"run": run, "demo": demo, "bench": bench, "chaos": chaos, "proof": proof}[
        args.command
    ]
    try:
        return asyncio.run(_stoppable(command(args)))
    except asyncio.CancelledError:
        return 143


def _chaos_arguments(sub: Any) -> None:
    defaults = ChaosOptions()
    p = sub.add_parser(
        "chaos",
        help="kill each service, nats-server and PostgreSQL in turn under a contended workload; "
        "check no run is stuck and no asset was held twice",
    )
    p.add_argument("--runs", type=int, default=defaults.runs, help="runs in the workload")
    p.add_argument(
        "--in-flight", type=int, default=defaults.in_flight, help="active runs at most at once"
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="workload seed")
    p.add_argument("--base-dir", default=None, help="data and logs (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the base dir even if all is well")
    p.add_argument(
        "--outage", type=float, default=defaults.outage_seconds, help="seconds a server stays down"
    )
    p.add_argument("--recover-timeout", type=float, default=defaults.recover_timeout)
    p.add_argument("--settle-timeout", type=float, default=defaults.settle_timeout)
    p.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout)
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra service environment (repeatable), e.g. --env MAX_CONCURRENT_RUNS=2",
    )
    p.add_argument(
        "--resolve-during",
        action="store_true",
        help="resolve interventions as they appear, not only after the workload",
    )
    p.add_argument(
        "--nats-phase-repeats",
        type=int,
        default=defaults.nats_phase_repeats,
        help="nats-server restarts in each phase of a run (dispatching ... finishing)",
    )
    p.add_argument(
        "--hostile-sources",
        type=int,
        default=defaults.hostile_sources,
        help="sources whose module loops at import, registered beside a normal one",
    )
    p.add_argument("--output", default=None, help="also write the JSON report here")


async def _stoppable(work: Coroutine[Any, Any, int]) -> int:
    """SIGTERM cancels the command, so its ``finally`` stops every process it started."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


if __name__ == "__main__":
    sys.exit(main())
