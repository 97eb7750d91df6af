"""Container workers start while the session collects, and serve the run only if they
are the very workers it would start.

Real sessions on the real engine: a conftest holds the user's collection until a
worker container of the session exists (so the run can only finish if warming
started it), and a conftest that changes a passed variable while collecting shows
the run refusing warm workers that would see the old value.
"""

from __future__ import annotations

import pytest

from tests.conftest import SESSION_TIMEOUT, start_pytest
from tests.farm_hosts.hostlib import containers_created, of_session

pytestmark = pytest.mark.docker

#: Holds the user's collection (never a worker's) until a worker container of this
#: session exists: started before the run was submitted, so by warming.
WAIT_FOR_A_WORKER = """
import os, time

def pytest_collection(session):
    if hasattr(session.config, "workerinput"):
        return
    import docker  # the user's machine has it, the test image need not
    deadline = time.monotonic() + 120
    with docker.APIClient(timeout=30) as api:
        while not any(
            f":{os.getpid()}:" in c["Labels"].get("psyduck.farm", "")
            for c in api.containers(all=True, filters={"label": "psyduck.worker"})
        ):
            assert time.monotonic() < deadline, "no worker container started while collecting"
            time.sleep(0.05)
"""
#: Changes a variable the run passes to its workers while the user's pytest collects.
CHANGE_WHILE_COLLECTING = """
import os

def pytest_collection(session):
    if not hasattr(session.config, "workerinput"):
        os.environ["WARM_PROBE"] = "changed while collecting"
"""
TEST = (
    "import os\n\ndef test_{name}():\n    assert os.environ.get('WARM_PROBE', '') == {expected!r}\n"
)
NAMES = ("one", "two")


def session(path, image: str, *args: str, env: dict | None = None) -> tuple[int, str, list[str]]:
    """``pytest --psyduck`` on ``docker:2``: exit code, output, worker containers it created."""
    with containers_created("psyduck.worker") as created:
        process = start_pytest(
            path,
            *("--psyduck", "--psyduck-hosts", "docker:2", "--psyduck-image", image, *args),
            env=env,
        )
        output, _ = process.communicate(timeout=SESSION_TIMEOUT)
    return process.returncode, output, of_session(created, process.pid)


def test_workers_start_while_the_session_collects_and_serve_its_run(docker_image, suite):
    files = {f"test_{name}.py": TEST.format(name=name, expected="") for name in NAMES}
    path = suite({"conftest.py": WAIT_FOR_A_WORKER, **files})
    code, output, created = session(path, docker_image, "-p", "no:cacheprovider")
    assert code == 0 and "2 passed" in output, output
    assert len(created) == 2, created  # the warm ones ran the tests: none started after


def test_a_run_collection_changed_does_not_take_the_warm_workers(docker_image, suite):
    expected = "changed while collecting"
    files = {f"test_{name}.py": TEST.format(name=name, expected=expected) for name in NAMES}
    path = suite({"conftest.py": CHANGE_WHILE_COLLECTING, **files})
    code, output, created = session(
        path,
        docker_image,
        *("-p", "no:cacheprovider", "--psyduck-pass-env", "WARM_PROBE"),
        env={"WARM_PROBE": "as invoked"},
    )
    assert code == 0 and "2 passed" in output, output  # they saw what plain pytest's see
    assert len(created) == 4, created  # two warm workers, then the run's own
