"""The transformation matrix, shown after the usual summary when variants ran.

One row per transformation (the baseline first) with its passed, failed and
skipped tests, the tests a mark excluded from it, and the time its tests took;
then why tests were excluded, in the marks' own words.
Above the rows come the tests that fail under some transformations but pass
under others: "passes as written, fails when replicated" is the signal a
matrix exists for, and it drowns in the ordinary failure list otherwise.

Results are read from ``pytest_runtest_logreport``, so the matrix is the same
whether the tests ran in-process or were replayed from a farm.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pytest

from pytest_psyduck.transformations import BASELINE_NAME, STATE_KEY, Variant, variant_of
from pytest_psyduck.variants import variant_of as variant_or_none


@dataclass(slots=True)
class Result:
    """A test's outcome over all its phases: any failure fails it, else any skip skips it."""

    outcome: str = "passed"
    duration: float = 0.0

    def add(self, report: pytest.TestReport) -> None:
        self.duration += report.duration
        if report.failed:
            self.outcome = "failed"
        elif report.skipped and self.outcome == "passed":
            self.outcome = "skipped"


@dataclass
class Row:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    excluded: int = 0
    time: float = 0.0


def excluded_in_run(
    variants: Mapping[str, Variant],
    results: Mapping[str, Result],
    exclusions: Mapping[str, Mapping[str, str]],
) -> Counter[tuple[str, str]]:
    """``(transformation, reason)`` → how many of the tests that ran a mark excluded from it."""
    bases = {variants[nodeid].base_nodeid for nodeid in results}
    return Counter(
        (name, reason)
        for base in sorted(bases & exclusions.keys())
        for name, reason in exclusions[base].items()
    )


def tally(
    variants: Mapping[str, Variant],
    results: Mapping[str, Result],
    excluded: Counter[tuple[str, str]],
    order: Iterable[str],
) -> dict[str, Row]:
    """Rows by transformation name, in *order*, for the tests that ran and their exclusions."""
    rows = {name: Row() for name in order}
    for nodeid, result in results.items():
        row = rows.setdefault(variants[nodeid].transformation.name, Row())
        setattr(row, result.outcome, getattr(row, result.outcome) + 1)
        row.time += result.duration
    for (name, _), count in excluded.items():
        rows.setdefault(name, Row()).excluded += count
    return {name: row for name, row in rows.items() if row != Row()}


def split_failures(
    variants: Mapping[str, Variant], results: Mapping[str, Result]
) -> list[tuple[str, list[str], list[str]]]:
    """``(base node id, failed under, passed under)`` for each test whose variants disagree.

    Tests and transformations come in the order of *results*.
    """
    by_base: dict[str, dict[str, list[str]]] = {}
    for nodeid, result in results.items():
        variant = variants[nodeid]
        outcomes = by_base.setdefault(variant.base_nodeid, {"failed": [], "passed": []})
        if result.outcome in outcomes:
            outcomes[result.outcome].append(variant.transformation.name)
    return [
        (base, outcomes["failed"], outcomes["passed"])
        for base, outcomes in by_base.items()
        if outcomes["failed"] and outcomes["passed"]
    ]


def format_rows(rows: Mapping[str, Row]) -> list[str]:
    width = max(len("transformation"), *map(len, rows))
    header = f"{'passed':>7} {'failed':>7} {'skipped':>7} {'excluded':>8} {'time':>9}"
    lines = [f"{'transformation':<{width}}  {header}"]
    for name, row in rows.items():
        lines.append(
            f"{name:<{width}}  {row.passed:>7} {row.failed:>7} {row.skipped:>7} {row.excluded:>8} "
            f"{row.time:>8.2f}s"
        )
    return lines


class TransformationMatrix:
    """Registered as ``psyduck-matrix`` in the user's process (never in a worker)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        #: The collected items by node id; their variants are looked up for results only.
        self.items: dict[str, pytest.Item] = {}
        self.results: dict[str, Result] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = {item.nodeid: item for item in session.items}
        if all(variant_or_none(item) is None for item in session.items):
            # No variants, no matrix: stop taking every report of the run.
            self.config.pluginmanager.unregister(self)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid in self.items:
            self.results.setdefault(report.nodeid, Result()).add(report)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter):
        # Outside the terminal reporter's own wrapper: after its short test
        # summary, just before the final counts line.
        result = yield
        if any(variant_or_none(self.items[nodeid]) is not None for nodeid in self.results):
            self._write(terminalreporter)
        return result

    def _write(self, terminalreporter: pytest.TerminalReporter) -> None:
        state = self.config.stash[STATE_KEY]
        # Collection order, not the order a farm happened to finish tests in.
        results = {nodeid: self.results[nodeid] for nodeid in self.items if nodeid in self.results}
        variants = {nodeid: variant_of(self.items[nodeid]) for nodeid in results}
        excluded = excluded_in_run(variants, results, state.exclusions)
        rows = tally(variants, results, excluded, [BASELINE_NAME, *state.declared])
        terminalreporter.write_sep("=", "psyduck transformation matrix")
        split = split_failures(variants, results)
        if split:
            terminalreporter.write_line("failing only under some transformations:", bold=True)
            for base, failed, passed in split:
                terminalreporter.write_line(
                    f"  {base}  failed: {', '.join(failed)}  passed: {', '.join(passed)}", red=True
                )
        for line in format_rows(rows):
            terminalreporter.write_line(line)
        if excluded:
            terminalreporter.write_line("excluded by @pytest.mark.psyduck:")
            for (name, reason), count in excluded.items():
                tests = f"{count} test{'s' if count != 1 else ''}"
                terminalreporter.write_line(f"  {name}: {tests}: {reason or '(no reason given)'}")
