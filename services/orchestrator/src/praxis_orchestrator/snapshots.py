"""Snapshots of the live state of a run's assets (``praxis_contracts.state``), recorded cheaply.

When: at a run's start (before its protocol is called), after each nested protocol-function call
completes (kind ``checkpoint``, named ``<function>#<sequence>``; the run's own function's end is
the run's), at its end, and after a rollback. Start and checkpoints only when something changed:
the recorder remembers the JSON of each asset's last recorded state, and a snapshot whose assets
all still have it is not taken (a run that starts where the previous run on the same assets left
off records no ``run_started``: its state before is that run's ``run_finished``). ``run_finished``
and ``rolled_back`` are always recorded, one per run: the state a run left its assets in.

How: the body (``WorkcellSnapshot`` JSON) is assembled from each asset's state encoded once (the
same text serves the comparison), and queued in the orchestrator's ``Outbox`` together with the
small ``WorkcellStateRecorded`` that names it: the relay puts the body in the
``praxis_workcell_state`` object store, then publishes the event, retrying both while NATS is
away. So a snapshot is in order with the run's other events, a NATS outage neither loses it nor
holds the run up (``emit`` never blocks), and nobody is told of a body that is not stored.

Where a checkpoint's state is read: on the run's worker thread, synchronously, when the call's
completion is recorded (``LiveWorkcell.snapshot(sole_writer=True)``). Taking it later on the
supervisor's loop would race the protocol, which goes on changing its assets; the worker is the
only writer of the assets its run holds, so reading them there is exact and needs no handover.
The price, paid by the protocol: encoding the state (see ``make bench``).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.errors import APIError
from nats.js.object_store import ObjectStore

from praxis_contracts.state import (
    Placement,
    SnapshotInfo,
    SnapshotKind,
    WorkcellSnapshot,
    WorkcellStateRecorded,
    snapshot_object_name,
)
from praxis_orchestrator.outbox import Outbox, Undeliverable

log = logging.getLogger(__name__)


class StateRecorder:
    """Records snapshots of a workcell's assets through the outbox; thread-safe."""

    def __init__(
        self,
        workcell: str,
        outbox: Outbox,
        store: Callable[[], ObjectStore],
        put_store: Callable[[], ObjectStore] | None = None,
    ) -> None:
        self.workcell = workcell
        self.outbox = outbox
        self._store = store
        self._put_store = put_store or store
        """Where bodies are written: the same bucket, through a JetStream context that waits
        only a second per chunk's ack (the outbox's rule: a chunk sent while the store elects
        its leader is never answered, and the upload is retried whole)."""
        self._last: dict[str, str] = {}  # asset name -> JSON of its last recorded state
        self._lock = threading.Lock()

    def record(
        self,
        kind: SnapshotKind,
        states: Mapping[str, Any],
        asset_ids: Mapping[str, uuid.UUID],
        *,
        run_id: uuid.UUID | None = None,
        checkpoint: str | None = None,
        force: bool = False,
        placements: Mapping[str, Placement] | None = None,
    ) -> SnapshotInfo | None:
        """Queue a snapshot of ``states`` (asset name -> state JSON) and, for labware, where it
        is (``placements``); None if every asset's state and place are the ones last recorded
        (unless ``force``)."""
        places = placements or {}
        encoded = {
            name: json.dumps(state, separators=(",", ":"))
            + (f',"placement":{places[name].model_dump_json()}' if name in places else "")
            for name, state in states.items()
        }
        if not encoded:
            return None
        with self._lock:
            if not force and all(self._last.get(n) == text for n, text in encoded.items()):
                return None
            self._last.update(encoded)
            snapshot_id = uuid.uuid4()
            info = SnapshotInfo(
                snapshot_id=snapshot_id,
                workcell_name=self.workcell,
                kind=kind,
                run_id=run_id,
                checkpoint=checkpoint,
                taken_at=datetime.now(UTC),
                asset_ids=[asset_ids[name] for name in encoded],
                asset_names=list(encoded),
                object_name=snapshot_object_name(self.workcell, snapshot_id),
            )
            body = snapshot_body(info, encoded, asset_ids)
            info = info.model_copy(update={"size_bytes": len(body)})
            name = info.object_name
            # Under the lock: two snapshots of one asset are queued in the order they were taken.
            self.outbox.emit(
                WorkcellStateRecorded(**info.model_dump()),
                msg_id=f"state:{snapshot_id}",
                before=lambda: self._put(name, body),
            )
        return info

    def remember(self, states: Mapping[str, Any]) -> None:
        """These states are recorded already (a restore the asset-manager recorded)."""
        with self._lock:
            self._last.update(
                {name: json.dumps(state, separators=(",", ":")) for name, state in states.items()}
            )

    async def fetch(self, object_name: str) -> WorkcellSnapshot | None:
        """A snapshot's body from the object store; None if it is not there (pruned)."""
        try:
            result = await self._store().get(object_name)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
            return None
        assert result.data is not None
        return WorkcellSnapshot.model_validate_json(result.data)

    async def keep(self, name: str, body: bytes) -> None:
        """Put another body in the workcell's store (a call's large result), as a snapshot's
        is put (an outbox ``before`` step: retried while NATS is away)."""
        await self._put(name, body)

    async def _put(self, name: str, body: bytes) -> None:
        try:
            await self._put_store().put(name, body)
        except nats.errors.MaxPayloadError as exc:
            raise Undeliverable(str(exc)) from exc
        except APIError as exc:
            if exc.code == 400:
                raise Undeliverable(str(exc)) from exc
            raise
        except nats.errors.Error:
            raise  # NATS away (time-out, reconnecting, JetStream unavailable): retried
        except Exception as exc:
            log.exception("could not store the snapshot %s", name)
            raise Undeliverable(f"{type(exc).__name__}: {exc}") from exc


def snapshot_body(
    info: SnapshotInfo, encoded: Mapping[str, str], asset_ids: Mapping[str, uuid.UUID]
) -> bytes:
    """``WorkcellSnapshot`` JSON, with ``size_bytes`` its own length, each asset's state (and
    placement) spliced in as already encoded (a large plate's state is encoded once, not once
    per use)."""
    assets = ",".join(
        f'{{"asset_id":"{asset_ids[name]}","asset_name":{json.dumps(name)},"state":{text}}}'
        for name, text in encoded.items()
    )
    tail = f',"assets":[{assets}]}}'.encode()
    size = 0
    while True:  # the header names the total size; its digits change it (converges at once)
        head = info.model_copy(update={"size_bytes": size}).model_dump_json().encode()[:-1]
        total = len(head) + len(tail)
        if total == size:
            return head + tail
        size = total
