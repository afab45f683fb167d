"""Reservation figures for ``make bench``, through the asset-manager's API (commands, events).

- 4-asset reservations per second (reserve, granted, release, released), 1 and 16 concurrent
  requesters on disjoint asset sets, with the latency from command to grant (p50/p99); then the
  grant latency of 16 requesters offered three quarters of that rate on a fixed schedule (open
  loop: a closed loop's latency is just requesters / throughput);
- wake-up latency: a run waits for a held set, the holder lets go, and the clock stops when the
  waiter's grant event arrives. Three starts: the moment the last of the holder's leases left the
  bucket (the server's timestamp on its tombstone; the server and this process share a clock),
  the start of the request that deleted them (so it includes that client's own round trip), and
  the ``ReleaseAssets`` command to the asset-manager.
Each throughput phase is warmed up first. Events are pushed by core NATS subscriptions; nothing
polls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from praxis_contracts.assets import (
    AssetDraft,
    AssetsReleased,
    AssetsReserved,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationFailed,
    ReservationWaiting,
    ReserveAssets,
)
from praxis_contracts.base import Event
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_contracts.topology import ASSET_LEASES
from praxis_devstack.stats import summary
from praxis_runtime.bus import Bus
from praxis_runtime.leases import LeaseStore

PLATE = "pylabrobot.resources.plate.Plate"
SET_SIZE = 4
KINDS: dict[str, type[Event]] = {
    "granted": AssetsReserved,
    "released": AssetsReleased,
    "waiting": ReservationWaiting,
    "failed": ReservationFailed,
}


class Events:
    """Every reservation event, by kind and run id, pushed by core NATS subscriptions; a future
    waits for one whether it arrives before or after the asker."""

    def __init__(self) -> None:
        self.futures: dict[tuple[str, uuid.UUID], asyncio.Future[Any]] = {}

    def future(self, kind: str, run_id: uuid.UUID) -> asyncio.Future[Any]:
        key = (kind, run_id)
        if key not in self.futures:
            self.futures[key] = asyncio.get_running_loop().create_future()
        return self.futures[key]

    async def subscribe(self, bus: Bus) -> None:
        for kind, event_type in KINDS.items():
            await bus.nc.subscribe(event_type.subscription_subject(), cb=self._handler(kind))
        await bus.nc.flush()

    def _handler(self, kind: str) -> Any:
        event_type = KINDS[kind]

        async def on_message(msg: Any) -> None:
            event = event_type.model_validate_json(msg.data)
            future = self.future(kind, event.run_id)  # type: ignore[attr-defined]
            if not future.done():
                future.set_result(event)

        return on_message

    async def wait(self, kind: str, run_id: uuid.UUID) -> Any:
        result = await asyncio.wait_for(self.future(kind, run_id), 30)
        if kind == "granted" and ("failed", run_id) in self.futures:
            raise RuntimeError(f"reservation {run_id} failed")
        return result


class ReservationBench:
    def __init__(self, bus: Bus, workcell: str, plates: list[str]) -> None:
        self.bus = bus
        self.workcell = workcell
        self.plates = plates
        self.events = Events()

    def command(self, run_id: uuid.UUID, plates: list[str]) -> ReserveAssets:
        requirements = [
            AssetRequirementSpec(name=f"p{i}", type_fqn=PLATE, kind="resource")
            for i in range(len(plates))
        ]
        pins = {f"p{i}": name for i, name in enumerate(plates)}
        return ReserveAssets(
            run_id=run_id, requirements=requirements, pins=pins, workcell=self.workcell
        )

    async def cycle(self, plates: list[str], due: float | None = None) -> float:
        """Reserve, wait for the grant, release, wait for the release; returns grant ms, from
        ``due`` (the ``perf_counter`` time the request was scheduled for) if given."""
        run_id = uuid.uuid4()
        started = time.perf_counter() if due is None else due
        await self.bus.publish(self.command(run_id, plates))
        await self.events.wait("granted", run_id)
        latency = (time.perf_counter() - started) * 1000
        await self.bus.publish(ReleaseAssets(run_id=run_id))
        await self.events.wait("released", run_id)
        return latency

    async def throughput(self, requesters: int, cycles: int) -> dict[str, Any]:
        sets = [self.plates[i * SET_SIZE : (i + 1) * SET_SIZE] for i in range(requesters)]
        latencies: list[float] = []

        async def requester(plates: list[str]) -> None:
            for _ in range(cycles):
                latencies.append(await self.cycle(plates))

        started = time.perf_counter()
        await asyncio.gather(*(requester(s) for s in sets))
        elapsed = time.perf_counter() - started
        return {
            "requesters": requesters,
            "reservations": requesters * cycles,
            "reservations_per_s": round(requesters * cycles / elapsed, 1),
            "grant_latency_ms": latencies,
        }

    async def paced(self, requesters: int, rate: float, seconds: float) -> dict[str, Any]:
        """Open loop: requests are offered at ``rate`` per second in all, each requester on its
        own set on a fixed schedule, whatever the answers do. Latency counts from the scheduled
        moment, so a late answer also delays (and is charged to) the requests behind it."""
        sets = [self.plates[i * SET_SIZE : (i + 1) * SET_SIZE] for i in range(requesters)]
        period = requesters / rate
        count = max(1, int(seconds / period))
        latencies: list[float] = []
        origin = time.perf_counter()

        async def requester(index: int, plates: list[str]) -> None:
            for n in range(count):
                due = origin + (n + index / requesters) * period
                # Pacing a load generator, not waiting for a state: nothing to be pushed here.
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                latencies.append(await self.cycle(plates, due))

        await asyncio.gather(*(requester(i, s) for i, s in enumerate(sets)))
        return {
            "requesters": requesters,
            "offered_per_s": round(rate, 1),
            "reservations": requesters * count,
            "grant_latency_ms": latencies,
        }

    async def wake_up(self, rounds: int, *, in_bucket: bool) -> dict[str, list[float]]:
        """A run waits for a held set; the holder lets go; time until the waiter is granted.

        ``in_bucket``: the holder's leases leave the bucket directly (as when a holder releases,
        a lease expires or is force-released) and only the watcher can wake the waiter; timed
        from the request that deletes them and from the last tombstone's commit. Otherwise timed
        from the ``ReleaseAssets`` command.
        """
        plates = self.plates[:SET_SIZE]
        leases = LeaseStore(self.bus.publisher, ASSET_LEASES.bucket)
        from_request: list[float] = []
        from_commit: list[float] = []
        for _ in range(rounds):
            holder, waiter = uuid.uuid4(), uuid.uuid4()
            await self.bus.publish(self.command(holder, plates))
            held = await self.events.wait("granted", holder)
            await self.bus.publish(self.command(waiter, plates))
            await self.events.wait("waiting", waiter)
            started = time.time_ns()
            if in_bucket:
                tombstones = await asyncio.gather(
                    *(leases.release(b.lease_key, b.token) for b in held.bindings)
                )
            else:
                await self.bus.publish(ReleaseAssets(run_id=holder))
            await self.events.wait("granted", waiter)
            granted = time.time_ns()
            from_request.append((granted - started) / 1e6)
            if in_bucket:
                committed = max([await self._committed_ns(seq) for seq in tombstones if seq])
                from_commit.append((granted - committed) / 1e6)
            await self.bus.publish(ReleaseAssets(run_id=waiter))
            await self.events.wait("released", waiter)
        return {"from_request": from_request, "from_commit": from_commit}

    async def _committed_ns(self, seq: int) -> int:
        """When the server stored the lease bucket's message ``seq`` (its own timestamp)."""
        msg = await self.bus.js.get_msg(f"KV_{ASSET_LEASES.bucket}", seq)
        assert msg.time is not None
        return int(msg.time.timestamp()) * 1_000_000_000 + msg.time.microsecond * 1000


async def measure_reservations(nats_url: str, cycles: int) -> dict[str, Any]:
    bus = Bus(nats_url, "bench-reservations")
    await bus.connect()
    try:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        drafts = [
            AssetDraft(kind="resource", name=f"plate_{i:02d}", fqn=PLATE, definition={})
            for i in range(16 * SET_SIZE)
        ]
        await bus.request(RegisterWorkcell(name=name, assets=drafts), timeout=60)
        bench = ReservationBench(bus, name, [d.name for d in drafts])
        await bench.events.subscribe(bus)
        await bench.throughput(1, 20)  # warm-up
        one = await bench.throughput(1, cycles)
        await bench.throughput(16, 10)  # warm-up
        sixteen = await bench.throughput(16, max(1, cycles // 2))
        # Below saturation: three quarters of what 16 closed-loop requesters reached.
        paced = await bench.paced(16, 0.75 * sixteen["reservations_per_s"], cycles / 50)
        wake = await bench.wake_up(max(10, cycles // 4), in_bucket=False)
        wake_bucket = await bench.wake_up(max(10, cycles // 4), in_bucket=True)
    finally:
        await bus.stop()
    return {
        "assets_per_reservation": SET_SIZE,
        "one_requester": {**one, "grant_latency_ms": summary(one["grant_latency_ms"])},
        "sixteen_requesters": {
            **sixteen,
            "grant_latency_ms": summary(sixteen["grant_latency_ms"]),
        },
        "sixteen_requesters_paced": {
            **paced,
            "grant_latency_ms": summary(paced["grant_latency_ms"]),
        },
        "wake_up_after_lease_left_bucket_ms": summary(wake_bucket["from_commit"]),
        "wake_up_after_delete_request_ms": summary(wake_bucket["from_request"]),
        "wake_up_after_release_command_ms": summary(wake["from_request"]),
    }
