"""Three real nodes: placement, replication, reads after node loss, repair, refs, clients."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pokedex_testlib import nodes

from pokedex import Client, placement, start_node
from pokedex import digest as dg
from pokedex.client import RefConflict


def _holders(cluster, d: str) -> set[str]:
    return {n.url for n in cluster if n.node.store.has(d)}


def test_puts_land_on_their_placement_and_reads_work_everywhere(tmp_path: Path) -> None:
    async def go() -> None:
        async with nodes(tmp_path, 3) as cluster:
            urls = [n.url for n in cluster]
            blobs = [os.urandom(1000 + i) for i in range(30)]
            # Talk to one node only, so most PUTs arrive at a node outside the placement.
            async with Client([urls[0]]) as c:
                ds = await asyncio.gather(*(c.put_bytes(b) for b in blobs))
                for d in ds:
                    want = set(placement.place(d, urls, 2))
                    assert want <= _holders(cluster, d)
            for url in urls:
                async with Client([url]) as c:
                    got = await asyncio.gather(*(c.get_bytes(d) for d in ds))
                    assert got == blobs
                    assert await c.missing(ds) == []

    asyncio.run(go())


def test_node_loss_keeps_reads_working_and_repair_restores_copies(tmp_path: Path) -> None:
    async def go() -> None:
        async with nodes(tmp_path, 3) as cluster:
            urls = [n.url for n in cluster]
            async with Client(urls) as c:
                blobs = [os.urandom(5000 + i) for i in range(40)]
                ds = await asyncio.gather(*(c.put_bytes(b) for b in blobs))
            victim = cluster[1]
            port = int(victim.url.rsplit(":", 1)[1])
            lost = [d for d in ds if victim.node.store.has(d)]
            assert lost
            await victim.close()
            # Reads via any surviving node, and via a client that still lists the dead one.
            for url in (urls[0], urls[2]):
                async with Client([url]) as c:
                    assert await asyncio.gather(*(c.get_bytes(d) for d in ds)) == blobs
            async with Client(urls) as c:
                assert await asyncio.gather(*(c.get_bytes(d) for d in ds)) == blobs
                st = await c.status()
                assert st["down"] == [victim.url] and not st["healthy"]
            # Replace the node: same address, empty disk. Repair re-seeds it.
            replacement = await start_node(
                tmp_path / "replacement", port=port, peers=urls, repair_interval=None
            )
            cluster[1] = replacement  # closed by the nodes() context
            assert not any(replacement.node.store.has(d) for d in ds)
            async with Client(urls) as c:
                results = await c.repair()
                assert sum(r["pushed"] for r in results.values()) >= len(lost)
                for d in ds:
                    assert set(placement.place(d, urls, 2)) <= _holders(cluster, d)
                st = await c.status()
                assert st["healthy"] and st["down"] == []

    asyncio.run(go())


def test_writes_succeed_while_a_placement_node_is_down(tmp_path: Path) -> None:
    async def go() -> None:
        async with nodes(tmp_path, 3) as cluster:
            urls = [n.url for n in cluster]
            down = cluster[2]
            await down.close()
            async with Client(urls[:2]) as c:
                ds = [await c.put_bytes(os.urandom(100)) for _ in range(20)]
            for d in ds:
                assert len(_holders(cluster[:2], d)) == 2  # stand-in copies, R kept
            cluster[2] = await start_node(
                tmp_path / "back",
                port=int(down.url.rsplit(":", 1)[1]),
                peers=urls,
                repair_interval=None,
            )
            async with Client(urls) as c:
                await c.repair()
            for d in ds:
                assert set(placement.place(d, urls, 2)) <= _holders(cluster, d)

    asyncio.run(go())


def test_refs_are_consistent_across_nodes(tmp_path: Path) -> None:
    a, b = dg.of_bytes(b"a"), dg.of_bytes(b"b")

    async def go() -> None:
        async with nodes(tmp_path, 3) as cluster:
            clients = [Client([n.url]) for n in cluster]
            try:
                await clients[0].set_ref("runs/42", a, expected=None)
                for c in clients:
                    assert await c.get_ref("runs/42") == a
                with pytest.raises(RefConflict) as e:
                    await clients[1].set_ref("runs/42", b, expected=None)
                assert e.value.current == a
                await clients[2].set_ref("runs/42", b, expected=a)

                async def race(c: Client, v: bytes) -> bool:
                    try:
                        await c.set_ref("race", dg.of_bytes(v), expected=None)
                        return True
                    except RefConflict:
                        return False

                wins = await asyncio.gather(*(race(clients[i % 3], bytes([i])) for i in range(30)))
                assert sum(wins) == 1
                for c in clients:
                    assert await c.get_ref("runs/42") == b
            finally:
                for c in clients:
                    await c.close()

    asyncio.run(go())


def test_refs_survive_the_loss_of_their_deciding_node(tmp_path: Path) -> None:
    a = dg.of_bytes(b"a")

    async def go() -> None:
        async with nodes(tmp_path, 3) as cluster:
            urls = [n.url for n in cluster]
            async with Client(urls) as c:
                await c.set_ref("tags/release", a, expected=None)
            primary = placement.rank("ref:tags/release", urls)[0]
            await next(n for n in cluster if n.url == primary).close()
            for url in urls:
                if url != primary:
                    async with Client([url]) as c:
                        assert await c.get_ref("tags/release") == a

    asyncio.run(go())
