"""The embedded farm: a coordinator on a loopback port inside the caller's event loop.

``pytest --psyduck`` without ``--psyduck-farm`` starts one of these, so the
default path speaks exactly the protocol a remote farm speaks; only the hosts
differ (and a forking launcher may be supplied for local workers).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from aiohttp import web

from farm.coordinator import Coordinator
from farm.hosts.base import Host
from farm.service import make_app


@dataclass
class EmbeddedFarm:
    url: str
    token: str
    coordinator: Coordinator
    runner: web.AppRunner

    async def close(self) -> None:
        await self.coordinator.close()
        await self.runner.cleanup()


async def start_embedded_farm(hosts: list[Host]) -> EmbeddedFarm:
    """Start a coordinator with *hosts* on 127.0.0.1 and a random port and token."""
    coordinator = Coordinator(hosts)
    try:
        await coordinator.start()
    except BaseException:
        await coordinator.close()
        raise
    token = secrets.token_urlsafe(24)
    runner = web.AppRunner(make_app(coordinator, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return EmbeddedFarm(f"http://127.0.0.1:{port}", token, coordinator, runner)
