"""Containers started ahead of their shard: each slot's spare, and warm spares.

A spare (the container for a slot's next shard) costs a container's start-up
in CPU whether or not a next shard comes; on a machine whose slots use every
CPU that start-up slows the running shards as much as it would the slot.  The
last spare of each slot used to be pure loss.  So a slot's spare starts only
once its current shard is known, a margin of start-ups before that shard is
estimated to end but never sooner than one start-up after it began (when the
run's first shards have all been handed out), and only if the farm still
queues some of the run's tests: a run with nothing left to hand out starts no
spare.

A *warm* spare is a slot's container started for a run its client is still
collecting (:meth:`~farm.hosts.base.Host.warm`): its start-up overlaps the
collection instead of following it.  Its run id is :data:`WARM_RUN`, which the
host also gives the submitted run when it compares the container the run would
get with the warm one: only the very same container is handed over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from farm.hosts.base import OutputHandler, RunContext, WorkerConnection
from farm.hosts.containers import ContainerPlan, Limits
from farm.hosts.docker.engine import Engine
from farm.hosts.docker.worker import DockerWorker, Shipped, discard
from farm.manifest import TestSpec

log = logging.getLogger("psyduck.farm.docker")

#: Seconds a container of a host takes from create to its worker's ``ready``, until
#: the host has measured one.
DEFAULT_START_SECONDS = 3.0
#: A spare starts this many start-ups ahead of its slot's estimated need.
START_MARGIN = 2.0
#: Weight of the latest measured start-up in the host's running estimate.
START_WEIGHT = 0.3
#: Seconds a spare container waits for its slot's next shard before it is stopped.
SPARE_TTL = 30.0
#: The run id of warm spares, and of a submitted run when compared with them.
WARM_RUN = "warm"
#: Seconds a warm spare waits for its run (the client's collection) before it is stopped.
WARM_TTL = 300.0
#: Bytes of a warm spare's output kept for the run that takes it.
HELD_OUTPUT_BYTES = 64 * 1024


class HeldOutput:
    """A warm spare's output until a run takes the spare: kept (bounded), then passed on."""

    def __init__(self) -> None:
        self._held = bytearray()
        self._target: OutputHandler | None = None

    def __call__(self, chunk: bytes) -> None:
        if self._target is not None:
            self._target(chunk)
        elif len(self._held) < HELD_OUTPUT_BYTES:
            self._held += chunk[: HELD_OUTPUT_BYTES - len(self._held)]

    def hand_to(self, target: OutputHandler) -> None:
        """From now on *target* gets the output, starting with what was held."""
        held, self._held = bytes(self._held), bytearray()
        self._target = target
        if held:
            target(held)


class StartClock:
    """A host's running estimate of how long one of its containers takes to get ready."""

    def __init__(self) -> None:
        self.seconds = DEFAULT_START_SECONDS
        self._measured = False

    def measured(self, seconds: float) -> None:
        if self._measured:
            self.seconds += START_WEIGHT * (seconds - self.seconds)
        else:
            self.seconds, self._measured = seconds, True

    def spare_delay(self, shard_estimate: float) -> float:
        """Seconds after a shard starts at which its slot's spare should start."""
        return max(shard_estimate - START_MARGIN * self.seconds, self.seconds)


@dataclass
class Spare:
    """A container started ahead for a slot's next shard of the same run and profile.

    Until *creating*, its task only waits for the moment to start it
    (:mod:`farm.hosts.docker.spares`) and is cancelled when not wanted; once
    created, an unused spare lives until *expiry*.
    """

    key: tuple[str, str]
    task: asyncio.Future[DockerWorker | None] | None = None
    expiry: asyncio.TimerHandle | None = None
    creating: bool = False
    #: A warm spare's: its output until a run takes it, and the container it is, as
    #: planned for :data:`~farm.hosts.docker.spares.WARM_RUN` (what a run must match).
    output: HeldOutput | None = None
    plan: ContainerPlan | None = None


class SpareSlots:
    """The part of :class:`~farm.hosts.docker.DockerHost` that starts containers ahead:
    each slot's spare for its next shard, and warm spares for a run still collected."""

    name: str
    slots: int
    reuse_workers: bool
    new_worker_id: Callable[[], str] | None
    _spares: dict[int, Spare]
    _start_clock: StartClock
    _ensure_engine: Callable[[], Awaitable[Engine]]
    _in_background: Callable[[Coroutine[Any, Any, None]], None]
    _create_worker: Callable[[RunContext, int, str, OutputHandler], Awaitable[DockerWorker]]
    _plan_worker: Callable[
        [Engine, RunContext, int, str],
        Awaitable[tuple[ContainerPlan, Limits, Callable[[Sequence[TestSpec]], Limits], Shipped]],
    ]

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
        worker = await self._take_spare(slot, run, on_output)
        if worker is None:
            started = time.monotonic()
            worker = await self._create_worker(run, slot, worker_id, on_output)
            self._in_background(self._time_start(worker, started))
        if self.reuse_workers:
            return worker  # it serves the run's next shards itself: no spare
        spare = Spare((run.run_id, run.profile))
        spare.task = asyncio.ensure_future(
            self._spare_after(spare, worker, run, slot, worker_id, on_output)
        )
        self._spares[slot] = spare
        return worker

    async def _spare_after(
        self,
        spare: Spare,
        current: DockerWorker,
        run: RunContext,
        slot: int,
        worker_id: str,
        on_output: OutputHandler,
    ) -> DockerWorker | None:
        """The slot's next container, started a start-up's length before *current*'s
        shard is estimated to end (or as it asks for more work, if sooner); None when
        the farm has none of the run's tests left to hand out."""
        await current.heard.wait()
        await current.shard_known.wait()
        delay = self._start_clock.spare_delay(sum(test.estimate for test in current.shard))
        await current.nearly_done_within(delay)
        if run.queued is not None and run.queued() == 0:
            return None
        spare.creating = True
        spare.expiry = asyncio.get_running_loop().call_later(
            SPARE_TTL, self._expire_spare, slot, spare
        )
        # Its own id: it will serve another shard than *current*, as another xdist node.
        spare_id = self.new_worker_id() if self.new_worker_id else worker_id
        started = time.monotonic()
        worker = await self._create_worker(run, slot, spare_id, on_output)
        worker.worker_id = spare_id
        self._in_background(self._time_start(worker, started))
        return worker

    async def _time_start(self, worker: DockerWorker, started: float) -> None:
        await worker.heard.wait()
        if worker.alive:
            self._start_clock.measured(time.monotonic() - started)

    def _drop_spare(self, spare: Spare) -> None:
        """Stop an unused spare: cancel its wait, or stop its container once started."""
        if spare.expiry is not None:
            spare.expiry.cancel()
        if spare.task is None:
            return
        if not spare.creating:
            spare.task.cancel()
        self._in_background(discard(spare.task))

    async def warm(self, run: RunContext, slot: int) -> None:
        if (
            self.reuse_workers
            or self.new_worker_id is None
            or slot in self._spares
            or slot >= self.slots
        ):
            return
        worker_id = self.new_worker_id()
        run = dataclasses.replace(run, run_id=WARM_RUN)
        spare = Spare((WARM_RUN, ""), creating=True, output=HeldOutput())
        spare.task = asyncio.ensure_future(self._warm_spare(spare, run, slot, worker_id))
        spare.expiry = asyncio.get_running_loop().call_later(
            WARM_TTL, self._expire_spare, slot, spare
        )
        self._spares[slot] = spare

    async def _warm_plan(self, run: RunContext, slot: int) -> ContainerPlan:
        """The container *run* would get on *slot*, planned as for :data:`WARM_RUN`: what
        a warm spare is, and what a submitted run must match to take it."""
        engine = await self._ensure_engine()
        warm_run = dataclasses.replace(run, run_id=WARM_RUN)
        return (await self._plan_worker(engine, warm_run, slot, WARM_RUN))[0]

    async def _warm_spare(
        self, spare: Spare, run: RunContext, slot: int, worker_id: str
    ) -> DockerWorker:
        spare.plan = await self._warm_plan(run, slot)
        started = time.monotonic()
        assert spare.output is not None
        worker = await self._create_worker(run, slot, worker_id, spare.output)
        worker.worker_id = worker_id
        self._in_background(self._time_start(worker, started))
        return worker

    async def _takes_warm(self, spare: Spare, run: RunContext, slot: int) -> bool:
        """Whether *run* would start on *slot* the very container warm *spare* is."""
        if spare.plan is None or run.profile != "":
            return False
        try:
            return await self._warm_plan(run, slot) == spare.plan
        except Exception:  # the run's own start says what is wrong, if it is
            return False

    async def _take_spare(
        self, slot: int, run: RunContext, on_output: OutputHandler
    ) -> DockerWorker | None:
        """The slot's spare, started for *run* (or warm, and the same container), or None."""
        spare = self._spares.pop(slot, None)
        if spare is None:
            return None
        if spare.expiry is not None:
            spare.expiry.cancel()
        wanted = spare.key == (run.run_id, run.profile) or spare.output is not None
        if not wanted or not spare.creating or spare.task is None:
            self._drop_spare(spare)
            return None
        try:
            worker = await spare.task
        except Exception as exc:
            log.info("host %s: spare container failed (%s); starting a new one", self.name, exc)
            return None
        if worker is None or not worker.alive:
            self._in_background(discard(spare.task))
            return None
        if spare.output is not None:
            if not await self._takes_warm(spare, run, slot):
                self._in_background(discard(spare.task))
                return None
            spare.output.hand_to(on_output)
        return worker

    def _expire_spare(self, slot: int, spare: Spare) -> None:
        if self._spares.get(slot) is spare:
            del self._spares[slot]
            self._drop_spare(spare)
