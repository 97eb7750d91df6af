"""Docker hosts: every shard in its own ephemeral, locked-down container on a Docker engine.

:class:`DockerHost` is one class for every engine; only the way to reach the
engine differs (``connect``): the local socket for ``docker:N``, an SSH
transport for ``ssh://…`` (:mod:`farm.hosts.ssh`).  Each shard gets a fresh
container (``reuse_workers = False``) planned by :mod:`farm.hosts.containers`;
its stdin/stdout carry the worker's frames over the container's attach stream,
stderr its own output.  How a container ended comes from one engine event
stream per host (``kill``, ``oom`` and ``die`` events), because the containers remove
themselves (``auto_remove``): that way nothing is left behind even when the
coordinator is killed, since a worker whose attach stream closes sees EOF on
stdin and exits.  The same event stream is the host's pulse: when it breaks,
the engine (or the connection to it) is gone and every worker on it reports
``host_lost``.

A local engine (``docker:N``) shares the coordinator's disk, so psyduck's own
packages and the run's code are bind-mounted read-only.  An engine on another
machine (``remote``: ssh hosts) cannot see that disk: there both payloads go
through the Docker API instead — once per host and content (the snapshot's
digest, else the run), the coordinator streams a tar of them with
``put_archive`` into a named volume, through a helper container that is created
from the run's image (no network, no capabilities) and never started.  The
volumes are then mounted read-only where the binds would be, carry the farm's
label, and are removed when the host closes, when a host keeps too many run
volumes, or by the reaper once their coordinator is gone.

A run's image the engine lacks is pulled, when the farm has pokedex, from the
registry face of its first node (``HOST:PORT/<image>``, the farm's pokedex token,
never a user's, as the password), through the engine, once per host and image at
a time, then tagged as the name the run asked for (:meth:`DockerHost._provide_image`).
Before a run is submitted, its client has the farm check the image once per host
and image id (:meth:`DockerHost.image_problem`, :mod:`farm.images.check`).

The docker SDK is blocking; every call runs in a thread with a timeout.  Each
attach stream has one reader thread that demultiplexes it and hands complete
messages to the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib
import logging
import os
import socket
import struct
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import docker
import docker.auth
import docker.errors
import docker.utils
import requests.exceptions
import urllib3.exceptions

from farm.hosts.base import (
    ExitInfo,
    Host,
    HostError,
    OutputHandler,
    OutputTail,
    RunContext,
    WorkerConnection,
)
from farm.hosts.containers import (
    COPY_SKIP,
    FARM_ID,
    INJECT_DIR,
    INJECTED_PACKAGES,
    LABEL_FARM,
    LABEL_HOST,
    ContainerPlan,
    Limits,
    host_share,
    injected_binds,
    owner_is_gone,
    plan_container,
    shard_limits,
    update_fields,
)
from farm.hosts.local import default_cache_dir
from farm.images.check import Expectation, image_problem
from farm.images.probe import probe_image
from farm.manifest import TestSpec
from farm.protocol import FrameDecoder, ProtocolError, frame
from farm.snapshots import SnapshotCache

log = logging.getLogger("psyduck.farm.docker")

#: Engine API version spoken; old enough for any engine still in use (19.03+).
API_VERSION = "1.40"
#: Seconds any single engine API call may take.
API_TIMEOUT = 30.0
#: Seconds to wait for the engine's ``die`` event once a worker's stream has closed.
EXIT_TIMEOUT = 20.0
#: Seconds a ``die`` with status 137 waits for a late ``oom`` event of the same container.
OOM_EVENT_GRACE = 1.0
#: Seconds a spare container waits for its slot's next shard before it is stopped.
SPARE_TTL = 30.0
#: A container of another farm still in state "created" is left alone this long:
#: its coordinator may be about to start it.
CREATED_GRACE = 120.0
#: Seconds building and uploading one payload (code or psyduck's packages) may take.
PAYLOAD_TIMEOUT = 300.0
#: Run-code volumes a remote host keeps (older ones not in use are removed).
CODE_VOLUMES_KEPT = 4
#: Where a payload helper container mounts the volume it fills.
PAYLOAD_DIR = "/psyduck-payload"
#: Seconds pulling a missing test image from pokedex's registry face may take.
PULL_TIMEOUT = 600.0
#: Seconds a pull may go without a word of progress from the engine before it is abandoned.
PULL_STALL = 60.0
#: User name sent with the farm's token when pulling from pokedex (any name is accepted).
PULL_USER = "psyduck"

T = TypeVar("T")
Connect = Callable[[], docker.APIClient]
_HEADER = struct.Struct(">BxxxL")


#: farm.toml fields (beyond url/slots/labels/name) a docker or ssh host understands.
HOST_OPTIONS = {
    "image": str,
    "python": str,
    "copy_code": bool,
    "memory": (int, str),
    "cpus": (int, float),
    "cache_dir": str,
}


def host_options(options: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """Check farm.toml host fields against *allowed* (name → type); sizes become bytes."""
    chosen = {k: v for k, v in options.items() if v is not None and k != "launcher"}
    for key, value in chosen.items():
        kind = allowed.get(key)
        if kind is None:
            raise ValueError(f"unknown host option {key!r} (known: {', '.join(sorted(allowed))})")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"host option {key!r} has the wrong type ({type(value).__name__})")
    if isinstance(chosen.get("memory"), str):
        from pytest_psyduck.marks import parse_size  # the same sizes as the psyduck mark

        chosen["memory"] = parse_size(chosen["memory"])
    return chosen


async def bounded(awaitable: Awaitable[T], seconds: float) -> T:
    """``await`` with a deadline (TimeoutError).

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that
    arrives as the awaited call finishes, and a coordinator closing its slots
    would then wait forever.
    """
    async with asyncio.timeout(seconds):
        return await awaitable


class EngineLost(HostError):
    """The engine or the connection to it failed."""


def local_engine(base_url: str | None = None, pool: int = 16) -> Connect:
    """Connect to the engine named by *base_url* or ``DOCKER_HOST`` (default: the local socket)."""

    def connect() -> docker.APIClient:
        kwargs = docker.utils.kwargs_from_env()
        if base_url:
            kwargs["base_url"] = base_url
        return docker.APIClient(
            version=API_VERSION, timeout=API_TIMEOUT, max_pool_size=pool, **kwargs
        )

    return connect


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


class Engine:
    """One live connection to a Docker engine: API calls, and the exit-event pump."""

    def __init__(self, api: docker.APIClient, name: str) -> None:
        self.api = api
        self.name = name
        self.alive = True
        self.info: dict[str, Any] = {}
        self._workers: dict[str, DockerWorker] = {}
        self._oom: set[str] = set()
        self._events: Any = None
        self._closing = False

    async def call(
        self, fn: Callable[..., T], *args: Any, deadline: float = API_TIMEOUT + 5, **kwargs: Any
    ) -> T:
        """Run a blocking SDK call in a thread; engine failures become :class:`EngineLost`."""
        if not self.alive:
            raise EngineLost(f"lost the connection to the Docker engine of host {self.name}")
        try:
            return await bounded(asyncio.to_thread(fn, *args, **kwargs), deadline)
        except docker.errors.APIError:
            raise  # the engine answered: the request was refused, the engine is fine
        except Exception as exc:  # connection refused/reset, SSH errors, timeouts
            self.lost(f"Docker engine of host {self.name} failed: {type(exc).__name__}: {exc}")
            raise EngineLost(f"host {self.name}: {type(exc).__name__}: {exc}") from exc

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.info = await self.call(self.api.info)
        self._events = await self.call(
            self.api.events,
            filters={
                "type": "container",
                "event": ["kill", "oom", "die"],
                "label": [f"{LABEL_FARM}={FARM_ID}"],
            },
            decode=True,
        )
        threading.Thread(
            target=self._pump,
            args=(loop, self._events),
            name=f"psyduck-events-{self.name}",
            daemon=True,
        ).start()

    def _pump(self, loop: asyncio.AbstractEventLoop, events: Any) -> None:
        reason = "the engine's event stream ended"
        try:
            for event in events:
                loop.call_soon_threadsafe(self._on_event, event)
        except Exception as exc:
            reason = f"the engine's event stream failed: {exc}"
        try:
            loop.call_soon_threadsafe(self._stream_ended, reason)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _on_event(self, event: dict[str, Any]) -> None:
        container = event.get("id", "")
        worker = self._workers.get(container)
        if worker is None:
            return
        if event.get("status") == "kill":
            worker.kill_seen(event.get("Actor", {}).get("Attributes", {}).get("signal", "?"))
        elif event.get("status") == "oom":
            worker.oom_seen()
        elif event.get("status") == "die":
            code = int(event.get("Actor", {}).get("Attributes", {}).get("exitCode", -1))
            worker.died(code)

    def _stream_ended(self, reason: str) -> None:
        if not self._closing:
            self.lost(f"Docker engine of host {self.name}: {reason}")

    def lost(self, detail: str) -> None:
        """The engine is unreachable: every worker on it is lost with the host."""
        if not self.alive:
            return
        self.alive = False
        log.warning("%s", detail)
        for worker in list(self._workers.values()):
            worker.host_lost(detail)

    def register(self, container: str, worker: DockerWorker) -> None:
        self._workers[container] = worker

    def unregister(self, container: str) -> None:
        self._workers.pop(container, None)

    async def close(self) -> None:
        self._closing = True
        self.alive = False
        await bounded(asyncio.to_thread(self._close_connections), API_TIMEOUT)

    def _close_connections(self) -> None:
        if self._events is not None:
            try:
                self._events.close()
            except docker.errors.DockerException:
                pass  # SSH streams cannot be cancelled alone; closing the client ends them
        self.api.close()


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

    @property
    def alive(self) -> bool:
        return not self._exit.done() and not self._eof.is_set()


@dataclass
class _Spare:
    """A container started ahead for a slot's next shard of the same run and profile."""

    key: tuple[str, str]
    task: asyncio.Future[DockerWorker]
    expiry: asyncio.TimerHandle


def _succeeded(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


async def _discard(task: asyncio.Future[DockerWorker]) -> None:
    """Stop a worker nobody will use, once its start (never interrupted) has finished."""
    try:
        worker = await task
    except Exception:
        return  # it never started; _start_container removed what it had created
    await worker.kill()
    await worker.wait()


def _module_dirs() -> dict[str, str]:
    return {
        name: os.path.dirname(importlib.import_module(name).__file__ or "")
        for name in INJECTED_PACKAGES
    }


def _owner(path: str) -> str:
    """``uid:gid`` owning *path*: the container runs as the code's owner, so it can read it."""
    st = os.stat(path)
    return f"{st.st_uid}:{st.st_gid}"


def _skip_cached(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if os.path.basename(info.name) in COPY_SKIP else info


def payload_tar(sources: Mapping[str, str]) -> IO[bytes]:
    """A tar (in a temporary file, rewound) of each ``arcname → local path``.

    Caches and VCS data (:data:`COPY_SKIP`) are left out; owners and modes are
    kept, so the container's user (the code's owner) can read what it could read
    through a bind mount.
    """
    archive = tempfile.TemporaryFile()
    try:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for arcname, path in sources.items():
                tar.add(path, arcname=arcname, filter=_skip_cached)
        archive.seek(0)
    except BaseException:
        archive.close()
        raise
    return archive


def volume_name(kind: str, key: str) -> str:
    """This farm's volume for one payload: the farm and the content key, hashed."""
    digest = hashlib.sha256(f"{FARM_ID}\0{key}".encode()).hexdigest()[:20]
    return f"psyduck-{kind}-{digest}"


def _raw_socket(sock: Any) -> Any:
    """The object to recv/sendall on: a socket (local engine) or a paramiko channel (SSH)."""
    return getattr(sock, "_sock", sock)


def registry_address(url: str) -> str:
    """``HOST:PORT`` of a pokedex node's URL: where its registry face answers ``/v2/``."""
    parts = urllib.parse.urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url


@dataclass(frozen=True)
class PokedexImage:
    """Where the test image *image* is in pokedex's registry face, and what to call it here.

    ``HOST:PORT/<image>``: the operator pushed it there under its own name.  A tag
    reference is tagged back to *image* on the engine after the pull; a digest
    reference (``name@sha256:…``) cannot be given to another name, so containers
    use the pulled reference itself.
    """

    image: str
    registry: str

    @property
    def parts(self) -> tuple[str, str, bool]:
        """(repository, tag or digest, whether it is a digest) of the reference to pull."""
        repository, tag = docker.utils.parse_repository_tag(self.image)
        by_digest = "@" in self.image
        return f"{self.registry}/{repository}", tag or "latest", by_digest

    @property
    def reference(self) -> str:
        """The full reference pulled: ``HOST:PORT/name:tag`` or ``HOST:PORT/name@digest``."""
        repository, tag, by_digest = self.parts
        return f"{repository}{'@' if by_digest else ':'}{tag}"


class PullFailed(Exception):
    """The engine could not pull an image; the text is what it (or the registry) said."""


class ImagePull:
    """One pull through an engine (``POST /images/create``), abortable from another thread.

    The SDK's ``pull`` reads its stream without a timeout; here every read of the
    engine's progress stream has :data:`PULL_STALL` seconds, the whole pull a
    deadline checked between progress messages, and :meth:`abort` (a closing
    host, a deadline passed on the event loop) shuts the stream's socket so the
    thread reading it returns at once.  Errors the engine reports in the middle
    of the stream (``{"error": …}``) fail the pull like an HTTP error does.
    """

    def __init__(
        self, api: docker.APIClient, repository: str, tag: str, auth: dict[str, str] | None
    ) -> None:
        self._api = api
        self._params = {"fromImage": repository, "tag": tag}
        self._headers = {"X-Registry-Auth": docker.auth.encode_header(auth)} if auth else {}
        self._lock = threading.Lock()
        self._response: Any = None
        self._aborted = False
        self._finished = False

    def run(self, deadline: float) -> None:
        """Pull until done (blocking); PullFailed if not."""
        api = self._api
        try:
            response = api._post(  # the SDK's own request, with a read timeout
                api._url("/images/create"),
                params=self._params,
                headers=self._headers,
                stream=True,
                timeout=PULL_STALL,
            )
        except Exception as exc:  # no answer in time, or the engine cannot be reached
            raise PullFailed(_stream_failure(exc)) from exc
        with self._lock:
            self._response, aborted = response, self._aborted
        try:
            if aborted:
                raise PullFailed("the pull was abandoned")
            try:
                api._raise_for_status(response)
            except docker.errors.APIError as exc:
                raise PullFailed(_explanation(exc)) from exc
            for message in api._stream_helper(response, decode=True):
                if isinstance(message, dict) and message.get("error"):
                    raise PullFailed(str(message["error"]).strip())
                if time.monotonic() > deadline:
                    raise PullFailed(f"the pull took longer than {PULL_TIMEOUT:.0f} s")
        except PullFailed:
            raise
        except Exception as exc:  # a read timeout or a broken stream (requests, urllib3, ssh)
            if self._aborted:
                raise PullFailed("the pull was abandoned") from exc
            raise PullFailed(_stream_failure(exc)) from exc
        finally:
            with self._lock:
                self._finished = True
            response.close()

    def abort(self) -> None:
        """Stop the pull: the thread reading its stream returns (PullFailed)."""
        with self._lock:
            self._aborted = True
            if self._response is None or self._finished:
                return  # not sent yet (run() gives up when it is), or over
            try:
                sock = _raw_socket(self._api._get_raw_response_socket(self._response))
                sock.shutdown(socket.SHUT_RDWR)
            except Exception:
                pass  # already closed, or an error reply that is read whole anyway


def _stream_failure(exc: Exception) -> str:
    """Why the engine's answer to a pull stopped coming."""
    if isinstance(exc, requests.exceptions.Timeout | urllib3.exceptions.TimeoutError):
        return (
            f"the engine said nothing for {PULL_STALL:.0f} s (it, or the registry it pulls "
            f"from, is stuck): {exc}"
        )
    return f"the engine's answer broke off: {type(exc).__name__}: {exc}"


def _explanation(exc: docker.errors.APIError) -> str:
    reason = exc.explanation or str(exc)
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return str(reason).strip()


class DockerHost(Host):
    """``docker:N`` — N slots on a Docker engine, one ephemeral container per shard."""

    reuse_workers = False
    #: A slot's next container (its spare) is created and started, and its worker has
    #: imported pytest and the plugins, while the slot's current shard runs; once the
    #: spare is handed its shard, the shard costs the slot's critical path its hand-off
    #: and the collection of the shard's own files only.  A shard must outlast its
    #: spare's start-up, or the slot waits for it.  Shards get this small only in a
    #: run's tail (the scheduler shrinks them as the queue empties), where small shards
    #: let the slots finish together; larger minimums left one slot running a long last
    #: shard alone, and on attrs' suite a minimum of 4 s ran no faster than this one.
    min_shard_seconds = 1.0

    def __init__(
        self,
        slots: int | None,
        connect: Connect | None = None,
        *,
        name: str = "docker",
        labels: dict[str, str] | None = None,
        image: str | None = None,
        python: str = "python3",
        copy_code: bool = True,
        memory: int | None = None,
        cpus: float | None = None,
        cache_dir: str | None = None,
        remote: bool = False,
    ) -> None:
        self.name = name
        #: The engine does not share the coordinator's disk: payloads go in volumes.
        self.remote = remote
        self.slots = slots or 0
        self._connect = connect or local_engine()
        self.labels = {"kind": "docker", **(labels or {})}
        self.image = image
        self.python = python
        self.copy_code = copy_code
        self._memory = memory
        self._cpus = cpus
        self.snapshots = SnapshotCache(cache_dir or default_cache_dir(name), name)
        self._engine: Engine | None = None
        self._engine_lock = asyncio.Lock()
        #: Per test image the run asked for: the reference its containers start from,
        #: once the engine has it (looked up, or pulled from pokedex: once at a time).
        self._images: dict[str, asyncio.Future[str]] = {}
        #: Verdicts of the up-front image check, per image id and client expectation.
        self._verdicts: dict[tuple[str, Expectation], asyncio.Future[str | None]] = {}
        self._pulls: set[ImagePull] = set()
        self._spares: dict[int, _Spare] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._module_dirs = _module_dirs()
        #: Payload volumes by name (filled, or being filled), oldest first.
        self._volumes: dict[str, asyncio.Future[str]] = {}

    # -- engine ------------------------------------------------------------------
    def connect_engine(self) -> docker.APIClient:
        """A new, blocking client of this host's engine, for tools (``psyduck image build``)."""
        return self._connect()

    async def _ensure_engine(self) -> Engine:
        async with self._engine_lock:
            if self._engine is not None and self._engine.alive:
                return self._engine
            if self._engine is not None:
                await self._engine.close()
            try:
                api = await bounded(asyncio.to_thread(self._connect), API_TIMEOUT + 5)
            except HostError:
                raise
            except Exception as exc:
                raise EngineLost(
                    f"host {self.name}: cannot reach the Docker engine: {exc}"
                ) from exc
            engine = Engine(api, self.name)
            await engine.start()
            self._engine = engine
            self._images.clear()
            return engine

    async def start(self) -> None:
        engine = await self._ensure_engine()
        info = engine.info
        if not self.slots:
            self.slots = int(info.get("NCPU") or 1)
        # The engine's facts are defaults; labels given by spec or farm.toml win.
        self.labels = {
            "arch": str(info.get("Architecture", "")),
            "docker": str(info.get("ServerVersion", "")),
            **self.labels,
        }
        await self.reap()

    async def reap(self) -> list[str]:
        """Remove psyduck containers whose coordinator is gone; returns their ids."""
        engine = await self._ensure_engine()
        containers = await engine.call(
            engine.api.containers, all=True, filters={"label": LABEL_FARM}
        )
        removed = []
        for c in containers:
            farm = (c.get("Labels") or {}).get(LABEL_FARM, "")
            if farm == FARM_ID:
                continue
            state, gone = c.get("State", ""), owner_is_gone(farm)
            if state == "running" and not gone:
                continue
            if (
                state == "created"
                and not gone
                and time.time() - c.get("Created", 0) < CREATED_GRACE
            ):
                continue
            try:
                await engine.call(engine.api.remove_container, c["Id"], force=True)
                removed.append(c["Id"])
            except docker.errors.APIError:
                pass  # already being removed
        if removed:
            log.info("host %s: removed %d orphaned psyduck containers", self.name, len(removed))
        volumes = await engine.call(engine.api.volumes, filters={"label": LABEL_FARM})
        orphans = [
            v["Name"]
            for v in (volumes or {}).get("Volumes") or []
            if (farm := (v.get("Labels") or {}).get(LABEL_FARM, "")) != FARM_ID
            and owner_is_gone(farm)
        ]
        if orphans:
            gone = await self._remove_volumes(engine, orphans)
            log.info("host %s: removed %d orphaned psyduck volumes", self.name, len(gone))
        return removed

    async def close(self) -> None:
        for pull in list(self._pulls):
            pull.abort()
        await asyncio.gather(*self._images.values(), return_exceptions=True)
        for verdict in self._verdicts.values():
            verdict.cancel()  # a probe still running removes its container as it ends
        await asyncio.gather(*self._verdicts.values(), return_exceptions=True)
        spares, self._spares = self._spares, {}
        for spare in spares.values():
            spare.expiry.cancel()
        await asyncio.gather(
            *(_discard(spare.task) for spare in spares.values()), *self._background
        )
        volumes, self._volumes = self._volumes, {}
        if volumes and self._engine is not None and self._engine.alive:
            await asyncio.gather(*volumes.values(), return_exceptions=True)
            try:
                await self._remove_volumes(self._engine, list(volumes), patience=10.0)
            except EngineLost:
                pass  # the next farm's reaper removes them
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    def describe(self) -> dict[str, Any]:
        info = self._engine.info if self._engine else {}
        return {
            **super().describe(),
            "kind": "docker",
            "docker_version": info.get("ServerVersion"),
            "cpus": info.get("NCPU"),
            "memory": info.get("MemTotal"),
            "connected": bool(self._engine and self._engine.alive),
        }

    async def check(self, image: str | None) -> dict[str, Any]:
        result = {**self.describe(), "reachable": True}
        if image:
            try:
                await self._check_image(await self._ensure_engine(), image)
                result["image_present"] = True
            except HostError as exc:
                result["image_present"] = False
                result["problem"] = str(exc)
        return result

    async def image_problem(
        self, image: str | None, expect: Expectation, run: RunContext
    ) -> str | None:
        """Why the test image cannot run this host's workers (one line), or None.

        *image* (else the host's own) is provided as for a run (pulled from
        *run*'s pokedex if missing), then probed once per image id and
        *expect* (:mod:`farm.images.check`).
        """
        image = image or self.image
        if not image:
            return f"host {self.name}: no test image (pass --psyduck-image or set psyduck_image)"
        try:
            engine = await self._ensure_engine()
            reference = await self._run_image(engine, image, run)
            image_id = (await engine.call(engine.api.inspect_image, reference))["Id"]
            verdict = self._verdicts.get((image_id, expect))
            if verdict is None or (verdict.done() and not _succeeded(verdict)):
                verdict = asyncio.ensure_future(self._probe(engine, reference, expect))
                self._verdicts[(image_id, expect)] = verdict
            problem = await asyncio.shield(verdict)
        except HostError as exc:
            return str(exc)
        except docker.errors.APIError as exc:
            problem = f"the engine refused to check it: {_explanation(exc)}"
        except TimeoutError:
            problem = "shipping psyduck's worker code to check it timed out"
        return f"host {self.name}: test image {image!r}: {problem}" if problem else None

    async def _probe(self, engine: Engine, image: str, expect: Expectation) -> str | None:
        if self.remote:
            volume = await self._volume(engine, image, "inject", "inject", dict(self._module_dirs))
            binds = {volume: {"bind": INJECT_DIR, "mode": "ro"}}
        else:
            binds = injected_binds(self._module_dirs)
        try:
            facts = await probe_image(engine, image, self.python, binds, self.name)
        except ValueError as exc:
            return str(exc)
        except docker.errors.APIError as exc:
            return f"a container of it cannot be created: {_explanation(exc)}"
        return image_problem(facts, expect)

    # -- workers -----------------------------------------------------------------
    async def _check_image(self, engine: Engine, image: str) -> None:
        """HostError unless *image* is on the engine now (what ``hosts check`` reports)."""
        ready = self._images.get(image)
        if ready is not None and _succeeded(ready):
            return
        if not await self._image_present(engine, image):
            raise HostError(self._missing(image))

    def _missing(self, image: str) -> str:
        return f"host {self.name}: test image {image!r} is not present on its Docker engine"

    async def _image_present(self, engine: Engine, image: str) -> bool:
        try:
            await engine.call(engine.api.inspect_image, image)
        except docker.errors.ImageNotFound:
            return False
        return True

    async def _run_image(self, engine: Engine, image: str, run: RunContext) -> str:
        """The reference the run's containers start from: *image*, pulled first if missing.

        One look-up, and at most one pull, per image at a time: slots starting
        together wait for the same one.  A success is remembered (until the
        engine is reconnected); a failure is not, so the next shard tries again
        (the operator may have pushed the image since).
        """
        ready = self._images.get(image)
        if ready is None or (ready.done() and not _succeeded(ready)):
            ready = asyncio.ensure_future(self._provide_image(engine, image, run))
            self._images[image] = ready
        return await asyncio.shield(ready)

    async def _provide_image(self, engine: Engine, image: str, run: RunContext) -> str:
        """*image* if the engine has it; else pull ``HOST:PORT/<image>`` from pokedex.

        The pull goes through the engine (so the engine, not the coordinator, must
        reach the registry), with the farm's pokedex token as ``docker login`` password,
        since a pokedex with a token may refuse anonymous reads (the farm's own does).
        A tag reference is then tagged as *image* (and the registry's name removed again, unless
        the engine had it before), so the engine holds what the run asked for.
        """
        if await self._image_present(engine, image):
            return image
        if not run.pokedex_urls:
            raise HostError(self._missing(image))
        source = PokedexImage(image, registry_address(run.pokedex_urls[0]))
        had_reference = await self._image_present(engine, source.reference)
        try:
            await self._pull(engine, source, run.pokedex_token)
        except PullFailed as exc:
            raise HostError(
                f"{self._missing(image)}, and pulling {source.reference} from pokedex's "
                f"registry failed: {exc}"
            ) from exc
        if source.parts[2]:
            return source.reference  # a digest names one image: containers use the pull's name
        name, own_tag = docker.utils.parse_repository_tag(image)
        try:
            await engine.call(engine.api.tag, source.reference, name, own_tag or "latest")
        except docker.errors.APIError as exc:
            raise HostError(
                f"host {self.name}: pulled {source.reference} from pokedex but could not tag it "
                f"{image!r}: {_explanation(exc)}"
            ) from exc
        if not had_reference:  # a name someone gave it on this engine stays
            try:
                await engine.call(engine.api.remove_image, source.reference, noprune=True)
            except docker.errors.APIError:
                pass  # only a second name of the same image: harmless if it stays
        log.info("host %s: pulled test image %r from %s", self.name, image, source.reference)
        return image

    async def _pull(self, engine: Engine, source: PokedexImage, token: str | None) -> None:
        """Pull *source* through *engine*; PullFailed with what the engine or registry said."""
        if not engine.alive:
            raise EngineLost(f"lost the connection to the Docker engine of host {self.name}")
        repository, tag, _ = source.parts
        auth = (
            {"username": PULL_USER, "password": token, "serveraddress": source.registry}
            if token
            else None
        )
        pull = ImagePull(engine.api, repository, tag, auth)
        self._pulls.add(pull)
        log.info(
            "host %s: test image %r missing; pulling %s", self.name, source.image, source.reference
        )
        try:
            await bounded(
                asyncio.to_thread(pull.run, time.monotonic() + PULL_TIMEOUT),
                PULL_TIMEOUT + PULL_STALL,
            )
        except TimeoutError as exc:
            pull.abort()
            raise PullFailed(
                f"the engine gave no answer within {PULL_TIMEOUT + PULL_STALL:.0f} s"
            ) from exc
        except BaseException:
            pull.abort()  # cancelled (the host is closing): the reading thread returns
            raise
        finally:
            self._pulls.discard(pull)

    async def _code_dir(self, run: RunContext) -> tuple[str, str]:
        """(where the run's code is on the engine's machine, where it goes in the container).

        The container always sees the code at the client's project root, so node
        ids and absolute arguments are the client's; the source is the run's
        snapshot when it has one, else the client's own directory.
        """
        root = run.manifest.worker.project_root
        return await self.snapshots.tree(run) or root, root

    async def spawn(
        self, run: RunContext, slot: int, worker_id: str, on_output: OutputHandler
    ) -> WorkerConnection:
        """A worker for the slot: the slot's spare if it fits, else a new container.

        Either way a spare for the slot's next shard starts as soon as this
        worker is up (not before: two starting containers would slow each other
        down), so that its create, start and collection overlap this shard
        instead of following it.  Its shard is not known yet, so every
        container starts with the host's share; :meth:`DockerWorker.fit` gives
        it its shard's limits.
        """
        key = (run.run_id, run.profile)
        worker = await self._take_spare(slot, key)
        if worker is None:
            worker = await self._create_worker(run, slot, worker_id, on_output)
        task = asyncio.ensure_future(self._spare_after(worker, run, slot, worker_id, on_output))
        expiry = asyncio.get_running_loop().call_later(SPARE_TTL, self._expire_spare, slot, task)
        self._spares[slot] = _Spare(key, task, expiry)
        return worker

    async def _spare_after(
        self,
        current: DockerWorker,
        run: RunContext,
        slot: int,
        worker_id: str,
        on_output: OutputHandler,
    ) -> DockerWorker:
        await current.heard.wait()
        return await self._create_worker(run, slot, worker_id, on_output)

    async def _take_spare(self, slot: int, key: tuple[str, str]) -> DockerWorker | None:
        spare = self._spares.pop(slot, None)
        if spare is None:
            return None
        spare.expiry.cancel()
        if spare.key != key:
            self._in_background(_discard(spare.task))
            return None
        try:
            worker = await spare.task
        except Exception as exc:
            log.info("host %s: spare container failed (%s); starting a new one", self.name, exc)
            return None
        if not worker.alive:
            await _discard(spare.task)
            return None
        return worker

    def _expire_spare(self, slot: int, task: asyncio.Future[DockerWorker]) -> None:
        spare = self._spares.get(slot)
        if spare is not None and spare.task is task:
            del self._spares[slot]
            self._in_background(_discard(task))

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _create_worker(
        self, run: RunContext, slot: int, worker_id: str, on_output: OutputHandler
    ) -> DockerWorker:
        engine = await self._ensure_engine()
        image = run.manifest.image or self.image
        if not image:
            raise HostError(
                f"host {self.name}: no test image (pass --psyduck-image or set psyduck_image)"
            )
        image = await self._run_image(engine, image, run)
        code_dir, code_root = await self._code_dir(run)
        user = _owner(code_dir)
        inject_volume = None
        if self.remote:
            inject_volume, code_dir = await self._payloads(engine, run, image, code_dir)
        limits_for = self._limits_for(engine)
        limits = limits_for(())  # the host's share, until the worker's shard is known
        plan = plan_container(
            run,
            worker_id,
            host=self.name,
            slot=slot,
            image=image,
            python=self.python,
            code_dir=code_dir,
            code_root=code_root,
            copy_code=self.copy_code,
            user=user,
            limits=limits,
            module_dirs=self._module_dirs,
            inject_volume=inject_volume,
        )
        # Not interruptible: a create cancelled halfway would leave a container nobody
        # knows about, so a cancelled caller hands the finished worker to _discard.
        starting = asyncio.ensure_future(
            self._start_container(engine, plan, limits, limits_for, on_output)
        )
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            self._in_background(_discard(starting))
            raise
        except docker.errors.APIError as exc:
            raise HostError(f"host {self.name}: cannot start a container: {exc}") from exc

    def _limits_for(self, engine: Engine) -> Callable[[Sequence[TestSpec]], Limits]:
        """Limits of a container running given tests: their hints, else the host's share."""
        info = engine.info
        memory_share, cpu_share = host_share(
            self._memory or int(info.get("MemTotal", 1 << 32)),
            self._cpus or int(info.get("NCPU", 1)),
            self.slots,
        )

        def limits_for(tests: Sequence[TestSpec]) -> Limits:
            return shard_limits(tests, memory_share=memory_share, cpu_share=cpu_share)

        return limits_for

    # -- payload volumes (remote engines) ------------------------------------------
    async def _payloads(
        self, engine: Engine, run: RunContext, image: str, code_dir: str
    ) -> tuple[str, str]:
        """(volume of psyduck's packages, volume of the run's code) on the engine."""
        inject = self._volume(engine, image, "inject", "inject", dict(self._module_dirs))
        code = self._volume(
            engine, image, "code", run.manifest.snapshot or f"run:{run.run_id}", {".": code_dir}
        )
        try:
            return tuple(await asyncio.gather(inject, code))  # type: ignore[return-value]
        except docker.errors.APIError as exc:
            raise HostError(f"host {self.name}: cannot ship the run's code: {exc}") from exc
        except TimeoutError as exc:
            raise HostError(f"host {self.name}: shipping the run's code timed out") from exc

    async def _volume(
        self, engine: Engine, image: str, kind: str, key: str, sources: dict[str, str]
    ) -> str:
        """The filled volume for one payload; concurrent shards wait for one upload."""
        name = volume_name(kind, key)
        filling = self._volumes.get(name)
        if filling is None or (
            filling.done() and (filling.cancelled() or filling.exception() is not None)
        ):
            filling = asyncio.ensure_future(self._fill_volume(engine, image, name, sources))
            self._volumes[name] = filling
            if kind == "code":
                self._in_background(self._trim_volumes(engine))
        return await asyncio.shield(filling)

    async def _fill_volume(
        self, engine: Engine, image: str, name: str, sources: dict[str, str]
    ) -> str:
        api = engine.api
        labels = {LABEL_FARM: FARM_ID, LABEL_HOST: self.name}
        await engine.call(api.create_volume, name, labels=labels)
        try:
            helper = await engine.call(
                api.create_container,
                image,
                ["true"],
                labels=labels,
                network_disabled=True,
                host_config=api.create_host_config(
                    binds={name: {"bind": PAYLOAD_DIR, "mode": "rw"}},
                    network_mode="none",
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    log_config={"type": "none", "config": {}},
                ),
                use_config_proxy=False,
            )
            try:
                archive = await bounded(asyncio.to_thread(payload_tar, sources), PAYLOAD_TIMEOUT)
                try:
                    ok = await engine.call(
                        api.put_archive,
                        helper["Id"],
                        PAYLOAD_DIR,
                        archive,
                        deadline=PAYLOAD_TIMEOUT,
                    )
                finally:
                    archive.close()
                if not ok:
                    raise HostError(f"host {self.name}: the engine refused the payload for {name}")
            finally:
                try:
                    await engine.call(api.remove_container, helper["Id"], force=True)
                except docker.errors.APIError:
                    pass  # the reaper takes it
        except BaseException:
            try:
                await engine.call(api.remove_volume, name, force=True)
            except Exception:
                pass  # the reaper takes it
            raise
        log.info("host %s: shipped %s", self.name, name)
        return name

    async def _trim_volumes(self, engine: Engine) -> None:
        """Remove the oldest run-code volumes beyond :data:`CODE_VOLUMES_KEPT` (if unused)."""
        code = [n for n, f in self._volumes.items() if n.startswith("psyduck-code-") and f.done()]
        old = code[: max(len(code) - CODE_VOLUMES_KEPT, 0)]
        try:
            for name in await self._remove_volumes(engine, old):
                self._volumes.pop(name, None)
        except EngineLost:
            pass

    async def _remove_volumes(
        self, engine: Engine, names: list[str], patience: float = 0.0
    ) -> list[str]:
        """Remove volumes; one still in use is retried for *patience* seconds, then left."""
        removed = []
        deadline = time.monotonic() + patience
        for name in names:
            while True:
                try:
                    await engine.call(engine.api.remove_volume, name)
                    removed.append(name)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    if time.monotonic() >= deadline:
                        break  # in use: by a container still being removed, or another run
                    await asyncio.sleep(0.25)
        return removed

    async def _start_container(
        self,
        engine: Engine,
        plan: ContainerPlan,
        limits: Limits,
        limits_for: Callable[[Sequence[TestSpec]], Limits],
        on_output: OutputHandler,
    ) -> DockerWorker:
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
            stream = _raw_socket(sock)
            stream.settimeout(None)
            worker = DockerWorker(
                engine, container, stream, limits, on_output, limits_for, self._in_background
            )
            engine.register(container, worker)
            worker.start_reading()
            await engine.call(api.start, container)
        except BaseException:
            engine.unregister(container)
            try:
                await engine.call(api.remove_container, container, force=True)
            except Exception:
                pass  # auto_remove or the reaper takes it
            raise
        return worker
