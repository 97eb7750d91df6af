"""The coordinator registers its hosts' capacity with the scheduler and wakes slots when room grows.

The coordinator, its scheduler and its slot tasks are the real ones; the host
is a fake whose workers finish a test only when the test says so, so what
runs beside what is observed step by step, without timing.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from farm.coordinator import Coordinator
from farm.hosts.base import ExitInfo, Host, RunContext, WorkerConnection
from farm.manifest import RunManifest, TestSpec, WorkerSpec
from farm.scheduler import Capacity, PerTest, Scheduler

GiB = 1 << 30


class GatedWorker(WorkerConnection):
    """Reports each test of its shard once the host's gate for that test opens."""

    def __init__(self, host: GatedHost) -> None:
        self.host = host
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.inbox.put_nowait({"t": "ready"})
        self.exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()
        self.playing: set[asyncio.Task[None]] = set()

    async def send(self, message: dict[str, Any]) -> None:
        if message["t"] == "drain":
            self.inbox.put_nowait({"t": "done"})
            return
        tests = [t["id"] for t in message["tests"]]
        self.host.sent.append(tests)
        task = asyncio.ensure_future(self._play(tests))
        self.playing.add(task)
        task.add_done_callback(self.playing.discard)

    async def _play(self, tests: list[str]) -> None:
        self.inbox.put_nowait({"t": "started", "id": tests[0]})
        for index, test_id in enumerate(tests):
            await self.host.gates[test_id].wait()
            following = tests[index + 1] if index + 1 < len(tests) else None
            self.inbox.put_nowait({"t": "result", "id": test_id, "payload": b"", "next": following})
        self.inbox.put_nowait({"t": "idle"})

    async def recv(self) -> dict[str, Any] | None:
        message = await self.inbox.get()
        if message is None:
            self.inbox.put_nowait(None)
        return message

    async def kill(self) -> None:
        if not self.exit.done():
            self.exit.set_result(ExitInfo(signal=9))
        self.inbox.put_nowait(None)

    async def wait(self) -> ExitInfo:
        return await self.exit

    def output(self) -> str:
        return ""


class GatedHost(Host):
    def __init__(self, name: str, slots: int, capacity: Capacity) -> None:
        self.name = name
        self.slots = slots
        self.labels = {}
        self._capacity = capacity
        self.sent: list[list[str]] = []
        self.gates: collections.defaultdict[str, asyncio.Event] = collections.defaultdict(
            asyncio.Event
        )

    def capacity(self) -> Capacity | None:
        return self._capacity

    async def spawn(
        self, run: RunContext, slot: int, worker_id: str, on_output
    ) -> WorkerConnection:
        return GatedWorker(self)


async def settle() -> None:
    """Let every slot task run until each waits on something only the test provides."""
    for _ in range(100):
        await asyncio.sleep(0)


def test_slots_share_the_hosts_cpus_and_an_idle_slot_wakes_when_a_shard_gives_some_back():
    async def scenario() -> None:
        host = GatedHost("h", 2, Capacity(2.0, 8 * GiB))
        coordinator = Coordinator([host], Scheduler(PerTest()))
        await coordinator.start()
        tests = (
            TestSpec(id="whole", group="g", estimate=10.0, cpus=2.0),
            TestSpec(id="a", group="g", estimate=1.0),
            TestSpec(id="b", group="g", estimate=1.0),
        )
        run = await coordinator.submit(
            RunManifest(tests=tests, worker=WorkerSpec(argv=("w",), cwd="/"))
        )
        run.attached = True
        await settle()
        assert host.sent == [["whole"]]  # nothing beside a test that takes both CPUs
        host.gates["whole"].set()
        await settle()
        # Its slot took "a" (one CPU): the other slot, idle for want of room, woke for "b".
        assert sorted(host.sent[1:]) == [["a"], ["b"]]
        host.gates["a"].set()
        host.gates["b"].set()
        await settle()
        assert run.status == "complete"
        await coordinator.close()

    asyncio.run(scenario())
