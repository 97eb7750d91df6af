"""The embedded farm's local workers, started in the user's process on the farm's request.

Collection is the dominant cost of small and medium suites (2,000 trivial
tests: ~2 s of collection, under 1 s of running).  A worker forked from the
process that already collected starts with every test module imported and
every item built, so it pays nothing of that again.  The embedded farm runs in
a process of its own, so it asks this one for each worker over the launch
socket (protocol in :mod:`farm.hosts.local`); this process forks it — or execs
a fresh interpreter when the run's profile adds pytest arguments or
``--psyduck-spawn exec`` was given — and, being the parent, reaps it and tells
the farm how it ended.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import sys
from typing import Any

import pytest

from farm.hosts.local import (
    MAX_LAUNCH_MESSAGE,
    LaunchedProcess,
    Workdir,
    exec_worker,
    exit_info,
    kill_group,
)
from farm.protocol import decode, encode
from farm.tokens import scrub
from pytest_psyduck.channel import Channel
from pytest_psyduck.pluginbridges import rerun_as_plain_pytest
from pytest_psyduck.roles import CONTROLLER_PLUGINS, WORKER_PLUGIN_NAME
from pytest_psyduck.worker import WorkerPlugin, die_with_parent, serve
from pytest_psyduck.workerterminal import silence_reporting
from pytest_psyduck.xdistcontract import worker_input


class LaunchServer:
    """This process's end of the embedded farm's launch socket."""

    def __init__(self, session: pytest.Session | None, fork: bool) -> None:
        #: The collected session workers are forked from; set before the first launch.
        self.session = session
        self.fork = fork
        self.sock, self.farm_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._children: dict[int, int] = {}  # pid → pidfd
        #: Descriptors of this process that a forked worker must not keep open.
        self.private_fds: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def serve(self) -> None:
        """Answer the farm's requests from the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock, self._on_request)

    def close(self) -> None:
        """Stop serving; kill and reap any worker the farm left behind."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock)
        for pid, pidfd in list(self._children.items()):
            if self._loop is not None:
                self._loop.remove_reader(pidfd)
            os.close(pidfd)
            kill_group(pid)
            os.waitpid(pid, 0)
        self._children.clear()
        self.sock.close()

    def _on_request(self) -> None:
        try:
            data = self.sock.recv(MAX_LAUNCH_MESSAGE)
        except OSError:
            data = b""
        if not data:
            assert self._loop is not None
            self._loop.remove_reader(self.sock)
            return
        request: dict[str, Any] = {}
        try:
            request = decode(data, max_bytes=MAX_LAUNCH_MESSAGE)
            if request["t"] == "launch":
                self._launch(request)
        except Exception as exc:  # whatever failed, the farm must hear it rather than wait
            how = "cannot start a worker" if isinstance(exc, OSError) else "bad launch request"
            self._send({"t": "failed", "id": request.get("id", -1), "message": f"{how}: {exc!r}"})

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        try:
            socket.send_fds(self.sock, [encode(message)], fds or [])
        except OSError:
            pass  # the farm is gone; it stops its runs without us

    def _launch(self, request: dict[str, Any]) -> None:
        env = {str(k): str(v) for k, v in request["env"].items()}
        if self.fork and not request["fresh"]:
            process = self._fork(request, env)
        else:
            # Extra pytest arguments change configuration: only a fresh process honours them.
            process = exec_worker(
                sys.executable, Workdir(request["cwd"], tuple(request["argv"])), env
            )
        pidfd = os.pidfd_open(process.pid)
        self._children[process.pid] = pidfd
        assert self._loop is not None
        self._loop.add_reader(pidfd, self._reap, process.pid)
        self._send(
            {"t": "launched", "id": request["id"], "pid": process.pid},
            [process.channel.fileno(), process.output_fd],
        )
        process.channel.close()
        os.close(process.output_fd)

    def _reap(self, pid: int) -> None:
        pidfd = self._children.pop(pid)
        assert self._loop is not None
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        info = exit_info(status)
        self._send({"t": "exited", "pid": pid, "status": info.status, "signal": info.signal})

    def _fork(self, request: dict[str, Any], env: dict[str, str]) -> LaunchedProcess:
        assert self.session is not None, "workers are forked only once the session exists"
        ours, theirs = socket.socketpair()
        read_fd, write_fd = os.pipe()
        # The child inherits the session frozen out of its garbage collections
        # (session.keep_out_of_garbage_collection), which would otherwise touch
        # (and so copy) every page of it.
        # Unflushed output would be written twice: by this process and by the child.
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured through its reports
            status = 1
            try:
                ours.close()
                os.close(read_fd)
                self._become_worker(request, env, theirs, write_fd)
                status = 0
            finally:
                os._exit(status)
        try:
            os.setpgid(pid, pid)
        except (PermissionError, ProcessLookupError):
            pass  # the child already did it; both sides try, to close the race
        theirs.close()
        os.close(write_fd)
        return LaunchedProcess(pid, ours, read_fd)

    def _become_worker(
        self, request: dict[str, Any], env: dict[str, str], sock: socket.socket, output_fd: int
    ) -> None:
        os.setpgid(0, 0)
        die_with_parent()
        self.sock.close()
        for fd in [*self._children.values(), *self.private_fds]:
            os.close(fd)
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
        scrub(os.environ)  # the user's farm credentials stay with the user
        workerinput = worker_input(request["worker_id"], request["workers"], request["run_id"])
        config.workerinput = workerinput  # type: ignore[attr-defined]
        config.workeroutput = {}  # type: ignore[attr-defined]
        for name in CONTROLLER_PLUGINS:
            plugin = config.pluginmanager.get_plugin(name)
            if plugin is not None:
                config.pluginmanager.unregister(plugin)
        silence_reporting(config)
        rerun_as_plain_pytest(config.pluginmanager)
        plugin = WorkerPlugin(Channel(sock), workerinput)
        config.pluginmanager.register(plugin, WORKER_PLUGIN_NAME)
        serve(self.session, plugin)
