"""A real ``psyduck farm serve`` process for tests that also need to read what it logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import wait_until


class ServedFarm:
    """``psyduck farm serve --config CONFIG`` with its output collected line by line."""

    def __init__(
        self, config: Path, url: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.url = url
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "farm", "serve", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(self._healthy, "the farm to come up", timeout=60)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, f"the farm exited:\n{self.output}"
        try:
            urllib.request.urlopen(self.url + "/v1/health", timeout=5).close()
        except OSError:
            return False
        return True

    def wait_for_line(self, text: str) -> str:
        """The first output line containing *text*, once the farm has printed it."""
        found: list[str] = []

        def printed() -> bool:
            found[:] = [line for line in self.lines if text in line]
            return bool(found)

        wait_until(printed, f"the farm to print {text!r}:\n{self.output}", timeout=60)
        return found[0]

    def reload(self, until: str) -> str:
        """SIGHUP, then the first new output line containing *until*."""
        seen = len(self.lines)
        self.proc.send_signal(signal.SIGHUP)
        found: list[str] = []

        def printed() -> bool:
            found[:] = [line for line in self.lines[seen:] if until in line]
            return bool(found)

        wait_until(printed, f"the reload to print {until!r}:\n{self.output}", timeout=60)
        return found[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=30)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """GET *url*: (status, body, content type), errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")
