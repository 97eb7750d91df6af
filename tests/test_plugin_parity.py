"""Parity with plain pytest for what plugins and tests ask of pytest itself (issue #13).

Each test runs a real suite plain and through the real embedded farm, forked
and freshly started workers alike, and compares what the user sees: the
summary line, the exit code and the lines the feature prints.  The terminal
writer inside tests and plugins (pytest-timeout builds on it), ``--durations``
and pytest's built-in subtests.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import Session, run_pytest
from tests.test_parity import _summary

SPAWNS = pytest.mark.parametrize("spawn", ["fork", "exec"])

TERMINAL_WRITER_SUITE = {
    "conftest.py": """
def pytest_runtest_call(item):
    item.config.pluginmanager.get_plugin("terminalreporter").write_line("plugin wrote this")
""",
    "test_writer.py": """
def test_writes(pytestconfig):
    tw = pytestconfig.get_terminal_writer()
    tw.line("test wrote this")

def test_fails_after_writing(pytestconfig):
    pytestconfig.get_terminal_writer().line("about to fail")
    assert [1, 2] == [1, 3]
""",
}

TIMEOUT_SUITE = {
    "test_slow.py": """
import threading
import time

def test_sleeps_past_its_timeout():
    time.sleep(60)

def test_quick():
    pass
""",
}

COMPARISONS_SUITE = {
    "test_compare.py": """
def test_lists():
    assert [1, 2] == [1, 3]

def test_dicts():
    assert {"a": 1, "b": [1, 2]} == {"a": 1, "b": [2]}

def test_numbers():
    assert 6 * 7 == 41

def test_strings():
    assert "spam" == "eggs"

def test_not_a_comparison():
    assert not True

def test_passes():
    assert [1] == [1]
""",
}

SUBTESTS_SUITE = {
    "test_sub.py": """
def test_one_subtest_fails(subtests):
    for i in range(3):
        with subtests.test(msg="check", i=i):
            assert i != 2

def test_two_subtests_fail(subtests):
    for name in ["a", "b", "c"]:
        with subtests.test(name=name):
            assert name == "a"

def test_all_subtests_pass(subtests):
    for i in range(2):
        with subtests.test(i=i):
            assert i < 2
""",
}

DURATIONS_SUITE = {
    "test_durations.py": """
import time
import pytest

@pytest.fixture
def slow_setup():
    time.sleep(0.3)

def test_slow_call():
    time.sleep(0.4)

def test_slow_setup(slow_setup):
    pass

@pytest.mark.parametrize("n", range(20))
def test_trivial(n):
    pass
""",
}


def _lines(output: str, pattern: str) -> list[str]:
    """Lines matching *pattern*, sorted: workers finish in their own order."""
    return sorted(re.findall(pattern, output, re.M))


def _result_lines(output: str) -> list[str]:
    """The ``-rA`` short summary lines, subtests' among them."""
    return _lines(output, r"^(?:SUB)?(?:PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\S* .*$")


def _both(path, spawn: str, *args: str) -> tuple[Session, Session]:
    common = ["-p", "no:cacheprovider", "-rA", *args]
    plain = run_pytest(path, *common)
    psy = run_pytest(path, *common, "--psyduck", f"--psyduck-spawn={spawn}")
    assert psy.returncode == plain.returncode, psy.stdout + psy.stderr
    assert _summary(psy.stdout) == _summary(plain.stdout), psy.stdout
    return plain, psy


@SPAWNS
def test_tests_and_plugins_write_to_the_terminal_writer(suite, spawn):
    plain, psy = _both(suite(TERMINAL_WRITER_SUITE), spawn)
    assert plain.returncode == 1
    assert _result_lines(psy.stdout) == _result_lines(plain.stdout)
    for needle in (
        "test wrote this",
        "about to fail",
        "plugin wrote this",
        "E       assert [1, 2] == [1, 3]",
        "E         At index 1 diff: 2 != 3",
    ):
        assert needle in plain.stdout, needle
        assert psy.stdout.count(needle) == plain.stdout.count(needle), (needle, psy.stdout)


@SPAWNS
def test_pytest_timeout_fails_the_test_as_plain_pytest(suite, spawn):
    pytest.importorskip("pytest_timeout")
    plain, psy = _both(suite(TIMEOUT_SUITE), spawn, "--timeout=1")
    assert plain.returncode == 1
    assert _result_lines(psy.stdout) == _result_lines(plain.stdout)
    for needle in (
        "E       Failed: Timeout (>1.0s) from pytest-timeout.",
        ">       time.sleep(60)",
        "FAILED test_slow.py::test_sleeps_past_its_timeout - Failed: Timeout (>1.0s)",
    ):
        assert needle in plain.stdout, needle
        assert needle in psy.stdout, (needle, psy.stdout)
    # pytest-timeout dumps the stacks of the test's other threads: a worker has none either.
    assert ("Stack of" in psy.stdout) == ("Stack of" in plain.stdout), psy.stdout


def _teamcity_failures(stdout: str) -> list[dict[str, str]]:
    """The attributes of each ``testFailed`` service message, timing and flow aside.

    A message may follow pytest's progress on the same line.
    """
    failures = []
    for match in re.finditer(r"##teamcity\[testFailed (.*)\]$", stdout, re.M):
        attrs = dict(re.findall(r"(\w+)='((?:[^'|]|\|.)*)'", match.group(1)))
        for volatile in ("timestamp", "flowId"):
            attrs.pop(volatile)
        failures.append(attrs)
    return sorted(failures, key=lambda attrs: attrs["name"])


@SPAWNS
def test_teamcity_gets_comparison_failures_as_from_plain_pytest(suite, spawn):
    plain, psy = _both(suite(COMPARISONS_SUITE), spawn, "--teamcity")
    assert plain.returncode == 1
    plain_failures = _teamcity_failures(plain.stdout)
    # The real teamcity-messages plugin saw each comparison: PyCharm's diff view.
    assert [f.get("type") for f in plain_failures].count("comparisonFailure") == 4
    assert {"expected": "|[1, 3|]", "actual": "|[1, 2|]"}.items() <= plain_failures[1].items()
    assert _teamcity_failures(psy.stdout) == plain_failures


@SPAWNS
def test_subtests_report_as_plain_pytest(suite, spawn):
    plain, psy = _both(suite(SUBTESTS_SUITE), spawn)
    assert plain.returncode == 1
    assert _result_lines(psy.stdout) == _result_lines(plain.stdout)
    for needle in (
        "FAILED test_sub.py::test_one_subtest_fails - contains 1 failed subtest",
        "FAILED test_sub.py::test_two_subtests_fail - contains 2 failed subtests",
        "SUBFAILED[check] (i=2) test_sub.py::test_one_subtest_fails - assert 2 != 2",
        "SUBFAILED(name='b') test_sub.py::test_two_subtests_fail",
        "PASSED test_sub.py::test_all_subtests_pass",
    ):
        assert needle in plain.stdout, needle
        assert needle in psy.stdout, (needle, psy.stdout)


def _durations(output: str) -> list[tuple[float, str]]:
    """(seconds, "when nodeid") of each line of the ``--durations`` section."""
    return [
        (float(seconds), entry)
        for seconds, entry in re.findall(r"^(\d+\.\d+)s (\w+ +\S+)$", output, re.M)
    ]


@SPAWNS
def test_durations_show_what_plain_pytest_shows(suite, spawn):
    path = suite(DURATIONS_SUITE)
    plain, psy = _both(path, spawn, "--durations=5")
    slow = {
        "call     test_durations.py::test_slow_call",
        "setup    test_durations.py::test_slow_setup",
    }
    for session in (plain, psy):
        shown = dict((entry, seconds) for seconds, entry in _durations(session.stdout))
        # The real measurements, not the worker's time for the whole test nor a rounding.
        assert shown["call     test_durations.py::test_slow_call"] >= 0.4, session.stdout
        assert shown["setup    test_durations.py::test_slow_setup"] >= 0.3, session.stdout
        assert slow <= shown.keys()
        assert re.search(
            r"durations < 0\.005s hidden\.  Use -vv to show these durations\.", session.stdout
        )
    # -vv shows every entry, the trivial ones too: as many as plain pytest shows.
    plain, psy = _both(path, spawn, "--durations=0", "-vv")
    assert len(_durations(psy.stdout)) == len(_durations(plain.stdout)) == 66
    assert "hidden" not in psy.stdout
