"""The controller: replaces pytest's run loop with a run on a psyduck farm.

Collection has already happened here, with every selection option applied.
The controller builds the manifest, starts the embedded farm unless a remote
one is named, submits the run, and hands each streamed event to the
:class:`~pytest_psyduck.replay.Replayer`.  ``-x``/``--maxfail`` and Ctrl-C
cancel the remote run at once; pytest's own stop logic then ends the session
exactly as it would have without psyduck.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from farm.client import FarmClient, FarmError
from farm.embedded import EmbeddedFarm, start_embedded_farm
from farm.hosts import HostSpecError, parse_hosts
from farm.manifest import RunManifest
from pytest_psyduck.durations import DurationHistory
from pytest_psyduck.forking import ForkLauncher
from pytest_psyduck.replay import Replayer
from pytest_psyduck.runmanifest import build_manifest
from pytest_psyduck.snapshot import SnapshotError, ship_snapshot


def farm_token(config: pytest.Config) -> str:
    path = config.getoption("psyduck_token_file")
    if path:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as exc:
            raise pytest.UsageError(f"--psyduck-token-file: cannot read {path}: {exc}") from exc
    token = os.environ.get("PSYDUCK_TOKEN")
    if not token:
        raise pytest.UsageError(
            "--psyduck-farm needs a token: set PSYDUCK_TOKEN or pass --psyduck-token-file"
        )
    return token


class DistributedSession:
    """Registered as ``psyduck-session`` when ``--psyduck`` is given."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.history = DurationHistory(config)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        if session.testsfailed and not self.config.option.continue_on_collection_errors:
            raise session.Interrupted(
                f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} "
                "during collection"
            )
        if self.config.option.collectonly or not session.items:
            return True
        manifest = build_manifest(session.items, self.config, self.history)
        replayer = Replayer(session, self.history)
        self.config.pluginmanager.register(replayer, "psyduck-replay")
        try:
            asyncio.run(self._run(session, manifest, replayer))
        except FarmError as exc:
            raise pytest.UsageError(f"psyduck: {exc}") from exc
        finally:
            self.config.pluginmanager.unregister(replayer)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def pytest_sessionfinish(self) -> None:
        self.history.save()

    async def _start_farm(self, session: pytest.Session) -> EmbeddedFarm:
        spec = self.config.getoption("psyduck_hosts") or self.config.getini("psyduck_hosts")
        spawn = self.config.getoption("psyduck_spawn") or "fork"
        launcher = ForkLauncher(session) if spawn == "fork" else None
        try:
            hosts = parse_hosts(spec or f"local:{os.cpu_count() or 1}", launcher=launcher)
        except HostSpecError as exc:
            raise pytest.UsageError(f"--psyduck-hosts: {exc}") from exc
        return await start_embedded_farm(hosts)

    async def _with_snapshot(
        self, client: FarmClient, manifest: RunManifest, token: str
    ) -> RunManifest:
        """Ship the working tree when the remote farm has a pokedex to receive it."""
        urls = (await client.info()).get("pokedex") or []
        if not urls:
            return manifest
        try:
            shipped = await ship_snapshot(manifest, urls, token)
        except SnapshotError as exc:
            raise pytest.UsageError(f"psyduck: {exc}") from exc
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.config.option.verbose >= 0:
            reporter.write_line(
                f"psyduck: shipped {shipped.worker.project_root} as {shipped.snapshot}"
            )
        return shipped

    async def _run(self, session: pytest.Session, manifest, replayer: Replayer) -> None:
        url = self.config.getoption("psyduck_farm") or os.environ.get("PSYDUCK_FARM")
        farm = None
        if url:
            token = farm_token(self.config)
        else:
            farm = await self._start_farm(session)
            url, token = farm.url, farm.token
        try:
            async with FarmClient(url, token) as client:
                if farm is None:
                    manifest = await self._with_snapshot(client, manifest, token)
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
