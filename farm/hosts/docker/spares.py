"""When a slot's spare container starts: late enough to be needed, early enough to be ready.

A spare (the container for a slot's next shard) costs a container's start-up
in CPU whether or not a next shard comes; on a machine whose slots use every
CPU that start-up slows the running shards as much as it would the slot.  The
last spare of each slot used to be pure loss.  So a slot's spare starts only
once its current shard is known, a start-up's length before that shard is
estimated to end, and only if this host has not yet been handed every test of
the run: a host that knows the run has nothing left for it starts no spare.
(On a farm of several hosts the others' share is unknown here, and spares
start as they always did.)
"""

from __future__ import annotations

from collections.abc import Iterable

#: Seconds a container of a host takes from create to its worker's ``ready``, until
#: the host has measured one.
DEFAULT_START_SECONDS = 3.0
#: A spare starts this many start-ups ahead of its slot's estimated need.
START_MARGIN = 2.0
#: Weight of the latest measured start-up in the host's running estimate.
START_WEIGHT = 0.3
#: Runs a host's ledger remembers (the oldest is forgotten first).
RUNS_KEPT = 16


class StartClock:
    """A host's running estimate of how long one of its containers takes to get ready."""

    def __init__(self) -> None:
        self.seconds = DEFAULT_START_SECONDS
        self._measured = False

    def measured(self, seconds: float) -> None:
        if self._measured:
            self.seconds += START_WEIGHT * (seconds - self.seconds)
        else:
            self.seconds, self._measured = seconds, True

    def spare_delay(self, shard_estimate: float) -> float:
        """Seconds after a shard starts at which its slot's spare should start."""
        return max(shard_estimate - START_MARGIN * self.seconds, 0.0)


class RunLedger:
    """The tests of each run this host has been handed, to know when none are left."""

    def __init__(self) -> None:
        self._handed: dict[str, set[str]] = {}

    def handed(self, run_id: str, test_ids: Iterable[str]) -> None:
        self._handed.setdefault(run_id, set()).update(test_ids)
        while len(self._handed) > RUNS_KEPT:
            del self._handed[next(iter(self._handed))]

    def all_handed(self, run_id: str, total: int) -> bool:
        """Whether every one of the run's *total* tests was handed to this host."""
        return len(self._handed.get(run_id, ())) >= total
