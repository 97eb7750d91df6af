"""Local hosts: worker processes on the coordinator's own machine.

A :class:`Launcher` creates the process and hands back a connected socket.  A
served farm uses :class:`ExecLauncher`, which starts ``python -m
pytest_psyduck.workermain`` fresh.  The embedded farm runs beside the user's
pytest, which alone can fork workers from its collected session; there a
:class:`RemoteLauncher` asks that process for each worker over a launch socket
and hears from it how each one ended, since it is their parent.  Either way the
worker's own output is piped back for crash messages, and it lives in its own
process group so a kill takes its children too.

The launch socket is a ``SOCK_SEQPACKET`` pair carrying farm-protocol maps;
file descriptors ride along as ``SCM_RIGHTS``:

* farm → launcher: ``launch`` {id, worker_id, run_id, workers, env, cwd, argv,
  fresh} — ``fresh`` when the run's profile adds pytest arguments, which only a
  new interpreter honours;
* launcher → farm: ``launched`` {id, pid} with the channel and output fds;
  ``failed`` {id, message}; ``exited`` {pid, status, signal}.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
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
    HostError,
    OutputHandler,
    OutputTail,
    RunContext,
    RunError,
    WorkerConnection,
)
from farm.protocol import FrameDecoder, ProtocolError, decode, encode, frame
from farm.snapshots import SnapshotCache, relocate
from farm.tokens import without_credentials

log = logging.getLogger(__name__)

#: Largest message on a launch socket (a worker's environment is the bulk).
MAX_LAUNCH_MESSAGE = 1024 * 1024
#: Seconds the launching process may take to start one worker.
LAUNCH_TIMEOUT = 60.0
#: Seconds a worker's channel rests after each read.  A fast worker sends a
#: result every fraction of a millisecond; waking the farm for each one costs
#: two context switches and an event-loop turn on cores the workers need.  The
#: results wait in the socket meanwhile, so a crash still finds them there.
READ_REST = 0.002


@dataclass
class LaunchedProcess:
    pid: int
    channel: socket.socket
    output_fd: int
    #: How the worker ended, when another process is its parent and reaps it;
    #: None when it is this process's own child.
    exited: asyncio.Future[ExitInfo] | None = None


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
    async def launch(
        self, run: RunContext, worker_id: str, env: dict[str, str], where: Workdir
    ) -> LaunchedProcess:
        """Start a worker process whose channel is the returned socket."""
        ...


def worker_environment(run: RunContext, worker_id: str) -> dict[str, str]:
    """Variables every worker gets, on every kind of host.

    They follow pytest-xdist's names, so suites that already isolate resources
    per xdist worker (database names, ports, temp dirs) work unchanged.  The
    farm's credential variables are dropped even when the manifest asks for them.
    """
    return {
        **without_credentials(run.manifest.worker.env),
        "PYTEST_XDIST_WORKER": worker_id,
        "PYTEST_XDIST_WORKER_COUNT": str(run.workers),
        "PSYDUCK_RUN_ID": run.run_id,
    }


def exec_worker(python: str, where: Workdir, env: dict[str, str]) -> LaunchedProcess:
    """Start ``python -m <where.argv>`` as a worker; the caller reaps it (through a pidfd).

    It inherits this process's environment less the farm's credential variables.
    """
    ours, theirs = socket.socketpair()
    read_fd, write_fd = os.pipe()
    try:
        process = subprocess.Popen(
            [python, "-m", *where.argv],
            cwd=where.cwd,
            env={
                **without_credentials(os.environ),
                **env,
                "PSYDUCK_WORKER_FD": str(theirs.fileno()),
            },
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


def exit_info(status: int) -> ExitInfo:
    """How a process ended, from its ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        return ExitInfo(signal=os.WTERMSIG(status))
    return ExitInfo(status=os.waitstatus_to_exitcode(status))


class ExecLauncher:
    """Start each worker as a fresh interpreter running the manifest's worker command."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    async def launch(
        self, run: RunContext, worker_id: str, env: dict[str, str], where: Workdir
    ) -> LaunchedProcess:
        """The worker process; RunError when the run's directory is not here, HostError
        when this machine cannot start a process (no interpreter, out of resources)."""
        try:
            return exec_worker(self.python, where, env)
        except OSError as exc:
            if not os.path.isdir(where.cwd):
                raise RunError(
                    f"the run's working directory {where.cwd} does not exist on this host "
                    "(a snapshot holds no empty directory)"
                ) from exc
            raise HostError(f"cannot start a worker with {self.python}: {exc}") from exc


class RemoteLauncher:
    """Has the process at the other end of a launch socket start workers (see the module doc)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[LaunchedProcess]] = {}
        self._exits: dict[int, asyncio.Future[ExitInfo]] = {}
        self._listening = False
        self._gone = False

    async def launch(
        self, run: RunContext, worker_id: str, env: dict[str, str], where: Workdir
    ) -> LaunchedProcess:
        if self._gone:
            raise HostError("the pytest session that launches local workers is gone")
        loop = asyncio.get_running_loop()
        if not self._listening:
            loop.add_reader(self._sock, self._receive)
            self._listening = True
        request = next(self._ids)
        future: asyncio.Future[LaunchedProcess] = loop.create_future()
        self._pending[request] = future
        message = {
            "t": "launch",
            "id": request,
            "worker_id": worker_id,
            "run_id": run.run_id,
            "workers": run.workers,
            "env": env,
            "cwd": where.cwd,
            "argv": list(where.argv),
            "fresh": bool(run.manifest.profiles.get(run.profile)),
        }
        try:
            self._sock.send(encode(message))
            async with asyncio.timeout(LAUNCH_TIMEOUT):
                return await future
        except OSError as exc:
            raise HostError(f"cannot ask for a worker: {exc}") from exc
        except TimeoutError as exc:
            raise HostError(f"no worker started within {LAUNCH_TIMEOUT:g}s") from exc
        finally:
            self._pending.pop(request, None)

    def _receive(self) -> None:
        """One message per call: the event loop calls again while more are queued."""
        try:
            data, fds, _, _ = socket.recv_fds(self._sock, MAX_LAUNCH_MESSAGE, 2)
        except OSError:
            data, fds = b"", []
        if not data:
            self._lose()
            return
        try:
            message = decode(data, max_bytes=MAX_LAUNCH_MESSAGE)
            kind = message["t"]
            if kind == "launched" and len(fds) == 2:
                self._launched(message["id"], message["pid"], fds)
                fds = []
            elif kind == "failed":
                future = self._pending.get(message["id"])
                if future is not None and not future.done():
                    future.set_exception(HostError(str(message["message"])))
            elif kind == "exited":
                exited = self._exits.pop(message["pid"], None)
                if exited is not None and not exited.done():
                    exited.set_result(ExitInfo(status=message["status"], signal=message["signal"]))
        except (ProtocolError, KeyError, TypeError) as exc:
            log.warning("bad message on the launch socket: %r", exc)
        finally:
            for fd in fds:
                os.close(fd)

    def _launched(self, request: int, pid: int, fds: list[int]) -> None:
        channel = socket.socket(fileno=fds[0])
        exited = asyncio.get_running_loop().create_future()
        self._exits[pid] = exited
        process = LaunchedProcess(pid, channel, fds[1], exited=exited)
        future = self._pending.get(request)
        if future is None or future.done():  # given up on: the worker is not wanted
            channel.close()
            os.close(fds[1])
            kill_group(pid)
            return
        future.set_result(process)

    def _lose(self) -> None:
        asyncio.get_running_loop().remove_reader(self._sock)
        self._gone = True
        self._sock.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HostError("the pytest session that launches workers left"))
        for exited in self._exits.values():
            if not exited.done():
                exited.set_result(ExitInfo(host_lost=True, detail="the pytest session left"))
        self._exits.clear()


def kill_group(pid: int) -> None:
    """SIGKILL a worker and its process group, whichever of them is still there."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
        if process.exited is not None:
            self._exit = process.exited
        else:
            self._exit = asyncio.get_running_loop().create_future()
            self._pidfd = os.pidfd_open(process.pid)
            asyncio.get_running_loop().add_reader(self._pidfd, self._reap)
        self._output: _OutputProtocol | None = None
        self._output_pipe: io.RawIOBase | None = None

    async def start(self, on_output: OutputHandler) -> None:
        loop = asyncio.get_running_loop()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=self._process.channel)
        self._output_pipe = os.fdopen(self._process.output_fd, "rb", 0)
        _, self._output = await loop.connect_read_pipe(
            lambda: _OutputProtocol(self._tail, on_output), self._output_pipe
        )

    def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        _, status = os.waitpid(self.pid, 0)
        if not self._exit.done():
            self._exit.set_result(exit_info(status))

    async def send(self, message: dict[str, Any]) -> None:
        self._writer.write(frame(message))
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass  # the worker is gone; recv() reports it

    async def recv(self) -> dict[str, Any] | None:
        while not self._inbox:
            chunk = b""
            if not self._decoder.failed:  # else the feed below raises what it saw
                try:
                    chunk = await self._reader.read(1 << 16)
                except (ConnectionError, OSError):
                    chunk = b""
                if not chunk:
                    return None
                transport = self._writer.transport
                transport.pause_reading()
                asyncio.get_running_loop().call_later(READ_REST, transport.resume_reading)
            try:
                self._inbox.extend(self._decoder.feed(chunk))
            except ProtocolError as exc:
                self._tail.add(f"\n[psyduck] bad message from worker: {exc}\n".encode())
                await self.kill()
                return None
            self._take_output()
        return self._inbox.pop(0)

    def _take_output(self) -> None:
        """Deliver what the worker printed before the messages just read, ahead of them.

        Output and messages come on two pipes; the event loop may serve the
        message first, and output arriving after a run's last result is lost.
        """
        pipe = self._output_pipe
        if pipe is None or self._output is None:
            return
        try:
            while data := os.read(pipe.fileno(), 1 << 16):
                self._output.data_received(data)
        except (OSError, ValueError):
            pass  # nothing more now (EAGAIN), or the pipe is already closed

    async def kill(self) -> None:
        if not self._exit.done():
            kill_group(self.pid)

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
        process = await self.launcher.launch(
            run, worker_id, worker_environment(run, worker_id), where
        )
        worker = LocalWorker(process)
        await worker.start(on_output)
        return worker
