"""A blocking message channel over a socket, for the worker side.

Workers are plain synchronous pytest processes; they talk to their host with
the farm's length-prefixed msgpack frames over one stream socket.  Sends are
serialized by a lock because the timeout watchdog thread may send while the
main thread is mid-test.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from typing import Any

from farm.protocol import FrameDecoder, ProtocolError, frame


class ChannelClosed(EOFError):
    """The other side went away."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = FrameDecoder()
        self._inbox: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @classmethod
    def from_fds(cls, read_fd: int, write_fd: int) -> Channel:
        """A channel over two pipe fds (a container's attached stdin/stdout)."""
        return cls(_PipePair(read_fd, write_fd))  # type: ignore[arg-type]

    def send(self, message: dict[str, Any]) -> None:
        data = frame(message)
        with self._lock:
            self._sock.sendall(data)

    def recv(self) -> dict[str, Any]:
        while not self._inbox:
            if self._decoder.failed:
                self._decoder.feed(b"")  # raises the bad frame that followed the last message
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                if self._decoder.pending:
                    raise ProtocolError("channel closed in the middle of a message")
                raise ChannelClosed("the host closed the worker channel")
            self._inbox.extend(self._decoder.feed(chunk))
        return self._inbox.pop(0)

    def pending(self) -> bool:
        """Whether :meth:`recv` has something to return (or to raise) without waiting."""
        if self._inbox or self._decoder.failed:
            return True
        poller = select.poll()  # not select.select: a descriptor may be past FD_SETSIZE
        poller.register(self._sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        self._sock.close()


class _PipePair:
    """The two socket methods a Channel uses, over a pair of file descriptors."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._write_fd, view) :]

    def recv(self, size: int) -> bytes:
        return os.read(self._read_fd, size)

    def fileno(self) -> int:
        return self._read_fd

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)
