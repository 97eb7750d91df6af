"""pokedex: a distributed content-addressed blob store with a Docker registry face.

Public entry points: :class:`Client` / :class:`SyncClient` (blobs, refs, trees),
:func:`start_node` (run a node inside an event loop; :class:`Policy`, its retention) and
the ``pokedex`` command (:mod:`pokedex.cli`).

They are imported on first use, not with the package: the pure modules
(:mod:`pokedex.units` above all, whose size parser the psyduck mark shares) must be
importable without aiohttp, in a user's pytest and in test containers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client, PokedexError
    from .retention import Policy
    from .starting import RunningNode, start_node
    from .syncclient import SyncClient

__all__ = ["Client", "PokedexError", "Policy", "RunningNode", "SyncClient", "start_node"]

#: Public name → the module defining it.
_HOMES = {
    "Client": "client",
    "PokedexError": "client",
    "SyncClient": "syncclient",
    "Policy": "retention",
    "RunningNode": "starting",
    "start_node": "starting",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
