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

The file is bounded too: a client that stays behind would otherwise let its
run fill the farm's disk.  Once a run's file passes its *disk_bytes*, the spool
says so (``on_pressure(True)``) and the farm hands that run no new shards —
back-pressure on the one run whose client lags, not on the farm: its slots go
to other runs.  What its running shards still produce is spooled (nothing is
ever dropped), so the cap is exceeded by at most their results.  Once the
client has read the file below half the cap, ``on_pressure(False)``: the run
gets shards again.
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from farm.protocol import decode, frame

#: Bytes of events a run keeps in memory before the rest go to its spool file.
MEMORY_BYTES = 16 * 1024 * 1024
#: Bytes of a run's spool file past which it gets no new shards (``[farm] spool_max_bytes``).
DISK_BYTES = 1024 * 1024 * 1024
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

    def __init__(
        self,
        memory_bytes: int = MEMORY_BYTES,
        directory: str | None = None,
        *,
        disk_bytes: int = DISK_BYTES,
        on_pressure: Callable[[bool], None] | None = None,
    ) -> None:
        self._memory_bytes = memory_bytes
        self._directory = directory
        self._disk_bytes = disk_bytes
        self._on_pressure = on_pressure
        #: The file passed *disk_bytes* and has not been read below half of it since.
        self.over = False
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
        if not self.over and self.spilled > self._disk_bytes:
            self._pressure(True)

    def _pressure(self, over: bool) -> None:
        self.over = over
        if self._on_pressure is not None:
            self._on_pressure(over)

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
        if self.over and self.spilled <= self._disk_bytes // 2:
            self._pressure(False)

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
        self.over = False
        self._head.clear()
        self._held = self._count = self._written = self._read = 0
        if self._file is not None:
            self._file.close()
            self._file = None
