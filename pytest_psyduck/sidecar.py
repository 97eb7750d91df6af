"""The embedded farm's process, from the user's side: start it early, find it, stop it.

Started as early as pytest lets a plugin act (``pytest_load_initial_conftests``,
where pytest-cov starts coverage), so that the farm's imports and start-up run
on another core while this process loads conftests and collects.  Its
stdin is its lifeline: closing it (or this process dying) makes the farm stop
its workers and exit.  Its stderr goes to a temporary file, shown when the
farm fails to start or dies.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time

import pytest

from pytest_psyduck.forking import LaunchServer

#: Seconds the farm may take to start (importing aiohttp, starting hosts).
START_TIMEOUT = 120.0
#: Seconds the farm may take to stop its workers and remove its containers.
STOP_TIMEOUT = 120.0


#: Where the early hook leaves the started farm for the session to take.
SIDECAR_KEY = pytest.StashKey["Sidecar"]()


class SidecarError(RuntimeError):
    """The embedded farm did not start; the text says why."""


class Sidecar:
    """One embedded farm process and the launch server that starts its local workers."""

    def __init__(self, hosts: str, fork: bool) -> None:
        # The session to fork workers from exists only later: the run loop sets it.
        self.launcher = LaunchServer(None, fork=fork)
        self.token = secrets.token_urlsafe(24)
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "farm.embedded"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            pass_fds=[self.launcher.farm_end.fileno()],
            env={**os.environ, "PSYDUCK_FARM_OWNER": str(os.getpid())},
            start_new_session=True,  # Ctrl-C is this process's to handle, not the farm's
        )
        settings = {
            "hosts": hosts or f"local:{os.cpu_count() or 1}",
            "token": self.token,
            "launcher_fd": self.launcher.farm_end.fileno(),
        }
        self.launcher.farm_end.close()
        assert self._process.stdin is not None and self._process.stdout is not None
        self.launcher.private_fds.append(self._process.stdin.fileno())
        self._process.stdin.write(json.dumps(settings).encode() + b"\n")
        self._process.stdin.flush()
        self.url: str | None = None

    def _output(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read()[-8192:].decode("utf-8", "replace").strip()
        return f"\n{text}" if text else ""

    def ready(self) -> str:
        """The farm's URL once it serves; :class:`SidecarError` or UsageError if it cannot."""
        if self.url is not None:
            return self.url
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if time.monotonic() >= deadline:
                raise SidecarError(f"the embedded farm did not start within {START_TIMEOUT:g}s")
        line = stdout.readline()
        try:
            answer = json.loads(line)
        except ValueError:
            raise SidecarError(f"the embedded farm failed to start:{self._output()}") from None
        if "error" in answer:
            raise pytest.UsageError(answer["error"])
        self.url = answer["url"]
        return self.url

    async def stop(self) -> None:
        """Close the lifeline and wait, serving launch requests, until the farm has exited."""
        self._close_lifeline()
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(self._process.pid)
        exited = loop.create_future()
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await exited
        except TimeoutError:
            self._process.kill()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._process.wait()
            self._stderr.close()

    def abandon(self) -> None:
        """Stop a farm that never ran anything (nothing was collected, or collection failed)."""
        if self._process.returncode is not None:
            return
        self._close_lifeline()
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stderr.close()
        self.launcher.close()

    def _close_lifeline(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        # Once closed, its number may be reused: a worker forked later must not close that.
        self.launcher.private_fds.remove(self._process.stdin.fileno())
        self._process.stdin.close()
        self._process.stdout.close()
