"""pytest-rerunfailures under ``--psyduck`` as under plain pytest (issue #13).

The real plugin (from ``.ci/cache/compat-site/plugins``) reruns tests inside
the worker's protocol; each attempt is replayed as plain pytest logs it.  A
real suite runs plain and on forked and fresh local workers, on two
containers and on two behind a real sshd (the image has no pytest-xdist, where
rerunfailures would drop its rerun reports), comparing exit code, summary line
(``2 failed, 5 passed, 8 rerun``), the ``R`` letters, the ``RERUN`` lines of
``-v`` and the junit xml.  Where an option cannot be honoured, the session
says so in one line at its start.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.compat.test_conventions import with_site
from tests.compat.xdistlib import WITH_SSH, compat_image, over_ssh, psyduck_args, summary
from tests.conftest import junit_cases, run_pytest
from tests.farm_hosts.conftest import client_key, docker_image, known_hosts, sshd  # noqa: F401

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
#: Installed beside rerunfailures, these two make local workers start fresh: off, they fork.
FORKABLE = ("-p", "no:syrupy", "-p", "no:benchmark")


def fresh(path) -> None:
    for counted in (path / "counts").glob("*"):
        counted.unlink()


def _farm(host: str, request: pytest.FixtureRequest | None = None) -> tuple[str, ...]:
    if host == "ssh":
        assert request is not None
        return over_ssh(request)
    if host == "docker":
        return psyduck_args(host, compat_image())
    return (*psyduck_args(host), "--psyduck-hosts=local:2", *(FORKABLE if host == "fork" else ()))


def run_both(path, *args: str, farm: tuple[str, ...] | None = None):
    env = with_site("plugins")
    fresh(path)
    plain = run_pytest(path, *ARGS, *args, "--junitxml=plain.xml", env=env)
    fresh(path)
    farm = _farm("fork") if farm is None else farm
    psy = run_pytest(path, *ARGS, *args, "--junitxml=psy.xml", *farm, env=env)
    assert psy.returncode == plain.returncode, psy.stdout + psy.stderr
    assert summary(psy.stdout) == summary(plain.stdout), (plain.stdout, psy.stdout)
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


@pytest.mark.parametrize("host", WITH_SSH)
def test_reruns_are_run_and_reported_as_plain_pytest(suite, host, request):
    path = suite(RERUN_SUITE)
    farm = _farm(host, request)
    plain, psy = run_both(path, "--reruns=2", farm=farm)
    assert plain.returncode == 1
    assert summary(plain.stdout) == "2 failed, 5 passed, 8 rerun"
    assert _letters(psy.stdout) == _letters(plain.stdout)
    assert _outcome_lines(psy.stdout) == _outcome_lines(plain.stdout)
    assert "psyduck: pytest-rerunfailures" not in psy.stdout  # nothing to warn about
    plain, psy = run_both(path, "--reruns=2", "-v", farm=farm)
    assert _verbose_lines(psy.stdout) == _verbose_lines(plain.stdout)
    assert "test_service.py::test_flaky_twice RERUN" in psy.stdout


def test_only_rerun_and_delay_are_honoured(suite):
    path = suite(RERUN_SUITE)
    plain, psy = run_both(path, "--reruns=1", "--only-rerun=AssertionError", "--reruns-delay=0.1")
    # Neither ValueError nor the RuntimeError of a setup is rerun; test_flaky_twice has
    # its own mark and passes on its third try.
    assert summary(plain.stdout) == "2 failed, 4 passed, 1 error, 4 rerun"
    assert _letters(psy.stdout) == _letters(plain.stdout)


def test_marks_alone_rerun_their_tests(suite):
    path = suite(RERUN_SUITE)
    plain, _ = run_both(path, "-k", "flaky_twice or healthy")
    assert summary(plain.stdout) == "2 passed, 5 deselected, 2 rerun"


def test_reruns_without_pytest_xdist_loaded(suite):
    """rerunfailures' own status database and reporting differ with xdist loaded or not."""
    path = suite(RERUN_SUITE)
    plain, psy = run_both(path, "--reruns=2", "-p", "no:xdist", farm=_farm("exec"))
    assert summary(psy.stdout) == "2 failed, 5 passed, 8 rerun"
    assert _letters(psy.stdout) == _letters(plain.stdout)


@pytest.mark.parametrize("option", ["--fail-on-flaky", "--max-suite-reruns=3"])
def test_options_a_farm_cannot_honour_are_named(suite, option):
    path = suite(RERUN_SUITE)
    psy = run_pytest(
        path, *ARGS, "--reruns=1", option, "--psyduck", "-k", "healthy", env=with_site("plugins")
    )
    named = option.split("=")[0]
    assert f"psyduck: pytest-rerunfailures {named} is not supported with --psyduck" in psy.stdout
