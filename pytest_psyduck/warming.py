"""Starting the embedded farm's container workers while this session collects.

A container worker's start-up (create, start, interpreter, pytest, plugins,
first conftests) is work a forked local worker never does.  On the embedded
farm, idle at the session's start, it can overlap the session's own
collection instead of following it, as pytest-xdist's workers start when its
session starts.  So when the embedded farm has docker or ssh hosts, the session
sends it the run as far as it is known before collecting (the workers' command
line, directory, environment and image; no tests), on a thread of its own, and
the farm starts each slot's worker (``POST /v1/warm``).

The run, once collected, takes those workers only if it would have started
the very same containers (the farm compares them), so nothing a test sees
depends on warming: an environment variable collection changes, a
transformation's profile or an ``auto`` image (never warmed) only costs the
warm start-ups.  pytest-xdist's controller hooks (``pytest_configure_node``)
run before collection then, as xdist runs them, since each worker's
``workerinput`` travels in its environment.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from farm.client import FarmClient, FarmError
from farm.hosts import names_container_hosts
from farm.manifest import RunManifest, WorkerSpec
from pytest_psyduck.images import named_image, wants_auto_image
from pytest_psyduck.sidecar import Sidecar


def worth_warming(config: pytest.Config, sidecar: Sidecar | None) -> bool:
    """Whether this session's embedded farm has container hosts to start workers on."""
    return (
        sidecar is not None
        and names_container_hosts(sidecar.hosts)
        and not config.option.collectonly
        and not wants_auto_image(config)
    )


class Warming:
    """The warm request on its thread: waits for the embedded farm, then asks it."""

    def __init__(self, config: pytest.Config, sidecar: Sidecar, worker: WorkerSpec) -> None:
        self._sidecar = sidecar
        self._manifest = RunManifest(tests=(), worker=worker, image=named_image(config))
        self._thread = threading.Thread(target=self._warm, name="psyduck-warming", daemon=True)
        self._thread.start()

    def _warm(self) -> None:
        try:
            url = self._sidecar.ready()
        except BaseException:
            return  # the session gets the same error when it asks for the farm
        try:
            asyncio.run(self._ask(url))
        except FarmError:
            pass  # only speed is lost: the run starts its workers itself

    async def _ask(self, url: str) -> None:
        async with FarmClient(url, self._sidecar.token) as client:
            await client.warm(self._manifest)

    def join(self) -> None:
        """Wait until the farm was asked (or could not be): the run comes after it."""
        self._thread.join()
