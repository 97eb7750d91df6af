"""Local hosts: worker processes on the coordinator's own machine.

A :class:`Launcher` creates the process and hands back a connected socket; the
default :class:`ExecLauncher` starts ``python -m pytest_psyduck.workermain``
fresh, and the pytest plugin supplies a forking launcher to its embedded farm so
that workers start from an already collected session.  Either way the worker's
exit is observed through a pidfd, its own output is piped back for crash
messages, and it lives in its own process group so a kill takes its children too.
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from farm.hosts.base import (
    ExitInfo,
    Host,
    OutputHandler,
    OutputTail,
    RunContext,
    WorkerConnection,
)
from farm.protocol import FrameDecoder, ProtocolError, frame
from farm.snapshots import SnapshotCache, relocate


@dataclass
class LaunchedProcess:
    pid: int
    channel: socket.socket
    output_fd: int


@dataclass(frozen=True)
class Workdir:
    """Where and how a worker process starts: its directory and ``python -m`` arguments."""

    cwd: str
    argv: tuple[str, ...]


def workdir(run: RunContext, tree: str | None) -> Workdir:
    """The client's own directory, or the same place inside the run's pulled snapshot."""
    worker = run.manifest.worker
    if tree is None:
        return Workdir(worker.cwd, run.worker_argv)
    root = worker.project_root
    return Workdir(
        relocate(worker.cwd, root, tree), tuple(relocate(a, root, tree) for a in run.worker_argv)
    )


class Launcher(Protocol):
    def launch(
        self, run: RunContext, worker_id: str, env: dict[str, str], where: Workdir
    ) -> LaunchedProcess:
        """Start a worker process whose channel is the returned socket."""
        ...


def worker_environment(run: RunContext, worker_id: str) -> dict[str, str]:
    """Variables every worker gets, on every kind of host.

    They follow pytest-xdist's names, so suites that already isolate resources
    per xdist worker (database names, ports, temp dirs) work unchanged.
    """
    return {
        **run.manifest.worker.env,
        "PYTEST_XDIST_WORKER": worker_id,
        "PYTEST_XDIST_WORKER_COUNT": str(run.workers),
        "PSYDUCK_RUN_ID": run.run_id,
    }


class ExecLauncher:
    """Start each worker as a fresh interpreter running the manifest's worker command."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def launch(
        self, run: RunContext, worker_id: str, env: dict[str, str], where: Workdir
    ) -> LaunchedProcess:
        ours, theirs = socket.socketpair()
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                [self.python, "-m", *where.argv],
                cwd=where.cwd,
                env={**os.environ, **env, "PSYDUCK_WORKER_FD": str(theirs.fileno())},
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            os.close(read_fd)
            raise
        finally:
            theirs.close()
            os.close(write_fd)
        # The worker is reaped through its pidfd; tell Popen not to wait for it.
        process.returncode = 0
        return LaunchedProcess(process.pid, ours, read_fd)


class _OutputProtocol(asyncio.Protocol):
    def __init__(self, tail: OutputTail, on_output: OutputHandler) -> None:
        self.tail = tail
        self.on_output = on_output
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.tail.add(data)
        self.on_output(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class LocalWorker(WorkerConnection):
    """A worker process on this machine."""

    def __init__(self, process: LaunchedProcess) -> None:
        self.pid = process.pid
        self._process = process
        self._decoder = FrameDecoder()
        self._inbox: list[dict[str, Any]] = []
        self._tail = OutputTail()
        self._exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(process.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._reap)
        self._output: _OutputProtocol | None = None

    async def start(self, on_output: OutputHandler) -> None:
        loop = asyncio.get_running_loop()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=self._process.channel)
        _, self._output = await loop.connect_read_pipe(
            lambda: _OutputProtocol(self._tail, on_output),
            os.fdopen(self._process.output_fd, "rb", 0),
        )

    def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        _, status = os.waitpid(self.pid, 0)
        if not self._exit.done():
            self._exit.set_result(
                ExitInfo(status=os.waitstatus_to_exitcode(status))
                if os.WIFEXITED(status)
                else ExitInfo(signal=os.WTERMSIG(status))
            )

    async def send(self, message: dict[str, Any]) -> None:
        self._writer.write(frame(message))
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass  # the worker is gone; recv() reports it

    async def recv(self) -> dict[str, Any] | None:
        while not self._inbox:
            try:
                chunk = await self._reader.read(1 << 16)
            except (ConnectionError, OSError):
                chunk = b""
            if not chunk:
                return None
            try:
                self._inbox.extend(self._decoder.feed(chunk))
            except ProtocolError as exc:
                self._tail.add(f"\n[psyduck] bad message from worker: {exc}\n".encode())
                await self.kill()
                return None
        return self._inbox.pop(0)

    async def kill(self) -> None:
        if self._exit.done():
            return
        for kill in (os.killpg, os.kill):
            try:
                kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def wait(self) -> ExitInfo:
        info = await self._exit
        self._writer.close()
        if self._output is not None:
            await self._output.closed
        return info

    def output(self) -> str:
        return self._tail.text()


def user_cache_dir() -> Path:
    """psyduck's cache directory: ``$XDG_CACHE_HOME/psyduck`` (or ``~/.cache/psyduck``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "psyduck"


def default_cache_dir(host: str) -> Path:
    """Per-host cache of snapshots."""
    return user_cache_dir() / "hosts" / host


def local_labels() -> dict[str, str]:
    """The labels of a local host: what this machine is, for transformations' ``requires``."""
    return {"kind": "local", "arch": platform.machine(), "cpu": cpu_flags()}


def cpu_flags() -> str:
    """The CPU feature flags of this machine as a comma-separated label value."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return ",".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ""


class LocalHost(Host):
    """``local:N`` — N worker processes on this machine."""

    def __init__(
        self,
        slots: int,
        launcher: Launcher | None = None,
        name: str = "local",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.slots = slots
        self.launcher = launcher or ExecLauncher()
        self.labels = local_labels()
        self.snapshots = SnapshotCache(cache_dir or default_cache_dir(name), name)

    async def spawn(
        self, run: RunContext, slot: int, worker_id: str, on_output: OutputHandler
    ) -> WorkerConnection:
        where = workdir(run, await self.snapshots.tree(run))
        process = self.launcher.launch(run, worker_id, worker_environment(run, worker_id), where)
        worker = LocalWorker(process)
        await worker.start(on_output)
        return worker
