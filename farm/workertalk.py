"""The coordinator's conversation with one worker: start it, feed it shards, account for it.

:class:`WorkerTalk` is part of :class:`farm.coordinator.Coordinator` (a mixin),
kept apart because it is one concern of its own: the messages of one worker
from its spawn to its exit, and how each way it can end is accounted for —
its running test blamed, crashed with the reason, or retried; the rest of its
shard requeued.  The run-wide consequences (reporting a test, failing a run,
a host fault) are the coordinator's methods it calls: ``_report``,
``_crashed``, ``_fail_run``, ``_worker_down``, ``_record_duration``, and
:class:`farm.hostfaults.HostFaults`' ``_host_failed``, ``_lose``, ``_retry``
and ``_requeue``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from farm.faults import crash_message, describe, how_it_ended
from farm.hosts.base import RunContext, RunError
from farm.runs import Run
from farm.scheduler import Shard
from farm.slots import ActiveWorker, HostState, exit_info, kill_worker

log = logging.getLogger("psyduck.farm")

#: Workers of one run that may fail to start before the run gives up.
MAX_WORKER_START_FAILURES = 3
#: Seconds a new worker may take to import and collect before it counts as failed to start.
READY_TIMEOUT = 600.0


class WorkerTalk:
    """One worker's life, as the coordinator drives it (see the module docstring)."""

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
            queued=functools.partial(self.scheduler.queued, run.id),
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
            seconds = message.get("duration")
            self._record_duration(run, test_id, seconds)
            event = {"t": "result", "id": test_id, "payload": message["payload"]}
            if isinstance(seconds, int | float) and seconds >= 0:
                event["seconds"] = float(seconds)  # the slot's time, which the client records
            self._report(run, test_id, event)
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
