"""Whole-body reads of every size on every path, against real nodes.

Each read path (the client's ``get_bytes``, a node proxying a blob it lacks, ``small_blob``,
the registry's manifest PUT and GET, a tree manifest's pull) is driven with bodies of
0 B, 1 B, 64 KiB - 1, 64 KiB + 1, 1 MiB and 32 MiB + 1; where the path's limit is lower,
the over-limit body must be a clear error. Bodies over a few tens of KB used to come back
short (one ``StreamReader.read(n)``) and then read as corrupt or invalid.
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
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pokedex_testlib import TOKEN, NodeProcess, ThreadedNode, cli_env

from pokedex import Client, tree
from pokedex import digest as dg
from pokedex.bodies import BodyTooLarge, read_body
from pokedex.client import PokedexError
from pokedex.registry import MAX_MANIFEST

SIZES = [0, 1, (64 << 10) - 1, (64 << 10) + 1, 1 << 20, (32 << 20) + 1]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


@settings(deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=3000), max_size=20),
    limit=st.integers(0, 30_000),
    declared=st.booleans(),
)
def test_read_body_returns_the_whole_body_or_refuses_it(
    chunks: list[bytes], limit: int, declared: bool
) -> None:
    """However the body arrives in pieces: all of it if it fits the limit, else BodyTooLarge."""
    whole = b"".join(chunks)

    async def go() -> bytes:
        protocol = mock.Mock(_reading_paused=False)
        reader = aiohttp.StreamReader(protocol, 1 << 16, loop=asyncio.get_running_loop())
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        return await read_body(reader, limit, len(whole) if declared else None)

    if len(whole) > limit:
        with pytest.raises(BodyTooLarge, match=f"limit of {limit} bytes"):
            asyncio.run(go())
    else:
        assert asyncio.run(go()) == whole


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedNode, ThreadedNode]]:
    """Two wired nodes with one replica each: what one holds, the other must proxy."""
    root = tmp_path_factory.mktemp("pair")
    a = ThreadedNode(root / "a", token=TOKEN, replicas=1)
    b = ThreadedNode(root / "b", token=TOKEN, replicas=1)
    for n in (a, b):
        n.node.set_peers([a.url, b.url])
    yield a, b
    a.close()
    b.close()


def _hold(n: ThreadedNode, data: bytes) -> str:
    """Store ``data`` on node ``n`` only (not replicated); returns its digest."""
    return n.node.node.store.put_bytes(data)


@pytest.mark.parametrize("size", SIZES)
def test_get_bytes_reads_the_whole_blob_from_holder_and_via_proxy(
    pair: tuple[ThreadedNode, ThreadedNode], size: int
) -> None:
    a, b = pair
    data = os.urandom(size)
    d = _hold(a, data)
    assert not b.node.node.store.has(d)

    async def go() -> None:
        for url in (a.url, b.url):  # b lacks it: it streams it through from a
            async with Client(url, TOKEN) as c:
                assert await c.get_bytes(d) == data
                if size:
                    with pytest.raises(PokedexError, match=f"larger than {size - 1} bytes"):
                        await c.get_bytes(d, limit=size - 1)
        assert not b.node.node.store.has(d)

    asyncio.run(go())


@pytest.mark.parametrize("size", SIZES)
def test_small_blob_reads_the_whole_blob_here_and_from_a_replica(
    pair: tuple[ThreadedNode, ThreadedNode], size: int
) -> None:
    a, b = pair
    data = os.urandom(size)
    d = _hold(a, data)
    for n in (a, b):
        if size > MAX_MANIFEST:
            with pytest.raises(BodyTooLarge, match=f"limit of {MAX_MANIFEST} bytes"):
                n.call(n.node.node.small_blob(d, MAX_MANIFEST))
        else:
            assert n.call(n.node.node.small_blob(d, MAX_MANIFEST)) == data


def _manifest_of_size(size: int, config: str, layer: str) -> bytes:
    """A valid Docker schema 2 manifest of exactly ``size`` bytes (padded in an annotation)."""

    def build(pad: int) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_V2,
            "config": {"mediaType": "application/json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 5}],
            "annotations": {"pad": "p" * pad},
        }
        return json.dumps(doc).encode()

    body = build(size - len(build(0)))
    assert len(body) == size
    return body


@pytest.mark.parametrize("size", SIZES)
def test_registry_manifest_put_and_get(pair: tuple[ThreadedNode, ThreadedNode], size: int) -> None:
    a, b = pair
    config, layer = _hold(a, b"{}"), _hold(a, b"layer")
    body = _manifest_of_size(size, config, layer) if size > 1000 else b"{"[:size]

    async def go() -> None:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            url = f"{a.url}/v2/big/app/manifests/s{size}"
            headers = {"Content-Type": DOCKER_V2}
            async with http.put(url, data=body, headers=headers) as r:
                reply = await r.json(content_type=None)
                if size <= 1:
                    assert r.status == 400, reply
                    assert reply["errors"][0]["code"] == "MANIFEST_INVALID"
                    return
                if size > MAX_MANIFEST:
                    assert r.status == 413, reply
                    assert f"exceeds the limit of {MAX_MANIFEST}" in reply["errors"][0]["message"]
                    return
                assert r.status == 201, reply
                d = r.headers["Docker-Content-Digest"]
            assert d == dg.of_bytes(body)
            b.node.node.store.path(d).unlink(missing_ok=True)  # b must read it whole from a
            for n in (a, b):
                async with http.get(f"{n.url}/v2/big/app/manifests/s{size}") as r:
                    assert r.status == 200
                    assert await r.read() == body
                async with http.get(f"{n.url}/v2/big/app/manifests/{d}") as r:
                    assert r.status == 200
                    assert await r.read() == body

    asyncio.run(go())


def test_registry_get_of_a_blob_over_the_manifest_limit_is_a_clear_404(
    pair: tuple[ThreadedNode, ThreadedNode],
) -> None:
    a, b = pair
    d = _hold(a, os.urandom(MAX_MANIFEST + 1))

    async def go() -> None:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            for n in (a, b):
                async with http.get(f"{n.url}/v2/any/repo/manifests/{d}") as r:
                    assert r.status == 404
                    error = (await r.json())["errors"][0]
                    assert error["code"] == "MANIFEST_UNKNOWN"
                    assert "not a manifest" in error["message"]
                    assert f"limit of {MAX_MANIFEST}" in error["message"]

    asyncio.run(go())


def _tree_of_size(size: int) -> list[tree.Entry]:
    """Symlink entries whose canonical manifest is exactly ``size`` bytes."""

    def link(i: int, length: int) -> tree.Entry:
        return tree.Entry(path=f"l{i:06d}", target="t" * length)

    one = len(tree.encode([link(0, 1500)]))
    per_entry = len(tree.encode([link(0, 1500), link(1, 1500)])) - one
    entries = [link(i, 1500) for i in range(max(1, (size - one) // per_entry + 1))]
    length = 1500 + size - len(tree.encode(entries))
    entries[-1] = link(len(entries) - 1, length)
    assert 0 < length <= tree.MAX_TARGET, length
    assert len(tree.encode(entries)) == size
    return entries


@pytest.mark.parametrize("size", SIZES)
def test_pull_tree_reads_the_whole_manifest(
    pair: tuple[ThreadedNode, ThreadedNode], size: int, tmp_path: Path
) -> None:
    a, b = pair
    if size <= 1:  # too small to be a manifest: a clear error, nothing materialized
        d = _hold(a, b"{"[:size])
        with pytest.raises(tree.TreeError, match="manifest is not JSON"):
            asyncio.run(_pull(b.url, d, tmp_path))
        assert not (tmp_path / "out").exists()
        return
    entries = _tree_of_size(size)
    d = _hold(a, tree.encode(entries))
    asyncio.run(_pull(b.url, d, tmp_path))  # through b, which lacks the manifest
    out = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in out] == [e.path for e in entries]
    assert [os.readlink(p) for p in out] == [e.target for e in entries]


async def _pull(url: str, d: str, tmp_path: Path) -> None:
    async with Client(url, TOKEN) as c:
        await c.pull_tree(d, tmp_path / "out", tmp_path / "cache")


@pytest.mark.slow
def test_cli_push_and_pull_a_tree_of_3000_files(node_process: NodeProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = random.Random(3000)
    expected = {}
    for i in range(3000):
        rel = f"pkg{i % 37:02d}/sub{i % 11}/module_with_a_long_name_{i:05d}.py"
        data = rng.randbytes(rng.choice((0, 1, 100, 4000, 70_000)))
        expected[rel] = data
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    env = cli_env(node_process.url)

    def cli(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "pokedex.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    digest = cli("push-tree", str(src))
    manifest = node_process.data / "blobs/sha256" / digest[7:9] / digest[7:]
    assert manifest.stat().st_size > 300_000
    cli("pull-tree", digest, str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    got = {
        str(p.relative_to(tmp_path / "out")): p.read_bytes()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    }
    assert got == expected


def _oci_dir(root: Path, layers: int, pad: int) -> bytes:
    """An image in skopeo's ``dir:`` layout with ``layers`` tiny layers, its manifest and its
    config each padded by ``pad`` bytes (in an annotation, a label); returns the manifest."""
    root.mkdir()
    (root / "version").write_text("Directory Transport Version: 1.1\n")

    def blob(data: bytes) -> str:
        d = dg.of_bytes(data)
        (root / d[7:]).write_bytes(data)
        return d

    layer_descs, diff_ids = [], []
    for i in range(layers):
        tar = _tar_of(f"f{i}", f"layer {i}\n".encode())
        diff_ids.append(dg.of_bytes(tar))
        data = gzip.compress(tar, mtime=0)
        layer_descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": blob(data),
                "size": len(data),
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"pad": "p" * pad}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(config),
                "size": len(config),
            },
            "layers": layer_descs,
            "annotations": {"pad": "p" * pad},
        }
    ).encode()
    (root / "manifest.json").write_bytes(manifest)
    return manifest


def _tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_copies_an_image_with_a_large_manifest_and_config(tmp_path: Path) -> None:
    a = ThreadedNode(tmp_path / "a", replicas=1)
    b = ThreadedNode(tmp_path / "b", replicas=1)
    try:
        for n in (a, b):
            n.node.set_peers([a.url, b.url])
        manifest = _oci_dir(tmp_path / "img", layers=40, pad=2 << 20)
        flags = ("--src-tls-verify=false", "--dest-tls-verify=false")
        src = f"docker://127.0.0.1:{a.port}/big/image:v1"
        subprocess.run(
            ["skopeo", "copy", *flags, f"dir:{tmp_path / 'img'}", src],
            check=True,
            capture_output=True,
            timeout=600,
        )
        out = tmp_path / "out"
        back = f"docker://127.0.0.1:{b.port}/big/image:v1"  # b lacks most of it: proxied
        subprocess.run(
            ["skopeo", "copy", *flags, back, f"dir:{out}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        # skopeo re-serializes the manifest on push (compact JSON): same document, and what
        # came back is byte for byte what the registry stored and names.
        stored = asyncio.run(_get(f"{b.url}/v2/big/image/manifests/v1"))
        assert (out / "manifest.json").read_bytes() == stored
        assert len(stored) > 2 << 20
        assert json.loads(stored) == json.loads(manifest)
        for f in (tmp_path / "img").iterdir():
            if f.name != "manifest.json":
                assert (out / f.name).read_bytes() == f.read_bytes()
    finally:
        a.close()
        b.close()


async def _get(url: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200
        return await r.read()
