"""Run snapshots on a host: pulled from pokedex once per digest, shared by every shard there.

A remote client cannot lend its working tree to the farm's machines, so the
plugin pushes it to pokedex as a tree and names the tree's digest in the
manifest.  Each host keeps a cache directory: trees under ``trees/``, their
file contents under ``blobs/`` (so a new snapshot that changed one file
fetches one file).  Concurrent shards of one run wait for the same pull.

A snapshot that cannot be pulled (unknown, corrupt, not a tree, pokedex
unreachable or absent) is the run's fault, not the host's: it raises
:class:`~farm.hosts.base.RunError`, so the run ends with that reason and the
host keeps serving other runs.  Only failing to store the tree on the host's
own disk is a :class:`~farm.hosts.base.HostError`.  A failed pull is not
remembered: the next run naming the digest tries again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from farm.hosts.base import HostError, RunContext, RunError


class SnapshotCache:
    """*link*: hard-link tree files to the blob cache instead of copying them — only
    for hosts that mount trees read-only, since a write would change the cache."""

    def __init__(self, directory: str | os.PathLike[str], host: str, *, link: bool = False) -> None:
        self.directory = Path(directory)
        self.host = host
        self.link = link
        self._pulls: dict[str, asyncio.Future[str]] = {}

    async def tree(self, run: RunContext) -> str | None:
        """The local directory holding the run's snapshot, or None for runs without one."""
        digest = run.manifest.snapshot
        if not digest:
            return None
        pull = self._pulls.get(digest)
        if pull is None or (pull.done() and pull.exception() is not None):
            pull = asyncio.ensure_future(self._pull(run, digest))
            self._pulls[digest] = pull
        return await asyncio.shield(pull)

    async def _pull(self, run: RunContext, digest: str) -> str:
        import pokedex  # only runs that ship a snapshot need it
        from pokedex.digest import is_digest

        if not is_digest(digest):  # it names a directory below: never let it climb out
            raise RunError(f"the run's snapshot {digest!r} is not a digest (sha256:<64 hex>)")
        dest = self.directory / "trees" / digest.replace(":", "-")
        if dest.is_dir():
            return str(dest)
        if not run.pokedex_urls:
            raise RunError(f"the run has snapshot {digest} but the farm has no pokedex")
        partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
        try:
            shutil.rmtree(partial, ignore_errors=True)
            async with pokedex.Client(run.pokedex_urls, run.pokedex_token) as client:
                await client.pull_tree(digest, partial, self.directory / "blobs", link=self.link)
            os.replace(partial, dest)
        except OSError as exc:
            raise HostError(f"host {self.host}: cannot store snapshot {digest}: {exc}") from exc
        except (pokedex.PokedexError, ValueError) as exc:
            # ValueError: a digest or tree manifest pokedex's own checks refused.
            raise RunError(f"cannot pull the run's snapshot {digest}: {exc}") from exc
        return str(dest)


def relocate(path: str, root: str, tree: str) -> str:
    """*path* (or the value of a ``--opt=path`` argument) moved from *root* into *tree*."""
    if path.startswith("-") and "=" in path:
        option, value = path.split("=", 1)
        return f"{option}={relocate(value, root, tree)}"
    if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
        return tree + path[len(root.rstrip(os.sep)) :]
    return path
