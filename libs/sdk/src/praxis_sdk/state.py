"""PraxisState: protocol-specific state that persists across the function calls of a run."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from typing import Any


class PraxisState(MutableMapping[str, Any]):
    """A JSON-serialisable mapping shared by every protocol function of one run.

    Values must survive a JSON round trip: the state travels in events and is stored with the run.
    """

    def __init__(self, initial: dict[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = {}
        for key, value in (initial or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"state value for {key!r} is not JSON-serialisable: {exc}") from exc
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        copied: dict[str, Any] = json.loads(json.dumps(self._data))
        return copied

    def __repr__(self) -> str:
        return f"PraxisState({self._data!r})"
