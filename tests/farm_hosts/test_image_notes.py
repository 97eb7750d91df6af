"""A usable image that differs from the invoker's machine says so up front.

click's suite on ``docker:2`` failed 24 pager tests that pass with plain pytest:
the test image has no ``less``, and plain pytest in that image fails them alike.
What a test needs from the image's programs psyduck cannot know; what it can
know is the image's Python, which may be another patch release of the same
minor (the test image's 3.11.2 against a host's 3.11.7).  The up-front image
check notes that on the terminal and the run goes on; the real run here uses
the test image on a real engine.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.images.check import (
    Expectation,
    Verdict,
    check_request,
    image_notes,
    judge,
    local_expectation,
    parse_check_request,
    python_release,
)
from tests.conftest import SESSION_TIMEOUT, run_pytest
from tests.farm_hosts.test_image_check import hosts_check
from tests.test_parity import _summary

YOURS = Expectation("3.11", "9.2.0", "3.11.7")
SUITE = {
    "test_one.py": "def test_one():\n    pass\n\ndef test_two():\n    assert 0\n",
    "test_more.py": "def test_three():\n    pass\n",
}


def test_another_patch_release_is_noted_not_refused():
    facts = {"python": "3.11.2", "pytest": "9.2.0"}
    assert judge(facts, YOURS) == Verdict(
        None,
        (
            "its Python is 3.11.2, yours is 3.11.7 "
            "(a test may differ from plain pytest's where the two releases differ)",
        ),
    )


def test_the_same_release_has_no_notes():
    assert image_notes({"python": "3.11.7", "pytest": "9.2.0"}, YOURS) == ()


def test_a_client_that_did_not_say_its_release_gets_no_notes():
    assert image_notes({"python": "3.11.2"}, Expectation("3.11", "9.2.0")) == ()


def test_an_unusable_image_has_its_problem_and_no_notes():
    verdict = judge({"python": "3.12.1", "pytest": "9.2.0"}, YOURS)
    assert verdict.problem.startswith("its Python is 3.12, yours is 3.11")
    assert verdict.notes == ()


def test_the_local_expectation_carries_this_interpreters_release():
    assert local_expectation().release == python_release() == "{}.{}.{}".format(*sys.version_info)


@given(
    st.one_of(st.none(), st.text(max_size=40)),
    st.text(max_size=10),
    st.text(max_size=10),
    st.text(max_size=64),
)
def test_check_request_round_trips_with_the_release(image, python, pytest_version, release):
    expect = Expectation(python, pytest_version, release)
    assert parse_check_request(check_request(image, expect)) == (image or None, expect)


def test_a_request_without_a_release_is_an_older_clients_and_parses():
    message = {"t": "check_image", "image": "x", "python": "3.11", "pytest": "9"}
    assert parse_check_request(message) == ("x", Expectation("3.11", "9"))


def image_release(image: str) -> str:
    """The full Python version of *image*, from a throw-away container of it."""
    script = "import sys; print('{}.{}.{}'.format(*sys.version_info))"
    done = subprocess.run(
        ["docker", "run", "--rm", "--network=none", "--entrypoint=python3", image, "-c", script],
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def other_release(docker_image: str) -> str:
    """The test image's Python release, which must not be this interpreter's."""
    found = image_release(docker_image)
    if found == python_release():
        pytest.skip(f"the test image has this interpreter's Python {found}")
    return found


def noted(image: str, found: str) -> str:
    return (
        f"host docker: test image {image!r}: its Python is {found}, yours is {python_release()} "
        "(a test may differ from plain pytest's where the two releases differ)"
    )


@pytest.mark.docker
def test_a_run_on_docker_hosts_notes_the_images_other_release(
    docker_image, other_release, tmp_path
):
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    plain = run_pytest(tmp_path, "-p", "no:cacheprovider")
    farm = run_pytest(
        tmp_path,
        "-p",
        "no:cacheprovider",
        "--psyduck",
        "--psyduck-hosts",
        "docker:2",
        "--psyduck-image",
        docker_image,
    )
    note = "psyduck image: " + noted(docker_image, other_release)
    assert note in farm.stdout.splitlines(), farm.stdout + farm.stderr
    assert farm.returncode == plain.returncode == 1
    assert _summary(farm.stdout) == _summary(plain.stdout)


@pytest.mark.docker
def test_hosts_check_notes_the_images_other_release(docker_image, other_release):
    done = hosts_check(docker_image)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("docker: ok")
    assert f"  image_notes: {noted(docker_image, other_release)}" in done.stdout.splitlines()
