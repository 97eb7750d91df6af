"""Talking to the other nodes: replication, remote reads, cluster-wide lookups, repair.

All peer-to-peer calls carry ``X-Pokedex-Hop: 1`` so the receiving node answers from its own
disk only and never forwards again (no loops, no fan-out storms), plus the cluster token.
Every call has a timeout; an unreachable peer is treated as "does not have it", which is
always safe: the worst outcome is an extra upload or a read from another replica. (Refs
instead need a majority to answer: see :mod:`.refs`; this module only carries those calls.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp

from . import placement
from .bodies import read_body
from .store import BlobStore

log = logging.getLogger(__name__)

HOP = "X-Pokedex-Hop"
BATCH = 5000  # digests per /missing call (the server accepts up to MAX_MISSING)
SMALL_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
# Blob bodies may take long in total but must keep moving.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=60)
PEER_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
# One acceptor's answer; a ref round stops waiting for the others once a majority answered.
ACCEPTOR_TIMEOUT = aiohttp.ClientTimeout(total=8, connect=3)
MAX_PEER_REPLY = 64 << 20  # a whole node's ref listing
# A ref write handed to the ref's preferred proposer: it may retry rounds for a while.
DELEGATE_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=3)


class PeerLost(Exception):
    """A request reached a peer but no answer came back: it may or may not have taken effect."""


def normalize_url(url: str) -> str:
    """Node identities are their base URLs without a trailing slash."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url


class Cluster:
    """This node's view of the cluster: who the peers are and how to reach them."""

    def __init__(
        self,
        self_url: str,
        peers: Iterable[str],
        replicas: int,
        token: str | None,
        store: BlobStore,
    ) -> None:
        self.self_url = normalize_url(self_url)
        self.replicas = replicas
        self.token = token
        self.store = store
        self.nodes: list[str] = []
        self.set_peers(peers)
        self.session: aiohttp.ClientSession | None = None
        self.last_repair: dict[str, Any] = {}

    def set_peers(self, peers: Iterable[str]) -> None:
        """Replace the static peer list (self is always a member)."""
        self.nodes = sorted({normalize_url(p) for p in peers} | {self.self_url})

    @property
    def peers(self) -> list[str]:
        return [n for n in self.nodes if n != self.self_url]

    def ranked(self, key: str) -> list[str]:
        return placement.rank(key, self.nodes)

    def _headers(self) -> dict[str, str]:
        h = {HOP: "1"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), auto_decompress=False
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None, "cluster not started"
        return self.session

    # -- blobs -------------------------------------------------------------------------------

    async def peer_has(self, url: str, digest: str) -> bool:
        try:
            async with self.http.head(
                f"{url}/blobs/{digest}", headers=self._headers(), timeout=SMALL_TIMEOUT
            ) as r:
                return r.status == 200
        except PEER_ERRORS:
            return False

    async def push(self, url: str, digest: str) -> bool:
        """Copy a local blob to ``url`` (streamed from disk). True when the peer has it."""
        path = self.store.path(digest)
        try:
            with open(path, "rb") as f:
                async with self.http.put(
                    f"{url}/blobs/{digest}", data=f, headers=self._headers(), timeout=STREAM_TIMEOUT
                ) as r:
                    return r.status in (200, 201)
        except PEER_ERRORS as e:
            log.info("push %s to %s failed: %s", digest, url, e)
            return False

    async def replicate(self, digest: str) -> int:
        """Make sure ``replicas`` nodes hold a blob that is stored locally; return the count.

        Walks the rendezvous ranking: the top R nodes normally, the next ones standing in for
        nodes that are down (the repair pass later moves copies back to their proper place).
        """
        copies = 0
        for node in self.ranked(digest):
            if copies >= self.replicas:
                break
            if node == self.self_url:
                copies += 1
            elif await self.peer_has(node, digest) or await self.push(node, digest):
                copies += 1
        return copies

    async def missing_on(self, url: str, digests: Sequence[str]) -> set[str] | None:
        """Which of ``digests`` the node at ``url`` lacks locally; None if unreachable."""
        out: set[str] = set()
        try:
            for i in range(0, len(digests), BATCH):
                async with self.http.post(
                    f"{url}/missing",
                    json={"digests": list(digests[i : i + BATCH])},
                    headers=self._headers(),
                    timeout=SMALL_TIMEOUT,
                ) as r:
                    if r.status != 200:
                        return None
                    out.update((await r.json())["missing"])
        except PEER_ERRORS:
            return None
        return out

    async def missing_cluster(self, digests: Sequence[str]) -> list[str]:
        """Digests that no reachable node holds (asked of all peers in parallel)."""
        absent = [d for d in dict.fromkeys(digests) if not self.store.has(d)]
        if not absent or not self.peers:
            return absent
        answers = await asyncio.gather(*(self.missing_on(p, absent) for p in self.peers))
        still = set(absent)
        for ans in answers:
            if ans is not None:
                still &= ans
        return [d for d in absent if d in still]

    async def open_remote(
        self, digest: str, range_header: str | None, method: str = "GET"
    ) -> aiohttp.ClientResponse | None:
        """A response (200/206) for ``digest`` from the first peer that has it, best first.

        The caller streams the body and must release the response.
        """
        headers = self._headers()
        if range_header:
            headers["Range"] = range_header
        for node in self.ranked(digest):
            if node == self.self_url:
                continue
            try:
                r = await self.http.request(
                    method, f"{node}/blobs/{digest}", headers=headers, timeout=STREAM_TIMEOUT
                )
            except PEER_ERRORS:
                continue
            if r.status in (200, 206, 416):
                return r
            r.release()
        return None

    # -- small JSON calls (status, ref consensus) --------------------------------------------

    async def forward(
        self,
        node: str,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        timeout: aiohttp.ClientTimeout = SMALL_TIMEOUT,
    ) -> tuple[int, Any] | None:
        """A small JSON call to one peer: (status, JSON); None if it could not be reached or
        answered something unreadable or too large."""
        try:
            async with self.http.request(
                method, f"{node}{path}", json=json_body, headers=self._headers(), timeout=timeout
            ) as r:
                data = await read_body(r.content, MAX_PEER_REPLY, r.content_length)
                return r.status, json.loads(data)
        except (*PEER_ERRORS, ValueError):  # BodyTooLarge is a ValueError
            return None

    async def ask_acceptor(
        self, node: str, method: str, path: str, json_body: Any = None
    ) -> Any | None:
        """One consensus call to a peer's acceptor (``/peer/refs...``): its JSON answer, or
        None if the peer is unreachable, slow, refuses, or answers something too large."""
        answer = await self.forward(node, method, path, json_body, timeout=ACCEPTOR_TIMEOUT)
        return answer[1] if answer is not None and answer[0] == 200 else None

    async def delegate(self, node: str, path: str, json_body: Any) -> tuple[int, Any] | None:
        """POST a write to a peer that carries it out itself: (status, JSON).

        None when no connection could be made (nothing was sent); :class:`PeerLost` when the
        request may have been delivered but no usable answer came back. POST, because aiohttp
        silently resends an idempotent method (PUT) once when a connection breaks, and then a
        refused second attempt would hide a first one that took effect.
        """
        try:
            async with self.http.post(
                f"{node}{path}", json=json_body, headers=self._headers(), timeout=DELEGATE_TIMEOUT
            ) as r:
                data = await read_body(r.content, MAX_PEER_REPLY, r.content_length)
                return r.status, json.loads(data)
        except aiohttp.ClientConnectorError:
            return None
        except (*PEER_ERRORS, ValueError) as e:
            raise PeerLost(f"{node}: {e!r}") from None

    # -- repair ------------------------------------------------------------------------------

    async def repair(self) -> dict[str, Any]:
        """Push every local blob to those of its placement nodes that lack it.

        Run on every node (periodically and on ``POST /repair``), this restores R copies
        after a node comes back empty or is replaced: each surviving replica re-seeds it.
        """
        started = time.time()
        wanted: dict[str, list[str]] = {}
        checked = 0
        for d in await asyncio.to_thread(lambda: list(self.store.digests())):
            checked += 1
            for node in placement.place(d, self.nodes, self.replicas):
                if node != self.self_url:
                    wanted.setdefault(node, []).append(d)
        pushed = failed = 0
        unreachable: list[str] = []
        for node, digests in wanted.items():
            lacking = await self.missing_on(node, digests)
            if lacking is None:
                unreachable.append(node)
                failed += len(digests)
                continue
            sem = asyncio.Semaphore(4)

            async def one(d: str, node: str = node, sem: asyncio.Semaphore = sem) -> bool:
                async with sem:
                    return await self.push(node, d)

            results = await asyncio.gather(*(one(d) for d in sorted(lacking)))
            pushed += sum(results)
            failed += len(results) - sum(results)
        self.last_repair = {
            "checked": checked,
            "pushed": pushed,
            "under_replicated": failed,
            "unreachable": unreachable,
            "at": started,
            "seconds": round(time.time() - started, 3),
        }
        return self.last_repair

    async def repair_forever(
        self, interval: float, also: Callable[[], Awaitable[dict[str, Any]]] | None = None
    ) -> None:
        """Background repair loop: blobs, then ``also`` (the refs' repair, which this module
        cannot import); its figures join :attr:`last_repair`. Errors are logged, never fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.repair()
            except Exception:
                log.exception("repair pass failed")
            if also is not None:
                try:
                    self.last_repair.update(await also())
                except Exception:
                    log.exception("ref repair pass failed")
