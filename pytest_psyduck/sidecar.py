"""The embedded farm's process, from the user's side: start it early, find it, stop it.

Started as early as pytest lets a plugin act (``pytest_load_initial_conftests``,
where pytest-cov starts coverage), so that the farm's imports and start-up run
on another core while this process loads conftests and collects.  When an
earlier session left a matching standby farm (:mod:`farm.standby`), the
session claims it instead: it is already warm.  Either way the farm's stdin is
its lifeline: closing it (or this process dying) makes the farm stop its
workers and exit.  Its stderr goes to a temporary file, shown when the farm
fails to start or dies.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import select
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from farm import standby
from pytest_psyduck.forking import LaunchServer

#: Seconds the farm may take to start (importing aiohttp, starting hosts).
START_TIMEOUT = 120.0
#: Seconds the farm may take to stop its workers and remove its containers.
STOP_TIMEOUT = 120.0


#: Where the early hook leaves the started farm for the session to take.
SIDECAR_KEY = pytest.StashKey["Sidecar"]()


class SidecarError(RuntimeError):
    """The embedded farm did not start; the text says why."""


class _FarmProcess:
    """The farm's process as this session holds it: its lifeline, its answers, a pidfd.

    A fresh farm is this process's child; a claimed standby is not, so exits
    are watched through the pidfd, which works for both.
    """

    def __init__(self, pid: int, lifeline: int, answers: int, child: subprocess.Popen | None):
        self.pidfd = os.pidfd_open(pid)
        self.lifeline: int | None = lifeline
        self.answers = os.fdopen(answers, "rb")
        self.child = child
        self.exited = False

    def hang_up(self) -> None:
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None
        self.answers.close()

    def wait(self, timeout: float) -> bool:
        """Whether the farm has exited, waiting up to *timeout* seconds for it."""
        if not self.exited and select.select([self.pidfd], [], [], timeout)[0]:
            self.exited = True
            os.close(self.pidfd)
            if self.child is not None:
                self.child.wait()
        return self.exited

    def kill(self) -> None:
        if not self.exited:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Sidecar:
    """One embedded farm process and the launch server that starts its local workers."""

    def __init__(self, hosts: str, fork: bool) -> None:
        # The session to fork workers from exists only later: the run loop sets it.
        self.launcher = LaunchServer(None, fork=fork)
        self.token = secrets.token_urlsafe(24)
        self._stderr = tempfile.TemporaryFile()
        #: The farm's hosts, as a comma-separated list of specs.
        self.hosts = hosts or f"local:{os.cpu_count() or 1}"
        self._settings: dict[str, Any] = {
            "hosts": self.hosts,
            "token": self.token,
            "standby": None,
        }
        self._env = {**os.environ, "PSYDUCK_FARM_OWNER": str(os.getpid())}
        if standby.enabled():
            try:
                self._settings["standby"] = str(standby.standby_path())
            except OSError:
                pass  # no runtime directory to keep a standby in: always start fresh
        self._farm = self._claim_standby() or self._spawn()
        self.url: str | None = None
        self._ready_lock = threading.Lock()
        self._hung_up = False
        self._failure: BaseException | None = None

    def _pipes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        lifeline, answers = os.pipe(), os.pipe()
        self.launcher.private_fds.append(lifeline[1])
        return lifeline, answers

    def _claim_standby(self) -> _FarmProcess | None:
        path = self._settings["standby"]
        if path is None:
            return None
        (lifeline_r, lifeline_w), (answers_r, answers_w) = self._pipes()
        request = {**self._settings, "env": self._env, "cwd": os.getcwd()}
        fds = [lifeline_r, answers_w, self._stderr.fileno(), self.launcher.farm_end.fileno()]
        pid = standby.claim(Path(path), request, fds)
        os.close(lifeline_r)
        os.close(answers_w)
        if pid is not None:
            try:
                return _FarmProcess(pid, lifeline_w, answers_r, child=None)
            except ProcessLookupError:
                pass  # it ended right after taking the request: start afresh
        self.launcher.private_fds.remove(lifeline_w)
        os.close(lifeline_w)
        os.close(answers_r)
        return None

    def _spawn(self) -> _FarmProcess:
        (lifeline_r, lifeline_w), (answers_r, answers_w) = self._pipes()
        farm_end = self.launcher.farm_end.fileno()
        process = subprocess.Popen(
            standby.farm_command(),
            stdin=lifeline_r,
            stdout=answers_w,
            stderr=self._stderr,
            pass_fds=[farm_end],
            env=self._env,
            start_new_session=True,  # Ctrl-C is this process's to handle, not the farm's
        )
        os.close(lifeline_r)
        os.close(answers_w)
        os.write(
            lifeline_w, json.dumps({**self._settings, "launcher_fd": farm_end}).encode() + b"\n"
        )
        return _FarmProcess(process.pid, lifeline_w, answers_r, child=process)

    def _output(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read()[-8192:].decode("utf-8", "replace").strip()
        return f"\n{text}" if text else ""

    def ready(self) -> str:
        """The farm's URL once it serves; :class:`SidecarError` or UsageError if it cannot.

        Safe from several threads (:mod:`pytest_psyduck.warming` asks while the
        session collects): one waits, the others get its answer, or its error.
        """
        with self._ready_lock:
            if self._failure is not None:
                raise self._failure
            try:
                return self._wait_ready()
            except BaseException as exc:
                self._failure = exc
                raise

    def _wait_ready(self) -> str:
        if self.url is not None:
            return self.url
        answers = self._farm.answers
        deadline = time.monotonic() + START_TIMEOUT
        while not select.select([answers], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if time.monotonic() >= deadline:
                raise SidecarError(f"the embedded farm did not start within {START_TIMEOUT:g}s")
        line = answers.readline()
        if not line and self._farm.child is None and not self._hung_up:
            # The standby was on its way out and never took the request: start afresh.
            self._farm.hang_up()
            self._farm = self._spawn()
            return self._wait_ready()
        try:
            answer = json.loads(line)
        except ValueError:
            raise SidecarError(f"the embedded farm failed to start:{self._output()}") from None
        if "error" in answer:
            raise pytest.UsageError(answer["error"])
        self.launcher.farm_end.close()
        self.url = answer["url"]
        return self.url

    async def stop(self) -> None:
        """Close the lifeline and wait, serving launch requests, until the farm has exited."""
        self._hang_up()
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(self._farm.pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await exited
        except TimeoutError:
            self._farm.kill()
        finally:
            loop.remove_reader(self._farm.pidfd)
            self._farm.wait(STOP_TIMEOUT)
            self._stderr.close()

    def abandon(self) -> None:
        """Stop a farm that never ran anything (nothing was collected, or collection failed)."""
        if self._farm.exited:
            return
        self._hang_up()
        if not self._farm.wait(STOP_TIMEOUT):
            self._farm.kill()
            self._farm.wait(STOP_TIMEOUT)
        self._stderr.close()
        self.launcher.farm_end.close()
        self.launcher.close()

    def _hang_up(self) -> None:
        # A farm hung up on is never replaced (a warming thread may still wait for it).
        self._hung_up = True
        # Once closed, its number may be reused: a worker forked later must not close that.
        if self._farm.lifeline is not None:
            self.launcher.private_fds.remove(self._farm.lifeline)
        self._farm.hang_up()
