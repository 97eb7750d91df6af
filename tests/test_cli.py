"""``psyduck farm serve`` as a real service, used by real ``pytest --psyduck-farm`` sessions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from farm.config import ConfigError, parse_config
from tests.conftest import (
    on_farm,
    project_of_thousands_of_files,
    run_pytest,
    start_pytest,
    wait_until,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_farm(config: Path, port: int, env: dict | None = None) -> tuple[str, subprocess.Popen]:
    """Start ``psyduck farm serve`` and wait until it answers its health check."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "farm", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, proc.stdout.read()
        try:
            urllib.request.urlopen(url + "/v1/health", timeout=1)
        except OSError:
            return False
        return True

    wait_until(healthy, "the farm to come up", timeout=30)
    return url, proc


#: url → the ``psyduck farm serve`` process behind the ``farm`` fixture, for tests that kill it.
farm_processes: dict[str, subprocess.Popen] = {}


@pytest.fixture
def farm(tmp_path):
    """A coordinator service with two local slots, on a loopback port."""
    port = _free_port()
    (tmp_path / "token").write_text("s3cret-token\n")
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        '[[hosts]]\nurl = "local"\nslots = 2\nlabels = { pool = "ci" }\n'
    )
    url, proc = serve_farm(config, port)
    farm_processes[url] = proc
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _psyduck(*args: str, token: str = "s3cret-token") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PSYDUCK_TOKEN": token},
    )


def test_pytest_runs_on_a_served_farm(farm, suite):
    path = suite(
        {
            "test_a.py": "import os\n"
            "def test_pool(): assert os.environ['PYTEST_XDIST_WORKER'].startswith('gw')\n"
            "def test_bad(): assert 0",
            "test_b.py": "\n".join(f"def test_{i}(): pass" for i in range(10)),
        }
    )
    result = run_pytest(
        path,
        *on_farm(farm),
        env={"PSYDUCK_TOKEN": "s3cret-token"},
    )
    assert result.outcomes() == {"failed": 1, "passed": 11}, result.stdout + result.stderr

    wrong = run_pytest(
        path,
        *on_farm(farm),
        env={"PSYDUCK_TOKEN": "wrong"},
    )
    assert wrong.returncode == 4
    assert "missing or wrong token" in wrong.stderr


def test_farm_status_and_hosts_check(farm):
    status = _psyduck("farm", "status", "--farm", farm)
    assert status.returncode == 0, status.stderr
    assert "local" in status.stdout and "SLOTS" in status.stdout
    refused = _psyduck("farm", "status", "--farm", farm, token="nope")
    assert refused.returncode == 2
    assert "missing or wrong token" in refused.stderr
    check = _psyduck("hosts", "check", "--hosts", "local:2")
    assert check.returncode == 0
    assert "local: ok" in check.stdout
    bad = _psyduck("hosts", "check", "--hosts", "floppy:3")
    assert bad.returncode == 2
    assert "unknown host kind" in bad.stderr


def test_a_small_run_is_not_starved_by_a_huge_one(farm, suite, tmp_path):
    huge = suite(
        {
            "huge/test_huge.py": "\n".join(
                f"def test_{i}(): __import__('time').sleep(0.1)" for i in range(100)
            )
        }
    )
    small_dir = tmp_path / "small"
    small_dir.mkdir()
    (small_dir / "test_small.py").write_text("\n".join(f"def test_{i}(): pass" for i in range(4)))
    env = {"PSYDUCK_TOKEN": "s3cret-token"}
    huge_result = {}
    thread = threading.Thread(
        target=lambda: huge_result.update(
            r=run_pytest(
                huge / "huge",
                *on_farm(farm),
                env=env,
            )
        )
    )
    thread.start()
    # Wait until the huge run holds the farm.
    wait_until(
        lambda: "running" in _psyduck("farm", "status", "--farm", farm).stdout,
        "the huge run to hold the farm",
    )
    small = run_pytest(small_dir, *on_farm(farm), env=env)
    assert small.outcomes() == {"passed": 4}
    assert thread.is_alive(), "the small run had to wait for the huge one"
    thread.join(timeout=120)
    assert huge_result["r"].outcomes() == {"passed": 100}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no [[hosts]]"),
        ({"hosts": [{"url": "floppy"}]}, "unknown host kind"),
        ({"hosts": [{"url": "local", "slots": 0}]}, "slots: must be a positive integer"),
        ({"farm": {"listen": "nowhere"}, "hosts": [{"url": "local"}]}, "expected HOST:PORT"),
    ],
)
def test_bad_configs_are_explained(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", "\\[")):
        parse_config(data)


def test_a_remote_run_ships_its_snapshot_through_the_farms_pokedex(tmp_path, suite):
    """The farm's local hosts run the tests from the pulled snapshot, not the client's disk."""
    port = _free_port()
    cache = tmp_path / "cache"
    (tmp_path / "token").write_text("tok")
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        f'[[hosts]]\nurl = "local"\nslots = 2\n\n[pokedex]\ndata = "{tmp_path / "store"}"\n'
    )
    project = (
        suite(
            {
                "proj/pytest.ini": "[pytest]\npythonpath = .\n",
                "proj/pkg/__init__.py": "VALUE = 41\n",
                "proj/tests/test_snap.py": "import os, pkg\n"
                "def test_where():\n"
                f"    assert __file__.startswith({str(cache)!r}), __file__\n"
                "    assert os.getcwd().endswith('/tests')\n"
                "def test_import(): assert pkg.VALUE == 41\n",
            }
        )
        / "proj"
    )
    url, proc = serve_farm(config, port, env={"XDG_CACHE_HOME": str(cache)})
    try:
        env = {"PSYDUCK_TOKEN": "tok"}
        result = run_pytest(
            project / "tests",
            *on_farm(url),
            env=env,
        )
        assert result.outcomes() == {"passed": 2}, result.stdout + result.stderr
        assert "psyduck: shipped" in result.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_project_of_thousands_of_files_runs_on_a_served_farm_as_plainly(tmp_path):
    """Its snapshot crosses the farm's pokedex whole (a tree manifest of hundreds of KB),
    twice in a row (the second time from what the farm's hosts already have)."""
    port = _free_port()
    (tmp_path / "token").write_text("tok")
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        f'[[hosts]]\nurl = "local"\nslots = 2\n\n[pokedex]\ndata = "{tmp_path / "store"}"\n'
    )
    project = project_of_thousands_of_files(tmp_path)
    plain = run_pytest(project, "-p", "no:cacheprovider")
    assert plain.outcomes() == {"passed": 2997, "failed": 3}, plain.stdout[-2000:]
    url, proc = serve_farm(config, port, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        for _ in range(2):
            result = run_pytest(project, *on_farm(url), env={"PSYDUCK_TOKEN": "tok"})
            assert result.outcomes() == plain.outcomes(), result.stdout[-3000:] + result.stderr
            assert result.returncode == plain.returncode == 1
            assert "psyduck: shipped" in result.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_losing_the_farm_mid_run_interrupts_and_keeps_what_arrived(farm, suite, tmp_path):
    started = tmp_path / "started"
    path = suite(
        {
            "test_a.py": "def test_quick(): pass\n",
            "test_b.py": "import pathlib, time\n"
            "def test_slow():\n"
            f"    pathlib.Path({str(started)!r}).write_text('x')\n"
            "    time.sleep(60)\n",
        }
    )
    client = start_pytest(
        path,
        *on_farm(farm),
        env={"PSYDUCK_TOKEN": "s3cret-token"},
    )
    wait_until(lambda: started.exists() or client.poll() is not None, "the slow test to start")

    def quick_test_reported() -> bool:
        status = json.loads(_psyduck("farm", "status", "--farm", farm, "--json").stdout)
        return any(run["done"] >= 1 for run in status["runs"])

    wait_until(quick_test_reported, "the quick test's result")
    farm_processes[farm].kill()
    out, _ = client.communicate(timeout=60)
    assert client.returncode == 2, out
    assert "Interrupted: psyduck:" in out
    assert "1 passed" in out
