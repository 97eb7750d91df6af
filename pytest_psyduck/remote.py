"""The controller's networking side: the embedded farm, the farm client, snapshots.

Imported only when a run is about to start, because aiohttp alone costs about
0.3 s: ``--collect-only`` and runs that collect nothing never pay it.
"""

from __future__ import annotations

import os

import pytest

from farm.client import FarmClient, FarmError
from farm.config import ConfigError, read_token
from farm.embedded import EmbeddedFarm, start_embedded_farm
from farm.hosts import HostSpecError, parse_hosts
from farm.hosts.base import HostError
from farm.manifest import RunManifest
from pytest_psyduck.forking import ForkLauncher
from pytest_psyduck.replay import Replayer
from pytest_psyduck.snapshot import SnapshotError, ship_snapshot

__all__ = ["FarmError", "run"]


def farm_token(config: pytest.Config) -> str:
    try:
        return read_token(config.getoption("psyduck_token_file"))
    except ConfigError as exc:
        raise pytest.UsageError(f"--psyduck-farm: {exc}") from exc


async def _start_farm(session: pytest.Session) -> EmbeddedFarm:
    config = session.config
    spec = config.getoption("psyduck_hosts") or config.getini("psyduck_hosts")
    spawn = config.getoption("psyduck_spawn") or "fork"
    launcher = ForkLauncher(session) if spawn == "fork" else None
    try:
        hosts = parse_hosts(spec or f"local:{os.cpu_count() or 1}", launcher=launcher)
    except HostSpecError as exc:
        raise pytest.UsageError(f"--psyduck-hosts: {exc}") from exc
    try:
        return await start_embedded_farm(hosts)
    except HostError as exc:
        raise pytest.UsageError(f"--psyduck-hosts: {exc}") from exc


async def _with_snapshot(
    config: pytest.Config, client: FarmClient, manifest: RunManifest, token: str
) -> RunManifest:
    """Ship the working tree when the remote farm has a pokedex to receive it."""
    urls = (await client.info()).get("pokedex") or []
    if not urls:
        return manifest
    try:
        shipped = await ship_snapshot(manifest, urls, token)
    except SnapshotError as exc:
        raise pytest.UsageError(f"psyduck: {exc}") from exc
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.option.verbose >= 0:
        reporter.write_line(f"psyduck: shipped {shipped.worker.project_root} as {shipped.snapshot}")
    return shipped


async def run(session: pytest.Session, manifest: RunManifest, replayer: Replayer) -> None:
    """Run *manifest* on the farm (embedded unless one is named), replaying its events."""
    config = session.config
    url = config.getoption("psyduck_farm") or os.environ.get("PSYDUCK_FARM")
    farm = None
    if url:
        token = farm_token(config)
    else:
        farm = await _start_farm(session)
        url, token = farm.url, farm.token
    try:
        async with FarmClient(url, token) as client:
            if farm is None:
                manifest = await _with_snapshot(config, client, manifest, token)
            run_id = await client.submit(manifest)
            stream = await client.attach(run_id)
            try:
                async for event in stream:
                    replayer.handle(event)
                    if session.shouldfail or session.shouldstop:
                        await stream.cancel()
                        break
            except FarmError as exc:
                # Lost mid-run: keep what arrived and stop as pytest stops on -x.
                session.shouldstop = f"psyduck: {exc}"
            finally:
                replayer.flush()
                await stream.close()
    finally:
        if farm is not None:
            await farm.close()
