"""pytest-rerunfailures under ``--psyduck`` as under plain pytest (issue #13).

The real plugin (from ``.ci/cache/compat-site/plugins``) reruns tests inside
the worker's protocol; each attempt is replayed as plain pytest logs it.  A
real suite runs plain and on forked local workers, comparing exit code,
summary line (``1 failed, 5 passed, 6 rerun``), the ``R`` letters, the
``RERUN`` lines of ``-v`` and the junit xml.  Where reruns cannot work (fresh
workers, containers) or an option cannot be honoured, the session says so in
one line at its start.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.compat.test_conventions import with_site
from tests.conftest import junit_cases, run_pytest
from tests.test_parity import _summary

#: Attempts are counted in files, so each session starts from a clean ``counts``.
RERUN_SUITE = {
    "conftest.py": """
import pathlib
import pytest

@pytest.fixture
def attempt(request):
    counts = pathlib.Path(request.config.rootpath, "counts")
    counts.mkdir(exist_ok=True)
    path = counts / request.node.name
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n
""",
    "test_service.py": """
import pytest

def test_healthy():
    pass

def test_flaky_once(attempt):
    assert attempt > 1, "connection reset"

@pytest.mark.flaky(reruns=3)
def test_flaky_twice(attempt):
    assert attempt > 2, "timeout talking to the cache"

def test_broken():
    assert 1 + 1 == 3

def test_other():
    pass

@pytest.fixture
def slow_to_start(attempt):
    if attempt == 1:
        raise RuntimeError("server not up yet")

def test_setup_flaky(slow_to_start):
    pass

def test_wrong_value(attempt):
    raise ValueError(f"bad value on attempt {attempt}")
""",
}

ARGS = ("-p", "no:cacheprovider", "-rA")


def fresh(path) -> None:
    for counted in (path / "counts").glob("*"):
        counted.unlink()


def run_both(path, *args: str):
    env = with_site("plugins")
    fresh(path)
    plain = run_pytest(path, *ARGS, *args, "--junitxml=plain.xml", env=env)
    fresh(path)
    psy = run_pytest(
        path, *ARGS, *args, "--junitxml=psy.xml", "--psyduck", "--psyduck-hosts=local:2", env=env
    )
    assert psy.returncode == plain.returncode, psy.stdout + psy.stderr
    assert _summary(psy.stdout) == _summary(plain.stdout), (plain.stdout, psy.stdout)
    assert junit_cases(path / "psy.xml") == junit_cases(path / "plain.xml")
    return plain, psy


def _letters(output: str) -> Counter[str]:
    """The progress letters of the one test file (workers finish in their own order)."""
    line = re.search(r"^test_service\.py (\S+)", output, re.M)
    assert line, output
    return Counter(line.group(1))


def _outcome_lines(output: str) -> list[str]:
    return sorted(re.findall(r"^(?:PASSED|FAILED|ERROR) .*$", output, re.M))


def _verbose_lines(output: str) -> list[str]:
    return sorted(re.findall(r"^test_service\.py::\S+ [A-Z]+", output, re.M))


def test_reruns_are_run_and_reported_as_plain_pytest(suite):
    path = suite(RERUN_SUITE)
    plain, psy = run_both(path, "--reruns=2")
    assert plain.returncode == 1
    assert _summary(plain.stdout).strip("= ") == "2 failed, 5 passed, 8 rerun"
    assert _letters(psy.stdout) == _letters(plain.stdout)
    assert _outcome_lines(psy.stdout) == _outcome_lines(plain.stdout)
    plain, psy = run_both(path, "--reruns=2", "-v")
    assert _verbose_lines(psy.stdout) == _verbose_lines(plain.stdout)
    assert "test_service.py::test_flaky_twice RERUN" in psy.stdout


def test_only_rerun_and_delay_are_honoured(suite):
    path = suite(RERUN_SUITE)
    plain, psy = run_both(path, "--reruns=1", "--only-rerun=AssertionError", "--reruns-delay=0.1")
    # Neither ValueError nor the RuntimeError of a setup is rerun; test_flaky_twice has
    # its own mark and passes on its third try.
    assert _summary(plain.stdout).strip("= ") == "2 failed, 4 passed, 1 error, 4 rerun"
    assert _letters(psy.stdout) == _letters(plain.stdout)


def test_marks_alone_rerun_their_tests(suite):
    path = suite(RERUN_SUITE)
    plain, _ = run_both(path, "-k", "flaky_twice or healthy")
    assert _summary(plain.stdout).strip("= ") == "2 passed, 5 deselected, 2 rerun"


NOTICE = "psyduck: pytest-rerunfailures reruns are supported on forked local workers only"


def test_fresh_workers_say_reruns_are_not_supported(suite):
    path = suite(RERUN_SUITE)
    env = with_site("plugins")
    psy = run_pytest(
        path, *ARGS, "--reruns=1", "--psyduck", "--psyduck-spawn=exec", "-p", "no:xdist", env=env
    )
    assert psy.stdout.count(NOTICE) == 1, psy.stdout
    fork = run_pytest(path, *ARGS, "--reruns=1", "--psyduck", env=env)
    assert NOTICE not in fork.stdout


@pytest.mark.parametrize("option", ["--fail-on-flaky", "--max-suite-reruns=3"])
def test_options_a_farm_cannot_honour_are_named(suite, option):
    path = suite(RERUN_SUITE)
    psy = run_pytest(
        path, *ARGS, "--reruns=1", option, "--psyduck", "-k", "healthy", env=with_site("plugins")
    )
    named = option.split("=")[0]
    assert f"psyduck: pytest-rerunfailures {named} is not supported with --psyduck" in psy.stdout
