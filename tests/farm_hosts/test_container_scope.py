"""``container_scope=run``: one container per slot serves a run's shards; runs never share one.

Real ``pytest --psyduck`` sessions on the local engine.  Each test reports the
container it ran in (its hostname, the container id) in its junit properties.
"""

from __future__ import annotations

import pytest

from tests.farm_hosts.hostlib import recorded_session, seed_durations
from tests.farm_hosts.test_shard_collection import junit_properties

pytestmark = pytest.mark.docker

REPORTS_CONTAINER = """
import os
import socket

def test_{name}(record_property):
    record_property("container", socket.gethostname())
    record_property("worker", os.environ["PYTEST_XDIST_WORKER"])
"""

NAMES = ["alpha", "beta", "gamma", "delta", "epsilon"]


def run_session(path, out, host: str, image: str) -> dict[str, str]:
    """Run the suite on *host*; test id → the container it ran in."""
    done, _ = recorded_session(path, out, "--psyduck-hosts", host, "--psyduck-image", image)
    assert done.returncode == 0, done.output
    assert "5 passed" in done.output
    return {test: props["container"] for test, props in junit_properties(out).items()}


def test_a_run_scoped_container_runs_several_shards_and_a_new_run_gets_new_ones(
    docker_image, suite, tmp_path
):
    path = suite({f"test_{n}.py": REPORTS_CONTAINER.format(name=n) for n in NAMES})
    # Long enough that every module is a shard of its own.
    seed_durations(path, {f"test_{n}.py::test_{n}": 20.0 for n in NAMES})
    host = "docker:2?container_scope=run"
    first = run_session(path, tmp_path / "first.xml", host, docker_image)
    # Five shards on two slots: each container ran several of them, each
    # collecting the whole suite once, as a local worker does.
    assert len(set(first.values())) <= 2, first
    second = run_session(path, tmp_path / "second.xml", host, docker_image)
    assert not set(first.values()) & set(second.values()), (first, second)


def test_by_default_every_shard_gets_a_fresh_container_and_worker_id(docker_image, suite, tmp_path):
    """Containers started ahead of their shard (spares) are xdist nodes of their own:
    no two containers of a run share a ``PYTEST_XDIST_WORKER``."""
    path = suite({f"test_{n}.py": REPORTS_CONTAINER.format(name=n) for n in NAMES})
    seed_durations(path, {f"test_{n}.py::test_{n}": 20.0 for n in NAMES})
    containers = run_session(path, tmp_path / "out.xml", "docker:2", docker_image)
    assert len(set(containers.values())) == len(NAMES), containers
    properties = junit_properties(tmp_path / "out.xml").values()
    assert len({p["worker"] for p in properties}) == len(NAMES), properties
