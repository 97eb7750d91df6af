"""The controller: replaces pytest's run loop with a run on a psyduck farm.

Unless a remote farm is named, the embedded farm's process has started even
before the session, and gets ready while this process collects.  Once collection is done,
with every selection option applied, the controller builds the manifest,
submits the run, and hands each streamed event to the
:class:`~pytest_psyduck.replay.Replayer`.  ``-x``/``--maxfail`` and Ctrl-C
cancel the remote run (``-x`` letting running workers hand home their data
first, when a plugin takes it); pytest's own stop logic then ends the session
exactly as it would have without psyduck.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import gc
import os
import sys
from pathlib import Path

import pytest

from pytest_psyduck.durations import DurationHistory
from pytest_psyduck.pluginbridges import need_fresh_workers
from pytest_psyduck.replay import Replayer
from pytest_psyduck.roles import REPLAY_PLUGIN_NAME
from pytest_psyduck.runmanifest import build_manifest, project_root, worker_spec
from pytest_psyduck.warming import Warming, worth_warming
from pytest_psyduck.xdistcontract import XdistController

#: The names pytest's command line goes by (its console scripts, on POSIX and Windows).
CONSOLE_SCRIPTS = ("pytest", "py.test", "pytest.exe", "py.test.exe")


class DistributedSession:
    """Registered as ``psyduck-session`` when ``--psyduck`` is given."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.history = DurationHistory(config)
        self._frozen = False
        #: pytest-xdist's controller side, once made (before collecting, when warming).
        self._contract: XdistController | None = None
        self._contract_env: dict[str, str] = {}
        self._warming: Warming | None = None

    def _xdist_contract(self) -> tuple[XdistController, dict[str, str]]:
        """The controller side of pytest-xdist's contract, and the variables it gives
        every worker; set up once per session, as xdist sets up its nodes once."""
        if self._contract is None:
            self._contract = XdistController(self.config, Path(project_root(self.config)))
            self._contract_env = self._contract.worker_environment()
        return self._contract, self._contract_env

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection(self):
        """Start the embedded farm's container workers (:mod:`pytest_psyduck.warming`),
        then collect without the cyclic collector, and keep what was collected out of it.

        Collecting allocates a dozen objects per test and no garbage to speak
        of; the collector's full passes over a growing session are most of the
        cost of collecting a large transformation matrix, and so are the ones
        building its manifest would trigger.
        """
        from pytest_psyduck.sidecar import SIDECAR_KEY

        sidecar = self.config.stash.get(SIDECAR_KEY, None)
        if worth_warming(self.config, sidecar):
            assert sidecar is not None
            _, env = self._xdist_contract()
            worker = worker_spec(self.config)
            worker = dataclasses.replace(worker, env={**worker.env, **env})
            self._warming = Warming(self.config, sidecar, worker)
        enabled = gc.isenabled()
        gc.disable()
        try:
            return (yield)
        finally:
            self._frozen = keep_out_of_garbage_collection()
            if enabled:
                gc.enable()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Name each plugin option or use this run cannot honour, before any result."""
        from pytest_psyduck.unsupported import notices

        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for line in notices(self.config):
            if reporter is not None:
                reporter.write_line(line, yellow=True)

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
        # pytest-xdist's plugin contract: workerinput out to every worker, and
        # each worker's workeroutput home to pytest_testnodedown.
        contract, contract_env = self._xdist_contract()
        worker = dataclasses.replace(manifest.worker, env={**manifest.worker.env, **contract_env})
        manifest = dataclasses.replace(manifest, worker=worker)
        if self._warming is not None:
            self._warming.join()
        replayer = Replayer(session, self.history, on_worker=contract.handle)
        from pytest_psyduck import remote
        from pytest_psyduck.sidecar import SIDECAR_KEY

        # The embedded farm started early (plugin.pytest_load_initial_conftests),
        # which also stops it at the end if the run never comes.
        sidecar = self.config.stash.get(SIDECAR_KEY, None)
        if sidecar is not None:
            sidecar.launcher.session = session
            if contract.needs_fresh_workers() or need_fresh_workers(self.config):
                # Those plugins configure and finish workers in their own sessions.
                sidecar.launcher.fork = False
        self.config.pluginmanager.register(replayer, REPLAY_PLUGIN_NAME)
        try:
            gently = contract.wants_farewells()
            asyncio.run(remote.run(session, manifest, replayer, sidecar, stop_gently=gently))
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

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        # A process that goes on after the session (pytester's in-process runs, a
        # program calling pytest.main) gets its collector back as it was.  Only
        # pytest's own command line stays frozen: it exits now, and the full
        # collection a thaw would bring on costs its exit ~40 ms.
        if self._frozen and not exits_after_the_session():
            gc.unfreeze()


def exits_after_the_session() -> bool:
    """Whether this process is pytest's command line, which exits once its session ends.

    Not when it runs inside a test of another pytest (which names the test in
    ``PYTEST_CURRENT_TEST``), as pytester's in-process runs do.
    """
    if os.environ.get("PYTEST_CURRENT_TEST"):
        return False
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        return spec.name in ("pytest", "pytest.__main__")  # python -m pytest
    return Path(sys.argv[0]).name in CONSOLE_SCRIPTS


def keep_out_of_garbage_collection() -> bool:
    """Spare this process the garbage collector's passes over the collected session.

    Plain pytest's full collections walk every object of the session — all
    the collected items — a few times during the run and again as the
    interpreter exits: ~0.2 s for 2,000 trivial tests on a 2-core VM.  The
    controller runs no tests, so nothing it holds at the end of collection is
    garbage it would miss; freezing it for the rest of the process's life
    (unless the process goes on after the session: :func:`exits_after_the_session`),
    and whatever exists at exit (after every ``atexit`` handler registered later
    has run), leaves the collector only the replay's short-lived objects.
    Forked workers start with the same objects frozen, which also keeps their
    pages shared with this process; what their tests create is collected as
    usual.

    False, freezing nothing, when something is frozen already: this session
    then runs inside a test on a forked worker (or a program froze objects of
    its own), and what is frozen is not this session's to thaw.
    """
    if gc.get_freeze_count():
        return False
    gc.freeze()
    atexit.unregister(gc.freeze)  # once per process, however many sessions it runs
    atexit.register(gc.freeze)
    return True
