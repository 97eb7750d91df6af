"""Whether a test image can run psyduck's workers: checked once per host and image, up front.

An unusable image (no Python, another Python minor, another pytest, psyduck's
injected code failing to import under its pytest) would otherwise fail every
test of a run with the same error.  :func:`farm.images.probe.probe_image`
starts one throw-away container of the image (no network, no capabilities,
psyduck's packages mounted as the workers get them) that prints one JSON line
of facts; :func:`image_problem` compares those facts with what the run's
client has (:class:`Expectation`).  Everything here is pure (and
cheap to import for the plugin); :mod:`farm.images.probe` talks to the engine.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from farm.hosts.base import Host, RunContext
from farm.manifest import RunManifest, WorkerSpec
from farm.protocol import ProtocolError

#: Marks the probe's JSON line among whatever else the image prints.
PROBE_MARKER = "PSYDUCK-PROBE "
#: Longest image reference and version string a check request may carry.
MAX_IMAGE_CHARS = 512
MAX_VERSION_CHARS = 64


@dataclass(frozen=True)
class Expectation:
    """What the run's client has, and so what its image must have: ``3.11``, ``9.2.0``.

    An empty field is not checked (a client that did not say).
    """

    python: str = ""
    pytest: str = ""


def local_expectation() -> Expectation:
    """What this interpreter has: its minor version and installed pytest (not imported)."""
    try:
        pytest_version = importlib.metadata.version("pytest")
    except importlib.metadata.PackageNotFoundError:
        pytest_version = ""
    return Expectation(f"{sys.version_info.major}.{sys.version_info.minor}", pytest_version)


def check_context(pokedex_urls: tuple[str, ...] = (), token: str | None = None) -> RunContext:
    """The run-like context an image check provides its image in: where to pull it from."""
    manifest = RunManifest(tests=(), worker=WorkerSpec(argv=(), cwd="/"))
    return RunContext("image-check", manifest, 0, pokedex_urls=pokedex_urls, pokedex_token=token)


def parse_probe_output(output: str) -> dict[str, Any]:
    """The facts the probe printed; ValueError with the output's tail if there are none."""
    for line in reversed(output.splitlines()):
        if line.startswith(PROBE_MARKER):
            facts = json.loads(line[len(PROBE_MARKER) :])
            if isinstance(facts, dict) and isinstance(facts.get("python"), str):
                return facts
    tail = output.strip()[-500:] or "(no output)"
    raise ValueError(f"its Python did not run psyduck's check: {tail}")


def python_minor(version: str) -> str:
    """``3.11`` of ``3.11.7``."""
    return ".".join(version.split(".")[:2])


def image_problem(facts: dict[str, Any], expect: Expectation) -> str | None:
    """What makes an image with *facts* unusable for a client with *expect*, or None."""
    if facts.get("pytest_error"):
        return f"pytest does not import ({facts['pytest_error']})"
    found = python_minor(str(facts["python"]))
    if expect.python and found != expect.python:
        return f"its Python is {found}, yours is {expect.python} (the same minor is needed)"
    if expect.pytest and facts.get("pytest") != expect.pytest:
        return (
            f"its pytest is {facts.get('pytest')}, yours is {expect.pytest} "
            "(psyduck needs the same pytest on both sides)"
        )
    if facts.get("inject_error"):
        return f"psyduck's worker code does not import there ({facts['inject_error']})"
    return None


def check_request(image: str | None, expect: Expectation) -> dict[str, Any]:
    """The ``check_image`` message a client sends before it submits a run."""
    return {"t": "check_image", "image": image, "python": expect.python, "pytest": expect.pytest}


def _text(message: dict[str, Any], key: str, limit: int, *, optional: bool = False) -> str:
    value = message.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"check_image: {key!r} must be a string of at most {limit} characters")
    return value


def parse_check_request(message: dict[str, Any]) -> tuple[str | None, Expectation]:
    """(image or None for the hosts' own, expectation) of a decoded ``check_image`` message."""
    if message.get("t") != "check_image":
        raise ProtocolError(f"expected a 'check_image' message, got {message.get('t')!r}")
    image = _text(message, "image", MAX_IMAGE_CHARS, optional=True) or None
    expect = Expectation(
        _text(message, "python", MAX_VERSION_CHARS), _text(message, "pytest", MAX_VERSION_CHARS)
    )
    return image, expect


async def hosts_problems(
    hosts: Iterable[Host], image: str | None, expect: Expectation, run: RunContext
) -> list[str]:
    """One line per container host whose image is unusable (hosts check concurrently)."""
    checks = [
        host.image_problem(image, expect, run)  # type: ignore[attr-defined]
        for host in hosts
        if hasattr(host, "image_problem")
    ]
    return [problem for problem in await asyncio.gather(*checks) if problem]
