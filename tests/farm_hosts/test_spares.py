"""A slot's spare container starts only when a next shard can come, near its slot's need.

The pure parts (the start-up estimate, the ledger of what a host was handed) are
unit-tested; a real session on one docker slot shows that the run's last shard
leaves no spare behind: one container per shard, each fresh.
"""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.hosts.docker.spares import (
    DEFAULT_START_SECONDS,
    RUNS_KEPT,
    START_MARGIN,
    RunLedger,
    StartClock,
)
from tests.farm_hosts.hostlib import recorded_session, seed_durations
from tests.farm_hosts.test_shard_collection import junit_properties

# -- pure ------------------------------------------------------------------------------


def test_a_spare_starts_a_margin_of_start_ups_before_its_slots_shard_ends():
    clock = StartClock()
    assert clock.spare_delay(60.0) == 60.0 - START_MARGIN * DEFAULT_START_SECONDS
    clock.measured(1.0)  # the first measurement replaces the default
    assert clock.spare_delay(10.0) == 10.0 - START_MARGIN
    assert clock.spare_delay(0.5) == 0.0  # a short shard: at once


@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=50))
def test_the_start_up_estimate_stays_within_what_was_measured(seconds):
    clock = StartClock()
    for s in seconds:
        clock.measured(s)
    assert min(seconds) - 1e-9 <= clock.seconds <= max(seconds) + 1e-9


def test_the_ledger_knows_when_a_host_was_handed_a_whole_run():
    ledger = RunLedger()
    assert not ledger.all_handed("r1", 3)
    ledger.handed("r1", ["a", "b"])
    ledger.handed("r1", ["b"])  # a test handed again (a retry) counts once
    assert not ledger.all_handed("r1", 3)
    ledger.handed("r1", ["c"])
    assert ledger.all_handed("r1", 3)
    for n in range(RUNS_KEPT):
        ledger.handed(f"other{n}", ["x"])
    assert not ledger.all_handed("r1", 3)  # the oldest run is forgotten: spares as before


# -- a real session --------------------------------------------------------------------

SLEEPS = """
import socket, time

def test_{name}(record_property):
    record_property("container", socket.gethostname())
    time.sleep(6.5)
"""
NAMES = ["alpha", "beta", "gamma"]


@pytest.mark.docker
def test_the_last_shard_of_a_run_leaves_no_spare_container(docker_image, suite, tmp_path):
    path = suite({f"test_{n}.py": SLEEPS.format(name=n) for n in NAMES})
    seed_durations(path, {f"test_{n}.py::test_{n}": 6.5 for n in NAMES})
    events = subprocess.Popen(
        [
            *("docker", "events", "--filter", "event=create", "--filter"),
            *("label=psyduck.worker", "--format", '{{index .Actor.Attributes "psyduck.farm"}}'),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        done, _ = recorded_session(
            path,
            tmp_path / "out.xml",
            "--psyduck-hosts",
            "docker:1",
            "--psyduck-image",
            docker_image,
        )
    finally:
        events.terminate()
        created, _ = events.communicate(timeout=30)
    assert done.returncode == 0 and "3 passed" in done.output, done.output
    containers = {p["container"] for p in junit_properties(tmp_path / "out.xml").values()}
    assert len(containers) == len(NAMES)  # a fresh container per shard, as always
    ours = [farm for farm in created.split() if f":{done.pid}:" in farm]
    assert len(ours) == len(NAMES), created  # and none more
