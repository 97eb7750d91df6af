"""The farm never imports pytest or the plugin: the plugin tells it what workers need.

Dependencies run one way (pytest_psyduck → farm → pokedex).  A served farm with a
docker host runs a real session's shards in containers, and at its end the farm
process has imported neither ``pytest`` nor ``pytest_psyduck``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import pytest

from farm.manifest import RunManifest, TestSpec, WorkerSpec
from tests.conftest import SESSION_TIMEOUT, on_farm, outer_environment, run_pytest, wait_until
from tests.farm_hosts.hostlib import free_port
from tests.farm_hosts.test_host_faults import _events_of
from tests.test_run_faults import PROJECT, TOKEN, _farm, _status

pytestmark = pytest.mark.docker

PLUGIN_MODULES = ("pytest", "_pytest", "pytest_psyduck")

#: ``psyduck farm serve`` that writes the names of its imported modules when it exits.
RECORDING_FARM = """
import atexit, json, os, runpy, sys

def record():
    with open(os.environ["FARM_MODULES"], "w") as f:
        json.dump(sorted(sys.modules), f)

atexit.register(record)
sys.argv = ["psyduck", *sys.argv[1:]]
runpy.run_module("farm.cli", run_name="__main__", alter_sys=True)
"""


def test_a_served_farm_runs_containers_without_importing_pytest(docker_image, suite, tmp_path):
    port = free_port("127.0.0.1")
    (tmp_path / "token").write_text("farm-token-1")
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        f'[[hosts]]\nurl = "docker"\nslots = 2\nmemory = "2G"\nimage = "{docker_image}"\n'
    )
    modules = tmp_path / "modules.json"
    farm = subprocess.Popen(
        [sys.executable, "-c", RECORDING_FARM, "farm", "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**outer_environment(), "FARM_MODULES": str(modules)},
    )
    try:
        path = suite(
            {
                "test_a.py": "import pytest\n\n"
                "@pytest.mark.psyduck(memory='300M')\n"
                "def test_one():\n    pass\n\n"
                "def test_two():\n    assert 1 + 1 == 2\n",
            }
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url, farm), "the farm to serve", timeout=60)
        done = run_pytest(path, *on_farm(url), env={"PSYDUCK_TOKEN": "farm-token-1"})
        assert done.outcomes() == {"passed": 2}, done.stdout + done.stderr
    finally:
        farm.terminate()
        _, errors = farm.communicate(timeout=SESSION_TIMEOUT)
    imported = set(json.loads(modules.read_text()))
    assert "farm.hosts.docker.host" in imported, errors
    assert not imported & set(PLUGIN_MODULES), sorted(imported & set(PLUGIN_MODULES))


def _healthy(url: str, farm: subprocess.Popen) -> bool:
    assert farm.poll() is None, "the farm exited"
    try:
        urllib.request.urlopen(url + "/v1/health", timeout=5).close()
    except OSError:
        return False
    return True


def test_a_run_needing_a_package_the_farm_lacks_fails_alone(docker_image, tmp_path, suite):
    """A served farm injects its own installation of what the run names; what it lacks
    ends that run with the reason, and its host serves the next run."""
    project = suite(PROJECT) / "proj"
    url, proc = _farm(tmp_path, f'url = "docker"\nslots = 2\nimage = "{docker_image}"')
    try:
        manifest = RunManifest(
            tests=tuple(
                TestSpec(id=f"tests/test_a.py::test_{n}", group="tests/test_a.py")
                for n in ("one", "two")
            ),
            worker=WorkerSpec(
                argv=("pytest_psyduck.workermain", "-p", "no:cacheprovider"),
                cwd=str(project),
                inject={"farm": "/client/site/farm", "no_such_pkg_xyz": "/client/site/x"},
            ),
        )
        events = asyncio.run(_events_of(url, manifest))
        done = events[-1]
        assert done["t"] == "done" and done["status"] == "failed", events
        assert "need no_such_pkg_xyz, not installed on the farm" in done["reason"], done
        assert not any(h["quarantined"] or h["failures"] for h in _status(url)["hosts"])
        passed = run_pytest(project, *on_farm(url), env={"PSYDUCK_TOKEN": TOKEN})
        assert passed.outcomes() == {"passed": 2}, passed.stdout + passed.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
