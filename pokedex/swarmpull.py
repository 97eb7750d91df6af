"""A host's side of peer-assisted delivery: pull a tree's blobs through the swarm.

When many hosts pull the same large blobs at once (a run's snapshot and image
layers on every host of a farm), each host serves the chunks it already has to
the others (:mod:`pokedex.swarm`), so the origin nodes send each chunk about
once instead of once per host.  Small blobs are not worth a tracker round trip
and come straight from the nodes.  Everything here is best-effort on top of
plain downloads: any swarm failure falls back to fetching from the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable

import aiohttp

from . import swarm
from .bodies import BodyTooLarge, read_body
from .durable import StoreError
from .store import BlobStore

#: A tracker's answer about one blob is a few bytes; anything longer is not one.
MAX_TRACKER_REPLY = 64 << 10
#: Large blobs fetched through the swarm at the same time (each with several chunks in flight).
SWARM_BLOBS_AT_ONCE = 4
_SEED_ERRORS = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    BodyTooLarge,
)


async def pull(
    http: aiohttp.ClientSession,
    *,
    tracker: str,
    origins: list[str],
    headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,
    cache: BlobStore,
    sizes: dict[str, int],
    host: str,
    seed_seconds: float,
    fetch: Callable[[str], Awaitable[None]],
    concurrency: int,
) -> None:
    """Fetch the blobs of *sizes* (digest → size) into *cache*.

    Blobs of ``swarm.MIN_SWARM_SIZE`` or more go through the swarm, the others
    through *fetch* (a plain, verified download from the nodes).  Each host takes
    the swarm blobs in its own random order, so that hosts start on different
    blobs and soon have something to trade instead of queueing on the same one.
    Afterwards this host keeps serving for up to *seed_seconds* while other hosts
    still pull the same blobs: chunks only it has would otherwise have to come
    from the origin again.
    """
    small = [d for d, size in sizes.items() if size < swarm.MIN_SWARM_SIZE]
    large = [d for d, size in sizes.items() if size >= swarm.MIN_SWARM_SIZE]
    random.shuffle(large)
    peer = swarm.PeerServer(host)
    await peer.start()
    few_at_a_time = asyncio.Semaphore(SWARM_BLOBS_AT_ONCE)

    async def via_swarm(d: str) -> None:
        async with few_at_a_time:
            try:
                await swarm.fetch_blob(
                    http,
                    tracker=tracker,
                    origins=origins,
                    headers=headers,
                    digest=d,
                    size=sizes[d],
                    cache=cache,
                    peer=peer,
                    timeout=timeout,
                )
            except (StoreError, swarm.SwarmError, aiohttp.ClientError):
                # Corrupt after all, no progress, or no tracker: plain download.
                await fetch(d)

    try:
        await asyncio.gather(_limited(small, fetch, concurrency), *(via_swarm(d) for d in large))
        with contextlib.suppress(*_SEED_ERRORS):
            await _seed(http, tracker, headers, timeout, large, seed_seconds)
    finally:
        with contextlib.suppress(*_SEED_ERRORS):
            async with http.post(
                f"{tracker}/swarm/leave", json={"peer": peer.url}, headers=headers, timeout=timeout
            ) as r:
                r.release()
        await peer.close()


async def _limited(
    digests: Iterable[str], fetch: Callable[[str], Awaitable[None]], concurrency: int
) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(d: str) -> None:
        async with gate:
            await fetch(d)

    await asyncio.gather(*(one(d) for d in digests))


async def _seed(
    http: aiohttp.ClientSession,
    tracker: str,
    headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,
    digests: list[str],
    seconds: float,
) -> None:
    """Keep serving (the caller's peer server stays up) while other hosts still pull
    *digests*, for at most *seconds*."""
    deadline = time.monotonic() + seconds
    while digests and time.monotonic() < deadline:
        pulling = 0
        for d in digests:
            async with http.get(
                f"{tracker}/swarm/active/{d}", headers=headers, timeout=timeout
            ) as r:
                r.raise_for_status()
                body = await read_body(r.content, MAX_TRACKER_REPLY, r.content_length)
                pulling += json.loads(body)["pulling"]
        if not pulling:
            return
        await asyncio.sleep(0.1)
