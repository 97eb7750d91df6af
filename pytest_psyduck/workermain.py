"""Entry point of a freshly started worker: ``python -m pytest_psyduck.workermain ARGS…``.

The host passes the worker channel as an inherited socket
(``PSYDUCK_WORKER_FD``) or, inside a container, as stdin/stdout.  The real
stdin/stdout are then pointed away from the channel so that nothing a test
prints can corrupt the message stream.
"""

from __future__ import annotations

import os
import socket
import sys
from importlib.metadata import entry_points

import pytest

from pytest_psyduck.channel import Channel
from pytest_psyduck.worker import WorkerPlugin, die_with_parent


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
    workerinput = {
        "workerid": os.environ.get("PYTEST_XDIST_WORKER", "gw0"),
        "workercount": int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
        "testrunuid": os.environ.get("PSYDUCK_RUN_ID", ""),
    }
    args = sys.argv[1:]
    if not any(ep.name == "psyduck" for ep in entry_points(group="pytest11")):
        # Injected into an image without psyduck installed: load the plugin by module.
        args = ["-p", "pytest_psyduck.plugin", *args]
    return int(pytest.main(args, plugins=[WorkerPlugin(channel, workerinput)]))


if __name__ == "__main__":
    sys.exit(main())
