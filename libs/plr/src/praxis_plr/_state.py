"""PyLabRobot state dicts <-> strict JSON.

Two PyLabRobot 0.2.2 traps live here:

* ``serialize_all_state()`` returns raw floats, and some are infinite (a ``Trash`` tracker has
  ``max_volume = inf``). ``json.dumps`` writes the non-standard ``Infinity`` and pydantic writes
  ``null``; both break a round trip. We use PyLabRobot's own convention (its ``serialize()`` writes
  ``"Infinity"``, ``"-Infinity"`` and ``"nan"`` strings) and turn them back into floats on load.
* A liquid handler's ``head_state`` / ``head96_state`` (and ``arm_state``) are keyed by channel
  ``int``; JSON turns the keys into strings and ``load_state`` then fails with ``KeyError: '0'``.
"""

from __future__ import annotations

import json
import math
from typing import Any

_CHANNEL_KEYED = ("head_state", "head96_state", "arm_state")
_NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "nan": math.nan}


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return "nan"
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def state_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """A detached, strictly JSON copy of a ``serialize_all_state()`` dict (raises if impossible)."""
    result: dict[str, Any] = json.loads(json.dumps(_encode(state), allow_nan=False))
    return result


def state_from_json(state: dict[str, Any]) -> dict[str, Any]:
    """Turn a JSON-shaped ``serialize_all_state()`` dict back into what ``load_all_state`` needs."""
    decoded: dict[str, Any] = _decode(state)
    for entry in decoded.values():
        if not isinstance(entry, dict):
            continue
        for key in _CHANNEL_KEYED:
            channels = entry.get(key)
            if isinstance(channels, dict):
                entry[key] = {int(channel): item for channel, item in channels.items()}
    return decoded
