"""Replaying farm events into the user's pytest session through its own hooks.

Each finished test goes through ``pytest_runtest_protocol`` in this process —
so plugins that wrap the protocol (VS Code's ``vscode_pytest`` records each
item's path there) see every item — and this plugin's first-in-line
implementation logs the remote reports with ``pytest_runtest_logstart``,
``pytest_runtest_logreport`` and ``pytest_runtest_logfinish`` instead of
running the test.  The terminal, ``--junitxml``, the last-failed cache and IDE
reporters therefore see each result exactly once, as from plain pytest.
pytest's own wrappers that only prepare running a test in this process
(:data:`RUNNING_ONLY`) are left out: the test ran on a worker, under them.

Workers run several modules at once, but pytest shows one module at a time.
Results of other modules are held back until the module on display is
complete, so each module's progress line reads as it would without psyduck.

When the session may stop early (``-x``/``--maxfail``, ``--sw``), results are
replayed strictly in collection order instead: plain pytest stops at the first
failure in that order, so a test after it that a worker happened to finish
first must never be reported.  The controller cancels the run as soon as the
replay stops.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest

from pytest_psyduck.attempts import split_attempts
from pytest_psyduck.durations import DurationHistory
from pytest_psyduck.ordering import InOrder
from pytest_psyduck.roles import TRANSFORMATIONS_PLUGIN_NAME
from pytest_psyduck.runmanifest import group_of
from pytest_psyduck.serialize import payload_to_reports, warning_from_wire
from pytest_psyduck.sharing import share_with_item
from pytest_psyduck.subtests import restore_failed_subtests
from pytest_psyduck.teamcity import restore_comparison, watch_item
from pytest_psyduck.variants import Function as VariantItem

#: Plugins whose ``pytest_runtest_protocol`` wrappers serve running the test
#: in this process — catching its warnings, rewriting its asserts' messages,
#: arming faulthandler's timeout, patching twisted, applying its
#: transformation's environment — which the worker already did.  Their 2,000
#: no-op wraps would cost a fifth of replaying a trivial suite.
RUNNING_ONLY = ("warnings", "assertion", "faulthandler", "unittest", TRANSFORMATIONS_PLUGIN_NAME)


def crash_report(item: pytest.Item, message: str) -> pytest.TestReport:
    """A failed call report for a test whose worker died or that timed out."""
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords={name: 1 for name in item.keywords},
        outcome="failed",
        longrepr=message,
        when="call",
        sections=[],
        duration=0.0,
        user_properties=list(item.user_properties),
    )


def stops_early(config: pytest.Config) -> bool:
    """Whether the session stops at a failure: ``-x``/``--maxfail`` or ``--sw``."""
    return bool(config.option.maxfail) or bool(config.getoption("stepwise", False))


def slot_seconds(event: dict[str, Any], reports: list[pytest.TestReport]) -> float:
    """How long the test kept its worker busy, as the worker measured it: its whole
    run-test protocol, hooks and reporting included, not only its phases' durations.
    Shards are sized by these; tests of a millisecond or two would otherwise make a
    shard of many of them run well past its estimate.  A farm that does not say
    gives the phases' sum."""
    seconds = event.get("seconds")
    if isinstance(seconds, int | float) and seconds > 0:
        return float(seconds)
    return sum(r.duration for r in reports)


class Replayer:
    """Registered as ``psyduck-replay`` in the user's process while a run streams."""

    def __init__(
        self,
        session: pytest.Session,
        history: DurationHistory,
        on_worker: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.session = session
        #: Takes ``worker_ready``/``worker_down`` events (pytest-xdist's node hooks).
        self.on_worker = on_worker
        self.config = session.config
        self.history = history
        #: Each collected item's position in ``session.items``, by node id.
        self._index = {item.nodeid: i for i, item in enumerate(session.items)}
        self._pending: dict[str, list[pytest.TestReport]] = {}
        self._notices: dict[str, list[str]] = {}
        #: Results waiting for their turn, when the session may stop at a failure.
        self._in_order: InOrder[list[pytest.TestReport]] | None = (
            InOrder([item.nodeid for item in session.items]) if stops_early(self.config) else None
        )
        self._remaining = Counter(group_of(item) for item in session.items)
        self._held: dict[str, list[tuple[pytest.Item, list[pytest.TestReport]]]] = defaultdict(list)
        self._showing: str | None = None
        self._hooks: dict[Path, tuple[pluggy.HookRelay, pluggy.HookCaller]] = {}
        #: One string per test file for the reports' locations (:mod:`pytest_psyduck.sharing`).
        self._paths: dict[str, str] = {}

    def _hooks_at(self, path: Path) -> tuple[pluggy.HookRelay, pluggy.HookCaller]:
        """The hooks that apply at *path* (its conftests', as ``item.ihook``), and
        ``pytest_runtest_protocol`` among them less :data:`RUNNING_ONLY`.

        Looked up once per test file: ``item.ihook`` searches the conftests anew each time.
        """
        hooks = self._hooks.get(path)
        if hooks is None:
            relay = self.session.gethookproxy(path)
            pm = self.config.pluginmanager
            applicable = {impl.plugin for impl in relay.pytest_runtest_protocol.get_hookimpls()}
            left_out = {
                impl.plugin
                for impl in pm.hook.pytest_runtest_protocol.get_hookimpls()
                if impl.plugin not in applicable or pm.get_name(impl.plugin) in RUNNING_ONLY
            }
            protocol = pm.subset_hook_caller("pytest_runtest_protocol", left_out)
            hooks = self._hooks[path] = (relay, protocol)
        return hooks

    def item(self, nodeid: str) -> pytest.Item:
        return self.session.items[self._index[nodeid]]

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["t"]
        if kind == "result":
            item = self.item(event["id"])
            reports = payload_to_reports(self.config, event["payload"])
            share_with_item(item, reports, self._paths)
            self.history.record(item.nodeid, slot_seconds(event, reports))
            self._deliver(item, reports)
        elif kind == "crashed":
            item = self.item(event["id"])
            self._deliver(item, [crash_report(item, event["message"])])
        elif kind == "warning":
            data = event["data"]
            self.config.hook.pytest_warning_recorded.call_historic(
                kwargs={
                    "warning_message": warning_from_wire(data),
                    "when": data["when"],
                    "nodeid": data["nodeid"],
                    "location": None,
                }
            )
        elif kind == "output":
            if self.config.option.capture == "no":
                sys.stdout.write(event["data"].decode("utf-8", "replace"))
                sys.stdout.flush()
        elif kind == "notice":
            self._notice(event)
        elif kind in ("worker_ready", "worker_down"):
            if self.on_worker is not None:
                self.on_worker(event)
        elif kind == "done":
            self.flush()
            if event["status"] == "cancelled" and not self.session.shouldfail:
                self.session.shouldstop = self.session.shouldstop or f"psyduck: {event['reason']}"

    def _deliver(self, item: pytest.Item, reports: list[pytest.TestReport]) -> None:
        if self._in_order is not None:
            self._in_order.arrive(item.nodeid, reports)
            self._replay_in_order(self._in_order, wait=True)
            return
        module = group_of(item)
        if self._showing not in (None, module):
            self._held[module].append((item, reports))
            return
        self._showing = module
        self._replay(item, reports)
        while self._showing is not None and not self._remaining[self._showing]:
            self._showing = None
            if self._held:
                self._showing = min(
                    self._held, key=lambda m: self._index[self._held[m][0][0].nodeid]
                )
                self._replay_held(self._showing)

    def _replay_held(self, module: str) -> None:
        for item, reports in sorted(self._held.pop(module), key=lambda p: self._index[p[0].nodeid]):
            self._replay(item, reports)

    def _replay_in_order(self, held: InOrder[list[pytest.TestReport]], wait: bool) -> None:
        """Replay the results whose turn has come, until the session stops.

        With *wait*, stop at the first test whose result has not arrived; else
        (the run is over) pass over those: they will never come.
        """
        while not (self.session.shouldfail or self.session.shouldstop):
            ready = held.pop(wait)
            if ready is None:
                return
            self._replay(self.item(ready[0]), ready[1])
        held.drop()  # past the stopping point: plain pytest never ran these

    def flush(self) -> None:
        """Replay everything still held back (the run ended or was cancelled)."""
        if self._in_order is not None:
            self._replay_in_order(self._in_order, wait=False)
            return
        for module in sorted(self._held, key=lambda m: self._index[self._held[m][0][0].nodeid]):
            self._replay_held(module)

    def _notice(self, event: dict[str, Any]) -> None:
        message = f"psyduck: {event['message']}"
        if event.get("id"):
            self._notices.setdefault(event["id"], []).append(event["message"])
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(message, yellow=True)

    def _replay(self, item: pytest.Item, reports: list[pytest.TestReport]) -> None:
        for note in self._notices.pop(item.nodeid, []):
            for report in reports:
                report.user_properties.append(("psyduck", note))
        self._pending[item.nodeid] = reports
        self._hooks_at(item.path)[1](item=item, nextitem=None)
        if type(item) is VariantItem:
            item.shed()  # nothing a plugin read of it while it was reported stays made
        self._remaining[group_of(item)] -= 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        reports = self._pending.pop(item.nodeid, None)
        if reports is None:
            return None
        if not reports:
            return True  # the protocol ran nothing (a plugin's own protocol decided so)
        # The location came with the reports, worked out where the test ran (as
        # pytest-xdist's controller also logs it): computing it again here would
        # cost as much as all the terminal's reporting.
        location = reports[0].location
        watch_item(item)
        restore_comparison(item, reports)
        ihook = self._hooks_at(item.path)[0]
        # Each attempt (pytest-rerunfailures runs a failed test again) is logged
        # between its own logstart and logfinish, as the protocol on the worker did.
        for attempt in split_attempts(reports):
            ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=location)
            for report in attempt:
                restore_failed_subtests(self.config, report)
                ihook.pytest_runtest_logreport(report=report)
            ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=location)
        return True
