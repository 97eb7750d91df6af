"""Every test of every run ends, whatever the hosts do: a state machine over the real coordinator.

The :class:`~farm.coordinator.Coordinator`, its scheduler and its event
queues are the real ones; only the hosts are fakes, because a real host
cannot be made to fail in every way on cue.  A fake host follows a plan the
state machine writes: its spawns raise any exception type, hand back workers
that never become ready or are lost at once; its workers crash in a test, are
lost with their host mid-shard, raise from any call, or never say how they
ended.  Several slots fail at once, hosts are quarantined while another of
their slots is still failing, runs are cancelled or stopped, quarantines
end.  At the end, with the plans spent, every run must be ``done`` and every
test must have exactly one final event (only a cancelled or stopped run may
leave tests without one), a stopped run only once every worker is down; at
every step no queued test is without a host.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from farm import slots
from farm.client import FarmClient, FarmError
from farm.coordinator import Coordinator, Run
from farm.embedded import start_embedded_farm
from farm.hosts.base import ExitInfo, Host, HostError, RunContext, RunError, WorkerConnection
from farm.intake import Unplaceable
from farm.manifest import RunManifest, TestSpec, WorkerSpec

#: What a spawn does: hand back a worker, or fail in one of these ways.
SPAWNS = [
    "ok",
    "host-error",
    "run-error",
    "key-error",
    "zero-division",
    "os-error",
    "not-ready",
    "lost-at-start",
    "ready-raises",
]
#: What a worker does at one test (or at a call about to be made).
FATES = ["pass", "crash", "lost", "recv-raises", "send-raises", "kill-raises", "wait-raises"]
BUGS = {"key-error": KeyError("slot"), "zero-division": ZeroDivisionError("division by zero")}


class FakeWorker(WorkerConnection):
    """A worker that answers like a real one, or fails as its host's plan says."""

    def __init__(self, host: FakeHost, first: Any) -> None:
        self.host = host
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.inbox.put_nowait(first)
        self.exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()
        self.kill_raises = False
        self.wait_raises = False

    def end(self, info: ExitInfo) -> None:
        if not self.exit.done():
            self.exit.set_result(info)
        self.inbox.put_nowait(None)

    async def send(self, message: dict[str, Any]) -> None:
        if message["t"] == "stop":
            if not self.exit.done():  # it ran its tests at once: only its farewell is left
                self.inbox.put_nowait({"t": "farewell", "data": b"workeroutput"})
                self.inbox.put_nowait({"t": "done"})
                self.end(ExitInfo(status=0))
            return
        if message["t"] == "drain":
            self.inbox.put_nowait({"t": "farewell", "data": b"workeroutput"})
            self.inbox.put_nowait({"t": "done"})
            return
        tests = [t["id"] for t in message["tests"]]
        for index, test_id in enumerate(tests):
            fate = self.host.fate()
            if fate == "send-raises" and index == 0:
                raise ConnectionResetError("fake channel broke")
            if index == 0:
                self.inbox.put_nowait({"t": "started", "id": test_id})
            if fate == "crash":
                self.end(ExitInfo(status=3))
                return
            if fate == "lost":
                self.end(ExitInfo(host_lost=True, detail=f"fake host {self.host.name} vanished"))
                return
            if fate == "recv-raises":
                self.inbox.put_nowait(OSError("fake channel error"))
                return
            self.kill_raises |= fate == "kill-raises"
            self.wait_raises |= fate == "wait-raises"
            following = tests[index + 1] if index + 1 < len(tests) else None
            self.inbox.put_nowait(
                {"t": "result", "id": test_id, "payload": b"ok", "next": following}
            )
        self.inbox.put_nowait({"t": "idle"})

    async def recv(self) -> dict[str, Any] | None:
        message = await self.inbox.get()
        if isinstance(message, Exception):
            raise message
        if message is None:
            self.inbox.put_nowait(None)  # closed stays closed
        return message

    async def kill(self) -> None:
        if self.kill_raises:
            self.kill_raises = False
            raise RuntimeError("fake kill failed")
        self.end(ExitInfo(signal=9))

    async def wait(self) -> ExitInfo:
        if self.wait_raises:
            raise RuntimeError("fake wait failed")
        return await self.exit

    def output(self) -> str:
        return "fake worker output"


class FakeHost(Host):
    """A host whose spawns and workers follow the plans the state machine gives it."""

    def __init__(self, name: str, slots: int, reuse: bool) -> None:
        self.name = name
        self.slots = slots
        self.labels = {}
        self.reuse_workers = reuse
        self.spawns: collections.deque[str] = collections.deque()
        self.fates: collections.deque[str] = collections.deque()
        self.workers: list[FakeWorker] = []

    def fate(self) -> str:
        return self.fates.popleft() if self.fates else "pass"

    async def spawn(
        self, run: RunContext, slot: int, worker_id: str, on_output
    ) -> WorkerConnection:
        await asyncio.sleep(0)
        action = self.spawns.popleft() if self.spawns else "ok"
        if action == "host-error":
            raise HostError(f"fake host {self.name} is down")
        if action == "run-error":
            raise RunError(f"fake snapshot of run {run.run_id} is corrupt")
        if action in BUGS:
            raise BUGS[action]
        if action == "os-error":
            raise FileNotFoundError(2, "No such file or directory", "/nowhere")
        worker = FakeWorker(self, {"t": "ready"})
        self.workers.append(worker)
        if action == "not-ready":
            worker.inbox.get_nowait()
            worker.end(ExitInfo(status=1))
        elif action == "lost-at-start":
            worker.inbox.get_nowait()
            worker.end(ExitInfo(host_lost=True, detail="fake engine went away"))
        elif action == "ready-raises":
            worker.inbox.get_nowait()
            worker.inbox.put_nowait(EOFError("fake channel closed"))
        return worker


def manifest(count: int, groups: int) -> RunManifest:
    tests = tuple(
        TestSpec(id=f"m{i % groups}.py::t{i}", group=f"m{i % groups}.py", estimate=0.01)
        for i in sorted(range(count), key=lambda i: i % groups)
    )
    return RunManifest(tests=tests, worker=WorkerSpec(argv=("w",), cwd="/"))


async def settle() -> None:
    """Let every slot task run until each waits on something only the test provides."""
    for _ in range(60):
        await asyncio.sleep(0)


class CoordinatorFaults(RuleBasedStateMachine):
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.coordinator: Coordinator | None = None
        self.hosts: list[FakeHost] = []
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.submitted: dict[str, Run] = {}
        self.cancelled: set[str] = set()
        self.stopped: set[str] = set()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    @initialize(shape=st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=3))
    def start(self, shape):
        self.hosts = [FakeHost(f"h{i}", n, reuse) for i, (n, reuse) in enumerate(shape)]
        self.coordinator = Coordinator(list(self.hosts))
        self.run(self.coordinator.start())

    @rule(target=runs, count=st.integers(1, 12), groups=st.integers(1, 3))
    def submit(self, count, groups):
        try:
            run = self.run(self.coordinator.submit(manifest(count, groups), owner="machine"))
        except Unplaceable as exc:
            assert exc.waiting, "refused for labels, but no test requires any"
            return multiple()
        run.attached = True
        self.submitted[run.id] = run
        self.events[run.id] = []
        self.run(settle())
        return run.id

    @rule(
        host=st.integers(0, 2),
        actions=st.lists(st.sampled_from(SPAWNS), min_size=1, max_size=4),
    )
    def spawns_fail(self, host, actions):
        self.hosts[host % len(self.hosts)].spawns.extend(actions)
        self.run(settle())

    @rule(host=st.integers(0, 2), fates=st.lists(st.sampled_from(FATES), min_size=1, max_size=6))
    def workers_fail(self, host, fates):
        self.hosts[host % len(self.hosts)].fates.extend(fates)
        self.run(settle())

    @rule(run_id=runs)
    def cancel(self, run_id):
        self.run(self.coordinator.cancel(run_id, "cancelled by the state machine"))
        if self.submitted[run_id].status == "cancelled":
            self.cancelled.add(run_id)
        self.run(settle())

    @rule(run_id=runs)
    def stop(self, run_id):
        """A client stopping at its first failure: workers say farewell, then ``done``."""
        self.run(self.coordinator.stop(run_id, "stopped by the state machine"))
        self.cancelled.add(run_id)
        self.stopped.add(run_id)
        self.run(settle())

    @rule(host=st.integers(0, 2))
    def rest_is_over(self, host):
        state = self.coordinator.hosts[host % len(self.hosts)]
        if state.quarantined and state.retry is not None:
            state.retry.cancel()
            self.coordinator._readmit(state)
        self.run(settle())

    @rule()
    def time_passes(self):
        self.run(settle())

    @invariant()
    def no_test_is_reported_twice_and_none_queued_without_a_host(self):
        if self.coordinator is None:
            return
        self.collect()
        for events in self.events.values():
            finals = collections.Counter(e["id"] for e in events if e["t"] in ("result", "crashed"))
            assert all(n == 1 for n in finals.values()), finals
            assert [e["t"] for e in events].count("done") <= 1
        hosts = self.run(self.status())["hosts"]
        assert all((h["retry_in"] is not None) == h["quarantined"] for h in hosts), hosts
        scheduler = self.coordinator.scheduler
        if not scheduler._slots:
            for run in self.submitted.values():
                assert run.finished or scheduler.queued(run.id) == 0, "tests queued for no host"

    async def status(self) -> dict[str, Any]:
        return self.coordinator.status()

    def collect(self) -> None:
        for run_id, run in self.submitted.items():
            while not run.events.empty():
                self.events[run_id].append(run.events.get_nowait())

    def teardown(self) -> None:
        try:
            if self.coordinator is not None:
                self.finish_every_run()
        finally:
            if self.coordinator is not None:
                self.run(self.coordinator.close())
            self.loop.close()

    def finish_every_run(self) -> None:
        for host in self.hosts:
            host.spawns.clear()
            host.fates.clear()

        async def until_done() -> None:
            for _ in range(200):
                if all(run.finished for run in self.submitted.values()):
                    return
                await asyncio.sleep(0.01)

        self.run(until_done())
        self.collect()
        for run_id, run in self.submitted.items():
            events = self.events[run_id]
            kinds = [e["t"] for e in events]
            assert kinds.count("done") == 1 and kinds[-1] == "done", (
                f"run {run_id} never ended: {run.status}, "
                f"{self.coordinator.scheduler.queued(run_id)} queued, {kinds}"
            )
            finals = collections.Counter(e["id"] for e in events if e["t"] in ("result", "crashed"))
            assert all(n == 1 for n in finals.values()), finals
            if run_id not in self.cancelled:
                assert set(finals) == set(run.tests), set(run.tests) - set(finals)
                assert events[-1]["status"] in ("complete", "failed")
            if events[-1]["status"] == "failed":
                assert events[-1]["reason"]
            # A complete or stopped run's every worker is down, each once, before its
            # done: with its farewell's data, or with what went wrong.
            if events[-1]["status"] == "complete" or (
                events[-1]["reason"] == "stopped by the state machine"
            ):
                ready = [e["worker"] for e in events if e["t"] == "worker_ready"]
                down = [e for e in events if e["t"] == "worker_down"]
                assert sorted(ready) == sorted(e["worker"] for e in down), (ready, down)
                for e in down:
                    assert (e["data"] == b"workeroutput") != bool(e["error"]), e


@pytest.fixture(autouse=True)
def _quick_exits(monkeypatch):
    """A fake host that never says how its worker ended costs a short wait, not a minute."""
    monkeypatch.setattr(slots, "EXIT_TIMEOUT", 0.05)


CoordinatorFaults.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_every_test_of_every_run_ends = CoordinatorFaults.TestCase


def test_a_farm_whose_hosts_are_all_quarantined_says_so_and_serves_again_after_the_rest():
    """Through the real service: tests that no host in service can run end at once, a new
    run is refused with 503 naming the quarantine, and once the host's rest is over the
    farm takes runs again (it is not disabled until a restart)."""

    async def scenario() -> None:
        host = FakeHost("flaky", 2, reuse=True)
        farm = await start_embedded_farm([host])
        try:
            [state] = farm.coordinator.hosts
            state.health.rest = 0.5
            host.spawns.extend(["host-error"] * 4)
            async with FarmClient(farm.url, farm.token) as client:
                stream = await client.attach(await client.submit(manifest(3, 1)))
                events = [event async for event in stream]
                crashed = [e for e in events if e["t"] == "crashed"]
                assert len(crashed) == 3 and events[-1]["status"] == "complete", events
                assert all("no host in service can run" in e["message"] for e in crashed)
                with pytest.raises(
                    FarmError, match=r"(?s)refused \(503\).*quarantined.*flaky is down"
                ):
                    await client.submit(manifest(1, 1))
                await serving_again(state)
                host.spawns.clear()
                stream = await client.attach(await client.submit(manifest(3, 1)))
                events = [event async for event in stream]
                assert [e["t"] for e in events].count("result") == 3, events
        finally:
            await farm.close()

    async def serving_again(state) -> None:
        while state.quarantined:
            await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(scenario(), 60))


class LateHost(FakeHost):
    """A host whose engine is down the first *failures* times it is started."""

    def __init__(self, failures: int) -> None:
        super().__init__("late", 1, reuse=True)
        self.labels = {"kind": "late"}
        self.failures = failures

    async def start(self) -> None:
        if self.failures:
            self.failures -= 1
            raise HostError("fake engine of host late is not up yet")


def test_a_host_that_cannot_start_is_tried_again_and_then_serves():
    async def scenario() -> None:
        late = LateHost(failures=2)
        coordinator = Coordinator([FakeHost("early", 1, reuse=True), late])
        state = coordinator.hosts[1]
        state.health.rest = 0.05
        try:
            await coordinator.start()
            assert state.quarantined and "not up yet" in state.health.problem
            while state.quarantined:
                await asyncio.sleep(0.01)
            assert late.failures == 0 and state.health.rest == 0.2  # rested twice, longer
            tests = tuple(
                TestSpec(id=f"t.py::t{i}", group="t.py", requires={"kind": "late"})
                for i in range(3)
            )
            run = await coordinator.submit(RunManifest(tests, WorkerSpec(argv=("w",), cwd="/")))
            run.attached = True
            events = []
            while not events or events[-1]["t"] != "done":
                events.append(await run.events.get())
            assert [e["t"] for e in events].count("result") == 3, events
            assert events[-1]["status"] == "complete"
        finally:
            await coordinator.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
