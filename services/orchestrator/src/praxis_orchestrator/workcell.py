"""The workcell this orchestrator owns: live PyLabRobot objects built from the inventory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from praxis_contracts.assets import AssetBinding, GetWorkcellLayout, WorkcellLayout
from praxis_contracts.errors import PraxisError
from praxis_contracts.state import Placement
from praxis_plr.live import LiveWorkcell
from praxis_runtime.bus import INFRA_RETRY_CAP, is_infrastructure, retry_delay

log = logging.getLogger(__name__)


class WorkcellHost:
    """Builds the live workcell on first use; extends it when a run needs an asset added since.

    Extending never stops a machine or resets state: other runs may be using them, and the
    live trackers know where liquid went.
    """

    def __init__(
        self, name: str, fetch: Callable[[GetWorkcellLayout], Awaitable[WorkcellLayout]]
    ) -> None:
        self.name = name
        self._fetch = fetch
        self.live: LiveWorkcell | None = None
        self._lock = asyncio.Lock()

    async def ensure(self, bindings: Iterable[AssetBinding]) -> LiveWorkcell:
        """The live workcell, holding each bound asset under its id (fetching the layout again
        and following it if not: an asset created, replaced or moved since)."""
        wanted = {binding.asset_id: binding.asset_name for binding in bindings}
        if self.live is not None and self.live.has(wanted):
            return self.live
        async with self._lock:
            if self.live is None:
                layout = await self._layout()
                self.live = await LiveWorkcell.build(layout)
                log.info("workcell %s live with %d assets", self.name, len(self.live.names()))
            elif not self.live.has(wanted):
                layout = await self._layout()
                changed = await self.live.extend(layout)
                log.info("workcell %s: followed %s", self.name, ", ".join(changed) or "nothing")
        return self.live

    async def _layout(self) -> WorkcellLayout:
        """The layout from the asset-manager, asked again (backing off, at most a second
        apart) while NATS or the asset-manager is away: a run preparing across an outage
        waits for it (its leases renewed meanwhile), it does not fail. An operator's cancel
        still ends the wait."""
        attempt = 0
        while True:
            try:
                return await self._fetch(GetWorkcellLayout(workcell=self.name))
            except Exception as exc:
                transient = isinstance(exc, PraxisError) and exc.retryable
                if not (transient or is_infrastructure(exc)):
                    raise
                attempt += 1
                log.warning("workcell %s: its layout could not be fetched (%r)", self.name, exc)
            await asyncio.sleep(retry_delay(attempt, INFRA_RETRY_CAP))

    def snapshot(self, names: list[str], *, sole_writer: bool = False) -> dict[str, Any]:
        """The state of the named assets that are live (a run cancelled while the workcell was
        being extended may name some that are not); ``sole_writer``: see
        ``LiveWorkcell.snapshot``."""
        live_workcell = self.live
        if live_workcell is None or not names:
            return {}
        live = set(live_workcell.names())
        return live_workcell.snapshot(
            [name for name in names if name in live], sole_writer=sole_writer
        )

    def placements(self, names: list[str]) -> dict[str, Placement]:
        """Where the named labware assets that are live are (``LiveWorkcell.placements``)."""
        live_workcell = self.live
        if live_workcell is None or not names:
            return {}
        return live_workcell.placements(names)

    async def stop(self) -> None:
        if self.live is not None:
            await self.live.stop()
            self.live = None
