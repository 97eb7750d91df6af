"""A real PyPI project's test image, built from the project, runs its suite as plain pytest does.

The project is attrs, fetched as an sdist (its tests need its ``tests``
dependency group: cloudpickle, hypothesis, pympler, pytest, pytest-xdist).  The
image is built by ``psyduck image build`` on the cached Debian base, with no
network inside ``docker build``; the run uses ``--psyduck-image auto``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests

from tests.conftest import SESSION_TIMEOUT, on_farm, outer_environment, run_pytest
from tests.farm_hosts.test_image_check import NO_PYTHON, no_python_image  # noqa: F401

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


#: A project with one dependency (which this environment has, so it collects here).
TINY = {
    "proj/pyproject.toml": '[project]\nname = "tiny-six"\nversion = "0"\ndependencies = ["six"]\n',
    "proj/test_six.py": "import six\n\n\ndef test_six():\n    assert six.PY3\n",
}


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


@pytest.mark.slow
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


def test_auto_image_is_stored_in_a_remote_farms_pokedex(docker_image, suite, tmp_path):
    """``auto`` for a served farm: built here, pushed to the farm's pokedex (where its
    hosts pull images from), checked by the farm, and the run passes."""
    from tests.farm_hosts.test_image_pulls import TOKEN, served_farm

    project = suite(TINY) / "proj"
    with served_farm(tmp_path) as (url, registry):
        result = run_pytest(
            project, *on_farm(url), "--psyduck-image", "auto", env={"PSYDUCK_TOKEN": TOKEN}
        )
        assert result.outcomes() == {"passed": 1}, result.stdout + result.stderr
        (pushed,) = re.findall(r"psyduck image: pushing (\S+) to ", result.stdout)
        assert pushed.startswith("psyduck-auto/tiny-six:")
        repository, tag = pushed.split(":")
        stored = requests.get(
            f"http://{registry}/v2/{repository}/manifests/{tag}",
            auth=("anyone", TOKEN),
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            timeout=30,
        )
        assert stored.status_code == 200, stored.text


def test_docker_hosts_without_an_image_name_get_the_projects_own(docker_image, suite):
    """No ``--psyduck-image`` with the embedded farm's docker hosts means ``auto``."""
    result = run_pytest(suite(TINY) / "proj", "--psyduck", "--psyduck-hosts", "docker:1")
    assert result.outcomes() == {"passed": 1}, result.stdout + result.stderr
    assert re.search(r"psyduck image: (reusing|built) psyduck-auto/tiny-six:", result.stdout)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--base", NO_PYTHON), f"the base image {NO_PYTHON!r} has no usable python3: "),
        (("--base", "psyduck-test:no-such-tag"), "is not on the Docker engine"),
        (("--group", "nope"), "no dependency group 'nope' (known: none)"),
        (("--extras", "nope"), "no extra 'nope' in [project.optional-dependencies]"),
        (("-r", "missing.txt"), "cannot read missing.txt: "),
    ],
)
@pytest.mark.usefixtures("no_python_image")
def test_image_build_refuses_bad_input_with_one_clear_line(suite, args, said):
    done = image_build(suite(TINY) / "proj", *args)
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()[-1:]
    assert line.startswith("psyduck image build: ") and said in line, done.stderr
    assert "Traceback" not in done.stderr


def test_image_build_on_an_ssh_hosts_engine(docker_image, suite, sshd, client_key, known_hosts):
    """``--host ssh://…``: the base probe and the image look-ups go over SSH to that engine
    (here the same engine behind a real sshd, so the wheels and the tag are the same)."""
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    project = suite(TINY) / "proj"
    local = image_build(project)
    assert local.returncode == 0, local.stderr
    over_ssh = image_build(project, "--refresh", "--host", server.spec(client_key, known_hosts))
    assert over_ssh.returncode == 0, over_ssh.stderr
    tag = local.stdout.splitlines()[-1]
    assert over_ssh.stdout.splitlines()[-1] == tag
    assert f"reusing {tag} (same wheels)" in over_ssh.stderr


def test_image_build_on_a_host_that_cannot_be_reached_says_so(suite, known_hosts):
    done = image_build(
        suite(TINY) / "proj", "--host", f"ssh://nobody@127.0.0.9:1?known_hosts={known_hosts}"
    )
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("psyduck image build: cannot reach the Docker engine of ssh://")
