"""The invoker's variables reach docker and ssh workers as ``--psyduck-pass-env`` and ini
``psyduck_pass_env`` say, as tox's ``pass_env`` does; never a farm credential.

Each session runs a real ``pytest --psyduck`` whose test compares the worker's
environment with what the session expects (``expected.json`` beside it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_pytest

pytestmark = pytest.mark.docker

ENV_SUITE = {
    "test_env.py": """
import json
import os
import pathlib

EXPECTED = json.loads((pathlib.Path(__file__).parent / "expected.json").read_text())

def test_environment():
    assert {name: os.environ.get(name) for name in EXPECTED} == EXPECTED
""",
}

#: What the invoker's environment holds in every session here.
INVOKER = {
    "FOO": "1",
    "FOO_A": "a",
    "FOO_B": "b",
    "BAR": "bar",
    "BAZ": "baz",
    "PSYDUCK_EXTRA": "x",
    "PSYDUCK_TOKEN": "user-farm-token-123",
    "POKEDEX_TOKEN": "pokedex-token-456",
    "TZ": "Europe/Paris",
}

PATTERNS = ("FOO", "FOO_*", "PSYDUCK_*", "*TOKEN")

#: With PATTERNS and ini ``psyduck_pass_env = BAZ``: what matches passes, credentials never.
PASSED = {
    "FOO": "1",
    "FOO_A": "a",
    "FOO_B": "b",
    "BAR": None,
    "BAZ": "baz",
    "PSYDUCK_EXTRA": "x",
    "PSYDUCK_TOKEN": None,
    "POKEDEX_TOKEN": None,
    "TZ": "Europe/Paris",  # one of the defaults
}

#: Without options: only the defaults.
DEFAULTS_ONLY = {**dict.fromkeys(INVOKER), "TZ": "Europe/Paris"}


def session(path: Path, hosts: str, image: str, expected: dict, *args: str, ini: str = ""):
    (path / "expected.json").write_text(json.dumps(expected))
    (path / "pytest.ini").write_text(f"[pytest]\n{ini}")
    done = run_pytest(
        path,
        "-p",
        "no:cacheprovider",
        "--psyduck",
        "--psyduck-hosts",
        hosts,
        "--psyduck-image",
        image,
        *args,
        env=INVOKER,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.outcomes() == {"passed": 1}


def pass_args(*patterns: str) -> list[str]:
    return [arg for pattern in patterns for arg in ("--psyduck-pass-env", pattern)]


def test_docker_workers_get_what_the_invoker_passes_and_nothing_else(docker_image, suite):
    path = suite(ENV_SUITE)
    session(path, "docker:2", docker_image, DEFAULTS_ONLY)
    session(
        path,
        "docker:2",
        docker_image,
        PASSED,
        *pass_args(*PATTERNS),
        ini="psyduck_pass_env = BAZ\n",
    )


def test_local_workers_keep_the_whole_environment(suite):
    path = suite(ENV_SUITE)
    whole = {k: v for k, v in INVOKER.items() if k not in ("PSYDUCK_TOKEN", "POKEDEX_TOKEN")}
    session(path, "local:2", "unused", {**whole, "PSYDUCK_TOKEN": None, "POKEDEX_TOKEN": None})


def test_ssh_workers_get_what_the_invoker_passes(sshd, client_key, known_hosts, suite):
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    path = suite(ENV_SUITE)
    session(
        path,
        server.spec(client_key, known_hosts, slots=2),
        "psyduck-test:latest",
        PASSED,
        *pass_args("FOO", "FOO_*"),
        ini="psyduck_pass_env =\n    BAZ\n    PSYDUCK_*\n    *TOKEN\n",
    )
