"""When a slot's spare container starts: late enough to be needed, early enough to be ready.

A spare (the container for a slot's next shard) costs a container's start-up
in CPU whether or not a next shard comes; on a machine whose slots use every
CPU that start-up slows the running shards as much as it would the slot.  The
last spare of each slot used to be pure loss.  So a slot's spare starts only
once its current shard is known, a margin of start-ups before that shard is
estimated to end but never sooner than one start-up after it began (when the
run's first shards have all been handed out), and only if the farm still
queues some of the run's tests: a run with nothing left to hand out starts no
spare.
"""

from __future__ import annotations

#: Seconds a container of a host takes from create to its worker's ``ready``, until
#: the host has measured one.
DEFAULT_START_SECONDS = 3.0
#: A spare starts this many start-ups ahead of its slot's estimated need.
START_MARGIN = 2.0
#: Weight of the latest measured start-up in the host's running estimate.
START_WEIGHT = 0.3


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
        return max(shard_estimate - START_MARGIN * self.seconds, self.seconds)
