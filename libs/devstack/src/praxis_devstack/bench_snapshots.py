"""``make bench``'s snapshot figures: what recording a checkpoint's state costs a protocol.

In-process, no services, about a second: the demo liquid handler's 96-well ``dest_plate`` and
its 96-tip ``tip_rack``, set up (chatterbox). Each round dispenses 1 uL into the next well (so
the state changed), then takes the checkpoint as a run's worker does: ``LiveWorkcell.snapshot``
of the two assets (their own state as strict JSON), then ``StateRecorder.record`` (each state
encoded once, compared with the last recorded, the body assembled, the event queued in an outbox
that is not relaying: the object put and the publish happen later, off the protocol's path).
Also timed: a checkpoint where nothing changed (read and compare only, nothing recorded).
Bytes: the body put in the object store, and the event published.

The orchestrator is imported from the workspace, as ``Stack`` runs the services from it.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from pylabrobot.resources import Plate, TipRack

from praxis_contracts.assets import Workcell, WorkcellLayout
from praxis_contracts.state import WorkcellStateRecorded
from praxis_devstack.stats import summary
from praxis_plr import demo_liquid_handler, enable_tracking
from praxis_plr.live import LiveWorkcell

ASSETS = ("dest_plate", "tip_rack")


async def measure_snapshots(rounds: int = 200) -> dict[str, Any]:
    from praxis_orchestrator.outbox import Outbox  # the workspace's orchestrator
    from praxis_orchestrator.snapshots import StateRecorder
    from praxis_runtime.publisher import Publisher

    enable_tracking()
    lh = demo_liquid_handler()
    tips: TipRack = lh.deck.get_resource("tip_rack")
    source: Plate = lh.deck.get_resource("source_plate")
    dest: Plate = lh.deck.get_resource("dest_plate")
    now = datetime.now(UTC)
    cell = Workcell(accession_id=uuid.uuid4(), name="bench", created_at=now)
    live = LiveWorkcell(
        WorkcellLayout(workcell=cell, assets=[]), {"dest_plate": dest, "tip_rack": tips}, []
    )
    ids = {name: uuid.uuid4() for name in ASSETS}
    outbox = Outbox(cast(Publisher, None))  # never started: emit only queues
    recorder = StateRecorder("bench", outbox, lambda: cast(Any, None))
    changed_ms: list[float] = []
    unchanged_ms: list[float] = []
    body_bytes = event_bytes = 0
    wells = dest.get_all_items()
    with contextlib.redirect_stdout(io.StringIO()):  # the chatterbox prints every command
        await lh.setup()
        try:
            await lh.pick_up_tips([tips.get_item("A1")])
            for index in range(rounds):
                await lh.aspirate([source.get_well("A1")], vols=[1.0])
                await lh.dispense([wells[index % len(wells)]], vols=[1.0])
                t0 = time.perf_counter()
                states = live.snapshot(ASSETS, sole_writer=True)
                info = recorder.record("checkpoint", states, ids, checkpoint=f"step#{index}")
                changed_ms.append((time.perf_counter() - t0) * 1000)
                assert info is not None
                body_bytes = info.size_bytes
                t0 = time.perf_counter()
                states = live.snapshot(ASSETS, sole_writer=True)
                assert recorder.record("checkpoint", states, ids) is None
                unchanged_ms.append((time.perf_counter() - t0) * 1000)
            assert info is not None
            event_bytes = len(WorkcellStateRecorded(**info.model_dump()).model_dump_json())
            await lh.return_tips()
        finally:
            await lh.stop()
    return {
        "assets": list(ASSETS),
        "rounds": rounds,
        "checkpoint_changed_ms": summary(changed_ms),
        "checkpoint_unchanged_ms": summary(unchanged_ms),
        "body_bytes": body_bytes,
        "event_bytes": event_bytes,
    }
