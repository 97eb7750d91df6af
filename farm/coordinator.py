"""The coordinator: drives the scheduler, the hosts' workers and each run's event stream.

One asyncio task per slot asks the :class:`~farm.scheduler.Scheduler` for a
shard, makes sure a worker of the right run occupies the slot, feeds it the
shard and pumps its messages into the run's event queue.  Reports are opaque
bytes here: the coordinator never imports pytest.  What it knows is which test a
worker was running, so when a worker dies it can say which test killed it and
put the rest of the shard back in the queue.

Events a client receives (see :mod:`farm.protocol` for the encoding):
``result`` {id, payload}, ``crashed`` {id, message}, ``warning`` {data},
``output`` {data}, ``notice`` {message}, ``done`` {status}.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from farm.hosts.base import ExitInfo, Host, HostError, RunContext, WorkerConnection
from farm.manifest import RunManifest, TestSpec
from farm.scheduler import Scheduler, Shard

log = logging.getLogger("psyduck.farm")

#: Seconds a worker gets past a test's timeout to report its own stack before it is killed.
TIMEOUT_GRACE = 5.0
#: Consecutive host failures after which a host is quarantined.
QUARANTINE_AFTER = 3
#: Workers of one run that may fail to start before the run gives up.
MAX_WORKER_START_FAILURES = 3
#: Seconds a run may wait for its client to attach before it is cancelled.
ATTACH_TIMEOUT = 30.0
#: Seconds a new worker may take to import and collect before it counts as failed to start.
READY_TIMEOUT = 600.0


@dataclass
class Run:
    id: str
    manifest: RunManifest
    owner: str
    created: float = field(default_factory=time.time)
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    tests: dict[str, TestSpec] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    workers: set[WorkerConnection] = field(default_factory=set)
    start_failures: int = 0
    status: str = "running"
    attached: bool = False

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def emit(self, event: dict[str, Any]) -> None:
        self.events.put_nowait(event)


@dataclass
class _HostState:
    host: Host
    failures: int = 0
    quarantined: bool = False
    problem: str = ""
    busy: int = 0
    slot_tasks: list[asyncio.Task[None]] = field(default_factory=list)


class _ActiveWorker:
    """A worker bound to one run, with the bookkeeping needed when it dies."""

    def __init__(self, conn: WorkerConnection, run: Run, state: _HostState, profile: str) -> None:
        self.conn = conn
        self.run = run
        self.state = state
        self.host = state.host
        self.profile = profile
        self.outstanding: dict[str, TestSpec] = {}
        self.current: str | None = None
        self.timed_out: dict[str, Any] | None = None
        self.hard_timeout: asyncio.TimerHandle | None = None
        self.killed_for_timeout: str | None = None


class Coordinator:
    """Owns hosts, the scheduler and runs; :mod:`farm.service` is its thin HTTP face."""

    def __init__(
        self,
        hosts: list[Host],
        scheduler: Scheduler | None = None,
        *,
        pokedex_urls: tuple[str, ...] = (),
        pokedex_token: str | None = None,
    ) -> None:
        self.pokedex_urls = pokedex_urls
        self.pokedex_token = pokedex_token
        self.hosts = [_HostState(h) for h in hosts]
        min_seconds = max((h.min_shard_seconds for h in hosts), default=0.0)
        self.scheduler = scheduler or Scheduler(min_shard_seconds=min_seconds)
        self.runs: dict[str, Run] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._worker_ids = itertools.count()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    @property
    def total_slots(self) -> int:
        return sum(h.host.slots for h in self.hosts if not h.quarantined)

    async def start(self) -> None:
        """Connect every host; one that cannot serve is quarantined, with its reason.

        Raises :class:`HostError` only when no host at all can serve.
        """
        problems = []
        for state in self.hosts:
            try:
                await state.host.start()
            except HostError as exc:
                state.quarantined = True
                state.problem = str(exc)
                problems.append(str(exc))
                log.warning("host %s cannot serve: %s", state.host.name, exc)
                continue
            for index in range(state.host.slots):
                slot_id = f"{state.host.name}/{index}"
                self.scheduler.add_slot(slot_id, state.host.name, state.host.labels)
                self._wakeups[slot_id] = asyncio.Event()
                state.slot_tasks.append(
                    asyncio.create_task(self._slot_loop(state, index, slot_id), name=slot_id)
                )
        if len(problems) == len(self.hosts):
            raise HostError("no host can serve:\n  " + "\n  ".join(problems))

    async def close(self) -> None:
        self._closing = True
        for run in list(self.runs.values()):
            await self.cancel(run.id, "the farm is shutting down")
        for state in self.hosts:
            for task in state.slot_tasks:
                task.cancel()
            await asyncio.gather(*state.slot_tasks, return_exceptions=True)
            await state.host.close()

    def _in_background(self, coro) -> None:
        """Run *coro* from a timer callback, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- runs ------------------------------------------------------------------
    def submit(self, manifest: RunManifest, owner: str = "") -> tuple[Run | None, list[TestSpec]]:
        """Queue a run; returns (run, []) or (None, tests no host can run)."""
        run_id = secrets.token_hex(8)
        unplaceable = self.scheduler.add_run(run_id, manifest.tests)
        if unplaceable:
            return None, unplaceable
        run = Run(run_id, manifest, owner, tests={t.id: t for t in manifest.tests})
        self.runs[run_id] = run
        for state in self.hosts:
            if state.quarantined:
                run.emit(
                    {
                        "t": "notice",
                        "message": f"host {state.host.name} is quarantined: {state.problem}",
                    }
                )
        asyncio.get_running_loop().call_later(ATTACH_TIMEOUT, self._cancel_unattached, run_id)
        self._wake_all()
        return run, []

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
        await asyncio.gather(*(w.kill() for w in list(run.workers)), return_exceptions=True)

    def _finish(self, run: Run, status: str, reason: str = "") -> None:
        run.status = status
        run.emit({"t": "done", "status": status, "reason": reason})
        self.scheduler.forget(run.id)
        asyncio.get_running_loop().call_later(60, self.runs.pop, run.id, None)

    def _report(self, run: Run, test_id: str, event: dict[str, Any]) -> None:
        """Send a test's final event once, and finish the run when it was the last."""
        if run.finished or test_id in run.reported:
            return
        run.reported.add(test_id)
        run.emit(event)
        self.scheduler.finished(run.id, test_id)
        if len(run.reported) == len(run.tests):
            self._finish(run, "complete")

    def _crashed(self, run: Run, test_id: str, message: str) -> None:
        self._report(run, test_id, {"t": "crashed", "id": test_id, "message": message})

    # -- slots -----------------------------------------------------------------
    def _wake_all(self) -> None:
        for event in self._wakeups.values():
            event.set()

    async def _slot_loop(self, state: _HostState, index: int, slot_id: str) -> None:
        """Keep the slot busy; a bug in one pass is logged and never ends the slot."""
        while not self._closing and not state.quarantined:
            try:
                await self._serve_slot(state, index, slot_id)
            except Exception:
                log.exception("slot %s failed; restarting it", slot_id)
                await asyncio.sleep(1.0)

    async def _serve_slot(self, state: _HostState, index: int, slot_id: str) -> None:
        worker: _ActiveWorker | None = None
        wakeup = self._wakeups[slot_id]
        while not self._closing and not state.quarantined:
            wakeup.clear()
            shard = self.scheduler.next_shard(slot_id)
            if worker is not None and (
                shard is None
                or shard.run != worker.run.id
                or shard.profile != worker.profile
                or not state.host.reuse_workers
            ):
                await self._drain(worker)
                worker = None
                if self._closing:
                    return
            if shard is None:
                self.scheduler.release(slot_id)
                await wakeup.wait()
                continue
            run = self.runs[shard.run]
            if worker is None:
                worker = await self._start_worker(state, index, run, shard)
                if worker is None:
                    continue
            if not await self._run_shard(worker, shard):
                worker = None

    async def _start_worker(
        self, state: _HostState, index: int, run: Run, shard: Shard
    ) -> _ActiveWorker | None:
        worker_id = f"gw{next(self._worker_ids)}"
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
        except HostError as exc:
            self._host_failed(state, run, list(shard.tests), None, str(exc))
            return None
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
            # cancellation that shuts the farm down.
            async with asyncio.timeout(READY_TIMEOUT):
                ready = await conn.recv()
        except TimeoutError:
            ready = None
        if ready is None or ready.get("t") != "ready":
            await conn.kill()
            info = await conn.wait()
            if info.host_lost:
                self._host_failed(state, run, list(shard.tests), None, info.detail)
                return None
            run.start_failures += 1
            if run.start_failures >= MAX_WORKER_START_FAILURES:
                message = "psyduck: workers could not start:\n" + conn.output()
                for test in run.tests.values():
                    self._crashed(run, test.id, message)
            else:
                self.scheduler.requeue(run.id, shard.tests)
                self._wake_all()
            return None
        state.busy += 1
        run.workers.add(conn)
        return _ActiveWorker(conn, run, state, shard.profile)

    def _output_handler(self, run: Run):
        def forward(data: bytes) -> None:
            if not run.finished:
                run.emit({"t": "output", "data": data})

        return forward

    async def _run_shard(self, worker: _ActiveWorker, shard: Shard) -> bool:
        """Feed *shard* to *worker* until it asks for more.  False when the worker is gone."""
        if worker.run.finished:
            await worker.conn.kill()
            await self._worker_gone(worker)
            return False
        for test in shard.tests:
            worker.outstanding[test.id] = test
        await worker.conn.fit(shard.tests)
        await worker.conn.send(
            {"t": "run", "tests": [{"id": t.id, "timeout": t.timeout} for t in shard.tests]}
        )
        return await self._pump(worker, until="idle")

    async def _drain(self, worker: _ActiveWorker) -> None:
        """Let the worker run its held-back test and tear down, then make sure it is gone."""
        if not worker.run.finished:
            await worker.conn.send({"t": "drain"})
            if not await self._pump(worker, until="done"):
                return  # it died on the way; _pump accounted for it
        await worker.conn.kill()
        await self._worker_gone(worker)

    async def _pump(self, worker: _ActiveWorker, until: str) -> bool:
        """Handle worker messages until *until* arrives (True) or the worker is gone (False)."""
        run = worker.run
        while True:
            message = await worker.conn.recv()
            if message is None:
                await self._worker_gone(worker)
                return False
            try:
                if self._handle(worker, message, until):
                    return True
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("bad message from worker of run %s: %r", run.id, exc)
                await worker.conn.kill()

    def _handle(self, worker: _ActiveWorker, message: dict[str, Any], until: str) -> bool:
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
            worker.state.failures = 0
            following = message.get("next")
            if following is not None and following not in worker.outstanding:
                raise ValueError(f"result names {following!r} next, which the worker was not given")
            self._disarm_hard_timeout(worker)
            worker.current = None
            worker.outstanding.pop(test_id, None)
            self._report(
                run, test_id, {"t": "result", "id": test_id, "payload": message["payload"]}
            )
            if following is not None:
                self._started(worker, following)
        elif kind == "missing":
            if worker.current == test_id:
                self._disarm_hard_timeout(worker)
                worker.current = None
            worker.outstanding.pop(test_id, None)
            self._crashed(run, test_id, f"psyduck: {test_id}: {message.get('message', '')}")
        elif kind == "warning":
            if not run.finished:
                run.emit({"t": "warning", "data": message["data"]})
        elif kind == "timeout":
            worker.timed_out = message
        return False

    def _started(self, worker: _ActiveWorker, test_id: str) -> None:
        """*test_id* is now running on *worker*: a crash from here on is its crash."""
        worker.current = test_id
        self._arm_hard_timeout(worker, test_id)

    def _arm_hard_timeout(self, worker: _ActiveWorker, test_id: str) -> None:
        spec = worker.run.tests.get(test_id)
        if spec is None or spec.timeout is None:
            return

        def expire() -> None:
            worker.killed_for_timeout = test_id
            self._in_background(worker.conn.kill())

        worker.hard_timeout = asyncio.get_running_loop().call_later(
            spec.timeout + TIMEOUT_GRACE, expire
        )

    def _disarm_hard_timeout(self, worker: _ActiveWorker) -> None:
        if worker.hard_timeout is not None:
            worker.hard_timeout.cancel()
            worker.hard_timeout = None

    async def _worker_gone(self, worker: _ActiveWorker) -> None:
        """Account for a worker that exited: blame the running test, requeue the rest."""
        self._disarm_hard_timeout(worker)
        info = await worker.conn.wait()
        run = worker.run
        run.workers.discard(worker.conn)
        state = worker.state
        state.busy -= 1
        if run.finished:
            return
        current = worker.current
        unfinished = [t for tid, t in worker.outstanding.items() if tid != current]
        if info.host_lost:
            interrupted = run.tests.get(current) if current else None
            self._host_failed(state, run, unfinished, interrupted, info.detail)
            return
        if info.interrupted and current is not None:
            self._retry_interrupted(run, run.tests[current], unfinished, info.interrupted)
            return
        if current is not None:
            self._crashed(run, current, self._crash_message(worker, current, info))
        if unfinished:
            self.scheduler.requeue(run.id, unfinished)
            self._wake_all()

    def _crash_message(self, worker: _ActiveWorker, test_id: str, info: ExitInfo) -> str:
        output = worker.conn.output().strip()
        if worker.timed_out and worker.timed_out.get("id") == test_id:
            return (
                f"Timeout: {test_id} ran longer than {worker.timed_out['timeout']:g}s "
                "and was killed.\n"
                f"Stack of the test when it was killed (most recent call last):\n"
                f"{worker.timed_out['stack']}"
            )
        if worker.killed_for_timeout == test_id:
            timeout = worker.run.tests[test_id].timeout
            return (
                f"Timeout: {test_id} ran longer than {timeout:g}s and did not answer; "
                "the worker was killed (its stack could not be taken)."
            )
        if info.oom_killed:
            limit = f" of {info.memory_limit // (1024 * 1024)} MiB" if info.memory_limit else ""
            return (
                f"worker was killed for memory while running {test_id}: "
                f"it exceeded its limit{limit}"
            )
        if info.signal is not None:
            how = f"killed by signal {signal.Signals(info.signal).name}"
        else:
            how = f"exited with status {info.status}"
        text = f"worker crashed while running {test_id}: {how}"
        return f"{text}\n\nworker output:\n{output}" if output else text

    def _retry_interrupted(
        self, run: Run, interrupted: TestSpec, unfinished: list[TestSpec], reason: str
    ) -> None:
        """A worker stopped from outside (not by its test, not by its host failing): the
        test it was running runs again, once, and the host stays in service."""
        if self.scheduler.requeue(run.id, unfinished, interrupted=interrupted):
            run.emit(
                {
                    "t": "notice",
                    "id": interrupted.id,
                    "message": f"the worker running {interrupted.id} was stopped: {reason}; "
                    "retrying it elsewhere",
                }
            )
        else:
            self._crashed(
                run,
                interrupted.id,
                f"the worker running {interrupted.id} was stopped: {reason}, "
                "and it had already been retried once",
            )
        self._wake_all()

    def _host_failed(
        self,
        state: _HostState,
        run: Run,
        unfinished: list[TestSpec],
        interrupted: TestSpec | None,
        detail: str,
    ) -> None:
        host = state.host.name
        state.failures += 1
        if interrupted is not None:
            retried = self.scheduler.requeue(
                run.id, unfinished, interrupted=interrupted, lost_host=host
            )
            if retried:
                run.emit(
                    {
                        "t": "notice",
                        "id": interrupted.id,
                        "message": f"host {host} was lost while running {interrupted.id} "
                        f"({detail}); retrying it elsewhere",
                    }
                )
            else:
                self._crashed(
                    run,
                    interrupted.id,
                    f"host {host} was lost while running {interrupted.id} ({detail}), "
                    "and it had already been retried once",
                )
        else:
            self.scheduler.requeue(run.id, unfinished)
        if state.failures >= QUARANTINE_AFTER and not state.quarantined:
            self._quarantine(state, detail)
        self._wake_all()

    def _quarantine(self, state: _HostState, detail: str) -> None:
        state.quarantined = True
        state.problem = detail
        for index in range(state.host.slots):
            self.scheduler.remove_slot(f"{state.host.name}/{index}")
        log.warning("quarantined host %s: %s", state.host.name, detail)
        for run in list(self.runs.values()):
            if run.finished:
                continue
            run.emit(
                {
                    "t": "notice",
                    "message": f"host {state.host.name} quarantined after "
                    f"{state.failures} failures ({detail})",
                }
            )
            for test in self.scheduler.unplaceable(run.id):
                self._crashed(
                    run,
                    test.id,
                    f"no remaining host can run {test.id}: host {state.host.name} was quarantined",
                )

    # -- introspection ---------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "t": "status",
            "hosts": [
                {
                    **s.host.describe(),
                    "busy": s.busy,
                    "quarantined": s.quarantined,
                    "problem": s.problem,
                    "failures": s.failures,
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
                }
                for r in self.runs.values()
            ],
        }


#: Events sent in one websocket message at most; fast tests finish in bursts.
MAX_BATCH = 256
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
        now = loop.time()
        deadline = now + linger if now - last_sent < linger else now
        while len(batch) < MAX_BATCH and batch[-1]["t"] != "done":
            if not run.events.empty():
                batch.append(run.events.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await run.events.get())
            except TimeoutError:
                break
        yield batch
        if batch[-1]["t"] == "done":
            return
        last_sent = loop.time()
