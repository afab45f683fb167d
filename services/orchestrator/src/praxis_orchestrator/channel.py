"""Messages between the supervisor and a run's runner process: length-prefixed JSON frames over
a Unix socket (a socketpair the zygote hands the runner).

Both sides are asyncio; a frame is a 4-byte big-endian length and that many bytes of JSON. A
frame over ``MAX_FRAME`` is refused (the runner is untrusted: it cannot make the supervisor hold
an unbounded message), as is one that is not a JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

MAX_FRAME = 64 * 1024 * 1024
"""The largest message either side accepts (a filled STAR deck's layout is ~6 MB)."""
_LENGTH = struct.Struct(">I")


class ChannelClosed(ConnectionError):
    """The other side closed the channel (or sent something that is not a message)."""


class Channel:
    """One end of a run's channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._sending = asyncio.Lock()

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer)

    async def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        if len(body) > MAX_FRAME:
            raise ValueError(f"a message of {len(body)} bytes is over {MAX_FRAME}")
        async with self._sending:
            self.writer.write(_LENGTH.pack(len(body)) + body)
            await self.writer.drain()

    def send_nowait(self, message: dict[str, Any]) -> None:
        """Queue ``message`` from synchronous code, in order with what was sent before it (a
        frame is written whole, in one call)."""
        body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        if len(body) > MAX_FRAME:
            raise ValueError(f"a message of {len(body)} bytes is over {MAX_FRAME}")
        self.writer.write(_LENGTH.pack(len(body)) + body)

    async def receive(self) -> dict[str, Any]:
        """The next message; ``ChannelClosed`` at the end or on a malformed frame."""
        try:
            head = await self.reader.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(head)
            if length > MAX_FRAME:
                raise ChannelClosed(f"a frame of {length} bytes is over {MAX_FRAME}")
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed("the channel was closed") from exc
        try:
            message = json.loads(body)
        except ValueError as exc:
            raise ChannelClosed("the other side sent a frame that is not JSON") from exc
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ChannelClosed("the other side sent something that is not a message")
        return message

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
