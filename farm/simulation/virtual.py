"""An asyncio event loop on a virtual clock: when nothing is ready, time jumps to the next timer.

The simulation runs the farm's real :class:`~farm.coordinator.Coordinator`
(timeouts, rests, slot tasks and all) over simulated hosts whose workers
"run" a test by setting a timer for its duration.  On this loop nothing ever
sleeps: where a real loop would block in ``select`` until its next timer,
this one advances :meth:`VirtualLoop.time` to it and goes on, so hours of a
farm's life pass in the CPU time its decisions cost.

The coordinator plans a run in a thread (:func:`asyncio.to_thread`); a real
thread would run beside virtual time, and the run would arrive at whatever
virtual moment the thread happened to finish.  This loop's default executor
runs such calls inline instead, so a simulation is deterministic.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class InlineExecutor(ThreadPoolExecutor):
    """Runs each submitted call at once, in the loop's own thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without waiting, and moves the loop's clock by the time it would have waited."""

    def __init__(self) -> None:
        super().__init__()
        self.clock: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("the simulation is stuck: nothing is ready and no timer is set")
        assert self.clock is not None
        self.clock.now += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector loop whose :meth:`time` is virtual, starting at 0."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.clock = self
        self.now = 0.0
        self.set_default_executor(InlineExecutor(max_workers=1))

    def time(self) -> float:
        return self.now
