"""Unusable test images are found once, up front: one usage error, no test runs.

Real images on the real engine: one without Python (a ``docker import`` of a
one-file tar), one with another pytest (the test image plus a pytest 8.3.5 wheel,
built with no network), and a name the engine does not have.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import docker
import pytest

from tests.conftest import SESSION_TIMEOUT, outer_environment, start_pytest
from tests.farm_hosts.hostlib import ROOT, containers_created, of_session, start_session

pytestmark = pytest.mark.docker

NO_PYTHON = "psyduck-test-nopython:1"
MISSING = "psyduck-test:no-such-tag"
OTHER_PYTEST = "8.3.5"
SUITE = {
    "test_one.py": "def test_one():\n    pass\n\ndef test_two():\n    assert 0\n",
    "test_more.py": "def test_three():\n    pass\n",
}


@pytest.fixture(scope="session")
def no_python_image(docker_image: str) -> str:
    """An image holding one file and no interpreter at all."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("README")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    with docker.APIClient(timeout=120) as api:
        api.import_image_from_data(data.getvalue(), repository=NO_PYTHON.split(":")[0], tag="1")
    return NO_PYTHON


@pytest.fixture(scope="session")
def other_pytest_image(docker_image: str) -> str:
    """The test image with pytest 8.3.5 instead (installed from a wheel, no network)."""
    with docker.APIClient(timeout=600) as api:
        base_id = api.inspect_image(docker_image)["Id"].split(":")[1][:12]
        tag = f"psyduck-test-pytest{OTHER_PYTEST.replace('.', '')}:{base_id}"
        try:
            api.inspect_image(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        with tempfile.TemporaryDirectory() as context:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--dest",
                    f"{context}/wheels",
                    f"pytest=={OTHER_PYTEST}",
                ],
                check=True,
                timeout=300,
            )
            Path(context, "Dockerfile").write_text(
                f"FROM {docker_image}\nCOPY wheels /tmp/wheels\n"
                "RUN python3 -m pip install --no-index --no-deps --break-system-packages "
                "/tmp/wheels/*.whl && rm -rf /tmp/wheels\n"
            )
            for chunk in api.build(
                path=context, tag=tag, network_mode="none", rm=True, decode=True
            ):
                assert "error" not in chunk, chunk
    return tag


def assert_one_usage_error(path: Path, image: str, problem: str) -> None:
    """``pytest --psyduck`` on docker hosts with *image*: exit 4, one line, no test ran."""
    process = start_session(
        path, "--psyduck-hosts", "docker:2", "--psyduck-image", image, cache=True
    )
    output, _ = process.communicate(timeout=SESSION_TIMEOUT)
    assert process.returncode == 4, output
    errors = [line for line in output.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"ERROR: psyduck: host docker: test image {image!r}"), output
    assert problem in errors[0]
    rest = output.replace(errors[0], "")
    for outcome in ("PASSED", "FAILED", " passed", " failed", "::test_"):
        assert outcome not in rest
    assert "no tests ran" in rest
    assert not (path / ".pytest_cache" / "v" / "cache" / "lastfailed").exists()


def hosts_check(image: str, hosts: str = "docker:1") -> subprocess.CompletedProcess:
    """``psyduck hosts check --hosts HOSTS --image IMAGE``, run as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", "hosts", "check", "--hosts", hosts, "--image", image],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=outer_environment(),
    )


def test_an_image_without_python_is_one_usage_error(no_python_image, suite):
    assert_one_usage_error(suite(SUITE), no_python_image, "it has no python3")


def test_an_image_with_another_pytest_is_one_usage_error(other_pytest_image, suite):
    assert_one_usage_error(
        suite(SUITE), other_pytest_image, f"its pytest is {OTHER_PYTEST}, yours is "
    )


def test_a_missing_image_is_one_usage_error(docker_image, suite):
    assert_one_usage_error(suite(SUITE), MISSING, "is not present on its Docker engine")


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("no_python_image", "it has no python3"),
        ("other_pytest_image", f"its pytest is {OTHER_PYTEST}, yours is {pytest.__version__}"),
        (MISSING, f"test image {MISSING!r} is not present"),
    ],
)
def test_hosts_check_says_what_is_wrong_with_the_image(image, problem, request):
    if not image.startswith("psyduck-test:"):
        image = request.getfixturevalue(image)
    done = hosts_check(image)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("docker: PROBLEM")
    assert problem in done.stdout


def test_hosts_check_says_ok_only_for_a_usable_image(docker_image):
    done = hosts_check(docker_image)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("docker: ok")
    assert "image_usable: True" in done.stdout


def test_hosts_check_over_ssh_probes_with_the_shipped_worker_code(
    docker_image, other_pytest_image, sshd, client_key, known_hosts
):
    """An ssh host's engine cannot see this disk: the probe mounts psyduck's packages
    from the volume the host ships them in, as its workers do."""
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    spec = server.spec(client_key, known_hosts)
    good = hosts_check(docker_image, spec)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "image_usable: True" in good.stdout
    bad = hosts_check(other_pytest_image, spec)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"its pytest is {OTHER_PYTEST}" in bad.stdout


def test_a_later_session_judges_the_image_without_a_probe_container(docker_image, suite, tmp_path):
    """The embedded farm lives one session; the probe's facts outlive it, on disk."""
    path = suite({"test_one.py": "def test_one():\n    pass\n"})
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PSYDUCK_STANDBY": "0"}
    probes = []
    for _ in range(2):
        with containers_created("psyduck.probe") as created:
            process = start_pytest(
                path,
                *("--psyduck", "--psyduck-hosts", "docker:1", "--psyduck-image", docker_image),
                env=env,
            )
            output, _ = process.communicate(timeout=SESSION_TIMEOUT)
        assert process.returncode == 0 and "1 passed" in output, output
        probes.append(len(of_session(created, process.pid)))
    assert probes == [1, 0]
