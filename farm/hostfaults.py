"""What the coordinator does when a host fails: requeue its work within budget, rest it.

:class:`HostFaults` is part of :class:`farm.coordinator.Coordinator` (a mixin),
kept apart because it is one concern of its own: work lost with a host goes
back in the queue (elsewhere first) until its loss budget is spent, the
interrupted test is retried once, tests no host in service can run end at once,
and a host that keeps failing is quarantined, rested (doubling) and readmitted
on probation.  The rules themselves are pure (:mod:`farm.faults`); this is where
they meet the scheduler and the runs' streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from farm.faults import describe
from farm.manifest import TestSpec
from farm.runs import Run
from farm.slots import HostState

log = logging.getLogger("psyduck.farm")


class HostFaults:
    """Lost work and host health, as the coordinator handles them (see the module docstring)."""

    async def _restart(self, state: HostState) -> None:
        """Try again a host that could not start; it serves on probation, or rests longer."""
        try:
            await state.host.start()
        except Exception as exc:
            state.health.readmit()
            state.health.failed(describe(exc))  # on probation: quarantined again, longer
            log.warning("host %s still cannot serve: %s", state.host.name, state.health.problem)
            self._rest(state)
            return
        state.health.readmit()
        if not self._closing:
            log.info("host %s started", state.host.name)
            self._serve(state)
            self._wake_all()

    def _host_failed(
        self,
        state: HostState,
        run: Run,
        unfinished: list[TestSpec],
        interrupted: TestSpec | None,
        detail: str,
    ) -> None:
        """Work of *run* was lost with *state*'s host: requeue it within budget, blame the host."""
        host = state.host.name
        self._lose(run, unfinished, f"host {host}: {detail}", lost_host=host)
        if interrupted is not None:
            lost = f"host {host} was lost while running {interrupted.id} ({detail})"
            self._retry(run, interrupted, lost, lost_host=host)
        if state.health.failed(detail):
            self._quarantine(state)
        self._settle(run)
        self._wake_all()

    def _retry(
        self, run: Run, interrupted: TestSpec, what: str, lost_host: str | None = None
    ) -> None:
        """Run *interrupted* again, once (elsewhere than *lost_host* if any host fits);
        *what* says why, in the notice or in the failure once its retry is spent."""
        if self.scheduler.requeue(run.id, (), interrupted=interrupted, lost_host=lost_host):
            run.emit(
                {"t": "notice", "id": interrupted.id, "message": f"{what}; retrying it elsewhere"}
            )
        else:
            self._crashed(run, interrupted.id, f"{what}, and it had already been retried once")

    def _lose(
        self, run: Run, tests: list[TestSpec], reason: str, lost_host: str | None = None
    ) -> None:
        """Queue *tests* again (elsewhere than *lost_host* if any host fits), but crash
        those whose shard was lost too often."""
        tests = [t for t in tests if t.id not in run.reported]
        again, spent = run.losses.lose(tests, reason)
        for test in spent:
            self._crashed(run, test.id, run.losses.message(test.id))
        self._requeue(run, again, lost_host)

    def _requeue(self, run: Run, tests: Sequence[TestSpec], lost_host: str | None = None) -> None:
        """Put *tests* back in the queue; those no host in service can run end at once."""
        self.scheduler.requeue(run.id, tests, lost_host=lost_host)
        self._settle(run)
        self._wake_all()

    def _settle(self, run: Run) -> None:
        """Crash the queued tests of *run* that no host in service can run, at once."""
        if run.finished:
            return
        stuck = self.scheduler.unplaceable(run.id)
        if not stuck:
            return
        problems = "; ".join(
            f"host {s.host.name} is quarantined ({s.health.problem})"
            for s in self.hosts
            if s.quarantined
        )
        for test in stuck:
            self._crashed(
                run, test.id, f"psyduck: no host in service can run {test.id}: {problems}"
            )

    def _quarantine(self, state: HostState) -> None:
        """Take the host's slots away until its rest is over; its queued work goes elsewhere."""
        health = state.health
        state.serving.clear()
        for index in range(state.host.slots):
            self.scheduler.remove_slot(f"{state.host.name}/{index}")
        log.warning("quarantined host %s for %gs: %s", state.host.name, health.rest, health.problem)
        self._rest(state)
        for run in list(self.runs.values()):
            if run.finished:
                continue
            run.emit(
                {
                    "t": "notice",
                    "message": f"host {state.host.name} quarantined after "
                    f"{health.failures} failures ({health.problem}); "
                    f"it is tried again in {health.rest:g}s",
                }
            )
            self._settle(run)
        self._wake_all()

    def _rest(self, state: HostState) -> None:
        """Try the quarantined host again once its rest is over."""
        loop = asyncio.get_running_loop()
        state.retry_at = loop.time() + state.health.rest
        state.retry = loop.call_later(state.health.rest, self._readmit, state)

    def _readmit(self, state: HostState) -> None:
        """The host's rest is over: its slots serve again, on probation."""
        state.retry = state.retry_at = None
        if self._closing:
            return
        if not state.slot_tasks:  # it never started
            self._in_background(self._restart(state))
            return
        state.health.readmit()
        self._add_slots(state)
        state.serving.set()
        log.info("host %s is back in service", state.host.name)
        self._wake_all()
