"""A small HTTP/1.1 and WebSocket client on asyncio streams, for the farm protocol.

Why not aiohttp's client: importing aiohttp costs the user's pytest process
0.1 to 0.2 s on every ``pytest --psyduck`` (it builds TLS contexts and loads the
CA bundle at import), as much as a small suite's whole run.  The farm protocol
needs little of HTTP: one request with a msgpack body per connection, answered
with ``Content-Length`` or chunked, and one websocket (RFC 6455) of binary
messages with ping/pong.  The server side stays aiohttp.

Every call runs under a deadline, and every body and message is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Seconds closing a websocket may wait for its socket to close.
CLOSE_TIMEOUT = 5.0
#: Upper bound of a response's status line and headers.
MAX_HEAD_BYTES = 64 * 1024
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HTTPError(Exception):
    """The exchange failed: no connection, a deadline passed, or the peer broke the protocol."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    path: str
    tls: bool

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HTTPError(f"{url!r} is not an http:// or https:// URL")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as exc:
        raise HTTPError(f"{url!r}: {exc}") from exc
    return _Target(parts.hostname, port, parts.path or "/", tls)


async def _connect(target: _Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ssl_context = None
    if target.tls:
        import ssl  # only for https farms: building a context loads the CA bundle

        ssl_context = ssl.create_default_context()
    try:
        return await asyncio.open_connection(
            target.host, target.port, ssl=ssl_context, limit=MAX_HEAD_BYTES
        )
    except OSError as exc:
        raise HTTPError(f"cannot connect to {target.authority}: {exc.strerror or exc}") from exc


def _head(method: str, target: _Target, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.authority}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise HTTPError("the server closed the connection without answering") from exc
    except asyncio.LimitOverrunError as exc:
        raise HTTPError(f"response headers larger than {MAX_HEAD_BYTES} bytes") from exc
    status_line, *header_lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HTTPError(f"not an HTTP/1.x response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(code), headers


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], max_bytes: int
) -> bytes:
    try:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if len(body) + size > max_bytes:
                    raise HTTPError(f"response body larger than {max_bytes} bytes")
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers in this protocol
                    return bytes(body)
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        if "content-length" in headers:
            length = int(headers["content-length"])
            if length > max_bytes:
                raise HTTPError(f"response body of {length} bytes exceeds {max_bytes}")
            return await reader.readexactly(length)
        body = bytearray()  # one read() returns only what is buffered: read to the end
        while chunk := await reader.read(max_bytes + 1 - len(body)):
            body += chunk
            if len(body) > max_bytes:
                raise HTTPError(f"response body larger than {max_bytes} bytes")
        return bytes(body)
    except (asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError) as exc:
        raise HTTPError(f"malformed response body: {exc}") from exc


@contextlib.asynccontextmanager
async def _deadline(target: _Target, timeout: float) -> AsyncIterator[None]:
    """Run the block within *timeout*; a lapse or a socket error becomes :class:`HTTPError`."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError as exc:
        raise HTTPError(f"no answer from {target.authority} within {timeout:g}s") from exc
    except OSError as exc:
        raise HTTPError(f"connection to {target.authority} failed: {exc}") from exc


async def _ask(
    target: _Target, method: str, headers: dict[str, str], body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict[str, str]]:
    """Connect, send one request and read the head of its answer."""
    reader, writer = await _connect(target)
    try:
        writer.write(_head(method, target, headers) + body)
        await writer.drain()
        status, response_headers = await _read_head(reader)
    except BaseException:
        writer.close()
        raise
    return reader, writer, status, response_headers


async def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    body: bytes = b"",
    timeout: float,
    max_bytes: int,
) -> Response:
    """One request on its own connection; raise :class:`HTTPError` on any transport failure."""
    target = _target(url)
    async with _deadline(target, timeout):
        reader, writer, status, response_headers = await _ask(
            target,
            method,
            {**headers, "Content-Length": str(len(body)), "Connection": "close"},
            body,
        )
        try:
            return Response(
                status, response_headers, await _read_body(reader, response_headers, max_bytes)
            )
        finally:
            writer.close()


class Refused(HTTPError):
    """The server answered the websocket upgrade with an ordinary HTTP response."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"websocket upgrade refused with status {response.status}")
        self.response = response


class WebSocket:
    """The client end of one websocket carrying binary messages."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_bytes: int,
        idle_timeout: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._max_bytes = max_bytes
        #: Seconds of silence (not even a ping) after which the server is taken for dead.
        self.idle_timeout = idle_timeout
        #: The headers of the server's upgrade response, names in lower case.
        self.headers = headers or {}
        self.closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        max_bytes: int,
        idle_timeout: float,
    ) -> WebSocket:
        """Open *url* as a websocket; :class:`Refused` carries a non-101 answer."""
        target = _target(url)
        key = base64.b64encode(os.urandom(16))
        expected = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        upgrade = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key.decode(),
            "Sec-WebSocket-Version": "13",
        }
        async with _deadline(target, timeout):
            reader, writer, status, response_headers = await _ask(
                target, "GET", {**headers, **upgrade}, b""
            )
            if status != 101:
                try:
                    body = await _read_body(reader, response_headers, max_bytes)
                finally:
                    writer.close()
                raise Refused(Response(status, response_headers, body))
        if response_headers.get("sec-websocket-accept") != expected:
            writer.close()
            raise HTTPError("the server answered the websocket upgrade with a wrong accept key")
        return cls(
            reader,
            writer,
            max_bytes=max_bytes,
            idle_timeout=idle_timeout,
            headers=response_headers,
        )

    async def _frame(self) -> tuple[bool, int, bytes]:
        first, second = await self._reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._reader.readexactly(8))
        if second & 0x80:
            raise HTTPError("the server sent a masked websocket frame")
        if length > self._max_bytes:
            raise HTTPError(f"websocket frame of {length} bytes exceeds {self._max_bytes}")
        return bool(first & 0x80), first & 0x0F, await self._reader.readexactly(length)

    async def receive(self) -> bytes | None:
        """The next data message, or None once the server closed the websocket.

        Answers pings on the way.  A server that sends nothing at all, not even
        its heartbeat pings, for ``idle_timeout`` seconds is taken for dead.
        """
        message = bytearray()
        while not self.closed:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    fin, opcode, payload = await self._frame()
            except TimeoutError as exc:
                raise HTTPError(f"the server sent nothing for {self.idle_timeout:g}s") from exc
            except (asyncio.IncompleteReadError, OSError) as exc:
                self.closed = True
                raise HTTPError("the websocket connection was cut") from exc
            if opcode == _PING:
                await self._send(_PONG, payload)
            elif opcode == _CLOSE:
                await self.close()
                return None
            elif opcode in (_BINARY, _TEXT, _CONTINUATION):
                message += payload
                if len(message) > self._max_bytes:
                    raise HTTPError(f"websocket message larger than {self._max_bytes} bytes")
                if fin:
                    return bytes(message)
        return None

    async def _send(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        mask = os.urandom(4)
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload) ^ int.from_bytes(repeated)).to_bytes(length)
        self._writer.write(head + mask + masked)
        try:
            await self._writer.drain()
        except OSError as exc:
            raise HTTPError(f"cannot write to the websocket: {exc}") from exc

    async def send(self, data: bytes) -> None:
        """Send one binary message."""
        await self._send(_BINARY, data)

    async def close(self) -> None:
        """Say goodbye (unless the connection is gone already) and close the socket, waiting
        a bounded time for it to close: a caller may close its event loop next."""
        if not self.closed:
            self.closed = True
            try:
                await self._send(_CLOSE, struct.pack("!H", 1000))
            except HTTPError:
                pass
        self._writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except (OSError, TimeoutError):
            pass
