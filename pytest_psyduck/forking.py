"""Local workers forked from the user's process after collection.

Collection is the dominant cost of small and medium suites (2,000 trivial
tests: ~2 s of collection, under 1 s of running).  A worker forked from the
process that already collected starts with every test module imported and
every item built, so it pays nothing of that again.  The embedded farm's local
host uses this launcher; remote farms start workers with ``workermain``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import signal
import socket

import pytest

from farm.hosts.base import RunContext
from farm.hosts.local import ExecLauncher, LaunchedProcess, Workdir
from pytest_psyduck.channel import Channel
from pytest_psyduck.worker import (
    WORKER_PLUGIN_NAME,
    WorkerPlugin,
    die_with_parent,
    serve,
    silence_reporting,
)

#: Names under which the controller registers its plugins; a child must not run them.
CONTROLLER_PLUGINS = ("psyduck-session", "psyduck-replay")


class ForkLauncher:
    """Fork base workers from the collected session; exec workers whose profile adds arguments."""

    def __init__(self, session: pytest.Session) -> None:
        self.session = session
        self._exec = ExecLauncher()

    def launch(
        self, run: RunContext, worker_id: str, env: dict[str, str], where: Workdir
    ) -> LaunchedProcess:
        if run.manifest.profiles.get(run.profile):
            # Extra pytest arguments change configuration: only a fresh process honours them.
            return self._exec.launch(run, worker_id, env, where)
        ours, theirs = socket.socketpair()
        read_fd, write_fd = os.pipe()
        # Objects alive at the fork stay out of the child's garbage collections,
        # which would otherwise touch (and so copy) every page of the session.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured through its reports
            status = 1
            try:
                ours.close()
                os.close(read_fd)
                self._become_worker(run, worker_id, env, theirs, write_fd)
                status = 0
            finally:
                os._exit(status)
        gc.unfreeze()
        try:
            os.setpgid(pid, pid)
        except (PermissionError, ProcessLookupError):
            pass  # the child already did it (or exec'd); both sides try, to close the race
        theirs.close()
        os.close(write_fd)
        return LaunchedProcess(pid, ours, read_fd)

    def _become_worker(
        self,
        run: RunContext,
        worker_id: str,
        env: dict[str, str],
        sock: socket.socket,
        output_fd: int,
    ) -> None:
        os.setpgid(0, 0)
        die_with_parent()
        # Leave the parent's event loop and signal plumbing behind: a test that
        # calls asyncio.run() must not see a running loop, and Ctrl-C is the parent's.
        asyncio.events._set_running_loop(None)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        config = self.session.config
        # The parent's capture files are shared with every sibling through
        # fork; each worker needs its own, and fds 1 and 2 on its output pipe.
        capman = config.pluginmanager.get_plugin("capturemanager")
        if capman is not None:
            capman.stop_global_capturing()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        if capman is not None:
            capman.start_global_capturing()
            capman.suspend_global_capture()
        # A fd of its own: pytest's capture re-points 1 and 2 during each test.
        faulthandler.enable(file=output_fd, all_threads=True)
        os.environ.update(env)
        workerinput = {
            "workerid": worker_id,
            "workercount": run.workers,
            "testrunuid": run.run_id,
        }
        config.workerinput = workerinput  # type: ignore[attr-defined]
        for name in CONTROLLER_PLUGINS:
            plugin = config.pluginmanager.get_plugin(name)
            if plugin is not None:
                config.pluginmanager.unregister(plugin)
        silence_reporting(config)
        plugin = WorkerPlugin(Channel(sock), workerinput)
        config.pluginmanager.register(plugin, WORKER_PLUGIN_NAME)
        serve(self.session, plugin)
