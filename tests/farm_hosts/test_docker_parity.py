"""Parity on docker and ssh hosts equals parity on local hosts (tests/test_parity.py).

A varied suite — passes, failures with assertion rewriting and captured output,
setup and teardown errors, skips, xfail/xpass/strict xpass, unittest cases,
doctests, warnings, ``record_property`` under ``junit_family = xunit2`` (whose
warning depends on the invoker's ``--junitxml``) — gives plain pytest's summary
line, result lines, failure texts and junit test cases in real containers.
"""

from __future__ import annotations

import pytest

from tests.conftest import junit_cases, run_pytest
from tests.test_parity import VARIED_SUITE, _result_lines, _summary

pytestmark = pytest.mark.docker

SUITE = {
    **VARIED_SUITE,
    "pytest.ini": "[pytest]\njunit_family = xunit2\n",
    "test_junit.py": """
def test_records_a_property(record_property):
    record_property("answer", "42")
""",
}

NEEDLES = (
    "E       AssertionError: assert {'a': 1} == {'a': 2}",
    "Captured stdout call",
    "to stdout",
    "Captured stderr call",
    "Captured log call",
    "a log line",
    "RuntimeError: teardown exploded",
    "[XPASS(strict)] must fail",
    "careful now",
    "record_property is incompatible with junit_family 'xunit2'",
    ">>> double(3)",
)


def assert_same_as_plain(path, hosts: str, image: str) -> None:
    common = ["-p", "no:cacheprovider", "--doctest-modules", "-rA"]
    plain = run_pytest(path, *common, "--junitxml=plain.xml")
    farm = run_pytest(
        path,
        *common,
        "--junitxml=farm.xml",
        "--psyduck",
        "--psyduck-hosts",
        hosts,
        "--psyduck-image",
        image,
    )
    assert farm.returncode == plain.returncode == 1, farm.stdout + farm.stderr
    assert _summary(farm.stdout) == _summary(plain.stdout), farm.stdout
    assert junit_cases(path / "farm.xml") == junit_cases(path / "plain.xml")
    for needle in NEEDLES:
        assert needle in plain.stdout, needle
        assert needle in farm.stdout, (needle, farm.stdout)
    assert _result_lines(farm.stdout) == _result_lines(plain.stdout)


def test_docker_hosts_report_what_plain_pytest_reports(docker_image, suite):
    assert_same_as_plain(suite(SUITE), "docker:2", docker_image)


def test_ssh_hosts_report_what_plain_pytest_reports(sshd, client_key, known_hosts, suite):
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    assert_same_as_plain(
        suite(SUITE), server.spec(client_key, known_hosts, slots=2), "psyduck-test:latest"
    )
