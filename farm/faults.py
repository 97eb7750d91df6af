"""The coordinator's fault bookkeeping: whose fault a failure is, how often, and what to say.

Pure data and functions, no asyncio, so that the rules can be read (and
tested) apart from the coordinator, which reports each failure here and acts
on the answer.  Three rules keep every test of every run ending:

* **Host health.**  Consecutive failures of a host (spawns failing, workers
  lost with it) quarantine it after :data:`QUARANTINE_AFTER`; any test that
  finishes on it resets the count.  A quarantined host rests, then is tried
  again on probation: one more failure quarantines it again, for twice as
  long (up to :data:`REST_MAX`).  A host that could not even start is started
  again after its rest the same way.  A transient fault thus costs a host a
  rest, never the farm's lifetime.
* **Loss budget.**  A test whose shard is lost through no fault of its own
  (its host failed, or its worker died before running any test) goes back in
  the queue, at most :data:`MAX_LOSSES` times; then it is reported crashed
  with every reason, so a farm whose hosts keep failing still ends its runs.
* **Crash messages** say which test a dead worker was running and why it died.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from farm.hosts.base import ExitInfo, HostError, RunError
from farm.manifest import TestSpec

#: Consecutive host failures after which a host is quarantined.
QUARANTINE_AFTER = 3
#: Seconds a host rests in its first quarantine before it is tried again.
REST = 30.0
#: Longest rest: a host quarantined again and again is still tried this often.
REST_MAX = 600.0
#: Times a test's shard may be lost (not by the test's own doing) before the test is crashed.
MAX_LOSSES = 3


def describe(exc: BaseException) -> str:
    """An exception as a reason: its text, with its type when it is not one of psyduck's own."""
    if isinstance(exc, (HostError, RunError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class HostHealth:
    """One host's consecutive failures, its quarantine and the rest before its next chance."""

    failures: int = 0
    quarantined: bool = False
    problem: str = ""
    rest: float = REST

    def failed(self, detail: str) -> bool:
        """Count one failure; True when this one quarantines the host."""
        self.failures += 1
        if self.quarantined or self.failures < QUARANTINE_AFTER:
            return False
        self.quarantined = True
        self.problem = detail
        return True

    def worked(self) -> None:
        """A test finished on the host: it works, and its next quarantine starts short again."""
        self.failures = 0
        self.rest = REST

    def readmit(self) -> None:
        """Back in service on probation: its next failure quarantines it for twice as long."""
        self.quarantined = False
        self.failures = QUARANTINE_AFTER - 1
        self.rest = min(self.rest * 2, REST_MAX)


@dataclass
class LossBudget:
    """How often each test of one run was lost, and why."""

    reasons: dict[str, list[str]] = field(default_factory=dict)

    def lose(self, tests: list[TestSpec], reason: str) -> tuple[list[TestSpec], list[TestSpec]]:
        """Count a loss of *tests*: (those to queue again, those out of budget)."""
        again: list[TestSpec] = []
        spent: list[TestSpec] = []
        for test in tests:
            reasons = self.reasons.setdefault(test.id, [])
            reasons.append(reason)
            (spent if len(reasons) >= MAX_LOSSES else again).append(test)
        return again, spent

    def message(self, test_id: str) -> str:
        """Why *test_id* was given up: each loss of its shard, oldest first."""
        lines = "\n".join(f"  - {reason}" for reason in self.reasons.get(test_id, []))
        return f"psyduck: {test_id} was not run: its shard was lost {MAX_LOSSES} times:\n{lines}"


def crash_message(
    test_id: str,
    info: ExitInfo,
    output: str,
    *,
    timed_out: dict[str, Any] | None,
    killed_for_timeout: str | None,
    timeout: float | None,
) -> str:
    """Why the worker running *test_id* died, as the test's failure text.

    *timed_out* is the worker's own ``timeout`` message (with the test's
    stack), *killed_for_timeout* the test the coordinator killed the worker
    for when it did not answer in time.
    """
    if timed_out and timed_out.get("id") == test_id:
        return (
            f"Timeout: {test_id} ran longer than {timed_out['timeout']:g}s and was killed.\n"
            f"Stack of the test when it was killed (most recent call last):\n"
            f"{timed_out['stack']}"
        )
    if killed_for_timeout == test_id and timeout is not None:
        return (
            f"Timeout: {test_id} ran longer than {timeout:g}s and did not answer; "
            "the worker was killed (its stack could not be taken)."
        )
    if info.oom_killed:
        limit = f" of {info.memory_limit // (1024 * 1024)} MiB" if info.memory_limit else ""
        return f"worker was killed for memory while running {test_id}: it exceeded its limit{limit}"
    text = f"worker crashed while running {test_id}: {how_it_ended(info)}"
    output = output.strip()
    return f"{text}\n\nworker output:\n{output}" if output else text


def how_it_ended(info: ExitInfo) -> str:
    """ "exited with status 3", "killed by signal SIGKILL", "killed for memory"."""
    if info.oom_killed:
        return "killed for memory"
    if info.signal is None:
        return f"exited with status {info.status}"
    try:
        return f"killed by signal {signal.Signals(info.signal).name}"
    except ValueError:
        return f"killed by signal {info.signal}"
