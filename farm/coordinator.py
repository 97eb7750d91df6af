"""The coordinator: drives the scheduler, the hosts' workers and each run's event stream.

One asyncio task per slot asks the :class:`~farm.scheduler.Scheduler` for a
shard, makes sure a worker of the right run occupies the slot, feeds it the
shard and pumps its messages into the run's event queue.  Reports are opaque
bytes here: the coordinator never imports pytest.  What it knows is which test a
worker was running, so when a worker dies it can say which test killed it and
put the rest of the shard back in the queue.

Every test of every run ends — with its result, a crash report, or the run's
one error — whatever a host, a spawn or a snapshot does.  Failures are sorted
by whose fault they are (the rules live in :mod:`farm.faults`):

* a **run fault** (:class:`~farm.hosts.base.RunError`: its snapshot cannot be
  pulled, its directory is missing; or its workers keep failing to start) ends
  that run at once: each of its unreported tests crashes with the reason and
  the run is ``done`` with status ``failed`` and that reason.  Its hosts are
  not blamed, and other runs do not notice;
* a **host fault** (:class:`~farm.hosts.base.HostError`, a worker lost with its
  host, or *any other exception* a host raises: a bug in a host plugin must not
  drop tests) puts the slot's tests back in the queue within their loss budget
  and counts against the host, which may be quarantined, and is tried again
  after a rest.  Tests no remaining host can run end at once, crashed with the
  hosts' problems;
* a worker dying in a test blames that test alone.

Whatever a slot holds when something unforeseen fails in its task (a shard not
yet handed to a worker, a worker's outstanding tests) is accounted for as a
host fault before the slot goes on.

Events a client receives (see :mod:`farm.protocol` for the encoding):
``result`` {id, payload}, ``crashed`` {id, message}, ``warning`` {data},
``output`` {data}, ``notice`` {message}, ``worker_ready`` {worker},
``worker_down`` {worker, data, error}, ``done`` {status, reason} with status
``complete``, ``cancelled`` or ``failed``.

``worker_down`` carries the opaque ``data`` of the worker's ``farewell`` (what
its session hands back at its end: pytest-xdist's ``workeroutput``, the files
its tests wrote) and an ``error`` when it ended without one.  A run completes
once its tests are reported *and* its workers are down, so every farewell
reaches the client before ``done`` (within :data:`FAREWELL_TIMEOUT`).  A run its
client *stops* (:meth:`Coordinator.stop`, ``-x``) ends ``cancelled`` the same way:
once its running workers finished their test and said farewell (within
:data:`STOP_GRACE`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from farm.faults import describe
from farm.history import History, project_of
from farm.hostfaults import HostFaults
from farm.hosts.base import Host, HostError, RunContext, WorkerConnection
from farm.intake import Unplaceable, prepare
from farm.manifest import RunManifest, TestSpec
from farm.runs import MAX_BATCH, Run, event_batches
from farm.scheduler import Scheduler, placeable
from farm.slotloop import SlotLoop
from farm.slots import ActiveWorker, HostState, kill_worker
from farm.spool import DISK_BYTES, EventSpool
from farm.workertalk import WorkerTalk

# The service and its tests know a run's stream from here.
__all__ = ["MAX_BATCH", "Coordinator", "Run", "event_batches"]

log = logging.getLogger("psyduck.farm")

#: Seconds a run may wait for its client to attach before it is cancelled.
ATTACH_TIMEOUT = 30.0
#: Seconds a run whose tests are all reported waits for its workers' farewells.
FAREWELL_TIMEOUT = 120.0
#: Seconds a stopping run's workers get to finish their test and say farewell before
#: they are killed.
STOP_GRACE = 30.0


class Coordinator(SlotLoop, WorkerTalk, HostFaults):
    """Owns hosts, the scheduler and runs; :mod:`farm.service` is its thin HTTP face.

    Three concerns live in modules of their own and are mixed in here:
    :class:`~farm.slotloop.SlotLoop` (each slot's task),
    :class:`~farm.workertalk.WorkerTalk` (one worker's life) and
    :class:`~farm.hostfaults.HostFaults` (lost work and host health).
    """

    def __init__(
        self,
        hosts: list[Host],
        scheduler: Scheduler | None = None,
        *,
        pokedex_urls: tuple[str, ...] = (),
        pokedex_token: str | None = None,
        history: History | None = None,
        spool_dir: str | None = None,
        spool_max_bytes: int = DISK_BYTES,
    ) -> None:
        self.pokedex_urls = pokedex_urls
        #: The farm's own durations (:mod:`farm.history`); None: not kept.
        self.history = history
        #: Where runs spill the events their clients have not taken (None: the temp dir).
        self.spool_dir = spool_dir
        #: A run whose spool file grows past this gets no new shards (farm.spool).
        self.spool_max_bytes = spool_max_bytes
        self.pokedex_token = pokedex_token
        self.hosts = [HostState(h) for h in hosts]
        for host in hosts:
            host.new_worker_id = self._new_worker_id
        min_seconds = max((h.min_shard_seconds for h in hosts), default=0.0)
        self.scheduler = scheduler or Scheduler(min_shard_seconds=min_seconds)
        self.runs: dict[str, Run] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._worker_ids = itertools.count()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    def _new_worker_id(self) -> str:
        """``gw<N>``, unique in the farm: how a client tells its workers (xdist nodes) apart."""
        return f"gw{next(self._worker_ids)}"

    @property
    def total_slots(self) -> int:
        return sum(h.host.slots for h in self.hosts if not h.quarantined)

    async def start(self) -> None:
        """Connect every host; one that cannot serve is left out, with its reason, and
        tried again after a rest, as a quarantined host is.

        Raises :class:`HostError` only when no host at all can serve.
        """
        problems = []
        for state in self.hosts:
            try:
                await state.host.start()
            except Exception as exc:  # HostError, or any bug in a host plugin
                state.health.quarantined = True
                state.health.problem = describe(exc)
                problems.append(state.health.problem)
                log.warning("host %s cannot serve: %s", state.host.name, state.health.problem)
                continue
            self._serve(state)
        if len(problems) == len(self.hosts):
            raise HostError("no host can serve:\n  " + "\n  ".join(problems))
        for state in self.hosts:
            if state.quarantined:
                self._rest(state)

    def _serve(self, state: HostState) -> None:
        """Put a started host's slots in service, each with its task."""
        self._add_slots(state)
        state.serving.set()
        for index in range(state.host.slots):
            slot_id = f"{state.host.name}/{index}"
            self._wakeups[slot_id] = asyncio.Event()
            state.slot_tasks.append(
                asyncio.create_task(self._slot_loop(state, index, slot_id), name=slot_id)
            )

    def _add_slots(self, state: HostState) -> None:
        capacity = state.host.capacity()
        for index in range(state.host.slots):
            self.scheduler.add_slot(
                f"{state.host.name}/{index}", state.host.name, state.host.labels, capacity
            )

    async def close(self) -> None:
        self._closing = True
        for run in list(self.runs.values()):
            await self.cancel(run.id, "the farm is shutting down")
        for state in self.hosts:
            if state.retry is not None:
                state.retry.cancel()
            for task in state.slot_tasks:
                task.cancel()
            await asyncio.gather(*state.slot_tasks, return_exceptions=True)
            await state.host.close()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _in_background(self, coro) -> None:
        """Run *coro* from a timer callback, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- runs ------------------------------------------------------------------
    async def submit(self, manifest: RunManifest, owner: str = "") -> Run:
        """Queue a run; raise :class:`Unplaceable` (queueing nothing) if no host can run some.

        Planning touches every test, so it runs in a thread: a huge manifest
        must not silence the other runs' streams while it is admitted.
        """
        from_history = 0
        if self.history is not None:
            manifest, from_history = await asyncio.to_thread(self.history.with_estimates, manifest)
        plan, tests = await asyncio.to_thread(prepare, manifest, self.scheduler.planner())
        run_id = secrets.token_hex(8)
        unplaceable = self.scheduler.install(run_id, plan)
        if unplaceable:
            raise Unplaceable(unplaceable, self._waiting_hosts(unplaceable))
        run = Run(
            run_id,
            manifest,
            owner,
            tests=tests,
            from_history=from_history,
            events=EventSpool(
                directory=self.spool_dir,
                disk_bytes=self.spool_max_bytes,
                on_pressure=functools.partial(self._hold_back, run_id),
            ),
        )
        self.runs[run_id] = run
        for state in self.hosts:
            if state.quarantined:
                run.emit(
                    {
                        "t": "notice",
                        "message": f"host {state.host.name} is quarantined: {state.health.problem}",
                    }
                )
        asyncio.get_running_loop().call_later(ATTACH_TIMEOUT, self._cancel_unattached, run_id)
        self._wake_all()
        return run

    def warm(self, manifest: RunManifest) -> int:
        """Start every slot's worker ahead for *manifest*, a run (without its tests) whose
        client is still collecting; how many slots were asked.

        Only an idle farm warms: the embedded farm, at its session's start.  Hosts
        hand a warm worker to the run only if it is the very worker the run would get
        (:meth:`~farm.hosts.base.Host.warm`).
        """
        if self.runs or self._closing:
            return 0
        context = RunContext(
            "",
            manifest,
            workers=self.total_slots,
            pokedex_urls=self.pokedex_urls,
            pokedex_token=self.pokedex_token,
        )
        asked = 0
        for state in self.hosts:
            if state.quarantined:
                continue
            for slot in range(state.host.slots):
                self._in_background(state.host.warm(context, slot))
                asked += 1
        return asked

    def _hold_back(self, run_id: str, held: bool) -> None:
        """The run's client lags (held) or caught up: see :mod:`farm.spool`."""
        log.info("run %s: %s", run_id, "held back for its client" if held else "resumed")
        self.scheduler.hold_back(run_id, held)
        if not held:
            self._wake_all()

    # -- the duration history (farm.history): each result's duration goes in ----------
    def _record_duration(self, run: Run, test_id: str, seconds: Any) -> None:
        if self.history is not None:
            self.history.record(project_of(run.manifest), test_id, seconds)

    def _waiting_hosts(self, tests: Sequence[TestSpec]) -> list[str]:
        """Quarantined hosts that could run some of *tests*, with their problems and retry time."""
        now = asyncio.get_running_loop().time()
        waiting = []
        for state in self.hosts:
            if not state.quarantined or state.retry_at is None:
                continue
            if any(placeable(t.requires, state.host.labels) for t in tests[:1000]):
                waiting.append(
                    f"host {state.host.name}: {state.health.problem} "
                    f"(tried again in {max(0.0, state.retry_at - now):.0f}s)"
                )
        return waiting

    def _cancel_unattached(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None and not run.attached and not run.finished:
            self._in_background(self.cancel(run_id, "no client attached to the run"))

    async def cancel(self, run_id: str, reason: str) -> None:
        run = self.runs.get(run_id)
        if run is None or run.finished:
            return
        self.scheduler.cancel(run_id)
        self._finish(run, "cancelled", reason)
        await asyncio.gather(*(kill_worker(w) for w in list(run.workers)))

    async def stop(self, run_id: str, reason: str) -> None:
        """Cancel *run_id* gracefully: nothing more starts; running workers finish their
        test and say farewell (its ``worker_down`` reaches the client), within
        :data:`STOP_GRACE`; then the run is ``cancelled``, as :meth:`cancel` ends it.

        What a worker's session hands back at its end (its ``workeroutput``, files) is
        then not lost to a client that stops at its first failure.  Tests a worker was
        given but did not start are neither run nor reported.
        """
        run = self.runs.get(run_id)
        if run is None or run.finished or run.stopping is not None:
            return
        run.stopping = reason
        self.scheduler.cancel(run_id)
        if not run.workers:
            self._finish(run, "cancelled", reason)
            return
        asyncio.get_running_loop().call_later(STOP_GRACE, self._stop_now, run)
        self._wake_all()  # idle slots drain the workers they hold
        for conn in list(run.workers):
            self._in_background(self._tell_to_stop(conn))

    async def _tell_to_stop(self, conn: WorkerConnection) -> None:
        try:
            await conn.send({"t": "stop"})
        except Exception as exc:  # gone already: its slot accounts for it
            log.debug("stop not delivered: %s", describe(exc))

    def _stop_now(self, run: Run) -> None:
        """The grace of a stopping run is over: cancel it, killing its workers."""
        if not run.finished:
            self._in_background(self.cancel(run.id, run.stopping or "stopped"))

    def _finish(self, run: Run, status: str, reason: str = "") -> None:
        run.status = status
        run.emit({"t": "done", "status": status, "reason": reason})
        self.scheduler.forget(run.id)
        asyncio.get_running_loop().call_later(60, self.runs.pop, run.id, None)

    def _fail_run(self, run: Run, reason: str) -> None:
        """End *run* for a fault of its own: a notice, each unreported test crashed, and
        ``done`` with status ``failed``, all naming *reason*."""
        if run.finished:
            return
        log.warning("run %s failed: %s", run.id, reason)
        self.scheduler.cancel(run.id)
        run.emit({"t": "notice", "message": f"the run failed: {reason}"})
        message = f"psyduck: the run failed: {reason}"
        for test_id in run.tests:
            if test_id not in run.reported:
                run.reported.add(test_id)
                run.emit({"t": "crashed", "id": test_id, "message": message})
        self._finish(run, "failed", reason)
        for conn in list(run.workers):
            self._in_background(kill_worker(conn))

    def _report(self, run: Run, test_id: str, event: dict[str, Any]) -> None:
        """Send a test's final event once, and finish the run when it was the last."""
        if run.finished or test_id in run.reported:
            return
        run.reported.add(test_id)
        run.emit(event)
        self.scheduler.finished(run.id, test_id)
        if run.all_reported:
            self._complete_when_workers_down(run)

    def _complete_when_workers_down(self, run: Run) -> None:
        """Complete *run* now if no worker of it is up, else once the last is down (bounded)."""
        if run.finished:
            return
        if not run.workers:
            self._finish(run, "complete")
        elif not run.awaiting_farewells:
            run.awaiting_farewells = True
            asyncio.get_running_loop().call_later(
                FAREWELL_TIMEOUT, self._stop_waiting_for_farewells, run
            )

    def _stop_waiting_for_farewells(self, run: Run) -> None:
        if run.finished:
            return
        log.warning("run %s: workers still up %gs after its last test", run.id, FAREWELL_TIMEOUT)
        self._finish(run, "complete")
        for conn in list(run.workers):
            self._in_background(kill_worker(conn))

    def _worker_down(self, worker: ActiveWorker, error: str | None) -> None:
        """Tell the client *worker* is down, with its farewell's data or what went wrong."""
        if worker.reported_down:
            return
        worker.reported_down = True
        run = worker.run
        run.workers.discard(worker.conn)
        farewell = worker.farewell
        if farewell is not None:  # it said goodbye: however it exited then, that is its word
            error = farewell.get("error")
        if not run.finished:
            run.emit(
                {
                    "t": "worker_down",
                    "worker": worker.id,
                    "data": farewell.get("data") if farewell else None,
                    "error": error,
                }
            )
        if run.all_reported:
            self._complete_when_workers_down(run)
        elif run.stopping is not None and not run.workers and not run.finished:
            self._finish(run, "cancelled", run.stopping)

    def _crashed(self, run: Run, test_id: str, message: str) -> None:
        self._report(run, test_id, {"t": "crashed", "id": test_id, "message": message})

    # -- introspection ---------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        return {
            "t": "status",
            "hosts": [
                {
                    **s.host.describe(),
                    "busy": s.busy,
                    "quarantined": s.quarantined,
                    "problem": s.health.problem,
                    "failures": s.health.failures,
                    # Seconds until a quarantined host is tried again (None: not scheduled).
                    "retry_in": None if s.retry_at is None else max(0.0, s.retry_at - now),
                }
                for s in self.hosts
            ],
            "runs": [
                {
                    "id": r.id,
                    "name": r.manifest.name,
                    "owner": r.owner,
                    "status": r.status,
                    "tests": len(r.tests),
                    "done": len(r.reported),
                    "queued": self.scheduler.queued(r.id),
                    "workers": len(r.workers),
                    # Events the client has not taken yet (held back by flow control).
                    "events": r.events.qsize(),
                    # Tests scheduled by the farm's duration history (the client had none).
                    "from_history": r.from_history,
                }
                for r in self.runs.values()
            ],
        }
