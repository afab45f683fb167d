"""A bounded set of recently seen ids: de-duplication memory that cannot grow without limit."""

from __future__ import annotations

import uuid
from collections import OrderedDict


class RecentIds:
    """Remembers the last ``limit`` ids added (oldest forgotten first)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._ids: OrderedDict[uuid.UUID, None] = OrderedDict()

    def add(self, item: uuid.UUID) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)
