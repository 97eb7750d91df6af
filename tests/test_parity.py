"""``pytest --psyduck`` must report exactly what plain ``pytest`` reports.

Each test runs a real suite twice — plain and through the real embedded farm —
and compares outcomes, failure texts, junit test cases, summary counts and
exit codes.
"""

from __future__ import annotations

import gc
import re
import socket
import subprocess
import sys

import pytest

from pytest_psyduck.channel import Channel
from tests.conftest import SESSION_TIMEOUT, junit_cases, outer_environment, run_pytest

VARIED_SUITE = {
    "conftest.py": """
import pytest

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup exploded")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown exploded")
""",
    "test_outcomes.py": """
import logging
import sys
import warnings
import pytest

def test_pass():
    assert True

def test_fail_with_output():
    print("to stdout")
    sys.stderr.write("to stderr\\n")
    logging.getLogger("demo").warning("a log line")
    assert {"a": 1} == {"a": 2}

def test_setup_error(broken_setup):
    pass

def test_teardown_error(broken_teardown):
    pass

@pytest.mark.skip(reason="skipped on purpose")
def test_skip():
    pass

def test_skip_inside():
    pytest.skip("decided at run time")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed already")
def test_xpass():
    pass

@pytest.mark.xfail(strict=True, reason="must fail")
def test_strict_xpass():
    pass

def test_warns():
    warnings.warn("careful now", UserWarning)

@pytest.mark.parametrize("n", [1, 2, 3])
def test_param(n):
    assert n != 2

class TestGroup:
    def test_method(self):
        assert 1

    def test_method_fails(self):
        assert 0, "method failed"
""",
    "test_unittest.py": """
import unittest

class Case(unittest.TestCase):
    def test_ok(self):
        self.assertEqual(1, 1)

    def test_bad(self):
        self.assertEqual(1, 2)

    @unittest.skip("unittest skip")
    def test_skipped(self):
        pass
""",
    "pkg/__init__.py": "",
    "pkg/mathy.py": '''
def double(x):
    """
    >>> double(2)
    4
    >>> double(3)
    7
    """
    return 2 * x
''',
    "test_imports.py": """
from pathlib import Path
from pkg.mathy import double

def test_project_import():
    assert double(4) == 8

def test_data_file():
    assert (Path(__file__).parent / "data.txt").read_text() == "hello"
""",
    "data.txt": "hello",
}


def _result_lines(output: str) -> list[str]:
    """The ``-rA`` short summary lines, order aside (workers finish in their own order)."""
    return sorted(re.findall(r"^(?:PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) .*$", output, re.M))


def _summary(output: str) -> str:
    """The last line pytest printed, without the timing."""
    line = output.strip().splitlines()[-1]
    return re.sub(r" in [\d.]+s.*$", "", line)


@pytest.mark.parametrize("spawn", ["fork", "exec"])
def test_varied_suite_matches_plain_pytest(suite, spawn):
    path = suite(VARIED_SUITE)
    common = ["-p", "no:cacheprovider", "--doctest-modules", "-rA"]
    plain = run_pytest(path, *common, "--junitxml=plain.xml")
    psy = run_pytest(path, *common, "--junitxml=psy.xml", "--psyduck", f"--psyduck-spawn={spawn}")
    assert psy.returncode == plain.returncode == 1, psy.stdout + psy.stderr
    assert _summary(psy.stdout) == _summary(plain.stdout)
    assert junit_cases(path / "psy.xml") == junit_cases(path / "plain.xml")
    # Failure sections carry the same text: assertion rewriting, captured output and logs.
    for needle in (
        "E       AssertionError: assert {'a': 1} == {'a': 2}",
        "Captured stdout call",
        "to stdout",
        "Captured stderr call",
        "Captured log call",
        "a log line",
        "RuntimeError: teardown exploded",
        "[XPASS(strict)] must fail",
        "careful now",
        "009     >>> double(3)",
    ):
        assert (needle in plain.stdout) == (needle in psy.stdout), needle
    assert _result_lines(psy.stdout) == _result_lines(plain.stdout)


@pytest.mark.parametrize(
    ("files", "extra", "code"),
    [
        ({"test_a.py": "def test_ok(): pass"}, [], 0),
        ({"test_a.py": "def test_bad(): assert 0"}, [], 1),
        (
            {
                "test_a.py": "import nonexistent_module_xyz\ndef test_ok(): pass",
                "test_b.py": "def test_ok(): pass",
            },
            [],
            2,
        ),
        ({"test_a.py": "def test_ok(): pass"}, ["--no-such-option"], 4),
        ({"test_a.py": "def test_ok(): pass"}, ["-k", "nothing_matches"], 5),
        ({"test_a.py": "def helper(): pass"}, [], 5),
    ],
    ids=["ok", "failed", "collection-error", "usage-error", "all-deselected", "nothing-collected"],
)
def test_exit_codes_match(suite, files, extra, code):
    path = suite(files)
    plain = run_pytest(path, "-p", "no:cacheprovider", *extra)
    psy = run_pytest(path, "-p", "no:cacheprovider", "--psyduck", *extra)
    assert plain.returncode == code
    assert psy.returncode == code, psy.stdout + psy.stderr
    assert _summary(psy.stdout + psy.stderr) == _summary(plain.stdout + plain.stderr)


def test_collection_error_interrupts_like_pytest(suite):
    path = suite({"test_a.py": "import nonexistent_module_xyz", "test_b.py": "def test_ok(): pass"})
    psy = run_pytest(path, "-p", "no:cacheprovider", "--psyduck")
    assert "Interrupted: 1 error during collection" in psy.stdout
    assert "ModuleNotFoundError: No module named 'nonexistent_module_xyz'" in psy.stdout
    assert "1 passed" not in psy.stdout


def test_last_failed_reruns_what_failed_remotely(suite):
    path = suite(
        {
            "test_a.py": "import pytest\n"
            "@pytest.mark.parametrize('n', range(6))\n"
            "def test_n(n): assert n % 3",
            "test_b.py": "def test_ok(): pass",
        }
    )
    first = run_pytest(path, "--psyduck")
    assert first.outcomes() == {"failed": 2, "passed": 5}
    again = run_pytest(path, "--psyduck", "--lf", "-v")
    assert again.outcomes() == {"failed": 2, "deselected": 5} or again.outcomes() == {"failed": 2}
    assert "test_a.py::test_n[0] FAILED" in again.stdout
    assert "test_a.py::test_n[3] FAILED" in again.stdout
    assert "test_ok" not in again.stdout


def test_without_the_flag_psyduck_does_nothing(suite):
    path = suite(
        {"test_a.py": "import os\ndef test_pid(): assert 'PYTEST_XDIST_WORKER' not in os.environ"}
    )
    assert run_pytest(path, "-p", "no:cacheprovider").returncode == 0
    disabled = run_pytest(path, "-p", "no:cacheprovider", "-p", "no:psyduck", "--psyduck")
    assert disabled.returncode == 4
    assert "unrecognized arguments: --psyduck" in disabled.stderr


def test_workers_look_like_xdist_workers(suite):
    path = suite(
        {
            "test_a.py": """
import os
def test_env(worker_id, testrun_uid=None):
    assert os.environ["PYTEST_XDIST_WORKER"].startswith("gw")
    assert int(os.environ["PYTEST_XDIST_WORKER_COUNT"]) == 2
""",
            "conftest.py": """
import pytest
@pytest.fixture
def worker_id(request):
    return request.config.workerinput["workerid"]
""",
        }
    )
    result = run_pytest(path, "-p", "no:cacheprovider", "--psyduck", "--psyduck-hosts=local:2")
    assert result.returncode == 0, result.stdout


def test_session_fixture_torn_down_once_per_worker(suite):
    path = suite(
        {
            "conftest.py": """
import os, pytest
@pytest.fixture(scope="session")
def session_resource(tmp_path_factory):
    yield
    marker = tmp_path_factory.getbasetemp().parent.parent / "teardowns"
    with open(os.environ["TEARDOWN_LOG"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
""",
            **{
                f"test_m{m}.py": "\n".join(
                    f"def test_{i}(session_resource): pass" for i in range(30)
                )
                for m in range(6)
            },
        }
    )
    log = path / "teardown.log"
    result = run_pytest(
        path,
        "-p",
        "no:cacheprovider",
        "--psyduck",
        "--psyduck-hosts=local:2",
        env={"TEARDOWN_LOG": str(log)},
    )
    assert result.outcomes() == {"passed": 180}
    workers = log.read_text().split()
    # One teardown per worker, not one per shard.
    assert len(workers) == len(set(workers)) <= 2


def test_capture_no_shows_test_output(suite):
    path = suite({"test_a.py": "def test_talks():\n    print('hello from the worker')\n"})
    # Block-buffered, as stdout to a pipe is without PYTHONUNBUFFERED.
    result = run_pytest(
        path, "-p", "no:cacheprovider", "--psyduck", "-s", env={"PYTHONUNBUFFERED": ""}
    )
    assert result.returncode == 0
    assert "hello from the worker" in result.stdout


def test_a_worker_sends_a_tests_warnings_before_its_result(suite):
    # The result of the last test ends the run at the farm, and anything the
    # worker sends after it is dropped: pytest records a test's warnings only
    # after the protocol has run, so they must not trail its result.
    path = suite(
        {"test_w.py": "import warnings\n\ndef test_warns():\n    warnings.warn('careful now')\n"}
    )
    ours, theirs = socket.socketpair()
    worker = subprocess.Popen(
        [sys.executable, "-m", "pytest_psyduck.workermain", "-p", "no:cacheprovider"],
        cwd=path,
        env={**outer_environment(), "PSYDUCK_WORKER_FD": str(theirs.fileno())},
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    theirs.close()
    ours.settimeout(SESSION_TIMEOUT)
    channel = Channel(ours)
    try:
        assert channel.recv()["t"] == "ready"
        channel.send({"t": "run", "tests": [{"id": "test_w.py::test_warns"}]})
        channel.send({"t": "drain"})
        kinds = []
        while not kinds or kinds[-1] != "done":
            kinds.append(channel.recv()["t"])
    finally:
        channel.close()
        worker.wait(SESSION_TIMEOUT)
    assert [k for k in kinds if k in ("warning", "result")] == ["warning", "result"]


def test_the_controller_keeps_its_session_out_of_the_collector_and_tests_keep_theirs(
    suite, tmp_path
):
    freeze_log = tmp_path / "frozen"
    path = suite(
        {
            "conftest.py": (
                "import gc, os\n\n"
                "def pytest_sessionfinish(session):\n"
                "    if not hasattr(session.config, 'workerinput'):\n"
                "        with open(os.environ['FREEZE_LOG'], 'w') as f:\n"
                "            f.write(str(gc.get_freeze_count()))\n"
            ),
            "test_gc.py": (
                "import gc, weakref\n\n"
                "class Node:\n    pass\n\n"
                "def test_a_cycle_is_collected():\n"
                "    node = Node()\n    node.itself = node\n"
                "    ref = weakref.ref(node)\n    del node\n"
                "    gc.collect()\n    assert ref() is None\n"
            ),
        }
    )
    env = {"FREEZE_LOG": str(freeze_log)}
    plain = run_pytest(path, "-p", "no:cacheprovider", env=env)
    assert plain.returncode == 0 and freeze_log.read_text() == "0"
    psy = run_pytest(path, "-p", "no:cacheprovider", "--psyduck", env=env)
    assert psy.returncode == 0, psy.stdout + psy.stderr
    assert int(freeze_log.read_text()) > 1000  # the session, its items, pytest itself


def test_an_in_process_session_leaves_the_collector_as_it_found_it(pytester):
    # Under `pytest --psyduck` this test runs on a forked worker, which starts
    # with its controller's session frozen: that must stay frozen, no more.
    pytester.makepyfile("def test_one():\n    pass\n")
    ours = [object()]  # alive throughout, as every object of the outer session is
    frozen = gc.get_freeze_count()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--psyduck")
    result.assert_outcomes(passed=1)
    assert any(o is ours for o in gc.get_objects()), "left frozen by the inner session"
    assert (gc.get_freeze_count() > 0) == (frozen > 0)


def test_a_program_that_goes_on_after_its_sessions_gets_its_collector_back(suite):
    path = suite(
        {
            "test_one.py": "def test_one():\n    pass\n",
            "embedder.py": (
                "import gc, sys, pytest\n"
                "for _ in range(2):\n"
                "    code = pytest.main(['-q', '-p', 'no:cacheprovider', '--psyduck'])\n"
                "    assert code == 0, code\n"
                "    assert gc.get_freeze_count() == 0, gc.get_freeze_count()\n"
                "print('both sessions ran')\n"
            ),
        }
    )
    done = subprocess.run(
        [sys.executable, "embedder.py"],
        cwd=path,
        env=outer_environment(),
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "both sessions ran" in done.stdout


def test_a_wrapper_that_exits_after_a_test_keeps_that_tests_result(suite):
    # The wrapper runs on the worker, after the test's result exists, and again
    # in your pytest as the result is replayed, which ends the session there.
    path = suite(
        {
            "conftest.py": (
                "import pytest\n\n"
                "@pytest.hookimpl(wrapper=True)\n"
                "def pytest_runtest_protocol(item, nextitem):\n"
                "    result = yield\n"
                "    if item.name == 'test_b':\n"
                "        pytest.exit('enough after b')\n"
                "    return result\n"
            ),
            "test_x.py": "".join(f"def test_{n}():\n    pass\n" for n in "abcd"),
        }
    )
    plain = run_pytest(path, "-p", "no:cacheprovider", "-rA")
    psy = run_pytest(path, "-p", "no:cacheprovider", "-rA", "--psyduck")
    assert psy.returncode == plain.returncode == 2, psy.stdout + psy.stderr
    assert "Exit: enough after b" in psy.stdout
    assert "PASSED test_x.py::test_b" in psy.stdout, psy.stdout
    assert "failed" not in psy.outcomes()
