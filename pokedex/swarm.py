"""Peer-assisted delivery: many hosts pulling the same blobs fetch pieces from each other.

Blobs are split into fixed-size chunks. A *tracker* on an origin node hands out, per chunk,
where to get it: from a peer that already announced it, or, if nobody has it and nobody is
already fetching it, from the origin (with a lease so that one host fetches it). Hosts that
find nothing assignable wait briefly and ask again. So each chunk normally leaves the origin
once, and origin egress stays near one copy of the payload however many hosts pull.

Each pulling client runs a tiny HTTP server (:class:`PeerServer`) that serves the chunks it
has; chunk reads are unauthenticated, the digest being the capability. A host may serve bad
bytes, but the tracker publishes per-chunk digests (it reads each blob once), every chunk is checked
before a host writes or re-offers it, and the whole blob is verified at the end; so the
worst a bad peer can cause is extra work.

Tracker protocol (JSON, on the origin node, token required)::

    POST /swarm/plan  {"peer": url, "digest": d, "size": n, "have": [i...],
                       "want": [i...], "failed": [[i, url]...], "slots": k}
                   -> {"assign": {"i": url | "origin"}}
    POST /swarm/done  {"peer": url, "digest": d}       (finished; still seeding)
    POST /swarm/leave {"peer": url}                     (gone; forget its chunks)
    GET  /swarm/active/<digest>  -> {"pulling": n}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from .bodies import BodyTooLarge, read_body
from .durable import start_writeback
from .replies import ApiError, require_digest
from .store import BlobStore

CHUNK_SIZE = 8 << 20
MIN_SWARM_SIZE = 1 << 20  # smaller blobs: the tracker round trips would cost more than they save
LEASE_SECONDS = 30.0
MAX_WANT = 256
MAX_INDEXED = 4096  # blobs whose chunk digests the tracker keeps in memory
ORIGIN = "origin"


MAX_FAILURES = 50  # chunk fetches failing in a row before the swarm gives up on a blob


class SwarmError(Exception):
    """The swarm made no progress; the caller falls back to a plain download."""


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return max(1, -(-size // chunk_size))


def chunk_range(index: int, size: int, chunk_size: int = CHUNK_SIZE) -> tuple[int, int]:
    """Inclusive byte range of chunk ``index`` of a blob of ``size`` bytes."""
    start = index * chunk_size
    return start, min(size, start + chunk_size) - 1


class ChunkHasher:
    """Per-chunk sha256 hex digests of a byte stream fed in arbitrary pieces."""

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.hashes: list[str] = []
        self._h = hashlib.sha256()
        self._filled = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.chunk_size - self._filled)
            self._h.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.chunk_size:
                self.hashes.append(self._h.hexdigest())
                self._h, self._filled = hashlib.sha256(), 0

    def finish(self) -> list[str]:
        if self._filled or not self.hashes:
            self.hashes.append(self._h.hexdigest())
        return self.hashes


@dataclass
class Tracker:
    """Who has which chunk, and which chunk some host is fetching from the origin.

    Pure bookkeeping with an explicit clock, so it is tested without a network.
    """

    lease_seconds: float = LEASE_SECONDS
    holders: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    leases: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)
    pulling: dict[str, set[str]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def plan(
        self,
        peer: str,
        digest: str,
        *,
        have: Iterable[int] = (),
        want: Iterable[int] = (),
        failed: Iterable[tuple[int, str]] = (),
        slots: int = 4,
        now: float,
    ) -> dict[int, str]:
        """Record ``peer``'s news, then assign up to ``slots`` of the ``want`` chunks."""
        self.pulling.setdefault(digest, set()).add(peer)
        for i in have:
            self.holders.setdefault((digest, i), set()).add(peer)
            self.leases.pop((digest, i), None)
        for i, bad in failed:
            self.holders.get((digest, i), set()).discard(bad)
            if self.leases.get((digest, i), ("",))[0] == bad:
                del self.leases[(digest, i)]
        assign: dict[int, str] = {}
        for i in want:
            if len(assign) >= slots:
                break
            key = (digest, i)
            sources = self.holders.get(key, set()) - {peer}
            if sources:
                assign[i] = self.rng.choice(sorted(sources))
                continue
            lease = self.leases.get(key)
            if lease is None or lease[1] < now or lease[0] == peer:
                self.leases[key] = (peer, now + self.lease_seconds)
                assign[i] = ORIGIN
        return assign

    def done(self, peer: str, digest: str) -> None:
        self.pulling.get(digest, set()).discard(peer)

    def leave(self, peer: str) -> None:
        for holders in self.holders.values():
            holders.discard(peer)
        for pulling in self.pulling.values():
            pulling.discard(peer)
        for key in [k for k, (p, _) in self.leases.items() if p == peer]:
            del self.leases[key]

    def active(self, digest: str) -> int:
        return len(self.pulling.get(digest, ()))


def _check_peer(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise ApiError(400, "BAD_BODY", "peer must be an http URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ApiError(400, "BAD_BODY", f"peer must be an http URL, not {value[:80]!r}")
    return value.rstrip("/")


def _check_indexes(value: Any, limit: int) -> list[int]:
    if not isinstance(value, list) or len(value) > limit:
        raise ApiError(400, "BAD_BODY", f"chunk lists must be lists of at most {limit} ints")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 30 for i in value):
        raise ApiError(400, "BAD_BODY", "chunk indexes must be non-negative ints")
    return value


def add_tracker_routes(
    app: web.Application, tracker: Tracker, read_blob: Callable[[str], AsyncIterator[bytes]]
) -> None:
    """Mount the tracker endpoints on a node's application.

    ``read_blob(digest)`` yields a blob's bytes (from this node or a replica); the tracker
    reads each blob once to publish its chunk digests, so hosts can verify every chunk they
    get from a peer before passing it on: a lying peer's bytes never spread.
    """
    index: dict[str, asyncio.Task[list[str]]] = {}

    async def body(request: web.Request) -> dict[str, Any]:
        try:
            value = await request.json()
        except ValueError:
            raise ApiError(400, "BAD_BODY", "body must be JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "BAD_BODY", "body must be a JSON object")
        return value

    async def plan(request: web.Request) -> web.Response:
        b = await body(request)
        failed_raw = b.get("failed", [])
        if not isinstance(failed_raw, list) or not all(
            isinstance(f, list) and len(f) == 2 for f in failed_raw
        ):
            raise ApiError(400, "BAD_BODY", "failed must be [[index, peer], ...]")
        failed = list(
            zip(
                _check_indexes([f[0] for f in failed_raw], MAX_WANT),
                [_check_peer(f[1]) for f in failed_raw],
                strict=True,
            )
        )
        slots = b.get("slots", 4)
        if not isinstance(slots, int) or not 0 <= slots <= 64:
            raise ApiError(400, "BAD_BODY", "slots must be an int in 0..64")
        assign = tracker.plan(
            _check_peer(b.get("peer")),
            require_digest(b.get("digest")),
            have=_check_indexes(b.get("have", []), 1 << 16),
            want=_check_indexes(b.get("want", []), MAX_WANT),
            failed=failed,
            slots=slots,
            now=time.monotonic(),
        )
        return web.json_response({"assign": {str(k): v for k, v in assign.items()}})

    async def done(request: web.Request) -> web.Response:
        b = await body(request)
        tracker.done(_check_peer(b.get("peer")), require_digest(b.get("digest")))
        return web.json_response({})

    async def leave(request: web.Request) -> web.Response:
        tracker.leave(_check_peer((await body(request)).get("peer")))
        return web.json_response({})

    async def active(request: web.Request) -> web.Response:
        d = require_digest(request.match_info["digest"])
        return web.json_response({"pulling": tracker.active(d)})

    async def compute(d: str) -> list[str]:
        hasher = ChunkHasher()
        async for data in read_blob(d):
            await asyncio.to_thread(hasher.feed, data)
        return hasher.finish()

    async def chunks(request: web.Request) -> web.Response:
        d = require_digest(request.match_info["digest"])
        task = index.get(d)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            while len(index) >= MAX_INDEXED:  # bounded: forget the oldest blobs
                index.pop(next(iter(index)))
            task = index[d] = asyncio.ensure_future(compute(d))
        return web.json_response({"chunk_size": CHUNK_SIZE, "chunks": await asyncio.shield(task)})

    app.router.add_get("/swarm/chunks/{digest}", chunks)
    app.router.add_post("/swarm/plan", plan)
    app.router.add_post("/swarm/done", done)
    app.router.add_post("/swarm/leave", leave)
    app.router.add_get("/swarm/active/{digest}", active)


@dataclass
class _Partial:
    fd: int
    size: int
    complete: set[int]


class PeerServer:
    """Serves the chunks this host has, to the other hosts of a swarm."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.url = ""
        self.blobs: dict[str, _Partial] = {}
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/swarm/chunk/{digest}/{index}", self._chunk)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self.host}:{port}"

    async def _chunk(self, request: web.Request) -> web.StreamResponse:
        d = request.match_info["digest"]
        part = self.blobs.get(d)
        try:
            index = int(request.match_info["index"])
        except ValueError:
            raise web.HTTPBadRequest(text="bad chunk index") from None
        if part is None or index not in part.complete or request.transport is None:
            raise web.HTTPNotFound(text="chunk not here")
        start, end = chunk_range(index, part.size)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = end - start + 1
        await resp.prepare(request)
        # sendfile straight from the partial file (the kernel copies, not Python); a dup'd
        # descriptor because the file object closes it, positional reads leave ours alone.
        with os.fdopen(os.dup(part.fd), "rb") as f:
            await asyncio.get_running_loop().sendfile(request.transport, f, start, end - start + 1)
        await resp.write_eof()
        return resp

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for part in self.blobs.values():
            os.close(part.fd)
        self.blobs.clear()


async def fetch_blob(
    http: aiohttp.ClientSession,
    *,
    tracker: str,
    origins: list[str],
    headers: dict[str, str],
    digest: str,
    size: int,
    cache: BlobStore,
    peer: PeerServer,
    concurrency: int = 4,
    timeout: aiohttp.ClientTimeout,
) -> None:
    """Fetch one blob into ``cache`` via the swarm.

    Every chunk is checked against the tracker's chunk digests before it is written or
    offered to others; the whole blob is verified again at the end. Raises DigestMismatch if
    the assembled blob is still corrupt, SwarmError if the swarm makes no progress.

    The blob is written in place into a temp file (chunks at their offsets), served to
    others while incomplete, then verified and renamed into the cache.
    """
    async with http.get(f"{tracker}/swarm/chunks/{digest}", headers=headers, timeout=timeout) as r:
        r.raise_for_status()
        index = await r.json()
    count = chunk_count(size)
    hashes = index.get("chunks")
    if (
        index.get("chunk_size") != CHUNK_SIZE
        or not isinstance(hashes, list)
        or len(hashes) != count
    ):
        raise SwarmError(f"tracker's chunk index for {digest} does not fit size {size}")
    final = cache.path(digest)
    tmp = final.parent / f".tmp-swarm-{digest[7:23]}-{os.getpid()}-{id(peer)}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    part = _Partial(fd=fd, size=size, complete=set())
    peer.blobs[digest] = part
    need = set(range(count))
    # Each host walks the chunks in order from its own random starting point: hosts begin
    # with different chunks (so there is soon something to trade), and each host's writes
    # stay mostly sequential, which the disk likes.
    first = random.randrange(count)
    order = [(first + k) % count for k in range(count)]
    inflight: dict[asyncio.Task[bool], tuple[int, str]] = {}
    news: list[int] = []
    failed: list[list[Any]] = []
    failures = 0
    tries: dict[int, int] = {}

    async def fetch(index: int, source: str) -> bool:
        start, end = chunk_range(index, size)
        if source == ORIGIN:
            origin = origins[(index + tries.get(index, 0)) % len(origins)]  # rotate on failure
            url = f"{origin}/blobs/{digest}"
            hdrs = {**headers, "Range": f"bytes={start}-{end}"}
        else:
            url, hdrs = f"{source}/swarm/chunk/{digest}/{index}", {}
        try:
            async with http.get(url, headers=hdrs, timeout=timeout) as r:
                if r.status not in (200, 206):
                    return False
                data = await read_body(r.content, end - start + 1, r.content_length)
        except (TimeoutError, aiohttp.ClientError, OSError, BodyTooLarge):
            return False
        if len(data) != end - start + 1:
            return False

        def check_and_write() -> bool:
            if hashlib.sha256(data).hexdigest() != hashes[index]:
                return False  # reported as failed: the tracker forgets this source
            os.pwrite(fd, data, start)
            start_writeback(fd, start, len(data))  # the final fsync then has little to do
            return True

        return await asyncio.to_thread(check_and_write)

    async def call(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        async with http.post(
            f"{tracker}{path}", json=payload, headers=headers, timeout=timeout
        ) as r:
            r.raise_for_status()
            return await r.json()

    try:
        while need or inflight:
            slots = concurrency - len(inflight)
            busy = {i for i, _ in inflight.values()}
            candidates = [i for i in order if i in need and i not in busy]
            if slots > 0 and candidates:
                want = candidates[:64]
                answer = await call(
                    "/swarm/plan",
                    {
                        "peer": peer.url,
                        "digest": digest,
                        "size": size,
                        "have": news,
                        "want": want,
                        "failed": failed,
                        "slots": slots,
                    },
                )
                news, failed = [], []
                for key, source in answer["assign"].items():
                    index = int(key)
                    inflight[asyncio.create_task(fetch(index, source))] = (index, source)
            if not inflight:
                await asyncio.sleep(0.05)  # everything wanted is being fetched by others
                continue
            finished, _ = await asyncio.wait(
                inflight, timeout=0.05, return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                index, source = inflight.pop(task)
                if task.result():
                    failures = 0
                    need.discard(index)
                    part.complete.add(index)
                    news.append(index)
                else:
                    failures += 1
                    if failures > MAX_FAILURES:
                        raise SwarmError(f"{digest}: {failures} chunk fetches failed in a row")
                    if source == ORIGIN:
                        tries[index] = tries.get(index, 0) + 1
                        await asyncio.sleep(0.1)  # origin trouble: back off, keep the lease
                    else:
                        failed.append([index, source])
        await call("/swarm/plan", {"peer": peer.url, "digest": digest, "have": news, "want": []})
        await asyncio.to_thread(cache.adopt, tmp, digest)
        await call("/swarm/done", {"peer": peer.url, "digest": digest})
    except BaseException:
        for task in inflight:
            task.cancel()
        if peer.blobs.pop(digest, None) is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
