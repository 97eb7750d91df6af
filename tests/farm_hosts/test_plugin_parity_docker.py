"""Subtests and ``--durations`` in containers report what plain pytest reports.

The core-pytest rows of tests/test_plugin_parity.py on ``docker:2``: the test
image has pytest 9 (with its built-in subtests) but none of the third-party
plugins, so pytest-timeout and teamcity-messages are checked on local hosts only.
"""

from __future__ import annotations

import pytest

from tests.conftest import run_pytest
from tests.farm_hosts.hostlib import two_docker_slots
from tests.test_parity import _summary
from tests.test_plugin_parity import (
    DURATIONS_SUITE,
    SUBTESTS_SUITE,
    _durations,
    _result_lines,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def on_docker() -> tuple[str, ...]:
    """The arguments that run a session on two docker slots of the test image."""
    return ("--psyduck", *two_docker_slots())


def test_subtests_in_containers(suite, on_docker):
    path = suite(SUBTESTS_SUITE)
    common = ("-p", "no:cacheprovider", "-rA")
    plain = run_pytest(path, *common)
    farm = run_pytest(path, *common, *on_docker)
    assert farm.returncode == plain.returncode == 1, farm.stdout + farm.stderr
    assert _summary(farm.stdout) == _summary(plain.stdout), farm.stdout
    assert _result_lines(farm.stdout) == _result_lines(plain.stdout)
    assert "contains 2 failed subtests" in farm.stdout
    assert "SUBFAILED[check] (i=2)" in farm.stdout


def test_durations_in_containers(suite, on_docker):
    path = suite(DURATIONS_SUITE)
    common = ("-p", "no:cacheprovider", "--durations=0", "-vv")
    plain = run_pytest(path, *common)
    farm = run_pytest(path, *common, *on_docker)
    assert farm.returncode == plain.returncode == 0, farm.stdout + farm.stderr
    assert _summary(farm.stdout) == _summary(plain.stdout), farm.stdout
    shown = {entry: seconds for seconds, entry in _durations(farm.stdout)}
    assert len(shown) == len(_durations(plain.stdout)) == 66
    assert shown["call     test_durations.py::test_slow_call"] >= 0.4
    assert shown["setup    test_durations.py::test_slow_setup"] >= 0.3
