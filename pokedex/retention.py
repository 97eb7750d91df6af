"""What a node keeps and what it evicts when its disk budget is exceeded: the pure policy.

A farm ships a tree and images on every run, so without eviction its store only grows.
The rules, decided here and applied by :mod:`pokedex.collector`:

* **Roots** are every ref of the cluster (tagged images are refs ``oci/<repo>:<tag>``) and
  every *recent tree*: a tree manifest used (pushed, pulled or found present) within
  ``keep_recent`` (default 24 h). A run's snapshot is named in its manifest, not by a ref,
  so without this rule the tree a farm is about to pull could be evicted under it.
* **Reachable** blobs are kept: a root, the file blobs of a tree manifest, the config and
  layers of an OCI manifest, the manifests of an index (recursively). Only roots and index
  entries are parsed; files and layers are never read, and no document larger than
  :data:`MAX_DOCUMENT` is parsed (larger roots are kept as plain blobs).
* **Grace**: nothing used within ``grace`` (default 1 h) is evicted, like git's
  ``gc.pruneExpire``. A blob being uploaded is a temporary file and not a blob yet; a blob
  just uploaded, or found present by ``/missing``, ``HEAD`` or a manifest check, has a fresh
  use stamp, so the tree or tag a client is about to create on top of it is safe although
  no ref names it yet.
* The rest is evicted **oldest use first** until the node is under its target: a pass
  started by the budget evicts down to :data:`LOW_WATER` of ``max_bytes`` (so that not
  every write starts another pass); ``pokedex gc`` evicts all of it (or down to a size).
  The budget counts blob files only (not uploads in flight) and is a target, not a quota:
  writes are never refused, and protected blobs may keep a node above it.

"Use" is the blob file's mtime: set when the file is written, bumped when a client reads the
blob or is told it exists, at most once per :attr:`Policy.touch_every` (so a hot blob costs
no disk write per read). It needs no database and survives crashes; since the stamp lags a
real use by less than ``touch_every``, which is a quarter of the grace at most, a used blob
is never old enough to evict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from enum import Enum

from . import tree
from .registry import DOCKER_LIST, OCI_INDEX, parse_manifest
from .replies import ApiError

LOW_WATER = 0.9
MAX_DOCUMENT = tree.MAX_MANIFEST
TREE_PREFIX = b'{"entries":'  # canonical tree manifests start so (keys are sorted)
DEFAULT_GRACE = 3600.0
DEFAULT_KEEP_RECENT = 86400.0
MAX_TOUCH_EVERY = 60.0


@dataclass(frozen=True)
class Blob:
    """One blob file on a node: its size and its use stamp (seconds since the epoch)."""

    digest: str
    size: int
    used: float


@dataclass(frozen=True)
class Policy:
    """A node's retention settings. ``max_bytes=None``: no budget, only ``pokedex gc``."""

    max_bytes: int | None = None
    grace: float = DEFAULT_GRACE
    keep_recent: float = DEFAULT_KEEP_RECENT

    @property
    def touch_every(self) -> float:
        """How stale a use stamp may get before a use rewrites it."""
        return min(MAX_TOUCH_EVERY, self.grace / 4, self.keep_recent / 4)

    def over_budget(self, used: int) -> bool:
        return self.max_bytes is not None and used > self.max_bytes

    @property
    def target(self) -> int:
        """Where a pass started by the budget stops evicting."""
        assert self.max_bytes is not None
        return int(self.max_bytes * LOW_WATER)


class Kind(Enum):
    """What a digest is known to be when the walk reaches it."""

    ROOT = "root"  # named by a ref or a recent tree: a tree, an OCI document, or a plain blob
    OCI = "oci"  # an entry of an OCI index: a manifest or a nested index
    LEAF = "leaf"  # a file of a tree, a config or a layer: never parsed


def is_tree_head(head: bytes) -> bool:
    """Whether a blob starting with ``head`` may be a tree manifest (cheap pre-check)."""
    return head.startswith(TREE_PREFIX)


def recent(blobs: Iterable[Blob], now: float, keep_recent: float) -> list[Blob]:
    """Blobs used within ``keep_recent`` that are small enough to be tree manifests: the
    ones whose first bytes decide whether they are recent trees (roots)."""
    return [b for b in blobs if now - b.used < keep_recent and b.size <= MAX_DOCUMENT]


def children(data: bytes, kind: Kind) -> tuple[list[str], Kind]:
    """The digests a document references and what they are; ``[]`` for anything else.

    A root may be a tree manifest or an OCI document; an index entry only the latter.
    """
    if kind is Kind.ROOT and is_tree_head(data):
        try:
            entries = tree.decode(data)
        except tree.TreeError:
            return [], Kind.LEAF
        return sorted({e.digest for e in entries if e.digest is not None}), Kind.LEAF
    if not data.startswith(b"{"):
        return [], Kind.LEAF
    try:
        media, refs = parse_manifest(data, None)
    except ApiError:
        return [], Kind.LEAF
    return refs, Kind.OCI if media in (DOCKER_LIST, OCI_INDEX) else Kind.LEAF


Reader = Callable[[str], Awaitable[bytes | None]]


async def closure(roots: Iterable[str], read: Reader) -> set[str]:
    """Every digest reachable from ``roots`` (the roots included).

    ``read(digest)`` returns a document's bytes, or None when the blob is absent everywhere
    or too large to be a document; it raises when it cannot tell (a node is unreachable),
    and the exception propagates: an incomplete closure must not be used to evict. Each
    level of the walk is read concurrently; a digest is read again only if reached later as
    something that parses more (a tree file that is also an index entry).
    """
    seen: dict[str, Kind] = {}
    level = {d: Kind.ROOT for d in roots}
    while level:
        seen.update(level)
        to_read = [d for d, kind in level.items() if kind is not Kind.LEAF]
        documents = await asyncio.gather(*(read(d) for d in to_read))
        following: dict[str, Kind] = {}
        for d, data in zip(to_read, documents, strict=True):
            if data is None:
                continue
            refs, kind = children(data, level[d])
            for ref in refs:
                known = max(_RANK[seen.get(ref)], _RANK[following.get(ref)])
                if _RANK[kind] > known:
                    following[ref] = kind
        level = following
    return set(seen)


_RANK = {None: 0, Kind.LEAF: 1, Kind.OCI: 2, Kind.ROOT: 3}


def plan(
    blobs: Iterable[Blob], keep: Collection[str], target: int, now: float, grace: float
) -> list[Blob]:
    """The blobs to evict, in order, to bring ``blobs`` down to ``target`` bytes.

    Never one in ``keep`` or used within ``grace`` of ``now``; oldest use first (ties by
    digest, so the order is total); stops as soon as the total is at most ``target``. If the
    evictable blobs are not enough, all of them.
    """
    blobs = list(blobs)
    total = sum(b.size for b in blobs)
    evictable = sorted(
        (b for b in blobs if b.digest not in keep and now - b.used >= grace),
        key=lambda b: (b.used, b.digest),
    )
    chosen = []
    for b in evictable:
        if total <= target:
            break
        chosen.append(b)
        total -= b.size
    return chosen


def next_expiry(
    blobs: Iterable[Blob],
    keep: Collection[str],
    recent_trees: Collection[str],
    now: float,
    policy: Policy,
) -> float | None:
    """When protection by age next runs out here: an unreachable blob leaving its grace, or
    a recent tree ceasing to be recent. None if nothing here is protected by age."""
    times = []
    for b in blobs:
        if b.digest not in keep and now - b.used < policy.grace:
            times.append(b.used + policy.grace)
        if b.digest in recent_trees:
            times.append(b.used + policy.keep_recent)
    return min(times, default=None)
