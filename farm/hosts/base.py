"""What the coordinator needs from a host, and what it gets back from a worker.

A :class:`Host` offers ``slots`` places to run one worker each and starts
workers for a run; a :class:`WorkerConnection` is the coordinator's end of one
running worker: a message channel plus the means to kill it and learn how it
ended.  Local processes, local Docker containers and Docker engines over SSH
all implement these two small interfaces, so the coordinator treats them alike.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.manifest import RunManifest, TestSpec
from farm.scheduling.capacity import Capacity

OutputHandler = Callable[[bytes], None]

#: Bytes of a worker's own output (stderr, stray prints) kept for crash messages.
OUTPUT_TAIL_BYTES = 8192


class HostError(RuntimeError):
    """The host itself failed (unreachable, engine down); its work belongs elsewhere."""


class RunError(RuntimeError):
    """The run cannot start a worker, whatever host it is given; the host itself is fine.

    Its snapshot cannot be pulled or is corrupt, its working directory does not
    exist, its worker command cannot start.  The coordinator ends that run with
    this text as its one error and never holds it against the host, so one bad
    run cannot take hosts away from the others.
    """


@dataclass(frozen=True)
class RunContext:
    """What a host needs to know about a run to start its workers."""

    run_id: str
    manifest: RunManifest
    workers: int  # total slots on the farm, for PYTEST_XDIST_WORKER_COUNT
    profile: str = ""
    pokedex_urls: tuple[str, ...] = ()
    pokedex_token: str | None = None
    #: How many of the run's tests wait for a worker right now (the farm's queue);
    #: None where no farm asks (a tool's one-off run).
    queued: Callable[[], int] | None = None

    @property
    def worker_argv(self) -> tuple[str, ...]:
        """``python -m`` arguments of this run's workers, profile arguments included."""
        return self.manifest.worker_argv(self.profile)


@dataclass(frozen=True)
class ExitInfo:
    """How a worker ended."""

    status: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    memory_limit: int | None = None
    host_lost: bool = False
    #: Why the worker was stopped from outside both the test and the farm (an operator's
    #: ``docker kill``, the engine stopping the container), or "".  The running test is
    #: not to blame: it runs again, as after a host loss, but the host stays in service.
    interrupted: str = ""
    detail: str = ""


@dataclass
class OutputTail:
    """The last bytes a worker wrote outside the channel (crash traces, faulthandler dumps)."""

    limit: int = OUTPUT_TAIL_BYTES
    data: bytearray = field(default_factory=bytearray)

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class WorkerConnection(abc.ABC):
    """The coordinator's end of one worker."""

    #: The worker id (``PYTEST_XDIST_WORKER``) this worker runs as, when it is not the
    #: one :meth:`Host.spawn` was given: a container started ahead of its shard got
    #: an id of its own then.  "" means the id given to ``spawn``.
    worker_id: str = ""

    @abc.abstractmethod
    async def send(self, message: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def recv(self) -> dict[str, Any] | None:
        """The next message, or None once the worker's channel is closed."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Stop the worker now; idempotent."""

    @abc.abstractmethod
    async def wait(self) -> ExitInfo:
        """Wait for the worker to be gone and release everything it held."""

    @abc.abstractmethod
    def output(self) -> str:
        """The tail of the worker's own output."""

    async def fit(self, tests: Sequence[TestSpec]) -> None:
        """Give the worker the resources of the shard of *tests* it is about to run.

        The coordinator calls this right before it sends a shard.  A host that
        starts a worker before knowing its shard (docker and ssh hosts start
        each slot's next container while the current one runs, so that its
        start-up overlaps work) cannot give that worker the shard's own CPU and
        memory limits at start; it narrows or widens them here instead.  Hosts
        without per-worker limits (local processes) have nothing to do.

        Never raises and never waits unbounded: an implementation bounds its
        calls; when the host fails on the way, the worker is reported lost with
        its host (as for any other host failure), and when the host refuses the
        limits, the worker ends with the shard's first test blamed and the
        reason in its output, so the coordinator accounts for it as for any
        worker that died.
        """


class Host(abc.ABC):
    """A place with ``slots`` worker places."""

    name: str
    slots: int
    labels: Mapping[str, str]
    #: Whether one worker may run several shards of a run in a row.  Hosts that
    #: promise a fresh container per shard say False.
    reuse_workers: bool = True
    #: Smallest shard worth sending, in estimated seconds, to amortize per-shard cost.
    min_shard_seconds: float = 0.0
    #: Mints a farm-unique worker id (``gw<N>``), for workers a host starts before
    #: the coordinator asks for them (spare containers).  The coordinator sets it.
    new_worker_id: Callable[[], str] | None = None

    async def start(self) -> None:
        """Connect and check the host; raise HostError if it cannot serve."""

    @abc.abstractmethod
    async def spawn(
        self, run: RunContext, slot: int, worker_id: str, on_output: OutputHandler
    ) -> WorkerConnection:
        """Start a worker for *run* in *slot*.

        Raise :class:`HostError` when the host failed, :class:`RunError` when
        the run cannot start here through no fault of the host.  Anything else
        raised counts as a host failure too.
        """

    async def warm(self, run: RunContext, slot: int) -> None:
        """Start *slot*'s worker ahead, for a run whose client is still collecting it.

        *run* has no tests yet.  A host whose workers cost a start-up worth
        hiding behind the client's collection (a container's) starts one now and
        hands it to :meth:`spawn` if the run, once submitted, would start the very
        same worker; any other start-up is wasted and removed.  Its worker id comes
        from :attr:`new_worker_id`.  Nothing by default.
        """

    def capacity(self) -> Capacity | None:
        """CPUs and memory the host's slots share, once :meth:`start` succeeded.

        The scheduler reserves each shard's share (or its tests' hints) against
        it; None leaves the host bounded by its slots alone (local processes,
        which no limit confines).
        """
        return None

    async def close(self) -> None:
        """Release connections; workers are already gone."""

    async def check(self, image: str | None) -> dict[str, Any]:
        """What ``psyduck hosts check`` shows; called after :meth:`start` succeeded."""
        return {**self.describe(), "reachable": True}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "slots": self.slots, "labels": dict(self.labels)}
