"""Shipping the working tree to a remote farm as a pokedex snapshot.

A remote farm's hosts cannot see the developer's disk.  When the farm names a
pokedex (``GET /v1/info``), the plugin pushes the project root as a tree —
only files pokedex lacks are uploaded, and a git work tree ships what git
tracks plus untracked files not ignored — and the manifest names its digest.
"""

from __future__ import annotations

import dataclasses

from farm.hosts.local import user_cache_dir
from farm.manifest import RunManifest


async def ship_snapshot(manifest: RunManifest, urls: list[str], token: str) -> RunManifest:
    import pokedex

    async with pokedex.Client(urls, token) as client:
        try:
            # The hash cache remembers digests by (path, size, mtime): a large
            # tree is not re-read on every run.
            digest = await client.push_tree(
                manifest.worker.project_root, hash_cache=user_cache_dir() / "snapshot-hashes"
            )
        except pokedex.PokedexError as exc:
            raise SnapshotError(
                f"cannot ship the snapshot to pokedex at {', '.join(urls)}: {exc}"
            ) from exc
    return dataclasses.replace(manifest, snapshot=digest)


class SnapshotError(RuntimeError):
    """The working tree could not be shipped; the text says where and why."""
