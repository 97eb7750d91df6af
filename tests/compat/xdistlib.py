"""What the xdist-contract compatibility tests share: the plugins, their image, the hosts.

The third-party plugins live in ``.ci/cache/compat-site/plugins`` (installed by
``.ci/install`` from ``tests/compat/plugins.txt``); sessions get them on
``PYTHONPATH``, and containers from an image made of the test image plus that
directory (:func:`compat_image`), as a user's own image would have them installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Session, run_pytest
from tests.farm_hosts.hostlib import build_image, docker_problem

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / ".ci" / "cache" / "compat-site" / "plugins"
REQUIREMENTS = ROOT / "tests" / "compat" / "plugins.txt"

#: Host kinds every plugin runs on: forked and fresh local workers, two containers.
HOSTS = ("fork", "exec", pytest.param("docker", marks=pytest.mark.docker))
#: Every host kind, and two containers behind a real sshd (:func:`over_ssh`).
WITH_SSH = (*HOSTS, pytest.param("ssh", marks=pytest.mark.docker))
#: The hosts that run tests in a copy of the project.
CONTAINERS = tuple(pytest.param(h, marks=pytest.mark.docker) for h in ("docker", "ssh"))


def plugins_dir() -> Path:
    """The installed plugins; a clear failure (never a skip) when they are missing."""
    if not (PLUGINS / "pytest_cov").is_dir():
        pytest.fail(
            f"the compatibility tests' plugins are not installed in {PLUGINS}: "
            "run .ci/install (or pip install --no-deps --target "
            f"{PLUGINS} -r {REQUIREMENTS})"
        )
    return PLUGINS


def plugin_env() -> dict[str, str]:
    """The environment that loads the plugins in a session and its local workers."""
    paths = [str(plugins_dir()), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def compat_image() -> str:
    """The test image with the plugins on its ``PYTHONPATH``, built once per plugin set."""
    problem = docker_problem()
    if problem:
        pytest.skip(f"docker tests skipped: {problem}")
    base = build_image()
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + base.encode()).hexdigest()[:12]
    tag = f"psyduck-test-compat:{digest}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory() as context:
        shutil.copytree(
            plugins_dir(), Path(context, "plugins"), ignore=shutil.ignore_patterns("__pycache__")
        )
        Path(context, "Dockerfile").write_text(
            f"FROM {base}\nCOPY plugins /opt/compat-plugins\nENV PYTHONPATH=/opt/compat-plugins\n"
        )
        built = subprocess.run(
            ["docker", "build", "-q", "-t", tag, context],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert built.returncode == 0, built.stderr[-3000:]
    return tag


def psyduck_args(host: str, image: str | None = None) -> tuple[str, ...]:
    """``--psyduck`` on *host*: a local spawn mode, or ``docker`` (two slots of *image*)."""
    if host == "docker":
        assert image is not None
        return ("--psyduck", "--psyduck-hosts", "docker:2", "--psyduck-image", image)
    return ("--psyduck", f"--psyduck-spawn={host}")


def over_ssh(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """``--psyduck`` on one ssh host (two slots of the compat image) behind a real sshd,
    started with the fixtures of ``tests/farm_hosts/conftest.py``."""
    server = request.getfixturevalue("sshd")("127.0.0.2")
    trusted = request.getfixturevalue("known_hosts")
    trusted.write_text(server.known_hosts_line())
    spec = server.spec(request.getfixturevalue("client_key"), trusted, slots=2)
    return ("--psyduck", "--psyduck-hosts", spec, "--psyduck-image", compat_image())


def run(path: Path, *args: str) -> Session:
    """A real session in *path* with the plugins loaded and pytest's cache off."""
    return run_pytest(path, "-p", "no:cacheprovider", *args, env=plugin_env())


def summary(output: str) -> str:
    """pytest's last line without its timing."""
    line = output.strip().splitlines()[-1]
    return re.sub(r" in [\d.]+s.*$", "", line).strip("= ")


def section(output: str, first: str, last: str) -> list[str]:
    """The lines from the one matching *first* to the one matching *last* (regexes)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(first, line))
    end = next(i for i in range(start, len(lines)) if re.search(last, lines[i]))
    return lines[start : end + 1]
