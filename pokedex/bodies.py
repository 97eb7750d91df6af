"""Reading a whole HTTP body into memory, bounded by a limit.

Why a helper: ``StreamReader.read(n)`` returns whatever happens to be buffered, not ``n``
bytes, so a body read that way comes back short as soon as it spans a few network reads
(tens of KB), and the truncated bytes then look corrupt or invalid. Every whole-body read in
pokedex (small blobs and manifests fetched by the client or proxied from a replica, manifest
uploads, JSON and msgpack replies) goes through :func:`read_body`, which reads to the end of
the body and refuses, without buffering past the limit, anything larger.
"""

from __future__ import annotations

import aiohttp


class BodyTooLarge(ValueError):
    """A body is larger than the limit its reader allows."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__(f"body of {shown} exceeds the limit of {limit} bytes")
        self.limit = limit
        self.size = size


async def read_body(content: aiohttp.StreamReader, limit: int, declared: int | None) -> bytes:
    """The whole body of ``content``, at most ``limit`` bytes.

    ``declared`` is the Content-Length if there is one: a body declared too large is refused
    before anything is read. Raises :class:`BodyTooLarge`; a connection that breaks off raises
    what aiohttp raises (``ClientPayloadError`` and the like).
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit, declared)
    parts = []
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)
