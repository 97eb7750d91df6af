"""The node as a real process: kill -9 during 1,000 concurrent uploads, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
from pokedex_testlib import TOKEN, NodeProcess, cli_env

from pokedex import digest as dg


def test_kill_9_during_uploads_loses_nothing_acknowledged(node_process: NodeProcess) -> None:
    blobs = [os.urandom(20_000 + (i * 7919) % 200_000) for i in range(1000)]
    acked: set[str] = set()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def upload(http: aiohttp.ClientSession, data: bytes) -> None:
        d = dg.of_bytes(data)
        try:
            async with http.put(f"{node_process.url}/blobs/{d}", data=data, headers=headers) as r:
                if r.status == 201:
                    acked.add(d)
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass

    async def go() -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        conn = aiohttp.TCPConnector(limit=1000)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as http:
            tasks = [asyncio.create_task(upload(http, b)) for b in blobs]
            deadline = asyncio.get_running_loop().time() + 60
            while len(acked) < 200 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)
            node_process.kill()
            await asyncio.gather(*tasks)

    asyncio.run(go())
    assert 200 <= len(acked) < 1000, len(acked)  # killed mid-way
    node_process.start()
    # On disk: every blob file is complete (its name is its content's digest).
    blob_root = node_process.data / "blobs" / "sha256"
    present = set()
    for f in blob_root.rglob("*"):
        if f.is_file():
            assert not f.name.startswith("."), f"leftover temp file {f}"
            assert dg.of_file(str(f)) == f"sha256:{f.name}", f"partial blob {f}"
            present.add(f"sha256:{f.name}")
    assert acked <= present
    # Over HTTP after restart: the acknowledged ones are served and verify.
    env = cli_env(node_process.url)
    some = sorted(acked)[:5]
    for d in some:
        out = node_process.data.parent / "got"
        subprocess.run(
            [sys.executable, "-m", "pokedex.cli", "get", d, "-o", str(out)],
            env=env,
            check=True,
            timeout=60,
        )
        assert dg.of_file(str(out)) == d


def test_cli_commands(node_process: NodeProcess, tmp_path: Path) -> None:
    env = cli_env(node_process.url)

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "pokedex.cli", *args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()

    f = tmp_path / "file"
    f.write_bytes(b"cli content")
    d = cli("put", str(f))
    assert d == dg.of_bytes(b"cli content")
    cli("get", d, "-o", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == b"cli content"
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a/x.txt").write_text("x")
    t = cli("push-tree", str(tree))
    cli("pull-tree", t, str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    assert (tmp_path / "out/a/x.txt").read_text() == "x"
    status = json.loads(cli("status"))
    assert status["healthy"] and status["nodes"][0]["blobs"] >= 3
    no_token = {k: v for k, v in env.items() if k != "POKEDEX_TOKEN"}
    r = subprocess.run(
        [sys.executable, "-m", "pokedex.cli", "put", str(f), "--url", node_process.url],
        env=no_token,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "401" in r.stderr
