"""Containers run the bytecode the client's pytest wrote, instead of compiling again.

A container cannot write bytecode, so the rewritten test modules (and the
project's pycs) it finds next to the code are what spares it rewriting its
shard's modules.  To tell a shipped pyc from a fresh rewrite, the source is
changed after pytest wrote its pyc and the pyc is given the new source's hash
(pytest's pycs are checked by source hash): pytest then trusts the pyc, so the
test sees the value it was compiled with, on the client and in the container
alike, and the value in the source only where the pyc is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import run_pytest
from tests.farm_hosts.hostlib import psyduck_session

pytestmark = pytest.mark.docker

SOURCE = (
    "VALUE = {value}\n\n\ndef test_runs_the_bytecode_the_client_wrote():\n    assert VALUE == 1\n"
)


def suite_with_forged_pyc(path: Path) -> Path:
    """A one-test suite whose rewritten pyc says VALUE = 1 and whose source says 2."""
    path.mkdir()
    test = path / "test_bytecode.py"
    test.write_text(SOURCE.format(value=1))
    done = run_pytest(path, "-q", "-p", "no:cacheprovider", env={"PYTHONDONTWRITEBYTECODE": ""})
    assert done.returncode == 0, done.output
    [pyc] = (path / "__pycache__").glob("test_bytecode.*-pytest-*.pyc")
    test.write_text(SOURCE.format(value=2))
    data = bytearray(pyc.read_bytes())
    assert data[4:8] == b"\x03\x00\x00\x00"  # a checked hash-based pyc (PEP 552)
    data[8:16] = importlib.util.source_hash(test.read_bytes())[:8]
    pyc.write_bytes(data)
    return path


def test_a_docker_container_runs_the_clients_rewritten_test_module(docker_image, tmp_path):
    path = suite_with_forged_pyc(tmp_path / "proj")
    done = psyduck_session(path, "--psyduck-hosts", "docker:1", "--psyduck-image", docker_image)
    assert done.returncode == 0, done.output
    assert "1 passed" in done.output


def test_an_ssh_hosts_container_runs_the_clients_rewritten_test_module(
    docker_image, sshd, client_key, known_hosts, tmp_path
):
    path = suite_with_forged_pyc(tmp_path / "proj")
    known_hosts.write_text((server := sshd("127.0.0.2")).known_hosts_line())
    host = server.spec(client_key, known_hosts, slots=1)
    done = psyduck_session(path, "--psyduck-hosts", host, "--psyduck-image", docker_image)
    assert done.returncode == 0, done.output
    assert "1 passed" in done.output
