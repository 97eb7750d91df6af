"""A worker in a container: frames over the container's attach stream, its end from the engine.

The container's stdin/stdout carry the worker's frames over the attach stream,
stderr its own output.  Each attach stream has one reader thread that
demultiplexes it and hands complete messages to the event loop.  A worker whose
attach stream closes sees EOF on stdin and exits, so nothing is left behind even
when the coordinator is killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import docker.errors

from farm.hosts.base import ExitInfo, OutputHandler, OutputTail, WorkerConnection
from farm.hosts.containers import ContainerPlan, Limits, update_fields
from farm.hosts.docker.engine import API_TIMEOUT, Engine, EngineLost, bounded, raw_socket
from farm.manifest import TestSpec
from farm.protocol import FrameDecoder, ProtocolError, frame

#: Seconds to wait for the engine's ``die`` event once a worker's stream has closed.
EXIT_TIMEOUT = 20.0
#: Seconds a ``die`` with status 137 waits for a late ``oom`` event of the same container.
OOM_EVENT_GRACE = 1.0

_HEADER = struct.Struct(">BxxxL")


class StreamDemux:
    """Split Docker's multiplexed attach stream (8-byte header per chunk) into (stream, bytes)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        chunks = []
        while len(self._buffer) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            chunks.append((kind, bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return chunks


def exit_info(code: int, oom: bool, memory_limit: int) -> ExitInfo:
    """A container's exit code as the coordinator understands it (128+N means signal N)."""
    if code > 128:
        return ExitInfo(signal=code - 128, oom_killed=oom, memory_limit=memory_limit)
    return ExitInfo(status=code, oom_killed=oom, memory_limit=memory_limit)


class DockerWorker(WorkerConnection):
    """A worker in a container: frames over the attach stream, exit from the engine's events."""

    def __init__(
        self,
        engine: Engine,
        container: str,
        stream: Any,
        limits: Limits,
        on_output: OutputHandler,
        limits_for: Callable[[Sequence[TestSpec]], Limits] | None = None,
        background: Callable[[Coroutine[Any, Any, None]], None] | None = None,
    ) -> None:
        self.container = container
        self._engine = engine
        self._stream = stream
        #: The limits the container has now, and how to compute a shard's.
        self.limits = limits
        self._limits_for = limits_for
        self._on_output = on_output
        self._loop = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._tail = OutputTail()
        self._exit: asyncio.Future[ExitInfo] = self._loop.create_future()
        self._eof = asyncio.Event()
        #: Set by the worker's first message (``ready``) or its end.
        self.heard = asyncio.Event()
        #: The worker's shard, once it is known (:meth:`fit`); set also at its end.
        self.shard: Sequence[TestSpec] = ()
        self.shard_known = asyncio.Event()
        #: Set when the worker asks for more work (its shard's last test is near) or ends.
        self._nearly_done = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._oom = False
        self._killed = False
        #: Why something other than the farm killed the container, once it did.
        self._killed_outside = ""
        #: The worker said ``done``: everything it had to report has been received.
        self._finished = False
        #: The shard's first test, while the worker has said nothing since its
        #: memory limit was narrowed for that shard.
        self._blame: str | None = None
        self._background = background
        self._retiring = False
        self._reader = threading.Thread(
            target=self._read, name=f"psyduck-attach-{container[:12]}", daemon=True
        )

    def start_reading(self) -> None:
        self._reader.start()

    # -- the reader thread -------------------------------------------------------
    def _read(self) -> None:
        demux, decoder = StreamDemux(), FrameDecoder()
        try:
            while True:
                data = self._stream.recv(1 << 16)
                if not data:
                    break
                for kind, chunk in demux.feed(data):
                    if kind == 1:
                        for message in decoder.feed(chunk):
                            self._to_loop(self._deliver, message)
                        if decoder.failed:
                            decoder.feed(b"")  # raises it, the good messages before it delivered
                    else:
                        self._to_loop(self._output, chunk)
        except ProtocolError as exc:
            self._to_loop(self._output, f"\n[psyduck] bad message from worker: {exc}\n".encode())
        except OSError:
            pass  # closed under us by kill()/wait(), or the connection broke
        except Exception as exc:  # paramiko raises its own errors for broken channels
            self._to_loop(self._output, f"\n[psyduck] attach stream failed: {exc}\n".encode())
        self._to_loop(self._ended)

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed

    def _output(self, chunk: bytes) -> None:
        self._tail.add(chunk)
        self._on_output(chunk)

    def _deliver(self, message: dict[str, Any]) -> None:
        if message.get("t") == "done":
            self._finished = True
        elif message.get("t") == "idle":
            self._nearly_done.set()
        self._blame = None
        self._inbox.put_nowait(message)
        self.heard.set()

    def _ended(self) -> None:
        if self._blame is not None:
            # Its limits were narrowed and it died before saying anything: on cgroup v2
            # the kernel OOM-kills a worker already above its new limit instead of
            # refusing the limit.  Blaming the shard's first test ends a shard that
            # can never fit instead of sending it round the queue for ever.
            self._inbox.put_nowait({"t": "started", "id": self._blame})
        self._inbox.put_nowait(None)
        self._eof.set()
        self.heard.set()
        self.shard_known.set()
        self._nearly_done.set()

    # -- called by the engine's event pump -----------------------------------------
    def oom_seen(self) -> None:
        self._oom = True

    def kill_seen(self, signal: str) -> None:
        """The engine was asked to kill the container; unless the farm asked, someone else did."""
        if not self._killed:
            self._killed_outside = (
                f"its container {self.container[:12]} was killed from outside the farm "
                f"(signal {signal})"
            )

    def died(self, code: int) -> None:
        if code == 137 and not self._oom and not self._killed:
            # The kernel's OOM event may trail the exit by a moment.
            self._loop.call_later(OOM_EVENT_GRACE, self._resolve, code)
        else:
            self._resolve(code)

    def _resolve(self, code: int) -> None:
        if self._exit.done():
            return
        info = exit_info(code, self._oom, self.limits.memory)
        if self._killed_outside and not self._oom:
            info = dataclasses.replace(info, interrupted=self._killed_outside)
        self._exit.set_result(info)

    def host_lost(self, detail: str) -> None:
        if not self._exit.done():
            self._exit.set_result(
                ExitInfo(host_lost=True, detail=detail, memory_limit=self.limits.memory)
            )
        self.shard_known.set()
        self._close_stream()

    # -- WorkerConnection ----------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            try:
                await bounded(asyncio.to_thread(self._stream.sendall, frame(message)), API_TIMEOUT)
            except Exception:
                pass  # the worker or its connection is gone; recv() and wait() report it

    async def fit(self, tests: Sequence[TestSpec]) -> None:
        """Narrow or widen the running container to the limits of the shard of *tests*.

        The container was started ahead of its shard with the host's share
        (see :meth:`DockerHost.spawn`).  Shards without hints fit that share and
        cost no call.  The update is one bounded API call: an engine that fails
        or does not answer is lost, with every worker on it.  A worker already
        using more memory than the shard allows cannot run it: a cgroup v1 engine
        refuses the update, and this worker ends before it receives the shard,
        its first test reported crashed with the engine's reason; under cgroup v2
        the kernel OOM-kills the worker instead, and its death before any word
        is blamed on that first test, as killed for memory.  Either way the rest
        of the shard goes back to the queue.
        """
        if not self.shard_known.is_set():
            self.shard = tuple(tests)
            self.shard_known.set()
        if self._limits_for is None or not tests:
            return
        limits = self._limits_for(tests)
        if limits == self.limits or not self.alive:
            return
        try:
            await self._engine.call(
                self._engine.api.update_container, self.container, **update_fields(limits)
            )
        except EngineLost:
            return  # the engine marked every worker lost, this one included
        except docker.errors.APIError as exc:
            await self._refuse(tests[0].id, limits, exc)
            return
        if limits.memory < self.limits.memory:
            self._blame = tests[0].id
        self.limits = limits

    async def _refuse(self, first: str, limits: Limits, exc: docker.errors.APIError) -> None:
        """End the worker before its shard: the engine would not give it *limits*."""
        reason = exc.explanation or str(exc)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        self._tail.add(
            f"\n[psyduck] host {self._engine.name} could not give this worker its shard's "
            f"limits (memory {limits.memory // (1024 * 1024)} MiB, cpu shares "
            f"{limits.cpu_shares}, cpu quota {limits.cpu_quota or 'none'}): "
            f"{reason.strip()}\n".encode()
        )
        # The worker dies before it runs anything; "started" makes the coordinator
        # blame the first test, so a shard that can never fit ends instead of
        # going round the queue for ever.
        self._inbox.put_nowait({"t": "started", "id": first})
        await self.kill()

    async def recv(self) -> dict[str, Any] | None:
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)  # stay at EOF for later calls
        return message

    async def kill(self) -> None:
        if self._exit.done():
            return
        # A worker whose stream already ended is dead or dying of something else: killing
        # it now must not hide an outside kill whose engine event is still on its way.
        self._killed = self._killed or not self._eof.is_set()
        if self._finished and self._background is not None:
            # The worker said done: it has nothing left to report, and the slot's next
            # container (the spare) is already up.  The engine's kill waits until the
            # container has stopped (~0.1 s): that wait leaves the slot's critical path
            # for the host's background tasks, which closing the host awaits.
            self._retiring = True
            self._exit.set_result(ExitInfo(status=0, memory_limit=self.limits.memory))
            self._background(self._retire())
            return
        try:
            await self._engine.call(self._engine.api.kill, self.container)
        except docker.errors.APIError:
            pass  # already stopped or removed
        except EngineLost:
            pass  # the engine marked every worker lost, this one included

    async def _retire(self) -> None:
        """Stop a finished worker's container and release its stream, off the critical path."""
        try:
            await self._engine.call(self._engine.api.kill, self.container)
        except (docker.errors.APIError, EngineLost):
            pass  # already stopped or removed, or the engine is gone with it
        try:
            await bounded(self._eof.wait(), EXIT_TIMEOUT)
        except TimeoutError:
            pass
        self._close_stream()
        self._engine.unregister(self.container)

    async def wait(self) -> ExitInfo:
        if self._retiring:
            return self._exit.result()  # _retire releases the rest
        try:
            info = await bounded(asyncio.shield(self._exit), EXIT_TIMEOUT)
        except TimeoutError:
            info = ExitInfo(
                host_lost=True,
                detail=f"the engine of host {self._engine.name} did not report the end of "
                f"container {self.container[:12]}",
                memory_limit=self.limits.memory,
            )
        try:
            await bounded(self._eof.wait(), 5)
        except TimeoutError:
            pass
        self._close_stream()
        self._engine.unregister(self.container)
        return info

    def _close_stream(self) -> None:
        try:
            self._stream.close()
        except Exception:
            pass

    def output(self) -> str:
        return self._tail.text()

    async def nearly_done_within(self, seconds: float) -> None:
        """Return after *seconds*, or as soon as the worker asks for more work or ends."""
        try:
            await asyncio.wait_for(self._nearly_done.wait(), seconds)
        except TimeoutError:
            pass

    @property
    def alive(self) -> bool:
        return not self._exit.done() and not self._eof.is_set()


#: A wait for the payloads a container mounts to be shipped (None: nothing to wait for).
Shipped = Callable[[], Awaitable[None]] | None


async def start_container(
    engine: Engine,
    plan: ContainerPlan,
    limits: Limits,
    limits_for: Callable[[Sequence[TestSpec]], Limits],
    on_output: OutputHandler,
    background: Callable[[Coroutine[Any, Any, None]], None],
    shipped: Shipped = None,
) -> DockerWorker:
    """Create the container of *plan*, attach to it, and start it once *shipped*: its
    worker, reading.  The create overlaps the shipping of what the container mounts.

    A container that fails on the way is removed again; so is one whose caller
    is cancelled, once this has finished (see :func:`discard`).
    """
    api = engine.api
    host_config = api.create_host_config(**plan.host_config)
    created = await engine.call(
        api.create_container,
        plan.image,
        plan.command,
        environment=plan.environment,
        working_dir=plan.working_dir,
        user=plan.user,
        labels=plan.labels,
        host_config=host_config,
        stdin_open=True,
        detach=False,
        use_config_proxy=False,
    )
    container = created["Id"]
    try:
        sock = await engine.call(
            api.attach_socket,
            container,
            params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1},
        )
        stream = raw_socket(sock)
        stream.settimeout(None)
        worker = DockerWorker(engine, container, stream, limits, on_output, limits_for, background)
        engine.register(container, worker)
        worker.start_reading()
        if shipped is not None:
            await shipped()
        await engine.call(api.start, container)
    except BaseException:
        engine.unregister(container)
        try:
            await engine.call(api.remove_container, container, force=True)
        except Exception:
            pass  # auto_remove or the reaper takes it
        raise
    return worker


async def discard(task: asyncio.Future[DockerWorker | None]) -> None:
    """Stop a worker nobody will use, once its start (never interrupted) has finished."""
    try:
        worker = await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # this call was cancelled, not the task
        return  # it was still waiting to start: nothing was created
    except Exception:
        return  # it never started; start_container removed what it had created
    if worker is None:
        return
    await worker.kill()
    await worker.wait()
