"""Starting a pokedex node inside the running event loop, and stopping it again.

The ``pokedex serve`` command and psyduck's tests both start nodes in-process:
the listening socket is bound before the node exists (``port=0`` picks a free
one, which :attr:`RunningNode.url` tells), the node's crash leftovers are gone
before it accepts anything, and its periodic repair and collection run as tasks
that :meth:`RunningNode.close` cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .cluster import Cluster, normalize_url
from .collector import Collector
from .refquorum import TOMBSTONE_GRACE
from .retention import Policy
from .server import DEFAULT_MAX_BLOB, Node
from .store import BlobStore


@dataclass
class RunningNode:
    """A node started in this event loop by :func:`start_node`."""

    url: str
    node: Node
    runner: web.AppRunner
    repair_task: asyncio.Task[None] | None = None
    gc_task: asyncio.Task[None] | None = None

    def set_peers(self, peers: list[str]) -> None:
        """Replace the static peer list (tests start nodes on port 0, then wire them up)."""
        self.node.cluster.set_peers(peers)

    async def close(self) -> None:
        for task in (self.repair_task, self.gc_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.runner.cleanup()
        await self.node.refs.close()
        await self.node.cluster.close()


async def start_node(
    data_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    peers: tuple[str, ...] | list[str] = (),
    replicas: int = 2,
    token: str | None = None,
    *,
    auth_reads: bool = False,
    repair_interval: float | None = 60.0,
    advertise: str | None = None,
    max_blob: int = DEFAULT_MAX_BLOB,
    gc_policy: Policy | None = None,
    more_tokens: Callable[[], Iterable[str]] = tuple,
    tombstone_grace: float = TOMBSTONE_GRACE,
) -> RunningNode:
    """Start a node inside the running event loop and return once it accepts connections.

    ``port=0`` picks a free port; ``.url`` says which. ``peers`` are the other nodes' URLs
    (listing this node too is harmless). ``advertise`` is the URL peers know this node by
    (default ``http://host:port``). ``repair_interval=None`` disables periodic repair.
    ``gc_policy``: retention (see :mod:`.retention`); with ``max_bytes``, passes run by
    themselves.
    ``more_tokens()`` lists tokens accepted besides ``token``, asked at each request.
    ``tombstone_grace``: seconds a deleted ref is kept before a repair pass may prune it.
    """
    gc_policy = gc_policy or Policy()
    # crash leftovers are gone before we accept anything
    store = BlobStore(Path(data_dir), touch_every=gc_policy.touch_every)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = normalize_url(advertise or f"http://{shown}:{bound}")
    cluster = Cluster(url, peers, replicas, token, store)
    await cluster.start()
    collector = Collector(store, cluster, gc_policy)
    node = Node(
        store=store,
        cluster=cluster,
        collector=collector,
        token=token,
        auth_reads=auth_reads,
        max_blob=max_blob,
        more_tokens=more_tokens,
        tombstone_grace=tombstone_grace,
    )
    runner = web.AppRunner(node.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=1024).start()
    task = None
    if repair_interval:
        task = asyncio.create_task(cluster.repair_forever(repair_interval, node.refs.repair))
    gc_task = None
    if gc_policy.max_bytes is not None:
        gc_task = asyncio.create_task(collector.run_forever())
    return RunningNode(url=url, node=node, runner=runner, repair_task=task, gc_task=gc_task)
