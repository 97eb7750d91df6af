"""Replayed reports made as light as plain pytest's own: they share their item's objects.

Plain pytest builds a test's reports from its item: their node id (on pytest
versions that parse it, the parsed id), the keyword names and the location
are the item's own objects, shared by every report of the test.  A report
rebuilt from the wire has fresh copies of each — some 36 objects, ~2.6 KB, per
result — and the terminal's statistics keep every report to the end of the
session, so a 500,000-result run held gigabytes that plain pytest never
does.  :func:`share_with_item` swaps those copies for the item's objects once
a result arrives; what differs (another node id, a keyword the worker added)
keeps its own.  Going further than plain pytest, the reports of one test share
one keywords dict when theirs are equal (no reporter writes to them), and a
variant's transformation property is one tuple for all its transformation's
variants: a run of 500,000 variants has room to spare under 2 GB.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from pytest_psyduck.variants import keyword_names_of, user_properties_of

#: Small strings every report carries (its phase, its outcome): one object each.
_WORDS = {
    word: sys.intern(word) for word in ("setup", "call", "teardown", "passed", "failed", "skipped")
}


def _shared(properties: dict[Any, Any], prop: Any) -> Any:
    """The item's own object for a property equal to one of its item's, else *prop*."""
    try:
        return properties.get(prop, prop)
    except TypeError:  # a value record_property was given that cannot be hashed (a dict)
        return prop


def share_with_item(
    item: pytest.Item, reports: list[pytest.TestReport], paths: dict[str, str]
) -> None:
    """Point *reports* (all of *item*) at *item*'s node id and keyword names, and at one
    location tuple whose path is shared through *paths* with the rest of the session;
    drop the wire's class tag, which plain pytest's reports do not carry."""
    names = keyword_names_of(item)
    # A variant's own name and id, not among its family's names: one object for all its reports.
    own: dict[str, str] = {}
    # The transformation's junitxml property, as the item has it: one tuple for every report.
    properties = {prop: prop for prop in user_properties_of(item)}
    keywords: dict[str, Any] | None = None
    location = None
    node_id = getattr(item, "_id", None)
    for report in reports:
        # The wire's tag of the report's class, which pytest leaves on the report.
        report.__dict__.pop("$report_type", None)
        if report.nodeid == item.nodeid:
            if node_id is not None and hasattr(report, "_id"):
                report._id = node_id  # pytest versions that keep the parsed id
            else:
                report.nodeid = item.nodeid
        shared = {
            names.get(name) or own.setdefault(name, name): value
            for name, value in report.keywords.items()
        }
        # A test's reports carry the same keywords (its item's): one dict for all of them.
        keywords = keywords if keywords == shared else shared
        report.keywords = keywords
        report.user_properties = [_shared(properties, prop) for prop in report.user_properties]
        report.when = _WORDS.get(report.when, report.when)  # type: ignore[assignment]
        report.outcome = _WORDS.get(report.outcome, report.outcome)  # type: ignore[assignment]
        if location is None or report.location != location:
            path, lineno, domain = report.location
            location = (paths.setdefault(path, path), lineno, domain)
        report.location = location
