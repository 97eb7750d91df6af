"""Admitting a run without stalling the farm: a manifest of a million tests costs seconds.

The coordinator serves every run's event stream (and its heartbeats) from one
event loop.  Decoding, validating and planning a huge manifest there would
silence all of them meanwhile — long enough, with a million tests, for other
clients to take the farm for dead.  So everything that touches each test runs
in a worker thread: :func:`read_run` (decode and validate) and
:func:`prepare` (the scheduler's plan, the run's test index).  A thread shares
the interpreter with the loop, which gets it back between any two Python
steps — except inside one C call, so :func:`decode_run` unpacks the test list
one test at a time instead of in one msgpack call of a second or more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from farm.manifest import RunManifest, TestSpec, parse_manifest
from farm.protocol import MAX_MESSAGE_BYTES, ProtocolError, check_envelope, decode, malformed
from farm.scheduler import RunPlan

#: First bytes of a msgpack array: fixarray, array 16, array 32.
_ARRAY_TYPES = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
#: Refused tests named in an :class:`Unplaceable` message at most.
NAMED = 50


def decode_run(body: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Decode a message as :func:`farm.protocol.decode` does, its ``tests`` one by one.

    Accepts and refuses exactly what ``decode`` does (with the same kind of
    :class:`ProtocolError`); only how long it holds the interpreter at once differs.
    """
    if len(body) > max_bytes or not body or not _is_map(body[0]):
        return decode(body, max_bytes=max_bytes)  # refuses it, as nothing else is a message
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(body), 1))
    unpacker.feed(body)
    try:
        message = _read_top_map(unpacker, body)
    except (ValueError, RecursionError, msgpack.UnpackException) as exc:
        raise malformed(exc) from exc
    if unpacker.tell() != len(body):
        raise malformed(msgpack.ExtraData(message, body[unpacker.tell() :]))
    return check_envelope(message)


def _read_top_map(unpacker: msgpack.Unpacker, body: bytes) -> dict[str, Any]:
    message: dict[Any, Any] = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        if not isinstance(key, (str, bytes)):
            raise ValueError(f"{type(key).__name__} is not allowed for map key")
        if key == "tests" and unpacker.tell() < len(body) and body[unpacker.tell()] in _ARRAY_TYPES:
            message[key] = [unpacker.unpack() for _ in range(unpacker.read_array_header())]
        else:
            message[key] = unpacker.unpack()
    return message


def _is_map(first: int) -> bool:
    """fixmap, map 16, map 32."""
    return 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)


def read_run(body: bytes) -> RunManifest:
    """The manifest a ``run`` message carries; :class:`ProtocolError` naming what is wrong."""
    message = decode_run(body)
    if message["t"] != "run":
        raise ProtocolError(f"expected a 'run' message, got {message['t']!r}")
    return parse_manifest(message)


def read_warm(body: bytes) -> RunManifest:
    """The manifest (without tests) a ``warm`` message carries; :class:`ProtocolError`
    naming what is wrong."""
    message = decode(body)
    if message["t"] != "warm":
        raise ProtocolError(f"expected a 'warm' message, got {message['t']!r}")
    return parse_manifest(message, warm=True)


def prepare(
    manifest: RunManifest, plan: Callable[[Sequence[TestSpec]], RunPlan]
) -> tuple[RunPlan, dict[str, TestSpec]]:
    """The run's plan (*plan* is :meth:`~farm.scheduler.Scheduler.planner`) and its tests by id."""
    return plan(manifest.tests), {t.id: t for t in manifest.tests}


class Unplaceable(Exception):
    """Tests of a submitted run that no host in service can run; nothing was queued.

    *waiting* names the quarantined hosts that could run them, with their
    problems: then the farm cannot run them *now*, rather than ever.
    """

    def __init__(self, tests: Sequence[TestSpec], waiting: Sequence[str]) -> None:
        self.tests = list(tests)
        self.waiting = list(waiting)
        if self.waiting:
            hosts = "\n  ".join(self.waiting)
            text = (
                f"every host that can run {len(self.tests)} test(s) is quarantined:\n  {hosts}\n"
                "(try again once a host is back; `psyduck farm status` shows them)"
            )
        else:
            names = "\n  ".join(f"{t.id} requires {dict(t.requires)}" for t in self.tests[:NAMED])
            more = f"\n  … and {len(self.tests) - NAMED} more" if len(self.tests) > NAMED else ""
            text = (
                f"no host can run {len(self.tests)} test(s):\n  {names}{more}\n"
                "(add hosts with those labels, or deselect the tests: -k, --psyduck-transform)"
            )
        super().__init__(text)
