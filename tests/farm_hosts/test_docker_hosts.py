"""Shards in real containers on the local engine, through real ``pytest --psyduck`` sessions."""

from __future__ import annotations

import signal
import socket

import docker
import pytest

from farm.hosts.containers import LABEL_FARM, farm_identity
from tests.conftest import junit_cases, on_farm, run_pytest, wait_until
from tests.farm_hosts.hostlib import (
    LIMITS_SUITE_PASSED,
    ROOT,
    containers_of,
    free_port,
    limits_suite,
    psyduck_session,
    reap_orphans,
    recorded_session,
    seed_durations,
    start_session,
    wait_containers_gone,
)

pytestmark = pytest.mark.docker


def test_demo_suite_in_containers_matches_plain_pytest(docker_image, tmp_path):
    demo = ROOT / "examples" / "demo"
    plain = run_pytest(demo, "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'plain.xml'}")
    farm = psyduck_session(
        demo,
        "--psyduck-hosts",
        "docker:2",
        "--psyduck-image",
        docker_image,
        f"--junitxml={tmp_path / 'farm.xml'}",
    )
    assert farm.returncode == plain.returncode == 1, farm.output
    assert (
        # The "=" padding depends on how many digits the duration has.
        farm.output.splitlines()[-1].split(" in ")[0].strip("= ")
        == plain.stdout.splitlines()[-1].split(" in ")[0].strip("= ")
    )
    assert junit_cases(tmp_path / "farm.xml") == junit_cases(tmp_path / "plain.xml")
    wait_until(
        lambda: not containers_of(farm.pid), "the run's containers to be removed", timeout=30
    )


ISOLATION = """
import os
import pathlib
import pytest

HERE = pathlib.Path(__file__).parent

def test_only_loopback_and_no_route():
    assert sorted(os.listdir("/sys/class/net")) == ["lo"]
    routes = pathlib.Path("/proc/net/route").read_text().splitlines()[1:]
    assert routes == []

def test_no_capabilities_and_no_new_privileges():
    status = pathlib.Path("/proc/self/status").read_text()
    assert "CapEff:\\t0000000000000000" in status
    assert "NoNewPrivs:\\t1" in status

def test_no_docker_socket():
    assert not os.path.exists("/var/run/docker.sock")
    assert not os.path.exists("/run/docker.sock")

def test_code_source_and_root_fs_are_read_only():
    for path in ("/psyduck/src/intruder.txt", "/etc/intruder.txt"):
        with pytest.raises(OSError):
            open(path, "w")

def test_writes_next_to_itself_in_a_private_copy():
    (HERE / "written-by-test.txt").write_text("scratch")
    assert (HERE / "data.txt").read_text() == "data next to the test"

def test_tmpdir_is_writable(tmp_path):
    (tmp_path / "x").write_text("ok")
    assert os.environ["TMPDIR"] == "/tmp"

def test_limits_applied():
    memory = pathlib.Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if not memory.exists():
        memory = pathlib.Path("/sys/fs/cgroup/memory.max")
    assert int(memory.read_text()) < 1 << 60
"""


def test_containers_are_isolated_and_removed(docker_image, suite):
    path = suite({"test_isolation.py": ISOLATION, "data.txt": "data next to the test"})
    done = psyduck_session(
        path, "--psyduck-hosts", "docker:2", "--psyduck-image", docker_image, "-rA"
    )
    assert done.returncode == 0, done.output
    assert "7 passed" in done.output
    # The container wrote only its private copy; the file came home at the worker's end
    # (pytest_psyduck.homecoming), where plain pytest would have left it.
    assert (path / "written-by-test.txt").read_text() == "scratch"
    wait_until(
        lambda: not containers_of(done.pid), "the run's containers to be removed", timeout=30
    )


MEMORY_HOG = """
import pytest

@pytest.mark.psyduck(memory="64M")
def test_hog():
    blocks = []
    while True:
        blocks.append(b"x" * (8 << 20))

def test_before():
    pass

def test_after():
    pass
"""


def test_a_test_past_its_memory_limit_is_killed_for_memory(docker_image, suite, tmp_path):
    path = suite({"test_memory.py": MEMORY_HOG, "test_other.py": "def test_other():\n    pass\n"})
    done = psyduck_session(
        path,
        "--psyduck-hosts",
        "docker:2",
        "--psyduck-image",
        docker_image,
        f"--junitxml={tmp_path / 'out.xml'}",
    )
    cases = junit_cases(tmp_path / "out.xml")
    assert done.returncode == 1, done.output
    outcome, message = cases["test_memory::test_hog"]
    assert outcome == "failure"
    assert "killed for memory" in message and "64 MiB" in message, message
    assert {k: v[0] for k, v in cases.items() if k != "test_memory::test_hog"} == {
        "test_memory::test_before": "passed",
        "test_memory::test_after": "passed",
        "test_other::test_other": "passed",
    }


def test_each_shard_gets_its_own_modules_limits(docker_image, suite, tmp_path):
    """Containers start ahead of their shard with the host's share, then fit the shard."""
    done, cases = recorded_session(
        limits_suite(suite),
        tmp_path / "out.xml",
        "--psyduck-hosts",
        "docker:2",
        "--psyduck-image",
        docker_image,
    )
    assert done.returncode == 0, done.output
    assert {k: v[0] for k, v in cases.items()} == LIMITS_SUITE_PASSED, done.output


LIMIT_BELOW_COLLECTION = """
import pytest

@pytest.mark.psyduck(memory="8M")
def test_tiny():
    pass

def test_fine():
    pass
"""


def test_a_shard_whose_limit_the_engine_refuses_fails_its_test_with_the_reason(
    docker_image, suite, tmp_path
):
    """A worker already using more than the shard allows is not given the shard, and the
    run ends: the hinted test fails with the engine's answer, the other test passes."""
    path = suite({"test_tiny.py": LIMIT_BELOW_COLLECTION})
    seed_durations(path, {"test_tiny.py::test_tiny": 20.0, "test_tiny.py::test_fine": 20.0})
    done, cases = recorded_session(
        path, tmp_path / "out.xml", "--psyduck-hosts", "docker:1", "--psyduck-image", docker_image
    )
    output = done.output
    assert done.returncode == 1, output
    assert cases["test_tiny::test_fine"][0] == "passed", output
    outcome, message = cases["test_tiny::test_tiny"]
    assert outcome == "failure"
    assert "could not give this worker its shard's limits (memory 8 MiB" in message, message


SLOW = """
import time
import pytest

@pytest.mark.parametrize("n", range(8))
def test_slow(n):
    time.sleep(20)
"""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_client_going_away_removes_its_containers(docker_image, suite, how):
    path = suite({"test_slow.py": SLOW})
    process = start_session(path, "--psyduck-hosts", "docker:2", "--psyduck-image", docker_image)
    try:
        # Unknown durations put all tests in one shard: one container.
        wait_until(
            lambda: any(c["State"] == "running" for c in containers_of(process.pid)),
            "a running container",
        )
        process.send_signal(how)
        process.communicate(timeout=60)
        wait_containers_gone(process.pid, timeout=15)
    finally:
        process.kill()
        process.communicate()


def test_reaper_removes_containers_of_dead_coordinators_only(docker_image):
    dead = f"{socket.gethostname()}:999999999:1"
    alive = farm_identity(1)
    api = docker.APIClient(timeout=30)
    ids = {}
    try:
        for owner in (dead, alive):
            ids[owner] = api.create_container(
                docker_image,
                ["sleep", "600"],
                labels={LABEL_FARM: owner},
                host_config=api.create_host_config(network_mode="none", cap_drop=["ALL"]),
            )["Id"]
            api.start(ids[owner])

        reap_orphans()
        remaining = {c["Id"] for c in api.containers(all=True, filters={"label": LABEL_FARM})}
        assert ids[dead] not in remaining
        assert ids[alive] in remaining
    finally:
        for container in ids.values():
            try:
                api.remove_container(container, force=True)
            except docker.errors.NotFound:
                pass
        api.close()


def test_missing_image_is_a_clear_host_error(docker_image, suite):
    path = suite({"test_one.py": "def test_one():\n    pass\n"})
    done = psyduck_session(
        path, "--psyduck-hosts", "docker:1", "--psyduck-image", "psyduck-test:no-such-tag"
    )
    assert done.returncode != 0
    assert "'psyduck-test:no-such-tag' is not present" in done.output


def test_a_served_farm_runs_the_shipped_snapshot_in_containers(docker_image, suite, tmp_path):
    """Remote client → pokedex snapshot → pulled once on the host → mounted at the client's path."""
    from tests.test_cli import serve_farm

    port = free_port("127.0.0.1")
    (tmp_path / "token").write_text("tok")
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        f'[[hosts]]\nurl = "docker"\nslots = 2\nimage = "{docker_image}"\n\n'
        f'[pokedex]\ndata = "{tmp_path / "store"}"\n'
    )
    project = (
        suite(
            {
                "proj/pytest.ini": "[pytest]\npythonpath = .\n",
                "proj/pkg/__init__.py": "VALUE = 41\n",
                "proj/tests/test_snap.py": "import os, pathlib, pkg\n"
                "def test_code_comes_from_the_snapshot():\n"
                "    mounts = pathlib.Path('/proc/self/mountinfo').read_text().splitlines()\n"
                "    [source] = [m.split()[3] for m in mounts if m.split()[4] == '/psyduck/src']\n"
                "    assert '/trees/' in source, source\n"
                "    assert os.getcwd().endswith('/proj/tests')\n"
                "def test_import():\n"
                "    assert pkg.VALUE == 41\n",
            }
        )
        / "proj"
    )
    url, proc = serve_farm(config, port, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        result = run_pytest(
            project / "tests",
            *on_farm(url),
            env={"PSYDUCK_TOKEN": "tok"},
        )
        assert result.outcomes() == {"passed": 2}, result.stdout + result.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_strict_suite_without_the_cache_provider_runs_in_containers(docker_image, suite):
    """``-p no:cacheprovider`` with ``--strict-config`` and warnings as errors: the
    container's scratch cache option must not become an unknown ini key there."""
    path = suite(
        {
            "pytest.ini": "[pytest]\naddopts = --strict-config\nfilterwarnings = error\n",
            "test_strict.py": "def test_one():\n    pass\n\ndef test_two():\n    pass\n",
        }
    )
    session = psyduck_session(path, "--psyduck-hosts", "docker:2", "--psyduck-image", docker_image)
    assert session.returncode == 0, session.output
    assert "2 passed" in session.output


KILLED_MID_SHARD = """
import os
import signal

import pytest

@pytest.mark.parametrize("n", range(400))
def test_quick(n):
    pass

def test_kills_its_worker():
    os.kill(os.getpid(), signal.SIGKILL)

@pytest.mark.parametrize("n", range(5))
def test_after(n):
    pass
"""


def test_a_worker_killed_mid_shard_loses_none_of_the_results_it_sent(docker_image, suite, tmp_path):
    """The container's relay gathers the worker's frames; the quick tests' results,
    written just before the kill, still all arrive, and the right test is blamed."""
    path = suite({"test_killed.py": KILLED_MID_SHARD})
    done, cases = recorded_session(
        path, tmp_path / "out.xml", "--psyduck-hosts", "docker:1", "--psyduck-image", docker_image
    )
    assert done.returncode == 1, done.output
    outcome, message = cases.pop("test_killed::test_kills_its_worker")
    assert outcome == "failure", message
    assert (
        "crashed while running test_killed.py::test_kills_its_worker: killed by signal SIGKILL"
        in (message)
    )
    assert {outcome for outcome, _ in cases.values()} == {"passed"}, done.output
    assert len(cases) == 405
