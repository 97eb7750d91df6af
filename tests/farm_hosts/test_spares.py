"""A slot's spare container starts only when a next shard can come, near its slot's need.

The start-up estimate is unit-tested; real sessions show that the run's last
shard leaves no spare behind (one container per shard, each fresh) and that a
run whose first shards take every test starts no spare at all.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.hosts.docker.spares import (
    DEFAULT_START_SECONDS,
    START_MARGIN,
    StartClock,
)
from tests.farm_hosts.hostlib import (
    Finished,
    containers_created,
    of_session,
    recorded_session,
    seed_durations,
)
from tests.farm_hosts.test_shard_collection import junit_properties

# -- pure ------------------------------------------------------------------------------


def test_a_spare_starts_a_margin_of_start_ups_before_its_slots_shard_ends():
    clock = StartClock()
    assert clock.spare_delay(60.0) == 60.0 - START_MARGIN * DEFAULT_START_SECONDS
    clock.measured(1.0)  # the first measurement replaces the default
    assert clock.spare_delay(10.0) == 10.0 - START_MARGIN
    # A short shard: one start-up in, once the run's first shards are all handed out.
    assert clock.spare_delay(0.5) == 1.0


@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=50))
def test_the_start_up_estimate_stays_within_what_was_measured(seconds):
    clock = StartClock()
    for s in seconds:
        clock.measured(s)
    assert min(seconds) - 1e-9 <= clock.seconds <= max(seconds) + 1e-9


# -- a real session --------------------------------------------------------------------

SLEEPS = """
import socket, time

def test_{name}(record_property):
    record_property("container", socket.gethostname())
    time.sleep({seconds})
"""
NAMES = ["alpha", "beta", "gamma"]


def containers_of(path, out, hosts: str, image: str) -> tuple[Finished, set[str], list[str]]:
    """Run the suite at *path* on *hosts*: the session, the containers its tests ran in,
    and every worker container it created."""
    with containers_created("psyduck.worker") as created:
        done, _ = recorded_session(path, out, "--psyduck-hosts", hosts, "--psyduck-image", image)
    ran_in = {p["container"] for p in junit_properties(out).values()}
    return done, ran_in, of_session(created, done.pid)


@pytest.mark.docker
def test_the_last_shard_of_a_run_leaves_no_spare_container(docker_image, suite, tmp_path):
    path = suite({f"test_{n}.py": SLEEPS.format(name=n, seconds=6.5) for n in NAMES})
    seed_durations(path, {f"test_{n}.py::test_{n}": 6.5 for n in NAMES})
    done, ran_in, created = containers_of(path, tmp_path / "out.xml", "docker:1", docker_image)
    assert done.returncode == 0 and "3 passed" in done.output, done.output
    assert len(ran_in) == len(NAMES)  # a fresh container per shard, as always
    assert len(created) == len(NAMES), created  # and none more


@pytest.mark.docker
def test_a_run_its_first_shards_cover_starts_no_spare(docker_image, suite, tmp_path):
    """Two slots, two shards: both handed out at once, so neither slot's spare is wanted."""
    names = NAMES[:2]
    path = suite({f"test_{n}.py": SLEEPS.format(name=n, seconds=1) for n in names})
    seed_durations(path, {f"test_{n}.py::test_{n}": 6.5 for n in names})
    done, ran_in, created = containers_of(path, tmp_path / "out.xml", "docker:2", docker_image)
    assert done.returncode == 0 and "2 passed" in done.output, done.output
    assert len(ran_in) == len(created) == 2, created
