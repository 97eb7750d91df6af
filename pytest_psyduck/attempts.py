"""A test's reports on a worker, recorded attempt by attempt instead of being logged.

On a worker the whole ``pytest_runtest_protocol`` chain runs: pytest's own, or
one a plugin puts in its place (pytest-rerunfailures runs the test again after
a failure, logging a ``rerun`` report for each failed attempt).  Whatever that
protocol logs through the item's hooks — ``pytest_runtest_logstart``, each
report, ``pytest_runtest_logfinish`` — is recorded here rather than logged in
the worker: every report is logged once, in the user's process, by the replay
(:mod:`pytest_psyduck.replay`), which brackets each attempt with its own
``logstart``/``logfinish`` as the protocol did.

The attempt travels as an attribute of the report (pytest serializes a
report's extra attributes), set only from the second attempt on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pluggy
import pytest

#: The report attribute naming its attempt (0-based); absent on the first.
ATTEMPT_ATTR = "psyduck_attempt"


class Recorder:
    """Collects the reports one test's protocol logs, numbering its attempts."""

    def __init__(self, stamp: Callable[[pytest.TestReport], None]) -> None:
        self.reports: list[pytest.TestReport] = []
        #: Adds to a report what only the worker knows (its failed subtests).
        self._stamp = stamp
        self._attempt = -1

    def start(self) -> None:
        self._attempt += 1

    def add(self, report: pytest.TestReport) -> None:
        self._stamp(report)
        if self._attempt > 0:
            setattr(report, ATTEMPT_ATTR, self._attempt)
        self.reports.append(report)


class RecordingRelay:
    """A node's hooks (``item.ihook``) whose log hooks record into a :class:`Recorder`.

    Every other hook is the node's own, so the protocol runs as it would.
    """

    def __init__(self, relay: pluggy.HookRelay, recorder: Recorder) -> None:
        self._relay = relay
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._relay, name)

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        self._recorder.start()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._recorder.add(report)

    def pytest_runtest_logfinish(self, nodeid: str, location: object) -> None:
        pass


def split_attempts(reports: list[pytest.TestReport]) -> list[list[pytest.TestReport]]:
    """A replayed test's reports, one list per attempt, the attempt marks removed."""

    def attempt(report: pytest.TestReport) -> int:
        return report.__dict__.pop(ATTEMPT_ATTR, 0)

    numbered = [(attempt(report), report) for report in reports]
    return [
        [report for _, report in group]
        for _, group in itertools.groupby(numbered, key=lambda pair: pair[0])
    ]
