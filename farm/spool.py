"""A run's event queue that holds a bounded amount in memory and spills the rest to disk.

The farm sends a client no more events than it has acknowledged room for
(:mod:`farm.service`), so a client busy replaying results leaves its run's
events queued here.  Why spill rather than stop reading the run's workers: a
paused worker keeps its slot (other runs would wait for one slow client), and
the clock of a test's timeout runs on while its result sits unread, so a
finished test could be killed as timed out.  The farm therefore finishes the
work at full speed and the client catches up from disk; nothing is dropped
and memory stays bounded whatever the run's size.

Events keep their order: once one event went to the file, every later one
follows it there until the file has been read back.
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
from collections import deque
from typing import IO, Any

from farm.protocol import decode, frame

#: Bytes of events a run keeps in memory before the rest go to its spool file.
MEMORY_BYTES = 16 * 1024 * 1024
#: The length prefix of each event's frame in the spool file (:func:`farm.protocol.frame`).
_LENGTH = struct.Struct(">I")


def weight(event: dict[str, Any]) -> int:
    """Roughly what *event* costs in memory: its bulky values (payloads, output) and a bit."""
    size = 200
    for value in event.values():
        if isinstance(value, bytes | str):
            size += len(value)
    return size


class EventSpool:
    """A FIFO of events with asyncio's ``Queue`` interface as the run's stream uses it."""

    def __init__(self, memory_bytes: int = MEMORY_BYTES, directory: str | None = None) -> None:
        self._memory_bytes = memory_bytes
        self._directory = directory
        self._head: deque[tuple[dict[str, Any], int]] = deque()
        self._held = 0
        self._file: IO[bytes] | None = None
        self._written = 0
        self._read = 0
        self._count = 0
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def spilled(self) -> int:
        """Bytes in the spool file not read back yet."""
        return self._written - self._read

    def qsize(self) -> int:
        return self._count

    def empty(self) -> bool:
        return self._count == 0

    def put_nowait(self, event: dict[str, Any]) -> None:
        if self._closed:
            return
        size = weight(event)
        if self.spilled or self._held + size > self._memory_bytes:
            self._spill(event)
        else:
            self._head.append((event, size))
            self._held += size
        self._count += 1
        self._ready.set()

    def _spill(self, event: dict[str, Any]) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="psyduck-events-", dir=self._directory)
        data = frame(event)
        self._file.seek(self._written)
        self._file.write(data)
        self._written += len(data)

    def _refill(self) -> None:
        """Read events back from the file, one at least, until memory is half full or the
        file is drained."""
        assert self._file is not None
        self._file.flush()
        self._file.seek(self._read)
        while self.spilled and (not self._head or self._held < self._memory_bytes // 2):
            (length,) = _LENGTH.unpack(self._file.read(_LENGTH.size))
            event = decode(self._file.read(length))
            self._read += _LENGTH.size + length
            del event["v"]  # the protocol version the frame was stamped with
            size = weight(event)
            self._head.append((event, size))
            self._held += size
        if not self.spilled:
            self._file.seek(0)
            self._file.truncate()
            self._written = self._read = 0

    def get_nowait(self) -> dict[str, Any]:
        if not self._count:
            raise asyncio.QueueEmpty
        if not self._head:
            self._refill()
        event, size = self._head.popleft()
        self._held -= size
        self._count -= 1
        if not self._count:
            self._ready.clear()
        return event

    async def get(self) -> dict[str, Any]:
        while not self._count:
            await self._ready.wait()
        return self.get_nowait()

    def close(self) -> None:
        """Nobody will read the run's events any more (its stream ended): drop what is
        queued, delete the spool file, and ignore what is put from now on."""
        self._closed = True
        self._head.clear()
        self._held = self._count = self._written = self._read = 0
        if self._file is not None:
            self._file.close()
            self._file = None
