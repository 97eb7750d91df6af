"""PyCharm's teamcity-messages plugin: the test it reports on, and its assertion diffs.

teamcity-messages learns the current test in its ``pytest_runtest_protocol``,
which psyduck's first-result implementations pre-empt in both processes, and
records a failed comparison's operands on that test's item from
``pytest_assertrepr_compare``, which runs where the test runs.  Its
``comparisonFailure`` message (PyCharm's diff view) is written in the user's
process from those operands.  So both processes point it at the test, and the
operands travel with the test's reports, formatted as teamcity-messages formats
them — a formatted operand is a ``str``, which it passes through unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest

#: The item attribute teamcity-messages keeps a failed comparison's (op, left, right) in.
COMPARISON_KEY = "_teamcity_assertion_failure"
#: The report attribute the formatted comparison travels under.
REPORT_KEY = "psyduck_teamcity_comparison"


def watch_item(item: pytest.Item) -> None:
    """Tell teamcity-messages, if it reports in this process, which test runs or is replayed."""
    reporting = getattr(item.config, "_teamcityReporting", None)
    if reporting is not None:
        reporting.current_test_item = item


def _formatted(value: Any) -> str:
    from teamcity.diff_tools import _format_and_convert

    return str(_format_and_convert(value))


def attach_comparison(item: pytest.Item, reports: list[pytest.TestReport]) -> None:
    """Put the comparison recorded on the worker's *item* on its last report."""
    comparison = getattr(item, COMPARISON_KEY, None)
    if (
        comparison is None
        or not reports
        or getattr(item.config, "_teamcityReporting", None) is None
    ):
        return
    op, left, right = comparison
    setattr(reports[-1], REPORT_KEY, [str(op), _formatted(left), _formatted(right)])


def restore_comparison(item: pytest.Item, reports: list[pytest.TestReport]) -> None:
    """Record a comparison that came with *reports* on the user's *item*, as on the worker's."""
    for report in reports:
        comparison = report.__dict__.pop(REPORT_KEY, None)
        if isinstance(comparison, list) and len(comparison) == 3:
            setattr(item, COMPARISON_KEY, tuple(comparison))
