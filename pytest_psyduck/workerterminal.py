"""A worker's terminal reporter: there for tests and plugins to use, silent about results.

Results are shown by the user's process only, so a worker's own
:class:`~_pytest.terminal.TerminalReporter` must implement no hooks: it would
print a session header, progress and summary of its own.  But tests and plugins
reach for it — ``config.get_terminal_writer()`` (pytest-timeout's stack dumps,
assertion diff highlighting), ``getplugin("terminalreporter")._tw`` (pdb) — and
fail with an ``AssertionError`` where it is missing.  So the worker keeps the
reporter pytest created, behind a stand-in without hooks.

What is written to it goes where plain pytest sends it: to ``sys.stdout``,
which in a worker is its output stream, never the worker channel.  During a
test pytest's capture holds it, so it lands in the test's captured output, as
in plain pytest; outside a test it is forwarded to the user's terminal only
under ``-s``, like everything else a worker prints uncaptured.
"""

from __future__ import annotations

from typing import Any

import pytest


class WorkerTerminal:
    """The terminal reporter's attributes and methods, none of its hooks.

    pluggy finds hook implementations among ``dir(plugin)``; attributes reached
    through ``__getattr__`` are not listed there, so none of the reporter's
    ``pytest_*`` methods is registered.
    """

    def __init__(self, reporter: Any) -> None:
        self._reporter = reporter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reporter, name)


def silence_reporting(config: pytest.Config) -> None:
    """Swap the terminal reporter for its hookless stand-in (idempotent)."""
    pm = config.pluginmanager
    reporter = pm.get_plugin("terminalreporter")
    if reporter is not None and not isinstance(reporter, WorkerTerminal):
        pm.unregister(reporter)
        pm.register(WorkerTerminal(reporter), "terminalreporter")
