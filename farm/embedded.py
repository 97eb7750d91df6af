"""The embedded farm: the private farm that ``pytest --psyduck`` starts for itself.

It speaks exactly the protocol of a served farm, on a random loopback port with
a random token.  The plugin runs it in a process of its own, started as early as
pytest lets a plugin act (``python -m farm.embedded``): importing aiohttp and
starting the coordinator then overlap loading conftests and collecting instead
of delaying the first test, and the coordinator's work runs beside the replay of results, not in
turn with it.  Local workers are still forked from the user's collected
session: the farm asks for them over a launch socket
(:class:`~farm.hosts.local.RemoteLauncher`).

The process reads one JSON line on stdin — ``{"hosts": SPEC, "token": TOKEN,
"launcher_fd": FD, "standby": PATH}`` — answers one JSON line on stdout —
``{"url": URL}`` or ``{"error": TEXT}`` — and serves until stdin closes, which
also happens when its pytest dies; then it stops its workers and containers,
starts a standby for the next session at ``PATH`` (:mod:`farm.standby`) and
exits.  ``python -m farm.embedded --standby PATH [PID]`` is that standby: the
same farm, handed its settings and pipes by the session that claims it; it
warms up once the process PID (that session's pytest) has exited.

It keeps the farm's duration history (:mod:`farm.history`) as a served farm
does, in ``$XDG_STATE_HOME/psyduck/history.sqlite3``: a test the session's
pytest cache has no duration for (a fresh clone, a cleared cache, a new
branch's tests) is then scheduled by what earlier runs of the project on this
machine measured.  The path is the session's: a standby opens it only once
claimed, in the environment of the session that claimed it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm import standby

if TYPE_CHECKING:
    from aiohttp import web

    from farm.coordinator import Coordinator
    from farm.history import History
    from farm.hosts.base import Host


@dataclass
class EmbeddedFarm:
    url: str
    token: str
    coordinator: Coordinator
    runner: web.AppRunner

    async def close(self) -> None:
        await self.coordinator.close()
        await self.runner.cleanup()
        if self.coordinator.history is not None:
            await asyncio.to_thread(self.coordinator.history.close)


def open_history() -> History | None:
    """The user's duration history, or None (said on stderr) when its file cannot be used."""
    from farm.config import default_state_dir
    from farm.history import History, HistoryError

    try:
        return History(os.path.join(default_state_dir(), "history.sqlite3"))
    except HistoryError as exc:
        print(f"psyduck: duration history not kept: {exc}", file=sys.stderr, flush=True)
        return None


async def start_embedded_farm(hosts: list[Host], token: str | None = None) -> EmbeddedFarm:
    """Start a coordinator with *hosts* on 127.0.0.1 and a random port (and token, unless given)."""
    from aiohttp import web

    from farm.coordinator import Coordinator
    from farm.service import make_app
    from farm.tokens import Tokens

    opening = asyncio.create_task(asyncio.to_thread(open_history))
    coordinator = Coordinator(hosts)
    try:
        await coordinator.start()
    except BaseException:
        await coordinator.close()
        if (history := await opening) is not None:
            await asyncio.to_thread(history.close)
        raise
    coordinator.history = await opening
    token = token or secrets.token_urlsafe(24)
    runner = web.AppRunner(make_app(coordinator, Tokens.single(token)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return EmbeddedFarm(f"http://127.0.0.1:{port}", token, coordinator, runner)


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Lifeline(asyncio.Protocol):
    """Stdin, held open by the pytest that started this farm until it wants the farm gone."""

    def __init__(self, closed: asyncio.Event) -> None:
        self.closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def serve(settings: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await loop.connect_read_pipe(lambda: _Lifeline(stop), sys.stdin)
    from farm.hosts import HostSpecError, parse_hosts
    from farm.hosts.base import HostError
    from farm.hosts.local import RemoteLauncher

    fd = settings.get("launcher_fd")
    launcher = RemoteLauncher(socket.socket(fileno=fd)) if fd is not None else None
    try:
        hosts = parse_hosts(settings["hosts"], launcher=launcher, embedded=True)
        farm = await start_embedded_farm(hosts, settings["token"])
    except (HostSpecError, HostError) as exc:
        _answer({"error": f"--psyduck-hosts: {exc}"})
        return
    _answer({"url": farm.url})
    try:
        await stop.wait()
    finally:
        await farm.close()


def _warm_up() -> None:
    """Import what serving needs, so that a standby has it loaded before it is claimed."""
    for module in ("farm.service", "farm.hosts", "farm.history", "farm.config"):
        importlib.import_module(module)


def main() -> None:
    if sys.argv[1:2] == ["--standby"]:
        after = int(sys.argv[3]) if len(sys.argv) > 3 else None
        settings = standby.wait_for_session(Path(sys.argv[2]), _warm_up, after)
        if settings is None:
            return  # nobody came, or another standby serves that path
    else:
        settings = json.loads(sys.stdin.readline())
    asyncio.run(serve(settings))
    if settings.get("standby"):
        standby.start_successor(Path(settings["standby"]))
    # Everything is closed by now.  Tearing down the interpreter (aiohttp's
    # modules, mostly) would take ~70 ms that the user's pytest spends waiting
    # for this process to end, for nothing: exit at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
