"""``-x``: what workers hand home at their end covers every test that ran, as in plain pytest.

A session that stops at its first failure stops the farm's run gracefully
(:meth:`farm.coordinator.Coordinator.stop`): a worker still running a test
finishes it and says farewell, so its ``workeroutput`` comes home; killing it
would lose the data of the tests it ran *before* the failure.  pytest-benchmark
shows it: plain pytest's results table lists every benchmark run before the
failure.  (pytest-cov prints no report at all under ``-x`` in plain pytest:
pytest's run loop raises through its wrapper; psyduck's session does the same.)

The suite makes that moment certain rather than likely: the ``shapes`` group
(``test_1_shapes.py`` and ``test_3_after.py``) runs on one worker and the
failing ``test_2_text.py`` on the other.  On a worker, ``test_3_after.py``'s
first test waits until the user's pytest has replayed the failure, so the
worker is mid-test when the run stops.  Nothing in ``test_3_after.py`` covers a
line the tests before the failure did not, so plain pytest (which never runs it)
and psyduck must show the same table.
"""

from __future__ import annotations

import re

import pytest

from tests.compat.test_xdist_contract_plugins import BENCHMARK_ARGS, LIBRARY
from tests.compat.xdistlib import run, summary

FAILURE_REPLAYED = "failure-replayed"

SUITE = {
    **LIBRARY,
    "conftest.py": f"""
import pathlib


def pytest_runtest_logreport(report):
    # In the user's pytest (plain, or replaying psyduck's results), not in a worker.
    if report.failed and report.nodeid.endswith("test_slug_of_nothing"):
        pathlib.Path(__file__).with_name("{FAILURE_REPLAYED}").touch()
""",
    "tests/__init__.py": "",
    "tests/test_1_shapes.py": """
import pytest

from mylib.shapes import area, perimeter, scale

pytestmark = pytest.mark.xdist_group("shapes")


@pytest.mark.parametrize("kind, dims", [("square", (2,)), ("rect", (2, 3)), ("circle", (1,))])
def test_area(benchmark, kind, dims):
    assert benchmark(area, kind, *dims) > 0


def test_triangle(benchmark):
    assert benchmark(area, "triangle", 3, 4, 5) == 6


def test_perimeter():
    assert perimeter("rect", 1, 2) == 6


def test_scale():
    assert scale("square", (2,), 3) == ("square", (6,))
""",
    "tests/test_2_text.py": """
import pytest

from mylib.text import initials, slug

pytestmark = pytest.mark.xdist_group("text")


def test_initials():
    assert initials("ada lovelace") == "AL"


def test_slug_of_nothing():
    assert slug("!!") == "nothing"
""",
    "tests/test_3_after.py": f"""
import os
import pathlib
import time

import pytest

from mylib.shapes import area

pytestmark = pytest.mark.xdist_group("shapes")


def test_still_running_when_the_session_stops():
    if os.environ.get("PYTEST_XDIST_WORKER"):
        replayed = pathlib.Path(__file__).parents[1] / "{FAILURE_REPLAYED}"
        deadline = time.monotonic() + 120
        while not replayed.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert area("square", 2) == 4


@pytest.mark.parametrize("n", range(5))
def test_never_reached(benchmark, n):
    assert benchmark(area, "square", n) == n * n
""",
}


def _benchmark_rows(output: str) -> list[str]:
    return sorted(re.findall(r"^(test_\S+)\s+[\d,.]+\s", output, re.M))


@pytest.mark.parametrize("spawn", ["fork", "exec"])
def test_exitfirst_keeps_what_workers_still_running_hand_home(suite, spawn):
    path = suite(SUITE)
    args = ("-x", *BENCHMARK_ARGS, "--cov=mylib", "--cov-report=term")
    plain = run(path, *args)
    (path / FAILURE_REPLAYED).unlink()
    farm = run(path, *args, "--psyduck", f"--psyduck-spawn={spawn}", "--psyduck-hosts=local:2")
    assert farm.returncode == plain.returncode == 1, farm.stdout + farm.stderr
    assert summary(farm.stdout) == summary(plain.stdout) == "1 failed, 7 passed"
    assert (path / FAILURE_REPLAYED).exists()
    rows = _benchmark_rows(plain.stdout)
    assert len(rows) == 4, plain.stdout
    assert _benchmark_rows(farm.stdout) == rows, farm.stdout
    assert "test_never_reached" not in farm.stdout
    assert ("TOTAL" in farm.stdout) == ("TOTAL" in plain.stdout)
