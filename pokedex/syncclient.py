"""A blocking face of :class:`pokedex.client.Client`, for scripts and the ``pokedex`` command.

Each :class:`SyncClient` owns one private event loop and runs the async client's
calls on it, so code without an event loop of its own (the CLI, tests, a user's
script) gets the same behaviour: failover, digest checks and timeouts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from .client import ANY, Client

T = TypeVar("T")


class SyncClient:
    """Blocking wrapper around :class:`Client` (one private event loop; not for use inside
    a running event loop). Same constructor arguments and methods."""

    def __init__(self, urls: str | Iterable[str], token: str | None = None, **kw: Any) -> None:
        self._runner = asyncio.Runner()
        self.client = Client(urls, token, **kw)

    def _run(self, coro: Awaitable[T]) -> T:
        return self._runner.run(coro)  # type: ignore[arg-type]

    @property
    def under_replicated(self) -> dict[str, tuple[int, int]]:
        return self.client.under_replicated

    def put_bytes(self, data: bytes) -> str:
        return self._run(self.client.put_bytes(data))

    def put_file(self, path: str | os.PathLike[str], digest: str | None = None) -> str:
        return self._run(self.client.put_file(path, digest))

    def get_bytes(self, digest: str, *, limit: int = 1 << 30) -> bytes:
        return self._run(self.client.get_bytes(digest, limit=limit))

    def get_file(self, digest: str, path: str | os.PathLike[str]) -> None:
        self._run(self.client.get_file(digest, path))

    def missing(self, digests: Iterable[str]) -> list[str]:
        return self._run(self.client.missing(digests))

    def get_ref(self, name: str) -> str | None:
        return self._run(self.client.get_ref(name))

    def set_ref(self, name: str, digest: str | None, *, expected: Any = ANY) -> None:
        self._run(self.client.set_ref(name, digest, expected=expected))

    def push_tree(
        self, directory: str | os.PathLike[str], *, hash_cache: str | os.PathLike[str] | None = None
    ) -> str:
        return self._run(self.client.push_tree(directory, hash_cache=hash_cache))

    def pull_tree(
        self,
        digest: str,
        dest: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str],
        **kw: Any,
    ) -> None:
        self._run(self.client.pull_tree(digest, dest, cache_dir, **kw))

    def status(self) -> dict[str, Any]:
        return self._run(self.client.status())

    def repair(self) -> dict[str, Any]:
        return self._run(self.client.repair())

    def gc(self, keep_bytes: int = 0) -> dict[str, Any]:
        return self._run(self.client.gc(keep_bytes))

    def close(self) -> None:
        try:
            self._run(self.client.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
