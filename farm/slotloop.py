"""Each slot's task: keep the slot busy with the scheduler's shards while its host serves.

:class:`SlotLoop` is part of :class:`farm.coordinator.Coordinator` (a mixin),
kept apart because it is one concern of its own: one asyncio task per slot
asks the scheduler for a shard, makes sure a worker of the right run occupies
the slot (draining one of another run or profile), feeds it the shard, and
waits to be woken when there is nothing to run.  Whatever a slot holds when
something unforeseen fails is accounted for as a host fault.  A shard that
runs past :data:`~farm.scheduling.capacity.DRAIN_SECONDS` is reported to the
scheduler (:meth:`~farm.scheduler.Scheduler.outlasted`): its host's room is
then taken for a while, which an untimed test's estimate could not say.
"""

from __future__ import annotations

import asyncio
import logging

from farm.faults import describe
from farm.scheduling.capacity import DRAIN_SECONDS
from farm.slots import Held, HostState, kill_worker

log = logging.getLogger("psyduck.farm")


class SlotLoop:
    """The slots' tasks, as the coordinator runs them (see the module docstring)."""

    def _wake_hosts_with_room(self) -> None:
        """A shard gave back CPUs or memory: idle slots of its host may fit work now."""
        grown = self.scheduler.hosts_with_room()
        if not grown:
            return
        for state in self.hosts:
            if state.host.name in grown:
                for index in range(state.host.slots):
                    if (wakeup := self._wakeups.get(f"{state.host.name}/{index}")) is not None:
                        wakeup.set()

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
            # Past this long, the shard holds its host's room for a while: tell the scheduler.
            outlasting = asyncio.get_running_loop().call_later(
                DRAIN_SECONDS, self._outlasted, slot_id, shard.id
            )
            try:
                if not await self._run_shard(held.worker, shard):
                    held.worker = None
            finally:
                outlasting.cancel()

    def _outlasted(self, slot_id: str, shard_id: int) -> None:
        self.scheduler.outlasted(slot_id, shard_id)
        self._wake_hosts_with_room()  # a host no longer held back may serve small work now
