"""Which nodes hold a blob: rendezvous (highest-random-weight) hashing.

Every node and client computes the same ranking from the same node list, with no shared state
and no coordination. Adding or removing one node moves only the blobs whose top-R set contains
that node, which is the least possible movement.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _score(node: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{node}\x00{key}".encode()).digest()[:8], "big")


def rank(key: str, nodes: Iterable[str]) -> list[str]:
    """All distinct ``nodes`` ordered best-first for ``key`` (ties broken by node name)."""
    return sorted(set(nodes), key=lambda n: (-_score(n, key), n))


def place(key: str, nodes: Iterable[str], replicas: int) -> list[str]:
    """The ``replicas`` nodes (fewer if there are fewer nodes) that should hold ``key``."""
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    return rank(key, nodes)[:replicas]
