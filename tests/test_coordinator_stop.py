"""A run stopped by its client (``-x``): running workers finish their test and say farewell.

The coordinator and scheduler are real; the hosts are fakes whose workers are
mid-test when the run stops, as a real worker is while another one's failure
is replayed.  Real workers are stopped in real sessions by
``tests/compat/test_exitfirst_farewells.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from farm import coordinator as coordinator_module
from farm import slots
from farm.coordinator import Coordinator
from farm.hosts.base import ExitInfo, Host, RunContext, WorkerConnection
from farm.manifest import RunManifest, TestSpec, WorkerSpec


class MidTestWorker(WorkerConnection):
    """Starts the first test of each shard and runs it until ``stop`` (unless *deaf*)."""

    def __init__(self, deaf: bool) -> None:
        self.deaf = deaf
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.inbox.put_nowait({"t": "ready"})
        self.exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()
        self.running: str | None = None
        self.started = asyncio.Event()
        self.received: list[str] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.received.append(message["t"])
        if message["t"] == "run":
            self.running = message["tests"][0]["id"]
            self.inbox.put_nowait({"t": "started", "id": self.running})
            self.started.set()
        elif message["t"] == "stop" and not self.deaf and not self.exit.done():
            result = {"t": "result", "id": self.running, "payload": b"ok", "next": None}
            self.inbox.put_nowait(result)
            self.inbox.put_nowait({"t": "farewell", "data": b"workeroutput"})
            self.inbox.put_nowait({"t": "done"})
            self._end(ExitInfo(status=0))

    def _end(self, info: ExitInfo) -> None:
        if not self.exit.done():
            self.exit.set_result(info)
        self.inbox.put_nowait(None)

    async def recv(self) -> dict[str, Any] | None:
        message = await self.inbox.get()
        if message is None:
            self.inbox.put_nowait(None)
        return message

    async def kill(self) -> None:
        self._end(ExitInfo(signal=9))

    async def wait(self) -> ExitInfo:
        return await self.exit

    def output(self) -> str:
        return ""


class MidTestHost(Host):
    def __init__(self, slots: int, deaf: bool = False) -> None:
        self.name = "mid"
        self.slots = slots
        self.labels = {}
        self.reuse_workers = True
        self.deaf = deaf
        self.workers: list[MidTestWorker] = []

    async def spawn(self, run: RunContext, slot: int, worker_id: str, on_output):
        worker = MidTestWorker(self.deaf)
        self.workers.append(worker)
        return worker


def manifest() -> RunManifest:
    tests = tuple(
        TestSpec(id=f"m{g}.py::t{i}", group=f"m{g}.py", estimate=1.0, pinned=True)
        for g in range(2)
        for i in range(4)
    )
    return RunManifest(tests=tests, worker=WorkerSpec(argv=("w",), cwd="/"))


async def stopped_run(host: MidTestHost) -> list[dict[str, Any]]:
    """Start a run of two pinned modules on *host*, stop it once both workers are
    mid-test; its events."""
    coordinator = Coordinator([host])
    await coordinator.start()
    try:
        run = await coordinator.submit(manifest())
        run.attached = True
        async with asyncio.timeout(10):
            while len(host.workers) < 2:
                await asyncio.sleep(0.01)
            await asyncio.gather(*(w.started.wait() for w in host.workers))
        await coordinator.stop(run.id, "stopped by the client")
        events = []
        while not events or events[-1]["t"] != "done":
            events.append(await asyncio.wait_for(run.events.get(), 10))
        return events
    finally:
        await coordinator.close()


@pytest.fixture(autouse=True)
def _quick_exits(monkeypatch):
    monkeypatch.setattr(slots, "EXIT_TIMEOUT", 0.05)


def test_running_workers_finish_their_test_and_say_farewell_before_done():
    host = MidTestHost(slots=2)
    events = asyncio.run(stopped_run(host))
    kinds = [e["t"] for e in events]
    assert kinds.count("worker_ready") == 2
    down = [e for e in events if e["t"] == "worker_down"]
    assert [(e["data"], e["error"]) for e in down] == [(b"workeroutput", None)] * 2
    # The two running tests are reported; nothing else ran, nothing crashed.
    assert sorted(e["id"] for e in events if e["t"] == "result") == sorted(
        w.running for w in host.workers
    )
    assert "crashed" not in kinds
    assert events[-1] == {"t": "done", "status": "cancelled", "reason": "stopped by the client"}
    assert all(w.received.count("run") == 1 for w in host.workers)


def test_workers_that_do_not_stop_are_killed_after_the_grace(monkeypatch):
    monkeypatch.setattr(coordinator_module, "STOP_GRACE", 0.1)
    host = MidTestHost(slots=2, deaf=True)
    events = asyncio.run(stopped_run(host))
    assert events[-1]["t"] == "done"
    assert events[-1]["status"] == "cancelled"
    assert all(w.exit.done() and w.exit.result().signal == 9 for w in host.workers)
