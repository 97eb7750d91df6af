"""Scheduling conventions under ``--psyduck`` as under plain pytest (issue #13).

Real suites run plain and on the embedded farm's local workers, forked and
freshly started, comparing exit code, summary line and what the option itself
prints or stores: ``--ff`` with ``-x``/``--maxfail``, ``--sw``/``--sw-skip``,
``@pytest.mark.xdist_group`` with the real pytest-order, ``--psyduck-dist``.
Third-party plugins come from ``.ci/cache/compat-site`` (``.ci/install``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import Session, run_pytest
from tests.test_parity import _summary

REPO = Path(__file__).resolve().parents[2]
SPAWNS = pytest.mark.parametrize("spawn", ["fork", "exec"])


def compat_site(name: str) -> Path:
    """A directory of third-party plugins installed for these tests; fails if missing."""
    site = REPO / ".ci" / "cache" / "compat-site" / name
    if not site.is_dir():
        pytest.fail(f"{site} is missing: run .ci/install to install the compatibility plugins")
    return site


def with_site(name: str) -> dict[str, str]:
    """The environment that puts the plugins of *name* on a session's import path."""
    paths = [str(compat_site(name)), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def both(
    path: Path, args: tuple[str, ...], farm: tuple[str, ...], env: dict | None = None
) -> tuple[Session, Session]:
    """*args* plain and with ``--psyduck`` and *farm*; exit code and summary must agree."""
    plain = run_pytest(path, *args, env=env)
    psy = run_pytest(path, *args, "--psyduck", *farm, env=env)
    assert psy.returncode == plain.returncode, psy.stdout + psy.stderr
    assert _summary(psy.stdout) == _summary(plain.stdout), (plain.stdout, psy.stdout)
    return plain, psy


def farm_args(spawn: str) -> tuple[str, ...]:
    return ("--psyduck-hosts", "local:2", f"--psyduck-spawn={spawn}")


# -- --ff and -x ---------------------------------------------------------------------

FAILS_LATE_SUITE = {
    "test_accounts.py": """
import pytest

@pytest.mark.parametrize("n", range(8))
def test_account(n):
    assert n >= 0
""",
    "test_billing.py": """
import os
import pytest

@pytest.mark.parametrize("n", range(8))
def test_invoice(n):
    assert not (n == 5 and os.path.exists("broken_invoice"))

def test_refund():
    assert not os.path.exists("broken_refund")
""",
    "test_reports.py": """
import pytest

@pytest.mark.parametrize("n", range(8))
def test_report(n):
    assert n < 100
""",
}


def seed_cache(path: Path, cache: str, farm: tuple[str, ...] | None) -> None:
    """One full run records the failures in *cache* (plain, or on the farm)."""
    psyduck = () if farm is None else ("--psyduck", *farm)
    run_pytest(path, "-q", "-o", f"cache_dir={cache}", *psyduck)


@SPAWNS
def test_failed_first_and_exitfirst_stop_where_plain_pytest_stops(suite, spawn):
    path = suite(FAILS_LATE_SUITE)
    (path / "broken_invoice").touch()
    (path / "broken_refund").touch()
    farm = farm_args(spawn)
    seed_cache(path, "plain-cache", None)
    seed_cache(path, "psy-cache", farm)
    for extra, expected in (
        (("--ff", "-x"), "1 failed"),
        (("--ff", "--maxfail=2"), "2 failed"),
        (("-x",), "1 failed, 13 passed"),
    ):
        plain = run_pytest(path, "-rA", "-o", "cache_dir=plain-cache", *extra)
        psy = run_pytest(path, "-rA", "-o", "cache_dir=psy-cache", *extra, "--psyduck", *farm)
        assert plain.returncode == psy.returncode == 1, psy.stdout + psy.stderr
        assert _summary(plain.stdout).strip("= ") == expected
        assert _summary(psy.stdout) == _summary(plain.stdout), psy.stdout
        # The very tests plain pytest ran: nothing after its stopping point.
        assert _result_lines(psy.stdout) == _result_lines(plain.stdout)
        assert "stopping after" in psy.stdout


def _result_lines(output: str) -> list[str]:
    return sorted(re.findall(r"^(?:PASSED|FAILED|ERROR) \S+", output, re.M))


# -- --sw ----------------------------------------------------------------------------

STEPWISE_SUITE = {
    "test_steps.py": """
import os
import pytest

@pytest.mark.parametrize("n", range(6))
def test_step(n):
    assert not os.path.exists(f"broken_{n}")
""",
    "test_later.py": """
import os

def test_later():
    assert not os.path.exists("broken_later")

def test_last():
    pass
""",
}


def _stepwise(path: Path, cache: str) -> tuple[str | None, int | None]:
    data = json.loads((path / cache / "v" / "cache" / "stepwise").read_text())
    return data["last_failed"], data["last_test_count"]


@SPAWNS
def test_stepwise_resumes_where_plain_pytest_resumes(suite, spawn):
    path = suite(STEPWISE_SUITE)
    farm = farm_args(spawn)
    # Each step: which tests are broken, then the options of the run.
    steps = [
        ({"broken_1", "broken_4"}, ("--sw",)),
        ({"broken_1", "broken_4"}, ("--sw",)),  # still failing: resumes at it, not past it
        ({"broken_4"}, ("--sw",)),  # fixed: runs on to the next failure
        ({"broken_4", "broken_later"}, ("--sw-skip",)),  # skips one failure, stops at the next
        (set(), ("--sw",)),
    ]
    for broken, options in steps:
        for name in ("broken_1", "broken_4", "broken_later"):
            (path / name).unlink(missing_ok=True)
        for name in broken:
            (path / name).touch()
        plain = run_pytest(path, "-rA", "-o", "cache_dir=plain-cache", *options)
        psy = run_pytest(path, "-rA", "-o", "cache_dir=psy-cache", *options, "--psyduck", *farm)
        assert psy.returncode == plain.returncode, psy.stdout + psy.stderr
        assert _summary(psy.stdout) == _summary(plain.stdout), (broken, options, psy.stdout)
        assert _result_lines(psy.stdout) == _result_lines(plain.stdout)
        assert _stepwise(path, "psy-cache") == _stepwise(path, "plain-cache")
        status = re.findall(r"^stepwise: .*?(?= \(cache from|$)", plain.stdout, re.M)
        assert status == re.findall(r"^stepwise: .*?(?= \(cache from|$)", psy.stdout, re.M)


# -- xdist_group, pytest-order, --psyduck-dist ----------------------------------------

#: Two modules share one in-process store; pytest-order puts the group's steps in order.
ORDERED_GROUP_SUITE = {
    "store.py": """
rows = []
""",
    "test_write.py": """
import pytest
import store

pytestmark = pytest.mark.xdist_group(name="db")

@pytest.mark.order(1)
def test_create():
    assert store.rows == []
    store.rows.append("created")

@pytest.mark.order(3)
def test_update():
    assert store.rows == ["created", "read"]
    store.rows.append("updated")

def test_seen_by_the_group():
    assert store.rows == ["created", "read", "updated"]
""",
    "test_read.py": """
import pytest
import store

@pytest.mark.xdist_group("db")
@pytest.mark.order(2)
def test_read():
    assert store.rows == ["created"]
    store.rows.append("read")

@pytest.mark.xdist_group("db")
@pytest.mark.order(4)
def test_check():
    assert store.rows == ["created", "read", "updated"]

def test_free():
    assert "db" not in store.rows

def test_also_free():
    pass
""",
}


@SPAWNS
@pytest.mark.parametrize("dist", [None, "loadgroup", "loadfile"])
def test_xdist_groups_run_in_order_on_one_worker(suite, spawn, dist):
    path = suite(ORDERED_GROUP_SUITE)
    args = ("-p", "no:cacheprovider", "-rA")
    farm = (*farm_args(spawn), *(() if dist is None else (f"--psyduck-dist={dist}",)))
    plain, _ = both(path, args, farm, env=with_site("plugins"))
    assert plain.returncode == 0
    assert _summary(plain.stdout).strip("= ") == "7 passed"


#: A module whose tests build on each other in file order, long enough that the
#: scheduler splits it over two workers once it knows the durations.
ORDERED_MODULE_SUITE = {
    "test_pipeline.py": """
import time
import pytest

done = []

@pytest.mark.parametrize("n", range(10))
def test_stage(n):
    time.sleep(0.1)
    assert done == list(range(n))
    done.append(n)
""",
}


@pytest.mark.parametrize("how", ["option", "ini"])
def test_loadfile_keeps_each_module_whole_and_in_order(suite, how):
    path = suite(ORDERED_MODULE_SUITE)
    if how == "ini":
        (path / "pytest.ini").write_text("[pytest]\npsyduck_dist = loadfile\n")
        dist: tuple[str, ...] = ()
    else:
        dist = ("--psyduck-dist=loadfile",)
    farm = ("--psyduck-hosts", "local:2", *dist)
    for _ in range(2):  # the second run knows the durations that would split the module
        plain, psy = both(path, ("-rA",), farm)
        assert plain.returncode == 0
        assert _summary(psy.stdout).strip("= ") == "10 passed"


def test_a_bad_psyduck_dist_is_a_clear_error(suite):
    path = suite({**ORDERED_MODULE_SUITE, "pytest.ini": "[pytest]\npsyduck_dist = groups\n"})
    psy = run_pytest(path, "--psyduck")
    assert psy.returncode == pytest.ExitCode.USAGE_ERROR
    assert "psyduck_dist = 'groups': must be one of load, loadfile, loadgroup" in psy.stderr
