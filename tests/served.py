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


SINGLE, ALICE, BOB = "single-farm-token", "alice-token-0001", "bob-token-00002"
POKEDEX_SECRET = "pokedex-secret-77"

#: A test that fails if any credential of the farm reached its worker.
NO_CREDENTIALS = f"""
import os

SECRETS = {[SINGLE, ALICE, BOB, POKEDEX_SECRET]!r}

def test_no_farm_credential_in_the_environment():
    assert "PSYDUCK_TOKEN" not in os.environ
    assert "POKEDEX_TOKEN" not in os.environ
    leaks = sorted(k for k, v in os.environ.items() if any(s in v for s in SECRETS))
    assert not leaks, leaks
"""


LOCAL_HOST = '[[hosts]]\nurl = "local"\nslots = 2\n'


def farm_config(tmp_path: Path, port: int, pokedex: str = "", hosts: str = LOCAL_HOST) -> Path:
    """farm.toml in *tmp_path*: alice and bob's tokens, *hosts* (two local slots)."""
    (tmp_path / "tokens").write_text(f"alice {ALICE}\nbob {BOB}\n")
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntokens_file = "{tmp_path / "tokens"}"\n\n'
        + hosts
        + pokedex
    )
    return config


def pokedex_table(tmp_path: Path, port: int) -> str:
    """A ``[pokedex]`` table: a node the farm runs itself."""
    return f'\n[pokedex]\ndata = "{tmp_path / "store"}"\nlisten = "127.0.0.1:{port}"\n'
