"""One live connection to a Docker engine: bounded API calls, and its event pump.

The docker SDK is blocking; every call runs in a thread with a timeout.  How a
container ended comes from one engine event stream per host (``kill``, ``oom`` and
``die`` events), because the containers remove themselves (``auto_remove``).  The
same event stream is the host's pulse: when it breaks, the engine (or the
connection to it) is gone and every worker on it reports ``host_lost``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import docker
import docker.errors
import docker.utils

from farm.hosts.base import HostError
from farm.hosts.containers import FARM_ID, LABEL_FARM

if TYPE_CHECKING:
    from farm.hosts.docker.worker import DockerWorker

log = logging.getLogger("psyduck.farm.docker")

#: Engine API version spoken; old enough for any engine still in use (19.03+).
API_VERSION = "1.40"
#: Seconds any single engine API call may take.
API_TIMEOUT = 30.0

T = TypeVar("T")
Connect = Callable[[], docker.APIClient]


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


def raw_socket(sock: Any) -> Any:
    """The object to recv/sendall on: a socket (local engine) or a paramiko channel (SSH)."""
    return getattr(sock, "_sock", sock)


def explanation(exc: docker.errors.APIError) -> str:
    reason = exc.explanation or str(exc)
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return str(reason).strip()


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
