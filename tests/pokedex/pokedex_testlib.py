"""Helpers shared by the pokedex tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pokedex import RunningNode, start_node

TOKEN = "s3cret-token"


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy (returned) or the deadline passes (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def nodes(
    root: Path, count: int = 1, replicas: int = 2, **kw: Any
) -> AsyncIterator[list[RunningNode]]:
    """``count`` nodes wired into one cluster, data under ``root/n<i>``; closed on exit."""
    started = [
        await start_node(root / f"n{i}", replicas=replicas, repair_interval=None, **kw)
        for i in range(count)
    ]
    for n in started:
        n.set_peers([m.url for m in started])
    try:
        yield started
    finally:
        for n in started:
            await n.close()


class ThreadedNode:
    """A node served by an event loop in a background thread."""

    def __init__(self, data: Path, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node: RunningNode = self.call(start_node(data, repair_interval=None, **kw))
        self.url = self.node.url
        self.port = int(self.url.rsplit(":", 1)[1])

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.call(self.node.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class NodeProcess:
    """``python -m pokedex.cli serve`` as a real subprocess."""

    def __init__(
        self, data: Path, port: int, token_file: Path | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.data, self.port, self.token_file, self.args = data, port, token_file, args
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "pokedex.cli",
            "serve",
            "--data",
            str(self.data),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--repair-interval",
            "0",
        ]
        if self.token_file:
            cmd += ["--token-file", str(self.token_file)]
        cmd += self.args
        log = open(self.data.parent / f"node-{self.port}.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._accepting, 30, "node process to listen")

    def _accepting(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def cli_env(url: str) -> dict[str, str]:
    return {**os.environ, "POKEDEX_URL": url, "POKEDEX_TOKEN": TOKEN}


def docker_ready() -> str | None:
    """None if docker and skopeo can be used, else the reason to skip."""
    if shutil.which("docker") is None:
        return "docker CLI not installed"
    if shutil.which("skopeo") is None:
        return "skopeo not installed"
    try:
        ok = subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return None if ok else "docker info failed (no Docker engine)"
