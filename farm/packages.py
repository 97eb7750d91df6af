"""Where a package is installed, found without importing it.

A worker in a container imports packages a test image need not have (psyduck's
own, msgpack): the plugin names them in the run manifest, and hosts mount their
directories into containers.  Both ends locate a package by name through the
import system's finders, which read no module code: the farm process must never
import the plugin (nor pytest), and the user's pytest must not import pokedex's
client and with it aiohttp.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

#: What a psyduck worker imports beyond pytest: psyduck's packages and msgpack.  The
#: plugin names them, with its own directories, in every run (``worker.inject``);
#: farm tools without a run (``psyduck hosts check --image``) check the farm's own.
WORKER_PACKAGES = ("pytest_psyduck", "farm", "pokedex", "msgpack")


def package_dir(name: str) -> str | None:
    """The directory of the top-level package *name*, None if it is not an installed package."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return locations[0] if len(locations) == 1 else None


def package_dirs(names: Iterable[str]) -> dict[str, str]:
    """name → directory of each of *names* that is an installed package (:func:`package_dir`)."""
    found = {}
    for name in names:
        directory = package_dir(name)
        if directory is not None:
            found[name] = directory
    return found
