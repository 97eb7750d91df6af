"""The farm's wire codec: msgpack messages with a version field and size limits.

Every message psyduck exchanges — client ↔ coordinator over HTTP and websocket,
coordinator ↔ worker over a stream — is a msgpack map carrying ``v`` (the
protocol version) and ``t`` (the message type).  Decoding is strict so that a
malformed, truncated, oversized or version-mismatched message becomes a
:class:`ProtocolError` with a clear text instead of a hang or a crash.

Stream framing (used between a host and its workers) is a 4-byte big-endian
length followed by that many bytes of msgpack.  This module is pure: the
incremental :class:`FrameDecoder` is fed bytes by whoever owns the socket.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import msgpack

VERSION = 1

#: Largest message accepted anywhere unless a caller asks for less.  A run
#: manifest of 100,000 tests is about 10 MiB; reports with long tracebacks are
#: far smaller.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Content type of every HTTP body of the farm protocol.
MSGPACK = "application/x-msgpack"
#: Seconds an event stream may stay silent before the farm pings it; a peer
#: that hears nothing for twice as long takes the other end for dead.
HEARTBEAT = 15.0
#: Header of the event stream's upgrade response that says the farm's heartbeat.
HEARTBEAT_HEADER = "X-Psyduck-Heartbeat"
#: Batches of events a farm sends a client beyond those the client acknowledged.
STREAM_WINDOW = 4

#: Deepest nesting msgpack's unpacker accepts; deeper is refused as malformed.
MAX_DEPTH = 1024

_LENGTH = struct.Struct(">I")


class ProtocolError(ValueError):
    """A message that cannot be accepted; the text says why."""


def encode(message: dict[str, Any]) -> bytes:
    """Encode *message*, stamping the protocol version."""
    if "t" not in message:
        raise ProtocolError("message has no type field 't'")
    return msgpack.packb({"v": VERSION, **message}, use_bin_type=True)


def events_messages(
    events: list[dict[str, Any]], max_bytes: int = MAX_MESSAGE_BYTES
) -> Iterator[bytes]:
    """*events* as ``events`` messages, in order, none over *max_bytes* encoded.

    A batch holds whatever was ready, and several workers' farewells (up to
    16 MiB each) or big reports ready at once would together exceed what a
    client accepts; each event is encoded once and the batch split where the
    next one would not fit.  An event too big for any message on its own is
    replaced by one saying so (:func:`_too_big`): the client hears of it
    instead of losing its stream.
    """
    parts: list[bytes] = []
    size = _EVENTS_ENVELOPE
    for event in events:
        part = msgpack.packb(event, use_bin_type=True)
        if _EVENTS_ENVELOPE + len(part) > max_bytes:
            part = msgpack.packb(_too_big(event, len(part), max_bytes), use_bin_type=True)
        if parts and size + len(part) > max_bytes:
            yield _events_message(parts)
            parts, size = [], _EVENTS_ENVELOPE
        parts.append(part)
        size += len(part)
    if parts:
        yield _events_message(parts)


#: Bytes an ``events`` message takes beyond its events, at most.
_EVENTS_ENVELOPE = 64


def _events_message(parts: list[bytes]) -> bytes:
    """``encode({"t": "events", "events": [...]})`` of events already encoded as *parts*."""
    packer = msgpack.Packer(use_bin_type=True)
    head = packer.pack_map_header(3) + packer.pack("v") + packer.pack(VERSION)
    head += packer.pack("t") + packer.pack("events") + packer.pack("events")
    return head + packer.pack_array_header(len(parts)) + b"".join(parts)


def _too_big(event: dict[str, Any], size: int, max_bytes: int) -> dict[str, Any]:
    """What the client gets instead of *event*, which encodes to *size* bytes."""
    why = f"psyduck: its {event['t']} message of {size} bytes exceeds the limit of {max_bytes}"
    if event["t"] == "result":
        return {"t": "crashed", "id": event["id"], "message": f"{event['id']}: {why}"}
    if event["t"] == "worker_down":
        return {**event, "data": None, "error": why}
    return {"t": "notice", "message": why}


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Decode one message, checking size, shape and version."""
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if _looks_like_json(data):
        raise ProtocolError(
            f"expected a msgpack message (Content-Type {MSGPACK}), got what looks like JSON"
        )
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, RecursionError, msgpack.UnpackException) as exc:
        raise malformed(exc) from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"message must be a map, got {type(message).__name__}")
    return check_envelope(message)


def malformed(exc: Exception) -> ProtocolError:
    """The error for bytes msgpack could not unpack (*exc*, one of its errors), in words."""
    if isinstance(exc, msgpack.ExtraData):
        problem = f"{len(exc.extra)} byte(s) after the end of the message"
    elif isinstance(exc, msgpack.StackError | RecursionError):
        problem = f"nested more than {MAX_DEPTH} levels deep"
    elif isinstance(exc, UnicodeDecodeError):
        problem = f"a string is not valid UTF-8 ({exc.reason})"
    else:
        problem = _unpack_problem(exc)
    return ProtocolError(f"malformed msgpack: {problem}")


def check_envelope(message: dict[str, Any]) -> dict[str, Any]:
    """*message* if it speaks this protocol version and names its type, else ProtocolError."""
    version = message.get("v")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version mismatch: got {version!r}, this side speaks {VERSION}; "
            "install the same psyduck version on both sides"
        )
    kind = message.get("t")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("message has no string type field 't'")
    return message


def _looks_like_json(data: bytes) -> bool:
    """A JSON object or array, which msgpack would misread as a small int and trailing bytes."""
    if data[:1] not in (b"{", b"[", b" ", b"\t", b"\r", b"\n"):
        return False  # every message (a msgpack map) ends here, at once
    text = data.lstrip(b" \t\r\n")
    return text[:1] in (b"{", b"[") and text.rstrip(b" \t\r\n")[-1:] in (b"}", b"]")


def _unpack_problem(exc: Exception) -> str:
    """What msgpack's *exc* means, in words (several of its exceptions carry no text)."""
    text = str(exc).removeprefix("Unpack failed: ")
    if isinstance(exc, msgpack.FormatError):
        return "a byte that starts no msgpack value"
    if text == "incomplete input":
        return "the message is truncated"
    return text or type(exc).__name__


def frame(message: dict[str, Any]) -> bytes:
    """Encode *message* as one length-prefixed stream frame."""
    body = encode(message)
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Incrementally split a byte stream into decoded messages.

    Feed it whatever the transport delivered; it yields every complete
    message.  A frame announcing more than *max_bytes* is rejected before its
    body is read, so a garbage length cannot make us buffer gigabytes.

    A bad frame raises :class:`ProtocolError`, but never at the cost of the
    good messages before it: when one chunk holds both, those are returned
    first and the error is raised by the next call (``feed(b"")`` will do).
    A worker's ``started`` that arrived with its garbage still names the test
    that broke the channel.
    """

    def __init__(self, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes
        self._error: ProtocolError | None = None

    @property
    def failed(self) -> bool:
        """A bad frame was seen; the next :meth:`feed` raises it."""
        return self._error is not None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        messages: list[dict[str, Any]] = []
        try:
            while len(self._buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(self._buffer)
                if length > self._max_bytes:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the limit of {self._max_bytes}"
                    )
                end = _LENGTH.size + length
                if len(self._buffer) < end:
                    break
                body = bytes(self._buffer[_LENGTH.size : end])
                del self._buffer[:end]
                messages.append(decode(body, max_bytes=self._max_bytes))
        except ProtocolError as exc:
            self._error = exc
            if not messages:
                raise
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered (non-zero at EOF means truncation)."""
        return len(self._buffer)
