"""A run on the farm: its tests, what was reported, and its stream of events to the client.

The coordinator fills a run's event queue; the service drains it through
:func:`event_batches` into the client's websocket.  Kept apart from the
coordinator, which decides *what* happens to a run, because this is *how* a
client hears about it.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from farm.faults import LossBudget
from farm.hosts.base import WorkerConnection
from farm.manifest import RunManifest, TestSpec
from farm.spool import EventSpool, weight


@dataclass
class Run:
    """One submitted run: its tests by id, those already reported, its live workers.

    Every test gets exactly one final event (``result`` or ``crashed``) unless
    the run is cancelled; ``done`` comes last, once.
    """

    id: str
    manifest: RunManifest
    owner: str
    created: float = field(default_factory=time.time)
    #: Bounded in memory, the rest on disk: a slow client must not grow the farm.
    events: EventSpool = field(default_factory=EventSpool)
    tests: dict[str, TestSpec] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    workers: set[WorkerConnection] = field(default_factory=set)
    start_failures: int = 0
    losses: LossBudget = field(default_factory=LossBudget)
    status: str = "running"
    attached: bool = False
    #: Tests whose estimate came from the farm's duration history.
    from_history: int = 0
    #: All tests are reported; the run waits for its workers' farewells to complete.
    awaiting_farewells: bool = False
    #: Why the run stops (:meth:`Coordinator.stop`): its workers' farewells are awaited.
    stopping: str | None = None

    @property
    def finished(self) -> bool:
        return self.status != "running"

    @property
    def all_reported(self) -> bool:
        """Every test has its final event: the run completes once its workers are down."""
        return len(self.reported) == len(self.tests)

    def emit(self, event: dict[str, Any]) -> None:
        self.events.put_nowait(event)


#: Events sent in one websocket message at most; fast tests finish in bursts.
MAX_BATCH = 256
#: A batch takes no more events once it holds this much (:func:`~farm.spool.weight`): the
#: spool bounds what waits in memory, and a batch must not undo that.
MAX_BATCH_BYTES = 16 * 1024 * 1024
#: Seconds a batch of events waits after its first event for more to join it.
BATCH_LINGER = 0.01


async def event_batches(run: Run, linger: float = BATCH_LINGER):
    """Yield lists of a run's events until its ``done`` event.

    While events keep coming, a batch waits up to *linger* seconds after its
    first event for more: fast tests then travel a few dozen to a message
    instead of one each, which halves what the stream costs both ends in CPU.
    The first event after a quiet spell (the run's first result, above all)
    goes at once with whatever is already queued: the client is idle then, and
    waiting would only delay it.
    """
    loop = asyncio.get_running_loop()
    last_sent = -math.inf
    while True:
        batch = [await run.events.get()]
        size = weight(batch[0])
        now = loop.time()
        deadline = now + linger if now - last_sent < linger else now
        while len(batch) < MAX_BATCH and batch[-1]["t"] != "done" and size < MAX_BATCH_BYTES:
            if not run.events.empty():
                batch.append(run.events.get_nowait())
                size += weight(batch[-1])
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await run.events.get())
                    size += weight(batch[-1])
            except TimeoutError:
                break
        yield batch
        if batch[-1]["t"] == "done":
            return
        last_sent = loop.time()
