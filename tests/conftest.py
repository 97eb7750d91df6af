"""Shared helpers for psyduck's own tests: real pytest sessions in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

#: Every real session gets this long before the test gives up on it.
SESSION_TIMEOUT = 180


@dataclass
class Session:
    returncode: int
    stdout: str
    stderr: str

    def outcomes(self) -> dict[str, int]:
        """Counts from pytest's final summary line."""
        from _pytest.pytester import RunResult

        return RunResult.parse_summary_nouns(self.stdout.splitlines())


@pytest.fixture(autouse=True, scope="session")
def _farm_state_of_this_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Farms started by these tests keep their duration history and spool in this session's
    own state directory: not in the user's, and never shared by tests run side by side."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))


def outer_environment() -> dict[str, str]:
    """Our environment minus what the pytest running this suite (and a psyduck or
    xdist worker of it) adds: a session started with it is a top-level one."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_XDIST_", "PSYDUCK_", "PYTEST_CURRENT_TEST"))
        or k == "PSYDUCK_STANDBY"
    }


@pytest.fixture(autouse=True)
def _fresh_farms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions start a fresh embedded farm each, so one test's farm never serves another's.

    tests/test_standby.py turns standby farms back on, in a directory of its own.
    """
    monkeypatch.setenv("PSYDUCK_STANDBY", "0")


def on_farm(url: str) -> tuple[str, ...]:
    """pytest arguments that send a run to the farm at *url* (token from the environment)."""
    return ("-p", "no:cacheprovider", "--psyduck", f"--psyduck-farm={url}")


def run_pytest(
    path: Path, *args: str, timeout: float = SESSION_TIMEOUT, env: dict | None = None
) -> Session:
    """Run ``python -m pytest ARGS`` in *path* as a real, separate process."""
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**outer_environment(), **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    return Session(completed.returncode, completed.stdout, completed.stderr)


def start_pytest(path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m pytest ARGS`` in *path* in the background, output in ``.stdout``."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**outer_environment(), **(env or {})},
    )


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    """Poll *condition* until it holds; fail naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def junit_cases(path: Path) -> dict[str, tuple[str, str]]:
    """testcase id → (outcome, message) from a junit xml file."""
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome, message = kind, element.get("message", "")
                break
        cases[f"{case.get('classname')}::{case.get('name')}"] = (outcome, message)
    return cases


def project_of_thousands_of_files(root: Path) -> Path:
    """A project of 3,040 files: 40 test modules reading a 3,000-file data tree whose tree
    manifest (some 400 KB) and files must all arrive whole on the farm's hosts."""
    project = root / "proj"
    for i in range(3000):
        target = project / "data" / f"d{i % 30:02d}" / f"item-{i:05d}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{i}\n" + "x" * (i % 700))
    for m in range(40):
        (project / "tests" / f"test_m{m:02d}.py").parent.mkdir(parents=True, exist_ok=True)
        (project / "tests" / f"test_m{m:02d}.py").write_text(
            "import pathlib\n"
            "import pytest\n\n"
            "DATA = pathlib.Path(__file__).parents[1] / 'data'\n\n"
            "@pytest.mark.parametrize('i', range(" + str(m) + ", 3000, 40))\n"
            "def test_item(i):\n"
            "    text = (DATA / f'd{i % 30:02d}' / f'item-{i:05d}.txt').read_text()\n"
            "    assert text == f'{i}\\n' + 'x' * (i % 700)\n"
            "    assert i % 997 != 996\n"
        )
    return project


@pytest.fixture
def suite(tmp_path: Path):
    """Write a test suite: ``suite({"test_a.py": "...", ...})`` returns its directory."""

    def write(files: dict[str, str]) -> Path:
        for name, text in files.items():
            target = tmp_path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return tmp_path

    return write
