"""Retention on real nodes: use tracking on disk, ``pokedex gc``, a budget under load.

Time passing is simulated where a test needs blobs to be old: their files' use stamps
(mtimes) are set back, which is exactly what days of disuse leave behind.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from pokedex_testlib import TOKEN, cli_env, free_port, nodes, wait_until

from pokedex import Client, Policy, SyncClient
from pokedex import digest as dg
from pokedex.store import BlobStore

DAY = 86400.0
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- helpers ---------------------------------------------------------------------------------


class Serve:
    """``pokedex serve`` as a real process, with extra options."""

    def __init__(self, data: Path, *options: str) -> None:
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        token_file = data.parent / "token"
        token_file.write_text(TOKEN)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = data.parent / f"node-{port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "pokedex.cli", "serve", "--data", str(data)),
                    *("--listen", f"127.0.0.1:{port}", "--repair-interval", "0"),
                    *("--token-file", str(token_file), *options),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._up, 30, "node process to answer")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(f"{self.url}/status", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def serve() -> Iterator[Callable[..., Serve]]:
    """Starts ``pokedex serve`` processes; stops them after the test."""
    started: list[Serve] = []

    def start(data: Path, *options: str) -> Serve:
        node = Serve(data, *options)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def make_tree(root: Path, files: int, seed: int, shared: dict[str, bytes] | None = None) -> Path:
    """A directory of ``files`` files of 1..6 KiB in a few subdirectories (plus ``shared``)."""
    rng = random.Random(seed)
    for i in range(files):
        path = root / f"d{i % 7}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1024, 6144)))
    for name, data in (shared or {}).items():
        (root / name).write_bytes(data)
    return root


def same_tree(a: Path, b: Path) -> bool:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    return files(a) == files(b)


def blob_file(data: Path, d: str) -> Path:
    hexd = d.split(":", 1)[1]
    return data / "blobs" / "sha256" / hexd[:2] / hexd


def age_all(data: Path, seconds: float) -> None:
    """Make every blob on a node look unused for ``seconds``."""
    stamp = time.time() - seconds
    for f in (data / "blobs" / "sha256").rglob("*"):
        if f.is_file():
            os.utime(f, (stamp, stamp))


def tree_blobs(client: SyncClient, d: str) -> set[str]:
    manifest = json.loads(client.get_bytes(d))
    return {e["digest"] for e in manifest["entries"] if e["type"] == "file"}


def leftovers(data: Path) -> list[Path]:
    return [p for p in data.rglob(".tmp-*")]


# -- the store -------------------------------------------------------------------------------


def test_uses_refresh_stamps_and_eviction_spares_what_was_used(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "node", touch_every=10)
    d = store.put_bytes(b"x" * 1000)
    assert store.used_bytes == 1000
    path = store.path(d)
    old = time.time() - DAY
    os.utime(path, (old, old))
    # Found present: the stamp is refreshed, so an eviction planned before spares it.
    assert store.has(d)
    assert path.stat().st_mtime > time.time() - 60
    assert store.evict(d, unused_since=time.time() - 3600) is None
    assert store.has(d) and store.used_bytes == 1000
    # Unused: evicted, counted, and written again by the next upload of the same bytes.
    os.utime(path, (old, old))
    assert store.evict(d, unused_since=time.time() - 3600) == 1000
    assert not path.exists() and store.used_bytes == 0
    assert store.evict(d, unused_since=time.time()) is None
    assert store.put_bytes(b"x" * 1000) == d and store.read_bytes(d, 2000) == b"x" * 1000
    assert store.used_bytes == 1000
    # Re-uploading a present blob does not count it twice; the count survives a restart.
    store.put_bytes(b"x" * 1000)
    assert store.used_bytes == 1000
    assert BlobStore(tmp_path / "node", touch_every=10).used_bytes == 1000
    # A registry upload session finished long after its last chunk: fresh when committed.
    session = store.upload_root / "session"
    session.write_bytes(b"layer")
    os.utime(session, (old, old))
    store.adopt(session, dg.of_bytes(b"layer"))
    assert store.path(dg.of_bytes(b"layer")).stat().st_mtime > time.time() - 60
    # A client's cache records nothing: its files may be hard-linked into trees.
    cache = BlobStore(tmp_path / "cache")
    c = cache.put_bytes(b"cached")
    os.utime(cache.path(c), (old, old))
    assert cache.has(c) and cache.path(c).stat().st_mtime == pytest.approx(old)


# -- pokedex gc ------------------------------------------------------------------------------


def test_gc_command_keeps_refs_and_recent_trees_and_frees_the_rest(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    node = serve(tmp_path / "data")
    shared = {"shared.bin": os.urandom(5000)}
    kept_src = make_tree(tmp_path / "kept", 200, 1, shared)
    recent_src = make_tree(tmp_path / "recent", 200, 2)
    old_src = make_tree(tmp_path / "old", 200, 3, shared)
    with SyncClient(node.url, TOKEN) as c:
        kept = c.push_tree(kept_src)
        c.set_ref("snapshots/main", kept)
        recent = c.push_tree(recent_src)
        old = c.push_tree(old_src)
        junk = c.put_bytes(os.urandom(300_000))
        old_only = tree_blobs(c, old) - tree_blobs(c, kept)
        freed = sum(blob_file(node.data, d).stat().st_size for d in [junk, old, *old_only])
        age_all(node.data, 2 * DAY)
        fresh = c.put_bytes(os.urandom(200_000))  # within the grace period
        c.pull_tree(recent, tmp_path / "out-recent-0", tmp_path / "cache-0")  # a use
        before = c.status()["nodes"][0]["bytes"]

    run = subprocess.run(
        [sys.executable, "-m", "pokedex.cli", "gc"],
        env=cli_env(node.url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    line = run.stdout.strip()
    assert line.startswith(f"{node.url}: freed ") and "blobs;" in line and "(no budget)" in line

    for d in [junk, old, *old_only]:
        assert not blob_file(node.data, d).exists(), d
    with SyncClient(node.url, TOKEN) as c:
        status = c.status()["nodes"][0]
        assert status["max_bytes"] is None
        assert status["last_gc"]["evicted"] == len(old_only) + 2
        assert before - status["bytes"] == status["last_gc"]["freed"] == freed
        assert c.missing([fresh, junk]) == [junk]
        c.pull_tree(kept, tmp_path / "out-kept", tmp_path / "cache-1")
        c.pull_tree(recent, tmp_path / "out-recent", tmp_path / "cache-2")
        # Evicted, then uploaded again: simply stored anew.
        assert c.put_bytes(b"junk again") and c.missing([c.put_bytes(b"junk again")]) == []
    assert same_tree(kept_src, tmp_path / "out-kept")
    assert same_tree(recent_src, tmp_path / "out-recent")
    assert leftovers(node.data) == []

    again = subprocess.run(
        [sys.executable, "-m", "pokedex.cli", "gc", "--json"],
        env=cli_env(node.url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["nodes"][0]["evicted"] == 0


def test_gc_route_needs_the_token_and_a_valid_body(tmp_path: Path) -> None:
    async def go() -> None:
        policy = Policy(max_bytes=10 << 20)
        async with nodes(tmp_path, token=TOKEN, gc_policy=policy) as [n]:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{n.url}/gc") as r:
                    assert r.status == 401
                async with http.post(f"{n.url}/gc", json={"keep_bytes": "lots"}, headers=AUTH) as r:
                    assert r.status == 400
                    assert "keep_bytes" in (await r.json())["message"]
                async with http.post(f"{n.url}/gc", data=b"{nope", headers=AUTH) as r:
                    assert r.status == 400
                async with http.get(f"{n.url}/status", headers=AUTH) as r:
                    status = await r.json()
                assert status["max_bytes"] == 10 << 20 and status["last_gc"] is None

    asyncio.run(go())


def test_roots_come_from_the_whole_cluster_and_a_silent_node_stops_eviction(
    tmp_path: Path,
) -> None:
    """With one copy per blob, a ref protects a tree whose files are spread over both
    nodes; when a node does not answer, no node evicts anything."""
    src = make_tree(tmp_path / "src", 120, 4)

    async def go() -> None:
        async with nodes(tmp_path / "nodes", count=2, replicas=1, token=TOKEN) as [a, b]:
            async with Client([a.url, b.url], TOKEN) as c:
                kept = await c.push_tree(src)
                await c.set_ref("snapshots/kept", kept)
                junk = [await c.put_bytes(os.urandom(10_000)) for _ in range(20)]
                files = {e["digest"] for e in json.loads(await c.get_bytes(kept))["entries"]}
                for n in (a, b):
                    age_all(n.node.store.root, 2 * DAY)
                    on = {d for d, _, _ in n.node.store.inventory()}
                    assert files & on, "each node holds some of the tree's files"
                assert all("snapshots/kept" in n.node.store.ref_slots() for n in (a, b))
                answer = await c.gc()
                assert [r["skipped"] for r in answer["nodes"]] == [None, None]
                assert await c.missing(junk) == junk
                await c.pull_tree(kept, tmp_path / "out", tmp_path / "cache")
                # A node that does not answer: the other evicts nothing, and says why.
                more = await c.put_bytes(os.urandom(10_000))
                holder, other = (a, b) if a.node.store.has(more) else (b, a)
                age_all(holder.node.store.root, 2 * DAY)
                await other.runner.cleanup()
                result = await holder.node.collector.collect(0)
                # Refs need a majority (both of two nodes): the holder's own listing fails too.
                assert result["evicted"] == 0 and "did not answer" in result["skipped"]
                assert holder.node.store.has(more)

    asyncio.run(go())
    assert same_tree(src, tmp_path / "out")


def test_an_eviction_reaches_every_copy_so_repair_brings_back_nothing(tmp_path: Path) -> None:
    """With two copies of each blob, garbage one node collects is dropped by its replica
    too, so the next repair pass has nothing to push back; a copy its replica used
    recently stays there, and repair re-seeds the evicting node from it."""

    async def go() -> None:
        async with nodes(tmp_path / "n", count=2, replicas=2, token=TOKEN) as [a, b]:
            async with Client([a.url, b.url], TOKEN) as c:
                junk = [await c.put_bytes(os.urandom(20_000)) for _ in range(30)]
                in_use = junk.pop()
                for n in (a, b):
                    assert all(n.node.store.has(d) for d in [*junk, in_use])
                    age_all(n.node.store.root, 2 * DAY)
                assert b.node.store.has(in_use)  # a use on b refreshes its stamp there
                result = await a.node.collector.collect(0)
                assert result["evicted"] == len(junk) + 1
                assert result["evicted_on_peers"] == len(junk)
                for n in (a, b):
                    await n.node.cluster.repair()
                assert await c.missing(junk) == junk
                assert not any(n.node.store.has(d) for n in (a, b) for d in junk)
                assert a.node.store.has(in_use) and b.node.store.has(in_use)

    asyncio.run(go())


def test_blobs_found_present_are_safe_until_a_ref_names_them(tmp_path: Path) -> None:
    """The window between "the cluster has these" and "a ref names them": what a client
    re-pushing an old tree, or tagging an old image, relies on."""
    src = make_tree(tmp_path / "src", 150, 5)

    async def go() -> None:
        no_recent = Policy(keep_recent=0)  # only the use stamps protect the tree
        async with (
            nodes(tmp_path / "n", token=TOKEN, gc_policy=no_recent) as [n],
            Client(n.url, TOKEN) as c,
        ):
            first = await c.push_tree(src)
            junk = await c.put_bytes(os.urandom(50_000))
            age_all(n.node.store.root, 2 * DAY)
            again = await c.push_tree(src)  # uploads nothing: /missing finds it all
            assert again == first
            answer = await c.gc()
            assert answer["nodes"][0]["evicted"] == 1  # only the junk
            await c.set_ref("snapshots/old", first)
            await c.pull_tree(first, tmp_path / "out", tmp_path / "cache")
            assert await c.missing([junk]) == [junk]

    asyncio.run(go())
    assert same_tree(src, tmp_path / "out")


# -- a budget under load ---------------------------------------------------------------------


def test_budget_holds_while_uploads_pushes_and_pulls_run(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    """A real node with a 4 MiB budget while blobs are uploaded, trees pushed and two trees
    pulled, all at once: the ref'ed tree and the tree being pulled come back intact every
    time, nothing fails, and the store ends under budget with the old unreferenced blobs
    gone."""
    budget = 4 << 20
    keep_recent = 12.0
    node = serve(
        tmp_path / "data",
        *("--max-bytes", "4M", "--gc-grace", "1s", "--keep-recent", f"{keep_recent}s"),
    )
    kept_src = make_tree(tmp_path / "kept", 200, 10)
    pulled_src = make_tree(tmp_path / "pulled", 200, 11)
    first_junk: list[str] = []
    first_tree: list[str] = []
    counts = {"uploaded": 0, "pulls": 0, "pushes": 0}

    async def go() -> None:
        async with Client(node.url, TOKEN) as c:
            kept = await c.push_tree(kept_src)
            await c.set_ref("snapshots/kept", kept)
            pulled = await c.push_tree(pulled_src)
            stop = asyncio.Event()
            started = time.monotonic()

            async def upload() -> None:
                while not stop.is_set():
                    d = await c.put_bytes(os.urandom(64 << 10))
                    if not first_junk:
                        first_junk.append(d)
                    counts["uploaded"] += 64 << 10

            async def push(worker: int) -> None:
                i = 0
                while not stop.is_set():
                    src = make_tree(tmp_path / f"churn-{worker}-{i}", 30, 1000 * worker + i)
                    d = await c.push_tree(src)
                    if not first_tree:
                        first_tree.append(d)
                    counts["pushes"] += 1
                    counts["uploaded"] += sum(f.stat().st_size for f in src.rglob("*.bin"))
                    i += 1

            async def pull(digest: str, src: Path, name: str) -> None:
                i = 0
                while not stop.is_set():
                    out = tmp_path / f"out-{name}-{i}"
                    await c.pull_tree(digest, out, tmp_path / f"cache-{name}-{i}")
                    assert await asyncio.to_thread(same_tree, src, out), f"{name} pull {i}"
                    counts["pulls"] += 1
                    i += 1

            async def until_done() -> None:
                """Enough churn for the oldest trees to age out, and GC seen evicting."""
                while not (
                    counts["uploaded"] > 4 * budget
                    and time.monotonic() - started > keep_recent + 3
                    and ((await c.status())["nodes"][0]["last_gc"] or {}).get("evicted")
                ):
                    await asyncio.sleep(0.2)
                stop.set()

            workers = [
                upload(),
                push(1),
                push(2),
                pull(kept, kept_src, "kept"),
                pull(pulled, pulled_src, "pulled"),
            ]
            await asyncio.wait_for(asyncio.gather(until_done(), *workers), 300)
            # Idle now: once the grace periods run out the store goes under budget.
            deadline = time.monotonic() + 120
            while (await c.status())["nodes"][0]["bytes"] > budget:
                assert time.monotonic() < deadline, await c.status()
                await asyncio.sleep(0.2)
            await c.pull_tree(kept, tmp_path / "final-kept", tmp_path / "final-cache-1")
            await c.pull_tree(pulled, tmp_path / "final-pulled", tmp_path / "final-cache-2")
            assert await c.missing([*first_junk, *first_tree]) == [*first_junk, *first_tree]

    asyncio.run(go())
    assert same_tree(kept_src, tmp_path / "final-kept")
    assert same_tree(pulled_src, tmp_path / "final-pulled")
    assert counts["pulls"] >= 4 and counts["pushes"] >= 4, counts
    assert leftovers(node.data) == []
    assert "Traceback" not in node.log.read_text()


# -- tagged images ---------------------------------------------------------------------------


def _oci_layout(root: Path, tag: str, files: dict[str, bytes]) -> str:
    """An OCI image layout with a one-layer image tagged ``tag``; returns the layer digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [dg.of_bytes(raw.getvalue())]},
        }
    ).encode()

    def put(data: bytes) -> dict[str, object]:
        d = dg.of_bytes(data)
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / "sha256" / d.split(":")[1]).write_bytes(data)
        return {"digest": d, "size": len(data)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(layer)}],
        }
    ).encode()
    entry = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dg.of_bytes(layer)


def _skopeo(*args: str) -> None:
    run = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_a_tagged_image_pushed_with_skopeo_survives_gc(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    node = serve(tmp_path / "data")
    registry = node.url.removeprefix("http://")
    push = ("copy", "--dest-tls-verify=false", "--dest-creds", f"farm:{TOKEN}")
    kept_layer = _oci_layout(tmp_path / "kept", "v1", {"app.bin": os.urandom(1 << 20)})
    gone_layer = _oci_layout(tmp_path / "gone", "v1", {"old.bin": os.urandom(1 << 20)})
    _skopeo(*push, f"oci:{tmp_path / 'kept'}:v1", f"docker://{registry}/psyduck/kept:v1")
    _skopeo(*push, f"oci:{tmp_path / 'gone'}:v1", f"docker://{registry}/psyduck/gone:v1")
    with SyncClient(node.url, TOKEN) as c:
        c.set_ref("oci/psyduck/gone:v1", None)  # untagged: nothing names it any more
        age_all(node.data, 2 * DAY)
        assert c.gc()["nodes"][0]["evicted"] >= 3  # the untagged image's manifest, config, layer
        assert c.missing([kept_layer, gone_layer]) == [gone_layer]
    _skopeo(
        *("copy", "--src-tls-verify=false"),
        f"docker://{registry}/psyduck/kept:v1",
        f"oci:{tmp_path / 'pulled'}:v1",
    )
    hexd = kept_layer.split(":")[1]
    pulled = (tmp_path / "pulled" / "blobs" / "sha256" / hexd).read_bytes()
    assert pulled == (tmp_path / "kept" / "blobs" / "sha256" / hexd).read_bytes()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--max-bytes", "lots", "not a size"), ("--keep-recent", "soon", "not a duration")],
)
def test_serve_refuses_bad_budget_options(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pokedex.cli", "serve", "--data", str(tmp_path), option, value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
