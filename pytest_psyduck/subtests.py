"""pytest's built-in subtests (pytest 9), replayed as plain pytest reports them.

Two things about a subtest live outside its report, so they do not travel with
it from the worker and are restored here, in the user's process:

* A test whose subtests failed is reported failed (``contains 1 failed
  subtest``) by pytest's ``pytest_report_teststatus``, which reads a count that
  the subtest's context manager keeps in ``config.stash`` where the test runs.
  The replay counts each failed subtest report as it logs it.
* A subtest's keyword arguments are kept as their ``repr`` and rendered
  ``i=2``; decoding a report builds its context anew, which takes the ``repr``
  once more (``i='2'``).  The decoded context gets the sent values back.
"""

from __future__ import annotations

from typing import Any

import pytest

try:
    from _pytest.subtests import SubtestReport, failed_subtests_key
except ImportError:  # pytest < 9: no built-in subtests, nothing to restore
    SubtestReport = None  # type: ignore[assignment,misc]
    failed_subtests_key = None  # type: ignore[assignment]

#: The key under which pytest serializes a subtest report's context.
CONTEXT_KEY = "_subtest.context"


def restore_context(report: pytest.TestReport, data: dict[str, Any]) -> None:
    """Give a decoded subtest report the keyword arguments exactly as they were sent."""
    if SubtestReport is None or not isinstance(report, SubtestReport):
        return
    kwargs = data.get(CONTEXT_KEY, {}).get("kwargs")
    if isinstance(kwargs, dict):
        # The context is a frozen dataclass, whose construction would repr them again.
        object.__setattr__(report.context, "kwargs", dict(kwargs))


def count_failed_subtest(config: pytest.Config, report: pytest.TestReport) -> None:
    """Count a failed subtest against its test, as the worker's context manager did."""
    if SubtestReport is not None and isinstance(report, SubtestReport) and report.failed:
        config.stash[failed_subtests_key][report.id] += 1
