"""Scheduling conventions on ``docker:2``, plain pytest beside.

The test image has pytest but no third-party plugin: pytest-order is copied
into the suite (which containers mount at the same path) and put on the
workers' ``PYTHONPATH`` with ``--psyduck-pass-env``, as a user's own
installation would be.  pytest-rerunfailures in containers is tested in
:mod:`tests.compat.test_rerunfailures`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.compat.test_conventions import (
    FAILS_LATE_SUITE,
    ORDERED_GROUP_SUITE,
    both,
    compat_site,
    seed_cache,
)
from tests.conftest import run_pytest
from tests.farm_hosts.hostlib import two_docker_slots
from tests.test_parity import _summary

pytestmark = pytest.mark.docker


@pytest.fixture
def on_docker() -> tuple[str, ...]:
    """The arguments that run a session on two docker slots of the test image."""
    return two_docker_slots()


def ship_plugin(path: Path, *names: str) -> dict[str, str]:
    """Copy the installed plugins *names* (packages and metadata) into the suite at *path*;
    the environment that puts them on every session's and worker's path."""
    site = path / "site"
    for entry in compat_site("plugins").iterdir():
        if entry.name.startswith(names):
            shutil.copytree(entry, site / entry.name)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("dist", ["load", "loadfile"])
def test_xdist_groups_with_pytest_order_in_containers(suite, on_docker, dist):
    path = suite(ORDERED_GROUP_SUITE)
    env = ship_plugin(path, "pytest_order")
    farm = (*on_docker, "--psyduck-pass-env", "PYTHONPATH", f"--psyduck-dist={dist}")
    plain, _ = both(path, ("-p", "no:cacheprovider", "-rA"), farm, env=env)
    assert _summary(plain.stdout).strip("= ") == "7 passed"


def test_failed_first_and_exitfirst_in_containers(suite, on_docker):
    path = suite(FAILS_LATE_SUITE)
    (path / "broken_refund").touch()
    seed_cache(path, "plain-cache", None)
    seed_cache(path, "psy-cache", on_docker)
    plain = run_pytest(path, "-o", "cache_dir=plain-cache", "--ff", "-x")
    psy = run_pytest(path, "-o", "cache_dir=psy-cache", "--ff", "-x", "--psyduck", *on_docker)
    assert plain.returncode == psy.returncode == 1, psy.stdout + psy.stderr
    assert _summary(psy.stdout) == _summary(plain.stdout)
    assert _summary(plain.stdout).strip("= ") == "1 failed"
