"""Garbage collection on one node: when it runs and where its roots come from.

The decisions are pure (:mod:`pokedex.retention`); this module does the effects around them.
A pass lists this node's blobs, gathers the roots of the whole cluster — every node's refs
through the public listing ``GET /refs`` and its recent trees through ``GET /gc/recent`` —
walks what they reach, and evicts the plan from this node's disk, each blob re-checked
under the store's lock (:meth:`pokedex.store.BlobStore.evict`).  Then it asks the other
nodes that place those blobs to drop their copies too (``POST /gc/evict``), each under the
same check against its *own* use stamps: garbage is garbage cluster-wide, and a copy left
behind would only be pushed back here by the next repair pass.  A copy still in use on a
peer stays there (and repair re-seeds this node with it, as it should).

Safety first: if any node does not answer, or a document on the way cannot be read, the
pass evicts nothing (a ref only that node holds could name anything), and says why.
Documents are read locally or from a peer with ``X-Pokedex-Gc: 1``, a read that records no
use, so the walk itself never keeps a tree "recent".

Automatic passes (with ``max_bytes``): after a write takes the store past the budget (the
store calls back) and on a periodic wake-up. A pass that cannot get under its target
because blobs are protected by age (grace, recent trees) retries when the first such
protection here runs out, and passes are spaced so that a node spends at most a fifth of
its time collecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from . import digest as dg
from . import placement, retention
from .cluster import HOP, PEER_ERRORS, Cluster
from .replies import MAX_MISSING, ApiError, decode_body, parse_digest_list
from .retention import Blob, Policy
from .store import BlobStore

log = logging.getLogger(__name__)

GC_READ = "X-Pokedex-Gc"  # on a blob GET: a collector's read, which records no use
PERIODIC = 60.0  # seconds between budget checks without writes
MIN_GAP = 1.0  # seconds between automatic passes, at least
PASS_TIMEOUT = aiohttp.ClientTimeout(total=3600, connect=5, sock_read=300)
READS_AT_ONCE = 8


class Incomplete(Exception):
    """The roots or their closure could not be determined; nothing may be evicted."""


def parse_gc_request(value: Any) -> int:
    """``{}`` or ``{"keep_bytes": N}`` → the size to evict down to (0: all that may go).

    Raises ApiError(400) otherwise.
    """
    if not isinstance(value, dict) or set(value) - {"keep_bytes"}:
        raise ApiError(400, "BAD_BODY", 'want {} or {"keep_bytes": N}')
    keep = value.get("keep_bytes", 0)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        raise ApiError(400, "BAD_BODY", "keep_bytes must be an integer >= 0")
    return keep


async def _document(body: aiohttp.StreamReader) -> bytes | None:
    """A whole response body, or None as soon as it cannot be a document (not JSON, or
    longer than :data:`retention.MAX_DOCUMENT`)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in body.iter_any():
        if not chunks and not chunk.startswith(b"{"):
            return None
        size += len(chunk)
        if size > retention.MAX_DOCUMENT:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Collector:
    """Runs garbage-collection passes on one node's store (one pass at a time)."""

    def __init__(self, store: BlobStore, cluster: Cluster, policy: Policy) -> None:
        self.store = store
        self.cluster = cluster
        self.policy = policy
        self.last: dict[str, Any] | None = None
        self._pass_lock = asyncio.Lock()
        self._reads = asyncio.Semaphore(READS_AT_ONCE)
        self._grew = asyncio.Event()

    # -- one pass ----------------------------------------------------------------------------

    async def collect(self, target: int) -> dict[str, Any]:
        """Evict unprotected blobs, oldest use first, until this node holds ``target`` bytes
        or less; returns what was done (also kept as ``last`` for ``/status``)."""
        async with self._pass_lock:
            now = time.time()
            blobs = [Blob(*b) for b in await asyncio.to_thread(self.store.inventory)]
            recent = await asyncio.to_thread(self.recent_trees, blobs, now)
            result: dict[str, Any] = {
                "node": self.cluster.self_url,
                "evicted": 0,
                "freed": 0,
                "skipped": None,
            }
            try:
                keep = await retention.closure(await self._roots(recent), self._read)
            except Incomplete as e:
                result["skipped"] = f"nothing evicted: {e}"
            else:
                chosen = retention.plan(blobs, keep, target, now, self.policy.grace)
                evicted, result["freed"] = await self._evict(chosen, now)
                result["evicted"] = len(evicted)
                result["evicted_on_peers"] = await self._evict_on_peers(evicted)
                result["reachable"] = sum(1 for b in blobs if b.digest in keep)
                result["retry_at"] = retention.next_expiry(
                    blobs, keep, set(recent), now, self.policy
                )
            result.update(
                recent_trees=len(recent),
                bytes=self.store.used_bytes,
                max_bytes=self.policy.max_bytes,
                at=now,
                seconds=round(time.time() - now, 3),
            )
            self.last = result
            return result

    def recent_trees(self, blobs: list[Blob], now: float) -> list[str]:
        """Tree manifests on this node used within ``keep_recent`` (blocking: reads heads)."""
        out = []
        for b in retention.recent(blobs, now, self.policy.keep_recent):
            try:
                with open(self.store.path(b.digest), "rb") as f:
                    head = f.read(len(retention.TREE_PREFIX))
            except FileNotFoundError:
                continue
            if retention.is_tree_head(head):
                out.append(b.digest)
        return out

    async def _roots(self, recent: list[str]) -> set[str]:
        """This node's recent trees plus every node's refs and recent trees."""
        asks = [(n, "/refs", "refs") for n in self.cluster.nodes]
        asks += [(p, "/gc/recent", "trees") for p in self.cluster.peers]
        answers = await asyncio.gather(
            *(self.cluster.forward(n, "GET", path) for n, path, _ in asks)
        )
        roots = set(recent)
        for (node, path, key), answer in zip(asks, answers, strict=True):
            if answer is None or answer[0] != 200 or not isinstance(answer[1], dict):
                raise Incomplete(f"{node} did not answer GET {path}")
            values = answer[1].get(key)
            if isinstance(values, dict):
                values = list(values.values())
            if not isinstance(values, list):
                raise Incomplete(f"{node} answered GET {path} without {key!r}")
            roots.update(v for v in values if dg.is_digest(v))
        return roots

    def _read_local(self, d: str) -> bytes | None:
        """The document ``d`` from this node's disk (blocking), without recording a use.

        ``b""`` if it is not here, None if it is here but cannot be a document (too large,
        or not JSON: a layer or a file is not read past its first byte).
        """
        try:
            with open(self.store.path(d), "rb") as f:
                if f.read(1) != b"{":
                    return None
                data = b"{" + f.read(retention.MAX_DOCUMENT)
        except FileNotFoundError:
            return b""
        return None if len(data) > retention.MAX_DOCUMENT else data

    async def _read(self, d: str) -> bytes | None:
        """A document for the walk: from here, else from a peer; None if absent everywhere
        or not a document. Raises :class:`Incomplete` if a peer that may hold it did not
        answer."""
        async with self._reads:
            data = await asyncio.to_thread(self._read_local, d)
            if data != b"":
                return data
            unanswered = []
            for node in self.cluster.ranked(d):
                if node == self.cluster.self_url:
                    continue
                try:
                    async with self.cluster.http.get(
                        f"{node}/blobs/{d}",
                        headers={**self.cluster._headers(), GC_READ: "1"},
                        timeout=PASS_TIMEOUT,
                    ) as r:
                        if r.status == 404:
                            continue
                        if r.status != 200:
                            unanswered.append(node)
                            continue
                        if (r.content_length or 0) > retention.MAX_DOCUMENT:
                            return None
                        data = await _document(r.content)
                except PEER_ERRORS:
                    unanswered.append(node)
                    continue
                if data is None or dg.of_bytes(data) == d:
                    return data
                unanswered.append(node)
            if unanswered:
                raise Incomplete(f"cannot read {d} from {', '.join(unanswered)}")
            return None

    async def _evict(self, chosen: list[Blob], now: float) -> tuple[list[str], int]:
        """Remove the chosen blobs that are still unused; (digests, bytes) removed."""
        evicted, freed = await self.evict_unused(
            [b.digest for b in chosen], now - self.policy.grace
        )
        if evicted:
            log.info("evicted %d blobs, %d bytes", len(evicted), freed)
        return evicted, freed

    async def evict_unused(self, digests: list[str], unused_since: float) -> tuple[list[str], int]:
        """Remove those of ``digests`` not used since ``unused_since``; (digests, bytes)."""
        evicted, freed = [], 0
        for i, d in enumerate(digests):
            size = self.store.evict(d, unused_since)
            if size is not None:
                evicted.append(d)
                freed += size
            if i % 256 == 255:
                await asyncio.sleep(0)  # let requests in between
        return evicted, freed

    async def _evict_on_peers(self, evicted: list[str]) -> int:
        """Ask the peers that place ``evicted`` blobs to drop their unused copies; how many
        they dropped.  A peer that does not answer keeps its copies (see the module doc)."""
        wanted: dict[str, list[str]] = {}
        for d in evicted:
            for node in placement.place(d, self.cluster.nodes, self.cluster.replicas):
                if node != self.cluster.self_url:
                    wanted.setdefault(node, []).append(d)
        asks = [
            self._ask_evict(node, digests[i : i + MAX_MISSING])
            for node, digests in wanted.items()
            for i in range(0, len(digests), MAX_MISSING)
        ]
        return sum(await asyncio.gather(*asks))

    async def _ask_evict(self, node: str, digests: list[str]) -> int:
        body = {"digests": digests, "grace": self.policy.grace}
        answer = await self.cluster.forward(node, "POST", "/gc/evict", body, timeout=PASS_TIMEOUT)
        if answer is None:
            log.warning("%s did not evict its copies: unreachable or no readable answer", node)
        elif (
            answer[0] != 200
            or not isinstance(answer[1], dict)
            or not isinstance(answer[1].get("evicted"), int)
        ):
            log.warning("%s refused to evict: HTTP %d", node, answer[0])
        else:
            return answer[1]["evicted"]
        return 0

    # -- automatic passes --------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Keep the store under ``max_bytes``: a pass whenever it is over (see module doc)."""
        loop = asyncio.get_running_loop()
        self.store.on_grow = lambda: loop.call_soon_threadsafe(self._grew.set)
        wake = PERIODIC
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), wake)
            self._grew.clear()
            wake = PERIODIC
            if not self.policy.over_budget(self.store.used_bytes):
                continue
            try:
                result = await self.collect(self.policy.target)
            except Exception:
                log.exception("garbage collection pass failed")
                continue
            if result["skipped"]:
                log.warning("garbage collection: %s", result["skipped"])
            elif result["bytes"] > self.policy.target and result["retry_at"] is not None:
                wake = max(MIN_GAP, result["retry_at"] - time.time())
            await asyncio.sleep(max(MIN_GAP, 4 * result["seconds"]))

    # -- routes ------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/gc", self.gc_route)
        app.router.add_get("/gc/recent", self.recent_route)
        app.router.add_post("/gc/evict", self.evict_route)

    async def gc_route(self, request: web.Request) -> web.Response:
        """``POST /gc`` {"keep_bytes": N}: a pass here, and on every peer unless hop."""
        body = await request.read()
        target = parse_gc_request(decode_body(request.content_type, body) if body else {})
        if request.headers.get(HOP):
            return web.json_response(await self.collect(target))
        results = await asyncio.gather(
            self.collect(target), *(self._remote_pass(p, target) for p in self.cluster.peers)
        )
        return web.json_response({"nodes": sorted(results, key=lambda r: r["node"])})

    async def _remote_pass(self, node: str, target: int) -> dict[str, Any]:
        try:
            async with self.cluster.http.post(
                f"{node}/gc",
                json={"keep_bytes": target},
                headers=self.cluster._headers(),
                timeout=PASS_TIMEOUT,
            ) as r:
                if r.status == 200:
                    return await r.json()
                return {"node": node, "skipped": f"HTTP {r.status}: {(await r.text())[:200]}"}
        except (*PEER_ERRORS, ValueError) as e:
            return {"node": node, "skipped": f"unreachable: {e or type(e).__name__}"}

    async def recent_route(self, request: web.Request) -> web.Response:
        """``GET /gc/recent``: this node's recent tree manifests (roots for every node)."""
        blobs = [Blob(*b) for b in await asyncio.to_thread(self.store.inventory)]
        trees = await asyncio.to_thread(self.recent_trees, blobs, time.time())
        return web.json_response({"trees": sorted(trees)})

    async def evict_route(self, request: web.Request) -> web.Response:
        """``POST /gc/evict`` {"digests", "grace"}: a peer's pass found these to be garbage;
        drop this node's copies not used here within ``grace`` seconds (this node's clock)."""
        body = decode_body(request.content_type, await request.read())
        digests = parse_digest_list(body)
        grace = body.get("grace") if isinstance(body, dict) else None
        if not isinstance(grace, int | float) or isinstance(grace, bool) or grace < 0:
            raise ApiError(400, "BAD_BODY", 'want {"digests": [...], "grace": SECONDS}')
        evicted, freed = await self.evict_unused(digests, time.time() - grace)
        return web.json_response({"evicted": len(evicted), "freed": freed})
