"""Clean up after a run that failed or was cancelled: leave its machines in a state we can prove.

Before, a run that failed holding a tip left it on the channel, and the next run that picked up
tips failed with ``HasTipError`` until someone ran a clean-up protocol by hand. Now, when a run
ends ``failed`` or ``cancelled``, each liquid handler it was bound to is checked (PyLabRobot's tip
trackers say which channels, and whether the 96-head, still hold tips) and its tips are returned
to where they came from or discarded, as the machine's ``tips_after_failure`` property says
(``return``, the default, falls back to discarding when the spot is gone; ``discard``; a run
fenced off a lease discards: it no longer holds the rack, and another run may). What was
done is recorded on the run's ``RunFinished`` (``cleanup``). A machine that cannot be made safe
(the commands fail, or tips remain) ends the run ``requires_intervention``: its leases are held for
an operator, so no run starts on that machine until someone has looked at it and resolved the run.

It runs on the orchestrator's own loop after the protocol's worker has ended, while the run still
holds its leases; nothing here is protocol code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pylabrobot.liquid_handling import LiquidHandler

log = logging.getLogger(__name__)

TipPolicy = Literal["return", "discard"]
TIP_POLICY_PROPERTY = "tips_after_failure"


@dataclass
class Cleanup:
    """What clean-up did (``actions``) and what it could not do (``problems``)."""

    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.problems


def tip_policy(properties: Mapping[str, Any]) -> TipPolicy:
    return "discard" if properties.get(TIP_POLICY_PROPERTY) == "discard" else "return"


async def make_safe(machines: Mapping[str, tuple[Any, TipPolicy]]) -> Cleanup:
    """Bring each named machine (live object, tip policy) to a safe state."""
    done = Cleanup()
    for name, (machine, policy) in machines.items():
        if isinstance(machine, LiquidHandler):
            await _tips(name, machine, policy, done)
    return done


def holds_tips(machine: Any) -> bool:
    """Whether a liquid handler holds any tip (on a channel or the 96-head)."""
    if not isinstance(machine, LiquidHandler):
        return False
    return bool(_channels_with_tips(machine)) or _head96_has_tips(machine)


def _channels_with_tips(lh: LiquidHandler) -> list[int]:
    return [channel for channel, tracker in lh.head.items() if tracker.has_tip]


def _head96_has_tips(lh: LiquidHandler) -> bool:
    head96 = getattr(lh, "head96", None) or {}
    return any(tracker.has_tip for tracker in head96.values())


async def _tips(name: str, lh: LiquidHandler, policy: TipPolicy, done: Cleanup) -> None:
    held = _channels_with_tips(lh)
    if held:
        how = await _put_down(lh, held, policy)
        if how is None:
            done.problems.append(f"{name}: channels {held} still hold tips")
        else:
            done.actions.append(f"{name}: {how} the tips on channels {held}")
    if _head96_has_tips(lh):
        try:
            if policy == "return":
                await lh.return_tips96()
                done.actions.append(f"{name}: returned the 96-head's tips")
            else:
                await lh.discard_tips96()
                done.actions.append(f"{name}: discarded the 96-head's tips")
        except Exception as exc:
            log.warning("%s: could not put down the 96-head's tips: %r", name, exc)
            done.problems.append(f"{name}: the 96-head still holds tips ({type(exc).__name__})")
    remaining = _channels_with_tips(lh)
    if remaining and not any(p.startswith(f"{name}: channels") for p in done.problems):
        done.problems.append(f"{name}: channels {remaining} still hold tips")


async def _put_down(lh: LiquidHandler, channels: list[int], policy: TipPolicy) -> str | None:
    """Return (then, failing that, discard) or discard the tips; what was done, or None."""
    if policy == "return":
        try:
            await lh.return_tips(use_channels=channels)
            return "returned"
        except Exception as exc:  # e.g. the spot it came from is gone: discard instead
            log.warning("returning tips on %s failed, discarding: %r", channels, exc)
    try:
        await lh.discard_tips(use_channels=channels)
        return "discarded"
    except Exception as exc:
        log.warning("discarding tips on %s failed: %r", channels, exc)
        return None


__all__ = [
    "TIP_POLICY_PROPERTY",
    "Cleanup",
    "TipPolicy",
    "holds_tips",
    "make_safe",
    "tip_policy",
]
