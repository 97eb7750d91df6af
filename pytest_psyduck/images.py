"""The run's test image as the plugin handles it: ``auto`` built before the run, checked up front.

Docker and ssh hosts run every shard in a container of the run's image, so an
image that cannot run psyduck's workers would fail each test alike.  Before it
submits a run, the controller asks the farm to check the image on each such
host (:mod:`farm.images.check`); any problem is one usage error (exit 4)
naming host, image and fault, and no test runs.  ``--psyduck-image auto`` —
the default when the embedded farm has docker or ssh hosts and no image is
named — builds (or reuses) the project's own image first, with
:func:`farm.images.build.build_project_image`, in this process, with progress
on the terminal; for a remote farm with pokedex, it is then pushed there, so
that the farm's hosts pull it.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import pytest

from pytest_psyduck.plugin import remote_farm_url

if TYPE_CHECKING:
    from farm.client import FarmClient
    from farm.images.check import Expectation
    from farm.manifest import RunManifest

#: ``--psyduck-image auto``: the image built from the project itself.
AUTO = "auto"
#: Host kinds whose workers run in containers of the run's image.
CONTAINER_KINDS = ("docker", "ssh")


def named_image(config: pytest.Config) -> str | None:
    """``--psyduck-image`` or ini ``psyduck_image``, if given."""
    return config.getoption("psyduck_image") or config.getini("psyduck_image") or None


def embedded_container_hosts(config: pytest.Config) -> bool:
    """Whether the embedded farm (none if a remote farm is named) has docker or ssh hosts."""
    if remote_farm_url(config.option):
        return False
    spec = config.getoption("psyduck_hosts") or config.getini("psyduck_hosts") or ""
    if not any(kind in spec for kind in CONTAINER_KINDS):
        return False  # the common local:N case decides without importing the host registry
    from farm.hosts import host_kind

    return any(host_kind(s.strip()) in CONTAINER_KINDS for s in spec.split(",") if s.strip())


def wants_auto_image(config: pytest.Config) -> bool:
    """``auto`` named, or no image named for the embedded farm's container hosts."""
    image = named_image(config)
    return image == AUTO or (image is None and embedded_container_hosts(config))


def expectation() -> Expectation:
    """What a worker image must match: this interpreter's minor version and pytest
    (and its full version, which the farm notes if the image's differs)."""
    from farm.images.check import Expectation, python_minor, python_release

    release = python_release()
    return Expectation(python_minor(release), pytest.__version__, release)


class _BuildArguments(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise pytest.UsageError(f"psyduck_image_build: {message}")


def build_arguments(config: pytest.Config) -> argparse.Namespace:
    """Ini ``psyduck_image_build`` parsed as ``psyduck image build`` parses its options;
    the project defaults to the rootdir, and requirements files are relative to it."""
    from farm.images.build import add_build_arguments

    parser = _BuildArguments(prog="psyduck_image_build", add_help=False)
    add_build_arguments(parser)
    parser.set_defaults(project=str(config.rootpath))
    args = parser.parse_args(shlex.split(config.getini("psyduck_image_build")))
    args.requirements = [str(config.rootpath / name) for name in args.requirements]
    return args


def _progress(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines of the image's build or push, on the terminal."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def progress(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"psyduck image: {line}")

    return progress


def run_image(config: pytest.Config) -> str | None:
    """The image the run's manifest names: ``auto`` is built (or reused) now."""
    if not wants_auto_image(config):
        return named_image(config)
    from farm.images.build import BuildError, build_from_arguments

    try:
        return build_from_arguments(build_arguments(config), _progress(config)).tag
    except BuildError as exc:
        raise pytest.UsageError(f"psyduck: --psyduck-image auto: {exc}") from exc


async def ship_image(
    config: pytest.Config, client: FarmClient, manifest: RunManifest, token: str
) -> None:
    """Store an ``auto`` image in the remote farm's pokedex, where its hosts pull it from.

    A farm without pokedex gets nothing: its hosts must have the image, and
    the up-front check says so if they do not.
    """
    if not manifest.image or not wants_auto_image(config):
        return
    urls = (await client.info()).get("pokedex") or []
    if not urls:
        return
    from farm.images.build import BuildError, push_image

    try:
        await asyncio.to_thread(push_image, manifest.image, urls[0], token, _progress(config))
    except BuildError as exc:
        raise pytest.UsageError(f"psyduck: --psyduck-image auto: {exc}") from exc


async def check_image(config: pytest.Config, client: FarmClient, manifest: RunManifest) -> None:
    """Have the farm check the run's image on its container hosts; UsageError if unusable.

    A usable image's differences from this machine (another Python patch
    release) are written on the terminal: where a test's outcome differs from
    plain pytest's, they may be why.  Skipped for an embedded farm without docker
    or ssh hosts (nothing to check).
    """
    if not remote_farm_url(config.option) and not embedded_container_hosts(config):
        return
    from farm.images.check import check_request

    problems, notes = await client.check_image(check_request(manifest.image, expectation()))
    if problems:
        raise pytest.UsageError("psyduck: " + "\npsyduck: ".join(problems))
    note = _progress(config)
    for line in notes:
        note(line)
