"""Client blobs and trees against real nodes: dedup, caches, gitignore, modes, swarm."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from pokedex_testlib import nodes

from pokedex import Client, SyncClient
from pokedex import digest as dg
from pokedex.client import PokedexError


def _make_tree(root: Path) -> None:
    (root / "src/pkg").mkdir(parents=True)
    (root / "src/pkg/mod.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "data.bin").write_bytes(os.urandom(300_000))
    (root / "same.bin").write_bytes((root / "data.bin").read_bytes())  # dedup
    os.symlink("src/pkg/mod.py", root / "link.py")
    os.symlink("/nonexistent/target", root / "dangling")


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", p.stat().st_mode & 0o7777, p.read_bytes())
    return out


def test_file_round_trip_and_verification(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(5 << 20))

    async def go() -> None:
        async with nodes(tmp_path / "n") as [n], Client(n.url) as c:
            d = await c.put_file(src)
            assert d == dg.of_file(str(src))
            await c.get_file(d, tmp_path / "out")
            assert (tmp_path / "out").read_bytes() == src.read_bytes()
            # Corrupt the stored copy: the client must refuse it, not return it.
            path = n.node.store.path(d)
            path.write_bytes(b"corrupt" + path.read_bytes()[7:])
            with pytest.raises(PokedexError):
                await c.get_file(d, tmp_path / "out2")
            assert not (tmp_path / "out2").exists()
            with pytest.raises(PokedexError):
                await c.get_bytes(d)

    asyncio.run(go())


def test_push_pull_tree_dedups_and_keeps_modes_and_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src)

    async def go() -> None:
        async with nodes(tmp_path / "n") as [n], Client(n.url) as c:
            node = n.node
            t1 = await c.push_tree(src)
            first = node.bytes_received
            assert first < 2 * 300_000  # data.bin and same.bin uploaded once
            assert await c.push_tree(src) == t1
            assert node.bytes_received == first  # unchanged tree: zero bytes
            (src / "src/pkg/mod.py").write_text("print('changed')\n")
            t2 = await c.push_tree(src)
            assert t2 != t1
            changed = node.bytes_received - first
            assert changed < 2000  # that file plus the new manifest

            cache = tmp_path / "cache"
            await c.pull_tree(t1, tmp_path / "out1", cache)
            (src / "src/pkg/mod.py").write_text("print('hi')\n")
            assert _snapshot(tmp_path / "out1") == _snapshot(src)
            served = node.bytes_served
            await c.pull_tree(t2, tmp_path / "out2", cache, link=True)
            assert node.bytes_served - served < 2000  # only the changed file + manifest
            assert (tmp_path / "out2/src/pkg/mod.py").read_text() == "print('changed')\n"
            assert os.access(tmp_path / "out2/run.sh", os.X_OK)

    asyncio.run(go())


def test_push_tree_respects_gitignore(tmp_path: Path) -> None:
    src = tmp_path / "repo"
    src.mkdir()
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / ".gitignore").write_text("*.log\nbuild/\n")
    (src / "keep.py").write_text("x = 1\n")
    (src / "debug.log").write_text("noise")
    (src / "build").mkdir()
    (src / "build/out.o").write_bytes(b"\0")
    (src / "untracked.txt").write_text("new")
    subprocess.run(["git", "-C", str(src), "add", "keep.py", ".gitignore"], check=True)

    async def go() -> None:
        async with nodes(tmp_path / "n") as [n], Client(n.url) as c:
            t = await c.push_tree(src)
            await c.pull_tree(t, tmp_path / "out", tmp_path / "cache")
        got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
        assert got == [".gitignore", "keep.py", "untracked.txt"]

    asyncio.run(go())


def test_pull_tree_refuses_a_hostile_manifest(tmp_path: Path) -> None:
    evil = (
        b'{"entries":[{"digest":"' + dg.of_bytes(b"").encode() + b'","mode":420,'
        b'"path":"../escape","size":0,"type":"file"}],"format":"pokedex-tree/1"}'
    )

    async def go() -> None:
        async with nodes(tmp_path / "n") as [n], Client(n.url) as c:
            d = await c.put_bytes(evil)
            with pytest.raises(ValueError):
                await c.pull_tree(d, tmp_path / "out", tmp_path / "cache")
        assert not (tmp_path / "escape").exists()

    asyncio.run(go())


def test_sync_client(tmp_path: Path) -> None:
    from pokedex_testlib import ThreadedNode

    n = ThreadedNode(tmp_path / "n")
    try:
        with SyncClient([n.url]) as c:
            d = c.put_bytes(b"sync")
            assert c.get_bytes(d) == b"sync" and c.missing([d]) == []
            c.set_ref("x", d)
            assert c.get_ref("x") == d
            assert c.status()["healthy"]
    finally:
        n.close()


def test_swarm_pull_shares_chunks_between_hosts(tmp_path: Path) -> None:
    """Four clients pull the same 30 MiB tree (multi-chunk and single-chunk files) at once;
    the origin sends about one copy."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        (src / f"f{i}").write_bytes(os.urandom(12 << 20))
    for i in range(4):
        (src / f"small{i}").write_bytes(os.urandom(3 << 19))
    payload = 30 << 20

    async def go() -> None:
        async with nodes(tmp_path / "n") as [n]:
            async with Client(n.url) as c:
                t = await c.push_tree(src)
            base = n.node.bytes_served

            async def host(i: int) -> None:
                async with Client(n.url) as c:
                    await c.pull_tree(
                        t,
                        tmp_path / f"out{i}",
                        tmp_path / f"cache{i}",
                        swarm_peer="127.0.0.1",
                        seed_seconds=20,
                    )

            await asyncio.gather(*(host(i) for i in range(4)))
            origin = n.node.bytes_served - base
            assert origin <= 1.5 * payload, origin / payload
            for i in range(4):
                assert (tmp_path / f"out{i}/f1").read_bytes() == (src / "f1").read_bytes()

    asyncio.run(go())


def test_swarm_survives_a_lying_peer(tmp_path: Path) -> None:
    """A peer that announced every chunk but serves garbage: every chunk from it fails
    verification, the tracker forgets it, and the host gets the right bytes from the origin,
    fetching each chunk from the origin only once."""
    from aiohttp import web

    from pokedex.swarm import chunk_count, chunk_range

    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(20 << 20))

    async def liar(request: web.Request) -> web.Response:
        size = (src / "big").stat().st_size
        start, end = chunk_range(int(request.match_info["index"]), size)
        return web.Response(body=b"\0" * (end - start + 1))

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/swarm/chunk/{digest}/{index}", liar)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        liar_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        try:
            async with nodes(tmp_path / "n") as [n], Client(n.url) as c:
                t = await c.push_tree(src)
                d = dg.of_file(str(src / "big"))
                count = chunk_count((src / "big").stat().st_size)
                n.node.tracker.plan(liar_url, d, have=range(count), now=0)
                await c.pull_tree(
                    t, tmp_path / "out", tmp_path / "cache", swarm_peer="127.0.0.1", seed_seconds=0
                )
            assert (tmp_path / "out/big").read_bytes() == (src / "big").read_bytes()
        finally:
            await runner.cleanup()

    asyncio.run(go())


def test_hash_cache_skips_rehashing_unchanged_files(tmp_path: Path, monkeypatch) -> None:
    from pokedex import tree

    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(1000))
        os.utime(src / f"f{i}", ns=(10**18, 10**18))  # long ago: not "racy"
    hashed: list[str] = []
    real = tree.dg.of_file
    monkeypatch.setattr(tree.dg, "of_file", lambda p: hashed.append(p) or real(p))
    cache_file = tmp_path / "hashes"

    async def go() -> None:
        async with nodes(tmp_path / "n") as [n], Client(n.url) as c:
            t1 = await c.push_tree(src, hash_cache=cache_file)
            assert len(hashed) == 5
            assert await c.push_tree(src, hash_cache=cache_file) == t1
            assert len(hashed) == 5  # nothing re-read
            (src / "f0").write_bytes(b"new content")
            os.utime(src / "f0", ns=(2 * 10**18, 2 * 10**18))
            t2 = await c.push_tree(src, hash_cache=cache_file)
            assert len(hashed) == 6 and t2 != t1
            await c.pull_tree(t2, tmp_path / "out", tmp_path / "cache")
            assert (tmp_path / "out/f0").read_bytes() == b"new content"

    asyncio.run(go())


def test_swarm_pull_with_a_dead_node_in_the_list(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(20 << 20))

    async def go() -> None:
        async with nodes(tmp_path / "n", 2) as cluster:
            urls = [n.url for n in cluster]
            async with Client(urls) as c:
                t = await c.push_tree(src)
            await cluster[1].close()  # whether it was the tracker or an origin, pulls work
            async with Client(urls) as c:
                await c.pull_tree(
                    t, tmp_path / "out", tmp_path / "cache", swarm_peer="127.0.0.1", seed_seconds=0
                )
            assert (tmp_path / "out/big").read_bytes() == (src / "big").read_bytes()

    asyncio.run(go())
