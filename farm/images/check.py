"""Whether a test image can run psyduck's workers: checked once per host and image, up front.

An unusable image (no Python, another Python minor, another pytest, psyduck's
injected code failing to import under its pytest) would otherwise fail every
test of a run with the same error.  :func:`farm.images.probe.probe_image`
starts one throw-away container of the image (no network, no capabilities,
psyduck's packages mounted as the workers get them) that prints one JSON line
of facts; :func:`image_problem` compares those facts with what the run's
client has (:class:`Expectation`).  A usable image may still differ from the
client's machine in ways that change a test's outcome (another Python patch
release): :func:`image_notes` says so, and the client shows it without
stopping the run.  Everything here is pure (and
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

    *release* (``3.11.7``) is the client's full Python version: an image with
    another patch release of the same minor is usable, but it is noted
    (:func:`image_notes`).  An empty field is not checked (a client that did not say).
    """

    python: str = ""
    pytest: str = ""
    release: str = ""


@dataclass(frozen=True)
class Verdict:
    """A host's verdict on an image: why it is unusable (or None), and what differs
    from the client's machine although the image is usable (one line each)."""

    problem: str | None = None
    notes: tuple[str, ...] = ()


def local_expectation() -> Expectation:
    """What this interpreter has: its minor version and installed pytest (not imported)."""
    try:
        pytest_version = importlib.metadata.version("pytest")
    except importlib.metadata.PackageNotFoundError:
        pytest_version = ""
    return Expectation(python_minor(python_release()), pytest_version, python_release())


def python_release() -> str:
    """This interpreter's full version: ``3.11.7``."""
    return ".".join(map(str, sys.version_info[:3]))


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


def image_notes(facts: dict[str, Any], expect: Expectation) -> tuple[str, ...]:
    """What differs between a usable image with *facts* and the client's machine.

    Another patch release of Python runs psyduck's workers, but a test whose
    outcome depends on a fix between the two releases differs from plain pytest's.
    """
    found = str(facts["python"])
    if expect.release and found != expect.release:
        return (
            f"its Python is {found}, yours is {expect.release} "
            "(a test may differ from plain pytest's where the two releases differ)",
        )
    return ()


def judge(facts: dict[str, Any], expect: Expectation) -> Verdict:
    """The verdict on an image with *facts* for a client with *expect*."""
    problem = image_problem(facts, expect)
    return Verdict(problem, () if problem else image_notes(facts, expect))


def check_request(image: str | None, expect: Expectation) -> dict[str, Any]:
    """The ``check_image`` message a client sends before it submits a run."""
    return {
        "t": "check_image",
        "image": image,
        "python": expect.python,
        "pytest": expect.pytest,
        "release": expect.release,
    }


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
        _text(message, "python", MAX_VERSION_CHARS),
        _text(message, "pytest", MAX_VERSION_CHARS),
        _text(message, "release", MAX_VERSION_CHARS, optional=True),
    )
    return image, expect


async def hosts_verdicts(
    hosts: Iterable[Host], image: str | None, expect: Expectation, run: RunContext
) -> tuple[list[str], list[str]]:
    """(one line per container host whose image is unusable, every host's notes);
    the hosts check concurrently."""
    checks = [
        host.image_verdict(image, expect, run)  # type: ignore[attr-defined]
        for host in hosts
        if hasattr(host, "image_verdict")
    ]
    verdicts = await asyncio.gather(*checks)
    problems = [v.problem for v in verdicts if v.problem]
    return problems, [note for v in verdicts for note in v.notes]
