"""The durations psyduck records are what a test cost its worker's slot, as the worker
measured it: a real session whose hooks take time outside the test's phases."""

from __future__ import annotations

import json

import pytest

from pytest_psyduck.replay import slot_seconds
from tests.conftest import run_pytest

#: Work in a run-test hook, outside setup, call and teardown: a plugin's reporting.
SLOW_HOOK = """
import time
import pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item):
    result = yield
    time.sleep(0.4)
    return result
"""


def report(duration: float) -> pytest.TestReport:
    return pytest.TestReport("t.py::t", ("t.py", 0, "t"), {}, "passed", None, "call", [], duration)


def test_the_workers_measure_wins_and_the_phases_sum_stands_in():
    reports = [report(0.1), report(0.2)]
    assert slot_seconds({"seconds": 1.5}, reports) == 1.5
    assert slot_seconds({}, reports) == pytest.approx(0.3)
    assert slot_seconds({"seconds": "soon"}, reports) == pytest.approx(0.3)


def test_a_session_records_the_time_hooks_took_beside_the_test(suite):
    path = suite({"conftest.py": SLOW_HOOK, "test_quick.py": "def test_quick():\n    pass\n"})
    done = run_pytest(path, "--psyduck", "--psyduck-hosts", "local:1")
    assert done.returncode == 0, done.stdout + done.stderr
    durations = json.loads((path / ".pytest_cache/v/psyduck/durations").read_text())
    assert durations["test_quick.py::test_quick"] >= 0.4
