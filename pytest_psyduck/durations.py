"""Historical test durations, kept in the pytest cache between runs.

The scheduler hands out the longest work first and sizes shards by these
durations: what each test cost its worker's slot, run-test hooks and reporting
included (:func:`pytest_psyduck.replay.slot_seconds`).  Tests never timed
before get the median (the scheduler fills that in).
"""

from __future__ import annotations

import pytest

CACHE_KEY = "psyduck/durations"
#: Weight of the newest measurement; older ones decay, so a test that got
#: slower is rescheduled accordingly within a couple of runs.
NEW_WEIGHT = 0.7


class DurationHistory:
    def __init__(self, config: pytest.Config) -> None:
        self._cache = getattr(config, "cache", None)
        loaded = self._cache.get(CACHE_KEY, {}) if self._cache is not None else {}
        self.durations: dict[str, float] = loaded if isinstance(loaded, dict) else {}
        self._dirty = False

    def estimate(self, nodeid: str) -> float:
        value = self.durations.get(nodeid, 0.0)
        return value if isinstance(value, int | float) and value > 0 else 0.0

    def record(self, nodeid: str, seconds: float) -> None:
        old = self.estimate(nodeid)
        self.durations[nodeid] = (
            seconds if old == 0 else NEW_WEIGHT * seconds + (1 - NEW_WEIGHT) * old
        )
        self._dirty = True

    def save(self) -> None:
        if self._dirty and self._cache is not None:
            self._cache.set(CACHE_KEY, self.durations)
            self._dirty = False
