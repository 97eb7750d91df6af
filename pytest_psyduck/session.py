"""The controller: replaces pytest's run loop with a run on a psyduck farm.

Collection has already happened here, with every selection option applied.
The controller builds the manifest, starts the embedded farm unless a remote
one is named, submits the run, and hands each streamed event to the
:class:`~pytest_psyduck.replay.Replayer`.  ``-x``/``--maxfail`` and Ctrl-C
cancel the remote run at once; pytest's own stop logic then ends the session
exactly as it would have without psyduck.
"""

from __future__ import annotations

import asyncio

import pytest

from pytest_psyduck.durations import DurationHistory
from pytest_psyduck.replay import Replayer
from pytest_psyduck.runmanifest import build_manifest


class DistributedSession:
    """Registered as ``psyduck-session`` when ``--psyduck`` is given."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.history = DurationHistory(config)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        if session.testsfailed and not self.config.option.continue_on_collection_errors:
            raise session.Interrupted(
                f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} "
                "during collection"
            )
        if self.config.option.collectonly or not session.items:
            return True
        manifest = build_manifest(session.items, self.config, self.history)
        replayer = Replayer(session, self.history)
        from pytest_psyduck import remote  # aiohttp costs ~0.3 s: only when tests will run

        self.config.pluginmanager.register(replayer, "psyduck-replay")
        try:
            asyncio.run(remote.run(session, manifest, replayer))
        except remote.FarmError as exc:
            raise pytest.UsageError(f"psyduck: {exc}") from exc
        finally:
            self.config.pluginmanager.unregister(replayer)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def pytest_sessionfinish(self) -> None:
        self.history.save()
