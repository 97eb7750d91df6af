"""pokedex: a distributed content-addressed blob store with a Docker registry face.

Public entry points: :class:`Client` / :class:`SyncClient` (blobs, refs, trees),
:func:`start_node` (run a node inside an event loop; :class:`Policy`, its retention) and
the ``pokedex`` command (:mod:`pokedex.cli`).
"""

from .client import Client, PokedexError, SyncClient
from .retention import Policy
from .server import RunningNode, start_node

__all__ = ["Client", "PokedexError", "Policy", "RunningNode", "SyncClient", "start_node"]
