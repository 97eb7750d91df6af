"""What the coordinator keeps per host, slot and worker, and its guarded calls on workers.

A slot's task may be holding a shard nobody runs yet, or a worker with tests
outstanding, at the moment something fails; :class:`Held` says which, so the
coordinator can account for every one of those tests whatever failed.  A host
is code the coordinator does not control (a plugin may raise anything, or
hang): :func:`kill_worker` and :func:`exit_info` bound and absorb what its
worker connection does, turning a misbehaving host into a lost worker rather
than a stuck or dead slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farm.faults import HostHealth, describe
from farm.hosts.base import ExitInfo, Host, WorkerConnection
from farm.manifest import TestSpec
from farm.runs import Run
from farm.scheduler import Shard

log = logging.getLogger("psyduck.farm")

#: Seconds a worker gets past a test's timeout to report its own stack before it is killed.
TIMEOUT_GRACE = 5.0
#: Seconds a host may take to kill a worker, or to say how it ended, before it counts as lost.
EXIT_TIMEOUT = 60.0


@dataclass
class HostState:
    """One host as the coordinator serves it: health, busy slots, slot tasks, quarantine timer."""

    host: Host
    health: HostHealth = field(default_factory=HostHealth)
    busy: int = 0
    slot_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Set while the host is in service; its slots wait on it during a quarantine.
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    retry: asyncio.TimerHandle | None = None
    retry_at: float | None = None

    @property
    def quarantined(self) -> bool:
        return self.health.quarantined


class ActiveWorker:
    """A worker bound to one run, with the bookkeeping needed when it dies."""

    def __init__(
        self, conn: WorkerConnection, run: Run, state: HostState, profile: str, worker_id: str = ""
    ) -> None:
        self.conn = conn
        self.run = run
        self.state = state
        self.profile = profile
        #: ``gw<N>``, unique in the farm: how the client tells its workers apart.
        self.id = worker_id
        #: The worker's ``farewell`` message (its opaque ``data``, or an ``error``), if it sent one.
        self.farewell: dict[str, Any] | None = None
        #: Set once the client was told this worker is down; it never is twice.
        self.reported_down = False
        self.outstanding: dict[str, TestSpec] = {}
        self.current: str | None = None
        self.timed_out: dict[str, Any] | None = None
        self.hard_timeout: asyncio.TimerHandle | None = None
        self.killed_for_timeout: str | None = None
        #: Set once the coordinator accounted for its exit; it never does so twice.
        self.gone = False

    def started(self, test_id: str, on_expire: Callable[[], None]) -> None:
        """*test_id* is running now: a crash from here on is its crash.

        When the test has a timeout, *on_expire* is called (to kill the worker)
        if it is still running :data:`TIMEOUT_GRACE` seconds past it.
        """
        self.current = test_id
        spec = self.run.tests.get(test_id)
        if spec is None or spec.timeout is None:
            return

        def expire() -> None:
            self.killed_for_timeout = test_id
            on_expire()

        self.hard_timeout = asyncio.get_running_loop().call_later(
            spec.timeout + TIMEOUT_GRACE, expire
        )

    def disarm(self) -> None:
        """The running test ended (or the worker did): its timeout no longer applies."""
        if self.hard_timeout is not None:
            self.hard_timeout.cancel()
            self.hard_timeout = None


@dataclass
class Held:
    """What one slot holds now, so that whatever fails, its tests are accounted for."""

    shard: Shard | None = None  # taken from the scheduler, not yet given to a worker
    worker: ActiveWorker | None = None


async def kill_worker(conn: WorkerConnection) -> None:
    """Kill a worker, whatever its host's ``kill`` does (it may raise or hang)."""
    try:
        async with asyncio.timeout(EXIT_TIMEOUT):
            await conn.kill()
    except Exception as exc:
        log.warning("killing a worker failed: %s", describe(exc))


async def exit_info(conn: WorkerConnection, fault: str | None = None) -> ExitInfo:
    """How a worker ended; one whose host raises, or cannot say in time, was lost with it.

    *fault* is what already went wrong talking to the worker: then the worker
    counts as lost with its host, whatever its exit says.
    """
    try:
        async with asyncio.timeout(EXIT_TIMEOUT):
            info = await conn.wait()
    except TimeoutError:
        fault = fault or f"the worker was not gone {EXIT_TIMEOUT:g}s after it was killed"
    except Exception as exc:
        fault = fault or f"waiting for a worker to end failed: {describe(exc)}"
    return ExitInfo(host_lost=True, detail=fault) if fault else info
