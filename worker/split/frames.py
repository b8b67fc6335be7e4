"""Messages over a Unix stream socket: each one a 4-byte length, then its msgpack.

A stream socket, not ZeroMQ: the fronts and the model process share one host, the kernel keeps
each connection's order and applies back-pressure, and a process that dies closes its end, so
the other side learns of it at once from the end of the stream (no heartbeats to miss).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream

M = TypeVar("M")

_HEADER = 4
MAX_FRAME_BYTES = 256 * 1024 * 1024
"""A frame longer than this is a broken peer, not a job (a full queue's ids are far smaller)."""


class FrameError(Exception):
    """The peer sent something that is not a frame of ours."""


async def receive(stream: ByteReceiveStream, kind: type[M]) -> AsyncIterator[M]:
    """Every message of ``kind`` the peer sends, in order, until it closes its end."""
    decoder = msgspec.msgpack.Decoder(kind)
    buffer = bytearray()
    try:
        async for chunk in stream:
            buffer += chunk
            start = 0
            while len(buffer) - start >= _HEADER:
                size = int.from_bytes(buffer[start : start + _HEADER], "little")
                if size > MAX_FRAME_BYTES:
                    raise FrameError(f"a frame of {size} bytes")
                end = start + _HEADER + size
                if end > len(buffer):
                    break
                try:
                    message = decoder.decode(buffer[start + _HEADER : end])
                except msgspec.DecodeError as err:
                    raise FrameError(str(err)) from err
                start = end
                yield message
            del buffer[:start]
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return


class Sender(Generic[M]):
    """Sends messages without waiting: ``send`` queues, ``run`` encodes and writes what has
    gathered in one call, so the replies to a burst's jobs leave in a few writes, not one each.
    Until then the last message queued can still grow (``last``): a run of answers of one kind
    becomes one message."""

    def __init__(self, stream: ByteSendStream) -> None:
        self._stream = stream
        self._encoder = msgspec.msgpack.Encoder()
        self._pending: list[M] = []
        self._ready = anyio.Event()
        self.closed = False

    def send(self, message: M) -> None:
        if self.closed:
            return
        self._pending.append(message)
        self._ready.set()

    @property
    def last(self) -> M | None:
        """The last message queued and not written yet, which a caller may still add to."""
        return self._pending[-1] if self._pending else None

    async def run(self) -> None:
        """Write until the stream breaks or this is cancelled."""
        encode = self._encoder.encode
        try:
            while True:
                await self._ready.wait()
                self._ready = anyio.Event()
                messages, self._pending = self._pending, []
                data = bytearray()
                for message in messages:
                    encoded = encode(message)
                    data += len(encoded).to_bytes(_HEADER, "little")
                    data += encoded
                await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.closed = True
