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
import itertools
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from farm.faults import crash_message, describe, how_it_ended
from farm.history import History, project_of
from farm.hosts.base import Host, HostError, RunContext, RunError, WorkerConnection
from farm.intake import Unplaceable, prepare
from farm.manifest import RunManifest, TestSpec
from farm.runs import MAX_BATCH, Run, event_batches
from farm.scheduler import Scheduler, Shard, placeable
from farm.slots import ActiveWorker, Held, HostState, exit_info, kill_worker
from farm.spool import EventSpool

# The service and its tests know a run's stream from here.
__all__ = ["MAX_BATCH", "Coordinator", "Run", "event_batches"]

log = logging.getLogger("psyduck.farm")

#: Workers of one run that may fail to start before the run gives up.
MAX_WORKER_START_FAILURES = 3
#: Seconds a run may wait for its client to attach before it is cancelled.
ATTACH_TIMEOUT = 30.0
#: Seconds a new worker may take to import and collect before it counts as failed to start.
READY_TIMEOUT = 600.0
#: Seconds a run whose tests are all reported waits for its workers' farewells.
FAREWELL_TIMEOUT = 120.0
#: Seconds a stopping run's workers get to finish their test and say farewell before
#: they are killed.
STOP_GRACE = 30.0


class Coordinator:
    """Owns hosts, the scheduler and runs; :mod:`farm.service` is its thin HTTP face."""

    def __init__(
        self,
        hosts: list[Host],
        scheduler: Scheduler | None = None,
        *,
        pokedex_urls: tuple[str, ...] = (),
        pokedex_token: str | None = None,
        history: History | None = None,
        spool_dir: str | None = None,
    ) -> None:
        self.pokedex_urls = pokedex_urls
        #: The farm's own durations (:mod:`farm.history`); None: not kept.
        self.history = history
        #: Where runs spill the events their clients have not taken (None: the temp dir).
        self.spool_dir = spool_dir
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

    def _add_slots(self, state: HostState) -> None:
        capacity = state.host.capacity()
        for index in range(state.host.slots):
            self.scheduler.add_slot(
                f"{state.host.name}/{index}", state.host.name, state.host.labels, capacity
            )

    def _wake_hosts_with_room(self) -> None:
        """A shard gave back CPUs or memory: idle slots of its host may fit work now."""
        grown = self.scheduler.hosts_with_room()
        for state in self.hosts:
            if state.host.name in grown:
                for index in range(state.host.slots):
                    if (wakeup := self._wakeups.get(f"{state.host.name}/{index}")) is not None:
                        wakeup.set()

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
            events=EventSpool(directory=self.spool_dir),
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

    # -- slots -----------------------------------------------------------------
    def _wake_all(self) -> None:
        for event in self._wakeups.values():
            event.set()

    async def _slot_loop(self, state: HostState, index: int, slot_id: str) -> None:
        """Keep the slot busy while its host serves; whatever fails, the slot goes on."""
        while not self._closing:
            if state.quarantined:
                await state.serving.wait()
                continue
            held = Held()
            try:
                await self._serve_slot(state, index, slot_id, held)
                await self._hand_back(held)
            except Exception as exc:
                log.exception("slot %s failed", slot_id)
                if held.shard is None and held.worker is None:
                    await asyncio.sleep(1.0)  # nothing to blame: do not spin on a bug
                await self._abandon(state, held, f"slot {slot_id} failed: {describe(exc)}")

    async def _abandon(self, state: HostState, held: Held, detail: str) -> None:
        """Account for what a slot held when it failed unforeseen: a host fault."""
        shard, worker = held.shard, held.worker
        if worker is not None:
            await kill_worker(worker.conn)
            await self._worker_gone(worker, fault=detail)
        if shard is not None and shard.run in self.runs:
            self._host_failed(state, self.runs[shard.run], list(shard.tests), None, detail)

    async def _hand_back(self, held: Held) -> None:
        """The slot stops serving (quarantine, shutdown): requeue its shard, retire its worker."""
        shard, held.shard = held.shard, None
        if shard is not None and (run := self.runs.get(shard.run)) is not None:
            self._requeue(run, shard.tests)
        if held.worker is not None and not self._closing:
            await self._drain(held.worker)
        held.worker = None

    async def _serve_slot(self, state: HostState, index: int, slot_id: str, held: Held) -> None:
        wakeup = self._wakeups[slot_id]
        while not self._closing and not state.quarantined:
            wakeup.clear()
            shard = self.scheduler.next_shard(slot_id)
            held.shard = shard
            self._wake_hosts_with_room()
            worker = held.worker
            if worker is not None and (
                shard is None
                or shard.run != worker.run.id
                or shard.profile != worker.profile
                or not state.host.reuse_workers
            ):
                await self._drain(worker)
                held.worker = None
                if self._closing or state.quarantined:
                    return
            if shard is None:
                self.scheduler.release(slot_id)
                self._wake_hosts_with_room()
                await wakeup.wait()
                continue
            run = self.runs.get(shard.run)
            if run is None:
                held.shard = None
                continue
            if held.worker is None:
                held.worker = await self._start_worker(state, index, run, shard)
                if held.worker is None:
                    held.shard = None  # _start_worker accounted for it
                    continue
            held.shard = None
            if not await self._run_shard(held.worker, shard):
                held.worker = None

    async def _start_worker(
        self, state: HostState, index: int, run: Run, shard: Shard
    ) -> ActiveWorker | None:
        """A ready worker for *shard*, or None once the shard's tests are accounted for."""
        worker_id = self._new_worker_id()
        context = RunContext(
            run.id,
            run.manifest,
            workers=self.total_slots,
            profile=shard.profile,
            pokedex_urls=self.pokedex_urls,
            pokedex_token=self.pokedex_token,
        )
        try:
            conn = await state.host.spawn(context, index, worker_id, self._output_handler(run))
            worker_id = conn.worker_id or worker_id
        except RunError as exc:
            self._fail_run(run, f"it cannot start on host {state.host.name}: {exc}")
            return None
        except Exception as exc:  # HostError, or any bug in a host plugin
            self._host_failed(state, run, list(shard.tests), None, describe(exc))
            return None
        fault = None
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
            # cancellation that shuts the farm down.
            async with asyncio.timeout(READY_TIMEOUT):
                ready = await conn.recv()
        except TimeoutError:
            ready = None
        except Exception as exc:
            ready, fault = None, f"reading from a new worker failed: {describe(exc)}"
        if ready is None or ready.get("t") != "ready":
            await kill_worker(conn)
            info = await exit_info(conn, fault)
            if info.host_lost:
                self._host_failed(state, run, list(shard.tests), None, info.detail)
                return None
            if info.interrupted:  # killed from outside before it was ready: not the run's fault
                self._lose(run, list(shard.tests), f"host {state.host.name}: {info.interrupted}")
                return None
            run.start_failures += 1
            if run.start_failures >= MAX_WORKER_START_FAILURES:
                self._fail_run(run, "its workers could not start:\n" + conn.output())
            else:
                self._requeue(run, shard.tests)
            return None
        state.busy += 1
        run.workers.add(conn)
        if not run.finished:
            run.emit({"t": "worker_ready", "worker": worker_id})
        return ActiveWorker(conn, run, state, shard.profile, worker_id)

    def _output_handler(self, run: Run):
        def forward(data: bytes) -> None:
            if not run.finished:
                run.emit({"t": "output", "data": data})

        return forward

    async def _run_shard(self, worker: ActiveWorker, shard: Shard) -> bool:
        """Feed *shard* to *worker* until it asks for more.  False when the worker is gone."""
        if worker.run.stopping is not None and not worker.run.finished:
            await self._drain(worker)  # ready as its run stops: only its farewell is wanted
            return False
        for test in shard.tests:
            worker.outstanding[test.id] = test
        if worker.run.finished:
            await kill_worker(worker.conn)
            await self._worker_gone(worker)
            return False
        try:
            await worker.conn.fit(shard.tests)
            await worker.conn.send(
                {"t": "run", "tests": [{"id": t.id, "timeout": t.timeout} for t in shard.tests]}
            )
        except Exception as exc:
            await kill_worker(worker.conn)
            await self._worker_gone(worker, fault=f"sending a shard failed: {describe(exc)}")
            return False
        return await self._pump(worker, until="idle")

    async def _drain(self, worker: ActiveWorker) -> None:
        """Let the worker run its held-back test and tear down, then make sure it is gone."""
        if not worker.run.finished and not worker.gone:
            try:
                await worker.conn.send({"t": "drain"})
            except Exception as exc:
                await kill_worker(worker.conn)
                await self._worker_gone(worker, fault=f"draining failed: {describe(exc)}")
                return
            if not await self._pump(worker, until="done"):
                return  # it died on the way; _pump accounted for it
            self._worker_down(worker, None)
        await kill_worker(worker.conn)
        await self._worker_gone(worker)

    async def _pump(self, worker: ActiveWorker, until: str) -> bool:
        """Handle worker messages until *until* arrives (True) or the worker is gone (False)."""
        run = worker.run
        while True:
            try:
                message = await worker.conn.recv()
            except Exception as exc:
                await kill_worker(worker.conn)
                await self._worker_gone(
                    worker, fault=f"reading from a worker failed: {describe(exc)}"
                )
                return False
            if message is None:
                await self._worker_gone(worker)
                return False
            try:
                if self._handle(worker, message, until):
                    return True
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("bad message from worker of run %s: %r", run.id, exc)
                await kill_worker(worker.conn)

    def _handle(self, worker: ActiveWorker, message: dict[str, Any], until: str) -> bool:
        """Act on one worker message; True when it is the one *until* waits for."""
        run = worker.run
        kind = message["t"]
        if kind == until:
            return True
        test_id = message.get("id")
        if kind in ("started", "result", "missing") and test_id not in worker.outstanding:
            raise ValueError(f"{kind} message for {test_id!r}, which the worker was not given")
        if kind == "started":
            self._started(worker, test_id)
        elif kind == "result":
            # A host counts as working again once a test finished on it, not when a
            # worker merely started: a host failing every shard must reach quarantine.
            worker.state.health.worked()
            following = message.get("next")
            if following is not None and following not in worker.outstanding:
                raise ValueError(f"result names {following!r} next, which the worker was not given")
            worker.disarm()
            worker.current = None
            worker.outstanding.pop(test_id, None)
            self._record_duration(run, test_id, message.get("duration"))
            self._report(
                run, test_id, {"t": "result", "id": test_id, "payload": message["payload"]}
            )
            if following is not None:
                self._started(worker, following)
        elif kind == "missing":
            if worker.current == test_id:
                worker.disarm()
                worker.current = None
            worker.outstanding.pop(test_id, None)
            self._crashed(run, test_id, f"psyduck: {test_id}: {message.get('message', '')}")
        elif kind == "warning":
            if not run.finished:
                run.emit({"t": "warning", "data": message["data"]})
        elif kind == "timeout":
            worker.timed_out = message
        elif kind == "farewell":
            worker.farewell = message
        return False

    def _started(self, worker: ActiveWorker, test_id: str) -> None:
        """*test_id* is now running on *worker*: a crash from here on is its crash."""
        worker.started(test_id, lambda: self._in_background(kill_worker(worker.conn)))

    async def _worker_gone(self, worker: ActiveWorker, fault: str | None = None) -> None:
        """Account for a worker that exited, once: blame the running test, requeue the rest.

        *fault*: talking to the worker failed, so it is lost with its host.
        """
        if worker.gone:
            return
        worker.gone = True
        worker.disarm()
        info = await exit_info(worker.conn, fault)
        run = worker.run
        self._worker_down(
            worker, info.detail if info.host_lost else f"the worker {how_it_ended(info)}"
        )
        state = worker.state
        state.busy -= 1
        if run.finished:
            return
        current = worker.current
        unfinished = [t for tid, t in worker.outstanding.items() if tid != current]
        if run.stopping is not None:
            if worker.farewell is not None:
                return  # it ended its session as asked: no test was running
            unfinished = []  # not started, and never to be: the run stops
        if info.host_lost:
            interrupted = run.tests.get(current) if current else None
            self._host_failed(state, run, unfinished, interrupted, info.detail)
            return
        if info.interrupted and current is not None:
            # Stopped from outside (not by its test, not by its host failing): the test runs
            # again and the host stays in service.
            stopped = f"the worker running {current} was stopped: {info.interrupted}"
            self._retry(run, run.tests[current], stopped)
            self._requeue(run, unfinished)
            return
        if current is not None:
            spec = run.tests.get(current)
            message = crash_message(
                current,
                info,
                worker.conn.output(),
                timed_out=worker.timed_out,
                killed_for_timeout=worker.killed_for_timeout,
                timeout=spec.timeout if spec else None,
            )
            self._crashed(run, current, message)
            self._requeue(run, unfinished)
        elif unfinished:
            # Died between tests: nobody to blame, so the rest spends its loss budget.
            self._lose(
                run,
                unfinished,
                f"host {state.host.name}: its worker {how_it_ended(info)} before running it",
            )

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
