"""pytest's built-in subtests (pytest 9), replayed as plain pytest reports them.

Two things about a subtest live outside its report, so they do not travel with
it from the worker and are restored here, in the user's process:

* A test whose subtests failed is reported failed (``contains 1 failed
  subtest``) by pytest's ``pytest_report_teststatus``, which reads a count that
  the ``subtests`` fixture's context manager keeps in ``config.stash`` where
  the test runs (a ``unittest`` ``subTest`` failure reports alike but is not
  counted).  The worker sends the count with the test's call report, and the
  replay puts it in the stash before logging that report.
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

#: The report attribute carrying its test's failed subtests from the worker.
FAILED_ATTR = "psyduck_failed_subtests"
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


def stamp_failed_subtests(item: pytest.Item, report: pytest.TestReport) -> None:
    """On the worker: give the test's own call report its failed subtests' count, if any."""
    if failed_subtests_key is None or report.when != "call" or isinstance(report, SubtestReport):
        return
    count = item.config.stash[failed_subtests_key].get(_key(item))
    if count:
        setattr(report, FAILED_ATTR, count)


def restore_failed_subtests(config: pytest.Config, report: pytest.TestReport) -> None:
    """In the user's process: the count the worker sent, where pytest's hooks read it."""
    count = report.__dict__.pop(FAILED_ATTR, None)
    if count is not None and failed_subtests_key is not None:
        config.stash[failed_subtests_key][_key(report)] = count


def _key(node_or_report: pytest.Item | pytest.TestReport) -> Any:
    """The count's key: the node id, as pytest 9.2's ``NodeId`` where it has one."""
    return getattr(node_or_report, "id", node_or_report.nodeid)
