"""Fixtures for docker and ssh host tests: the real test image and real sshd servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.farm_hosts.hostlib import Sshd, build_image, docker_problem, keygen, start_sshd


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The psyduck test image, built once (cached by its recipe's hash)."""
    problem = docker_problem()
    if problem:
        pytest.skip(f"docker tests skipped: {problem}")
    return build_image()


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SSH key the farm authenticates with."""
    return keygen(tmp_path_factory.mktemp("client") / "id_ed25519")


@pytest.fixture
def sshd(tmp_path: Path, client_key: Path, docker_image: str) -> Iterator[Callable[[str], Sshd]]:
    """``sshd("127.0.0.2")`` starts a real sshd there; all are stopped at the end of the test."""
    started: list[Sshd] = []

    def start(address: str) -> Sshd:
        server = start_sshd(tmp_path / f"sshd-{address}-{len(started)}", address, client_key)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.touch()
    return path
