"""Entry point of a freshly started worker: ``python -m pytest_psyduck.workermain ARGS…``.

The host passes the worker channel as an inherited socket
(``PSYDUCK_WORKER_FD``) or, inside a container, as stdin/stdout.  The real
stdin/stdout are then pointed away from the channel so that nothing a test
prints can corrupt the message stream.

A host that starts a worker for a single shard (a container) sets
``PSYDUCK_SHARD_COLLECTION=1``: the worker then makes only that shard's
tests (see :class:`~pytest_psyduck.worker.WorkerPlugin`).
"""

from __future__ import annotations

import os
import socket
import sys
from importlib.metadata import entry_points

import pytest

from pytest_psyduck.channel import Channel
from pytest_psyduck.pluginbridges import WorkerBridges
from pytest_psyduck.worker import WorkerPlugin, die_with_parent
from pytest_psyduck.xdistcontract import Farewell, worker_input

#: Set to 1 by hosts whose fresh workers each serve a single shard.
SHARD_COLLECTION_VARIABLE = "PSYDUCK_SHARD_COLLECTION"


def _open_channel() -> Channel:
    fd = os.environ.get("PSYDUCK_WORKER_FD")
    if fd is not None:
        channel = Channel(socket.socket(fileno=int(fd)))
    else:
        channel = Channel.from_fds(os.dup(0), os.dup(1))
        os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return channel


def main() -> int:
    die_with_parent()
    channel = _open_channel()
    workerinput = worker_input(
        os.environ.get("PYTEST_XDIST_WORKER", "gw0"),
        int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
        os.environ.get("PSYDUCK_RUN_ID", ""),
    )
    args = sys.argv[1:]
    if not any(ep.name == "psyduck" for ep in entry_points(group="pytest11")):
        # Injected into an image without psyduck installed: load the plugin by module.
        args = ["-p", "pytest_psyduck.plugin", *args]
    shard_collection = os.environ.get(SHARD_COLLECTION_VARIABLE) == "1"
    plugin = WorkerPlugin(
        channel, workerinput, shard_collection=shard_collection, farewell_at_session_end=True
    )
    return int(pytest.main(args, plugins=[plugin, Farewell(channel), WorkerBridges()]))


if __name__ == "__main__":
    sys.exit(main())
