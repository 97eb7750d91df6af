"""The pokedex client library: blobs, refs and trees against a cluster.

:class:`Client` is async; :class:`SyncClient` wraps it for synchronous code. Every call
ranks the configured node URLs by rendezvous hashing of the key (the same ranking the nodes
use), so it usually talks straight to a replica, and moves on to the next node when one is
unreachable or failing (5xx). Downloads are verified against their digest before anything is
returned or renamed into place. All network calls have timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgpack

from . import digest as dg
from . import names, placement, swarmpull, tree
from .bodies import BodyTooLarge, read_body
from .cluster import normalize_url
from .durable import StoreError, receive
from .replies import MAX_MISSING
from .store import BlobStore

T = TypeVar("T")
ANY = object()  # set_ref(expected=ANY): unconditional
RETRY_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, StoreError)
MAX_REPLY = 16 << 20  # JSON/msgpack replies and error bodies


class PokedexError(Exception):
    """A request failed on every node, or was refused (``status`` set, 4xx)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class _Refused(PokedexError):
    """A 4xx: retrying on another node would not help."""


class TooFewCopies(_Refused):
    """An upload was stored with fewer copies than the client's ``min_copies``."""

    def __init__(self, digest: str, copies: int, wanted: int, min_copies: int) -> None:
        super().__init__(
            f"{digest} was stored with only {copies} of {wanted} copies, fewer than the "
            f"{min_copies} required (it stays stored; `pokedex repair` adds the missing copies "
            "once the other nodes are back)"
        )
        self.digest = digest
        self.copies = copies
        self.wanted = wanted


class RefConflict(_Refused):
    """``set_ref`` compare-and-set failed; ``current`` is the ref's actual value."""

    def __init__(self, name: str, current: str | None) -> None:
        super().__init__(f"ref {name!r} is {current or 'unset'}", 409)
        self.current = current


def _split_urls(urls: str | Iterable[str]) -> list[str]:
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = [normalize_url(u) for u in items if u.strip()]
    if not out:
        raise ValueError("need at least one node URL")
    return list(dict.fromkeys(out))


class Client:
    """Async client for a pokedex cluster.

    ``urls``: one or more node URLs (a list or a comma-separated string); any node can
    answer any request, more URLs only add failover. ``token``: the cluster token, needed
    for writes (and for reads on clusters started with ``--auth-reads``).

    Uploads: a node acknowledges a blob once it is stored, replicated to as many of the
    cluster's R nodes as are reachable. Blobs stored with fewer than R copies are listed in
    :attr:`under_replicated` (digest -> (copies, wanted)) until a later upload of the same
    blob reaches R; with ``min_copies`` an upload that made fewer copies than that raises
    :class:`TooFewCopies` (the blob stays stored; repair adds copies later).
    """

    def __init__(
        self,
        urls: str | Iterable[str],
        token: str | None = None,
        *,
        concurrency: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        min_copies: int = 1,
    ) -> None:
        self.urls = _split_urls(urls)
        self.token = token
        self.concurrency = concurrency
        self.min_copies = min_copies
        self.under_replicated: dict[str, tuple[int, int]] = {}
        self._small = aiohttp.ClientTimeout(total=60, connect=connect_timeout)
        self._stream = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(64, 2 * self.concurrency)),
                auto_decompress=False,
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_nodes(self, key: str, attempt: Callable[[str], Awaitable[T]]) -> T:
        """Run ``attempt(url)`` on nodes best-first for ``key`` until one succeeds."""
        errors = []
        for url in placement.rank(key, self.urls):
            try:
                return await attempt(url)
            except _Refused:
                raise
            except (*RETRY_ERRORS, PokedexError) as e:
                errors.append(f"{url}: {e}")
        raise PokedexError("all nodes failed: " + "; ".join(errors))

    @staticmethod
    async def _check(r: aiohttp.ClientResponse, ok: tuple[int, ...] = (200, 201)) -> None:
        if r.status in ok:
            return
        body = (await _reply(r)).decode(errors="replace")
        cls = _Refused if 400 <= r.status < 500 else PokedexError
        raise cls(error_message(r.status, body), r.status, body)

    async def _json(self, method: str, path: str, key: str, **kw: Any) -> Any:
        async def attempt(url: str) -> Any:
            async with self._http.request(
                method, url + path, headers=self._headers(), timeout=self._small, **kw
            ) as r:
                await self._check(r)
                return json.loads(await _reply(r))

        return await self._on_nodes(key, attempt)

    # -- blobs -------------------------------------------------------------------------------

    async def _upload(self, url: str, d: str, data: Any) -> None:
        """PUT one blob to ``url``; then hold its copy count against ``min_copies``."""
        async with self._http.put(
            f"{url}/blobs/{d}", data=data, headers=self._headers(), timeout=self._stream
        ) as r:
            await self._check(r)
            reply = json.loads(await _reply(r))
        copies, wanted = reply["copies"], reply["wanted"]
        if copies < wanted:
            self.under_replicated[d] = (copies, wanted)
        else:
            self.under_replicated.pop(d, None)
        if copies < self.min_copies:
            raise TooFewCopies(d, copies, wanted, self.min_copies)

    async def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its digest."""
        d = dg.of_bytes(data)
        await self._on_nodes(d, lambda url: self._upload(url, d, data))
        return d

    async def put_file(self, path: str | os.PathLike[str], digest: str | None = None) -> str:
        """Store a file (streamed from disk); returns its digest.

        Pass ``digest`` if already known to skip hashing the file twice; the server
        verifies it anyway.
        """
        d = dg.parse(digest) if digest else await asyncio.to_thread(dg.of_file, str(path))

        async def attempt(url: str) -> None:
            with open(path, "rb") as f:
                await self._upload(url, d, f)

        await self._on_nodes(d, attempt)
        return d

    async def get_bytes(self, digest: str, *, limit: int = 1 << 30) -> bytes:
        """A blob's content, verified. Refuses blobs over ``limit`` bytes (use get_file)."""
        d = dg.parse(digest)

        async def attempt(url: str) -> bytes:
            async with self._http.get(
                f"{url}/blobs/{d}", headers=self._headers(), timeout=self._stream
            ) as r:
                await self._check(r, (200,))
                try:
                    data = await read_body(r.content, limit, r.content_length)
                except BodyTooLarge:
                    raise _Refused(f"{d} is larger than {limit} bytes") from None
            if dg.of_bytes(data) != d:
                raise PokedexError(f"{url} sent corrupt content for {d}")
            return data

        return await self._on_nodes(d, attempt)

    async def _fetch_into(self, store: BlobStore, d: str) -> None:
        """Download blob ``d`` into ``store`` (streamed, verified, atomic)."""

        async def attempt(url: str) -> None:
            async with self._http.get(
                f"{url}/blobs/{d}", headers=self._headers(), timeout=self._stream
            ) as r:
                await self._check(r, (200,))
                await store.write_stream(r.content.iter_any(), d, size=r.content_length)

        await self._on_nodes(d, attempt)

    async def get_file(self, digest: str, path: str | os.PathLike[str]) -> None:
        """Download a blob to ``path`` (streamed, verified, renamed into place)."""
        d = dg.parse(digest)
        target = Path(path)
        tmp = target.with_name(f".{target.name}.pokedex-{os.getpid()}-{id(self)}")

        async def attempt(url: str) -> None:
            async with self._http.get(
                f"{url}/blobs/{d}", headers=self._headers(), timeout=self._stream
            ) as r:
                await self._check(r, (200,))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    await receive(r.content.iter_any(), fd, d, size=r.content_length)
                finally:
                    os.close(fd)
            os.replace(tmp, target)

        try:
            await self._on_nodes(d, attempt)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    async def missing(self, digests: Iterable[str]) -> list[str]:
        """Which of ``digests`` no node of the cluster holds (order kept, duplicates dropped)."""
        wanted = [dg.parse(d) for d in dict.fromkeys(digests)]
        out: list[str] = []
        for i in range(0, len(wanted), MAX_MISSING):
            batch = wanted[i : i + MAX_MISSING]

            async def attempt(url: str, batch: list[str] = batch) -> list[str]:
                async with self._http.post(
                    f"{url}/missing",
                    data=msgpack.packb({"digests": batch}),
                    headers={**self._headers(), "Content-Type": "application/msgpack"},
                    timeout=self._small,
                ) as r:
                    await self._check(r, (200,))
                    return msgpack.unpackb(await _reply(r))["missing"]

            out.extend(await self._on_nodes("missing", attempt))
        return out

    # -- refs --------------------------------------------------------------------------------

    async def get_ref(self, name: str) -> str | None:
        """The digest a ref names, or None if unset."""
        names.check_ref(name)

        async def attempt(url: str) -> str | None:
            async with self._http.get(
                f"{url}/refs/{name}", headers=self._headers(), timeout=self._small
            ) as r:
                if r.status == 404:
                    return None
                await self._check(r, (200,))
                return (await r.json())["digest"]

        return await self._on_nodes(f"ref:{name}", attempt)

    async def set_ref(self, name: str, digest: str | None, *, expected: Any = ANY) -> None:
        """Point ref ``name`` at ``digest`` (None deletes it).

        With ``expected`` (a digest, or None for "must not exist yet") this is a
        compare-and-set that raises :class:`RefConflict` if the ref has another value. A
        ref that already holds ``digest`` is success, not a conflict: when an answer is lost
        (a node dies mid-request, or aiohttp silently resends the PUT) and the request is
        retried, the retry finds the client's own write in place.
        """
        names.check_ref(name)
        body: dict[str, Any] = {"digest": None if digest is None else dg.parse(digest)}
        if expected is not ANY:
            body["expected"] = expected

        async def attempt(url: str) -> None:
            async with self._http.put(
                f"{url}/refs/{name}", json=body, headers=self._headers(), timeout=self._small
            ) as r:
                if r.status == 409:
                    current = (await r.json())["detail"]["current"]
                    if current == body["digest"]:
                        return
                    raise RefConflict(name, current)
                await self._check(r, (200,))

        await self._on_nodes(f"ref:{name}", attempt)

    async def status(self) -> dict[str, Any]:
        """Cluster status: every node's blobs, bytes, reachability and replication health."""
        return await self._json("GET", "/status?cluster=1", "status")

    async def repair(self) -> dict[str, Any]:
        """Ask every configured node to run a repair pass now; returns per-node results."""
        results = {}
        for url in self.urls:
            async with self._http.post(
                f"{url}/repair", headers=self._headers(), timeout=self._stream
            ) as r:
                await self._check(r, (200,))
                results[url] = json.loads(await _reply(r))
        return results

    async def gc(self, keep_bytes: int = 0) -> dict[str, Any]:
        """Ask the cluster to evict unprotected blobs now, down to ``keep_bytes`` on each
        node (see :mod:`pokedex.retention`); returns ``{"nodes": [per-node result]}``."""

        async def attempt(url: str) -> dict[str, Any]:
            async with self._http.post(
                f"{url}/gc",
                json={"keep_bytes": keep_bytes},
                headers=self._headers(),
                timeout=self._stream,
            ) as r:
                await self._check(r, (200,))
                return await r.json()

        return await self._on_nodes("gc", attempt)

    # -- trees -------------------------------------------------------------------------------

    async def _gather_limited(self, jobs: Iterable[Awaitable[T]]) -> list[T]:
        sem = asyncio.Semaphore(self.concurrency)

        async def run(job: Awaitable[T]) -> T:
            async with sem:
                return await job

        return await asyncio.gather(*(run(j) for j in jobs))

    async def push_tree(
        self, directory: str | os.PathLike[str], *, hash_cache: str | os.PathLike[str] | None = None
    ) -> str:
        """Store a directory tree; returns the digest of its manifest.

        Only blobs the cluster lacks are uploaded, so re-pushing an unchanged tree sends no
        file bytes, and changing one file sends that file and the new manifest. In a git work
        tree, only what ``git ls-files -co --exclude-standard`` lists is included (so
        .gitignore is respected). File modes and symlinks are kept. ``hash_cache``: a file
        remembering digests by (size, mtime, inode), so unchanged files are not re-read on
        the next push (see :func:`pokedex.tree.scan`).
        """
        cache = tree.load_hash_cache(hash_cache)
        entries, sources = await asyncio.to_thread(tree.scan, directory, 4, cache)
        if hash_cache is not None:
            await asyncio.to_thread(tree.save_hash_cache, Path(hash_cache), cache)
        manifest = tree.encode(entries)
        manifest_digest = dg.of_bytes(manifest)
        absent = set(await self.missing([*sources, manifest_digest]))
        await self._gather_limited(self.put_file(sources[d], d) for d in sources if d in absent)
        if manifest_digest in absent:
            await self.put_bytes(manifest)
        return manifest_digest

    async def pull_tree(
        self,
        digest: str,
        dest: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str],
        *,
        link: bool = False,
        swarm_peer: str | None = None,
        seed_seconds: float = 30.0,
    ) -> None:
        """Materialize tree ``digest`` under ``dest``, using ``cache_dir`` as a content cache.

        Blobs already in the cache are never fetched again; fetched ones are verified and
        kept there. ``link=True`` hard-links files from the cache instead of copying (see
        :func:`pokedex.tree.materialize`). ``swarm_peer`` (an interface address such as
        ``"127.0.0.1"``) enables peer-assisted delivery for large blobs: this host serves the
        chunks it has to the other hosts pulling at the same time, and keeps serving for up to
        ``seed_seconds`` after it is done while others still pull.
        """
        cache = BlobStore(cache_dir)
        entries = tree.decode(await self.get_bytes(digest, limit=tree.MAX_MANIFEST))
        sizes = {e.digest: e.size for e in entries if e.digest is not None}
        wanted = [d for d in sizes if not cache.has(d)]
        if swarm_peer is None:
            await self._gather_limited(self._fetch_into(cache, d) for d in wanted)
        else:
            await swarmpull.pull(
                self._http,
                tracker=placement.rank("swarm", self.urls)[0],
                origins=self.urls,
                headers=self._headers(),
                timeout=self._small,
                cache=cache,
                sizes={d: sizes[d] for d in wanted},
                host=swarm_peer,
                seed_seconds=seed_seconds,
                fetch=lambda d: self._fetch_into(cache, d),
                concurrency=self.concurrency,
            )
        await asyncio.to_thread(tree.materialize, entries, dest, cache.path, link=link)


async def _reply(r: aiohttp.ClientResponse) -> bytes:
    """A whole reply body (JSON, msgpack or an error document), at most MAX_REPLY bytes."""
    try:
        return await read_body(r.content, MAX_REPLY, r.content_length)
    except BodyTooLarge as e:
        raise PokedexError(f"{r.url} sent an oversized reply: {e}") from None


def error_message(status: int, body: str) -> str:
    """One line for a node's error reply: ``HTTP 507 INSUFFICIENT_STORAGE: <message>`` from
    a pokedex error document, else the start of the body."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return f"HTTP {status} {doc.get('error')}: {doc['message'][:500]}"
    return f"HTTP {status}: {body[:500]}"
