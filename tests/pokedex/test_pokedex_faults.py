"""Faults and hostile input on real nodes: nodes down, a full disk, bytes meant to crash.

Each fault must end in a clear answer (a 4xx or 507 with a message, a CLI line and exit
status), never a 500 or a traceback, and must leave nothing partial behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pokedex_testlib import TOKEN, NodeProcess, ThreadedNode, cli_env, free_port, nodes

from pokedex import Client, tree
from pokedex import digest as dg
from pokedex.cli import EXIT_UNDER_REPLICATED
from pokedex.registry import parse_manifest
from pokedex.replies import ApiError, decode_body

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
DEEP_MSGPACK = b"\x91" * 100_000 + b"\xc0"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pokedex.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- hostile input ---------------------------------------------------------------------------


async def _raw_status(port: int, request: bytes) -> tuple[int, bytes]:
    """Send raw request bytes (no client library cleans them up); the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(30):
            answer = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "header", [b"Bearer \xff\xfe\xfd", b"Basic \xc3\x28", b"\xff \xff", b"Bearer s3cret-token\xff"]
)
def test_non_utf8_authorization_is_401(threaded_node: ThreadedNode, header: bytes) -> None:
    d = dg.of_bytes(b"x")
    for path in (f"/blobs/{d}".encode(), b"/v2/"):
        request = (
            b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: 1\r\nAuthorization: " + header + b"\r\n\r\nx"
        )
        status, body = asyncio.run(_raw_status(threaded_node.port, request))
        assert status == 401, body
        assert b"missing or wrong token" in body


def test_deeply_nested_bodies_are_400(threaded_node: ThreadedNode) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            base = threaded_node.url
            deep = ((DEEP_JSON, "application/json"), (DEEP_MSGPACK, "application/msgpack"))
            for body, ctype in deep:
                async with http.post(
                    f"{base}/missing", data=body, headers={"Content-Type": ctype}
                ) as r:
                    assert r.status == 400
                    assert "nested too deeply" in (await r.json())["message"]
            async with http.put(
                f"{base}/v2/deep/repo/manifests/v1",
                data=DEEP_JSON,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            ) as r:
                assert r.status == 400
                error = (await r.json())["errors"][0]
                assert error["code"] == "MANIFEST_INVALID"
                assert "nested too deeply" in error["message"]

    asyncio.run(go())


def test_pull_tree_of_a_deeply_nested_manifest_is_one_clear_line(
    node_process: NodeProcess, tmp_path: Path
) -> None:
    deep = tmp_path / "deep"
    deep.write_bytes(DEEP_JSON)
    env = cli_env(node_process.url)
    put = _cli(env, "put", str(deep))
    assert put.returncode == 0, put.stderr
    out, cache = str(tmp_path / "out"), str(tmp_path / "cache")
    pull = _cli(env, "pull-tree", put.stdout.strip(), out, "--cache", cache)
    assert pull.returncode == 1
    assert pull.stderr == "pokedex: manifest is nested too deeply\n"
    assert not (tmp_path / "out").exists()


_HOSTILE = st.one_of(
    st.binary(max_size=2000),
    st.integers(1, 50_000).map(lambda n: b"[" * n),
    st.integers(1, 50_000).map(lambda n: b'{"a":' * n),
    st.integers(1, 50_000).map(lambda n: b"\x91" * n + b"\xc0"),
    st.integers(1, 50_000).map(lambda n: b"\x81\xa1a" * n + b"\xc0"),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=30,
    ).flatmap(lambda v: st.sampled_from([json.dumps(v).encode(), msgpack.packb(v)])),
)


@settings(deadline=None)
@given(body=_HOSTILE, msgpack_body=st.booleans())
def test_decoders_raise_only_their_own_errors(body: bytes, msgpack_body: bool) -> None:
    """Whatever the bytes, the decoders return or raise their own error type, nothing else."""
    ctype = "application/msgpack" if msgpack_body else "application/json"
    try:
        decode_body(ctype, body)
    except ApiError as e:
        assert e.status == 400
    try:
        tree.decode(body)
    except tree.TreeError:
        pass
    try:
        parse_manifest(body, None)
    except ApiError as e:
        assert e.status == 400


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can create setuid files for others")
def test_pull_tree_as_root_drops_setuid_setgid_and_sticky_bits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    modes = {"suid": 0o4755, "sgid": 0o2750, "sticky": 0o1777, "all": 0o7777, "plain": 0o640}
    for name, mode in modes.items():
        (src / name).write_text(name)
        os.chmod(src / name, mode)

    async def go() -> None:
        async with nodes(tmp_path / "n") as [n], Client(n.url) as c:
            d = await c.push_tree(src)
            manifest = tree.decode(await c.get_bytes(d))
            assert {e.path: e.mode for e in manifest} == modes  # kept in the manifest
            for link in (False, True):
                out = tmp_path / f"out-{link}"
                await c.pull_tree(d, out, tmp_path / "cache", link=link)
                got = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
                assert got == {name: mode & 0o777 for name, mode in modes.items()}

    asyncio.run(go())


# -- under-replicated uploads ----------------------------------------------------------------


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """Three node processes wanting three copies of every blob."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ports = [free_port() for _ in range(3)]
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    procs = []
    for i, port in enumerate(ports):
        data = tmp_path / f"n{i}" / "data"
        data.mkdir(parents=True)
        procs.append(NodeProcess(data, port, token_file, ("--peers", peers, "--replicas", "3")))
    for p in procs:
        p.start()
    yield procs
    for p in procs:
        p.stop()


def _holders(procs: list[NodeProcess], d: str) -> int:
    return sum((p.data / "blobs/sha256" / d[7:9] / d[7:]).is_file() for p in procs)


def test_under_replicated_upload_warns_and_repair_catches_up(
    three_nodes: list[NodeProcess], tmp_path: Path
) -> None:
    _, b, c = three_nodes
    env = cli_env(",".join(p.url for p in three_nodes))
    b.kill()
    c.kill()
    f = tmp_path / "file"
    f.write_bytes(os.urandom(300_000))
    d = dg.of_file(str(f))
    refused = _cli(env, "put", str(f), "--min-copies", "2")
    assert refused.returncode == 1
    assert "only 1 of 3 copies" in refused.stderr and "fewer than the 2 required" in refused.stderr
    put = _cli(env, "put", str(f))
    assert put.returncode == EXIT_UNDER_REPLICATED, put.stderr
    assert put.stdout.strip() == d
    assert f"{d} was stored with only 1 of 3 copies" in put.stderr
    tree_dir = tmp_path / "tree"
    (tree_dir / "sub").mkdir(parents=True)
    (tree_dir / "sub/x.txt").write_text("x")
    (tree_dir / "y.txt").write_text("y")
    pushed = _cli(env, "push-tree", str(tree_dir))
    assert pushed.returncode == EXIT_UNDER_REPLICATED, pushed.stderr
    assert "3 blobs were stored with fewer copies than wanted (fewest: 1 of 3)" in pushed.stderr
    assert _holders(three_nodes, d) == 1
    b.start()
    c.start()
    repair = _cli(env, "repair")
    assert repair.returncode == 0, repair.stderr
    assert _holders(three_nodes, d) == 3
    tree_digest = pushed.stdout.strip()
    assert _holders(three_nodes, tree_digest) == 3
    again = _cli(env, "put", str(f), "--min-copies", "3")
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""


# -- a full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(path: Path, spare: int = 0) -> None:
    """Write to ``path`` until the filesystem refuses a single byte more, then give back
    ``spare`` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for piece in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * piece)
                except OSError:
                    break
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - spare))
    finally:
        os.close(fd)


def _partials(data: Path) -> list[Path]:
    return [p for p in data.rglob(".tmp-*")]


def test_full_disk_answers_507_leaves_nothing_partial_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    data = small_disk / "data"
    data.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    node = NodeProcess(data, free_port(), token_file)
    node.start()
    try:
        _full_disk_checks(node, small_disk / "filler", tmp_path)
    finally:
        node.stop()


def _full_disk_checks(node: NodeProcess, filler: Path, tmp_path: Path) -> None:
    blob = os.urandom(1 << 20)
    d = dg.of_bytes(blob)
    index = "application/vnd.oci.image.index.v1+json"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": index, "manifests": []}).encode()
    repo = f"{node.url}/v2/full/repo"

    async def nearly_full(http: aiohttp.ClientSession) -> str:
        """Uploads that start to be written, then hit the end of the disk."""
        async with http.put(f"{node.url}/blobs/{d}", data=blob) as r:
            assert r.status == 507
            body = await r.json()
            assert body["error"] == "INSUFFICIENT_STORAGE"
            assert "out of storage space" in body["message"]
        async with http.post(f"{repo}/blobs/uploads/") as r:
            assert r.status == 202
            session = r.headers["Location"]
        async with http.patch(f"{node.url}{session}", data=blob) as r:
            assert r.status == 507
            assert (await r.json())["errors"][0]["code"] == "INSUFFICIENT_STORAGE"
        async with http.put(f"{node.url}{session}?digest={d}", data=blob) as r:
            assert r.status == 507
        async with http.get(f"{node.url}{session}") as r:
            assert r.status == 204 and r.headers["Range"] == "0-0"  # nothing half-written
        assert os.path.getsize(node.data / "uploads" / session.rsplit("/", 1)[1]) == 0
        return session

    async def full(http: aiohttp.ClientSession) -> None:
        """Small writes that find no space at all."""
        async with http.put(
            f"{repo}/manifests/v1", data=manifest, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 507
        async with http.put(f"{node.url}/refs/full/ref", json={"digest": d}) as r:
            assert r.status == 507
            assert (await r.json())["error"] == "INSUFFICIENT_STORAGE"

    async def after(http: aiohttp.ClientSession, session: str) -> None:
        async with http.patch(f"{node.url}{session}", data=blob) as r:
            assert r.status == 202
        async with http.put(f"{node.url}{session}?digest={d}") as r:
            assert r.status == 201
        async with http.put(
            f"{repo}/manifests/v1", data=manifest, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 201
        async with http.put(f"{node.url}/refs/full/ref", json={"digest": d}) as r:
            assert r.status == 200

    async def go(step: object, *args: object) -> object:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(headers=AUTH, timeout=timeout) as http:
            return await step(http, *args)  # type: ignore[operator]

    _fill(filler, spare=256 << 10)
    session = asyncio.run(go(nearly_full))
    assert _partials(node.data) == []
    _fill(filler)
    asyncio.run(go(full))
    assert _partials(node.data) == []
    assert not (node.data / "blobs/sha256" / d[7:9] / d[7:]).exists()
    f = tmp_path / "file"
    f.write_bytes(blob)
    env = cli_env(node.url)
    put = _cli(env, "put", str(f))
    assert put.returncode == 1
    assert "HTTP 507 INSUFFICIENT_STORAGE: this node is out of storage space" in put.stderr
    assert len(put.stderr.splitlines()) == 1
    assert _partials(node.data) == []
    filler.unlink()
    asyncio.run(go(after, session))
    assert dg.of_file(str(node.data / "blobs/sha256" / d[7:9] / d[7:])) == d
    put = _cli(env, "put", str(f))
    assert put.returncode == 0 and put.stdout.strip() == d
