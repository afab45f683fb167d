"""The live event stream of a run (server-sent events), decoded.

``SseDecoder`` is the text/event-stream grammar (WHATWG HTML, "server-sent events"): ``field:
value`` lines, an event dispatched at a blank line, comment lines (``: keep-alive``) ignored.
``StreamEvent`` is one event: its ``id`` (send it back as ``Last-Event-ID`` to resume after
it), its ``type`` (``context.aggregate.action``) and its JSON ``data``; ``message()`` parses
it into the contract's event class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from praxis_contracts.base import Event
from praxis_contracts.base import event_types as contract_event_types
from praxis_contracts.common import RunStatus

STATUS_CHANGED = "scheduler.run.status_changed"


@dataclass(frozen=True)
class StreamEvent:
    id: int | None
    type: str
    data: dict[str, Any]

    @property
    def ends_run(self) -> bool:
        """Whether this is the run's terminal status (the stream's last event)."""
        if self.type != STATUS_CHANGED:
            return False
        return RunStatus(self.data["status"]).is_terminal

    def message(self) -> Event | None:
        """The event as its contract class (``RunStatusChanged``, ``FunctionCallRecorded``
        ...), or None for a type this client's contracts do not know (a newer server)."""
        cls = event_types().get(self.type)
        return cls.model_validate(self.data) if cls is not None else None


@cache
def event_types() -> dict[str, type[Event]]:
    """``context.aggregate.action`` -> its event class (``praxis_contracts``), computed once."""
    return contract_event_types()


@dataclass
class SseDecoder:
    """Feed it lines (without their ending); it returns an event at each blank line."""

    _id: str | None = None
    _type: str = "message"
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> StreamEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = value
        elif name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> StreamEvent | None:
        data, kind, ident = self._data, self._type, self._id
        self._data, self._type, self._id = [], "message", None
        if not data:
            return None
        number = int(ident) if ident is not None and ident.isdigit() else None
        return StreamEvent(id=number, type=kind, data=json.loads("\n".join(data)))
