"""A real PyPI project's test image, built from the project, runs its suite as plain pytest does.

The project is attrs, fetched as an sdist (its tests need its ``tests``
dependency group: cloudpickle, hypothesis, pympler, pytest, pytest-xdist).  The
image is built by ``psyduck image build`` on the cached Debian base, with no
network inside ``docker build``; the run uses ``--psyduck-image auto``.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import SESSION_TIMEOUT, outer_environment, run_pytest

pytestmark = pytest.mark.docker

ATTRS = "attrs==26.1.0"
#: attrs keeps its code under src/ and imports it as installed; the image holds
#: only the project's dependencies (its code comes with the run), so both runs
#: put src/ on sys.path.
ARGS = ("-o", "pythonpath=src")
#: Part of attrs' suite: cloudpickle (its group's), pympler, hypothesis, and a test that
#: fails under this Python on both sides.
SUBSET = (
    "tests/test_3rd_party.py",
    "tests/test_slots.py",
    "tests/test_converters.py",
    "tests/test_validators.py",
)


@pytest.fixture(scope="module")
def attrs_project(tmp_path_factory: pytest.TempPathFactory, docker_image: str) -> Path:
    """attrs' sdist, as downloaded from PyPI, unpacked."""
    where = tmp_path_factory.mktemp("attrs")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(where),
            ATTRS,
        ],
        check=True,
        timeout=300,
    )
    (sdist,) = where.glob("attrs-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(where, filter="data")
    (project,) = (p for p in where.iterdir() if p.is_dir())
    return project


def image_build(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", "image", "build", "--project", str(project), *args],
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT * 5,
        env=outer_environment(),
    )


def test_a_project_image_is_built_reused_and_runs_the_suite_as_plain_pytest(attrs_project):
    first = image_build(attrs_project, "--group", "tests")
    assert first.returncode == 0, first.stderr
    tag = first.stdout.splitlines()[-1]
    assert tag.startswith("psyduck-auto/attrs:")

    again = image_build(attrs_project, "--group", "tests")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == tag
    assert f"reusing {tag}" in again.stderr
    assert "building" not in again.stderr and "debootstrap" not in again.stderr

    plain = run_pytest(attrs_project, *ARGS, *SUBSET)
    farmed = run_pytest(
        attrs_project,
        *ARGS,
        "--psyduck",
        "--psyduck-hosts",
        "docker:2",
        "--psyduck-image",
        "auto",
        "-o",
        "psyduck_image_build=--group tests",
        *SUBSET,
    )
    assert f"psyduck image: reusing {tag}" in farmed.stdout
    assert farmed.outcomes() == plain.outcomes(), farmed.stdout[-3000:]
    assert farmed.returncode == plain.returncode == 1
    assert plain.outcomes()["passed"] > 200
