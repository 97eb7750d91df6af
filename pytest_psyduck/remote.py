"""The controller's networking side: the farm client, the run's event stream, snapshots.

Imported only when a run is about to start.  It never imports aiohttp: the
client is :mod:`farm.http`, and the embedded farm runs in its own process
(:mod:`pytest_psyduck.sidecar`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from farm.client import FarmClient, FarmError
from farm.manifest import RunManifest
from farm.receiver import StreamReceiver
from pytest_psyduck.images import check_image, ship_image
from pytest_psyduck.plugin import remote_farm_url
from pytest_psyduck.replay import Replayer
from pytest_psyduck.sidecar import Sidecar, SidecarError

__all__ = ["FarmError", "run"]

#: Seconds a stopped run may take to end: the farm kills its workers after its
#: ``STOP_GRACE`` (:mod:`farm.coordinator`, not imported here: it is the farm's side).
STOP_WAIT = 45.0
#: Events still replayed once the session stops: the workers' and the run's end.
AFTER_STOP = frozenset({"worker_ready", "worker_down", "notice", "done"})


def farm_token(config: pytest.Config) -> str:
    from farm.config import ConfigError, read_token

    try:
        return read_token(config.getoption("psyduck_token_file"))
    except ConfigError as exc:
        raise pytest.UsageError(f"--psyduck-farm: {exc}") from exc


async def _with_snapshot(
    config: pytest.Config, client: FarmClient, manifest: RunManifest, token: str
) -> RunManifest:
    """Ship the working tree when the remote farm has a pokedex to receive it."""
    urls = (await client.info()).get("pokedex") or []
    if not urls:
        return manifest
    from pytest_psyduck.snapshot import SnapshotError, ship_snapshot

    try:
        shipped = await ship_snapshot(manifest, urls, token)
    except SnapshotError as exc:
        raise pytest.UsageError(f"psyduck: {exc}") from exc
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.option.verbose >= 0:
        reporter.write_line(f"psyduck: shipped {shipped.worker.project_root} as {shipped.snapshot}")
    return shipped


async def run(
    session: pytest.Session,
    manifest: RunManifest,
    replayer: Replayer,
    sidecar: Sidecar | None,
    stop_gently: bool = False,
) -> None:
    """Run *manifest* on the remote farm, or on *sidecar*'s embedded one, replaying its events.

    *stop_gently*: a session stopping at a failure lets running workers finish their
    test and say farewell (:func:`_stop`), rather than cancelling them at once.
    """
    config = session.config
    if sidecar is None:
        url = remote_farm_url(config.option)
        assert url is not None, "no embedded farm was started, so a remote one is named"
        token = farm_token(config)
        async with FarmClient(url, token) as client:
            manifest = await _with_snapshot(config, client, manifest, token)
            await ship_image(config, client, manifest, token)
            await _follow(session, client, manifest, replayer, stop_gently)
        return
    sidecar.launcher.serve()
    try:
        try:
            url = sidecar.ready()
        except SidecarError as exc:
            raise FarmError(str(exc)) from exc
        async with FarmClient(url, sidecar.token) as client:
            await _follow(session, client, manifest, replayer, stop_gently)
    finally:
        await sidecar.stop()
        sidecar.launcher.close()


async def _follow(
    session: pytest.Session,
    client: FarmClient,
    manifest: RunManifest,
    replayer: Replayer,
    stop_gently: bool,
) -> None:
    """Check the run's image, submit the run and replay its events; -x, Ctrl-C or a lost
    farm end it early.

    The stream is received on a thread of its own (:class:`StreamReceiver`): this
    thread may replay a result for as long as the user's plugins take, and the
    farm's heartbeat is answered meanwhile.
    """
    await check_image(session.config, client, manifest)
    run_id = await client.submit(manifest)
    receiver = StreamReceiver(client, run_id)
    try:
        await receiver.attached()
    except FarmError:
        receiver.close()
        raise
    try:
        events = receiver.events()
        async for event in events:
            replayer.handle(event)
            if session.shouldfail or session.shouldstop:
                break
        else:
            return
        if stop_gently:
            await _stop(receiver, events, replayer)
        else:
            receiver.cancel()
    except FarmError as exc:
        # Lost mid-run: keep what arrived and stop as pytest stops on -x.
        session.shouldstop = session.shouldstop or f"psyduck: {exc}"
    finally:
        replayer.flush()
        receiver.close()


async def _stop(
    receiver: StreamReceiver, events: AsyncIterator[dict[str, Any]], replayer: Replayer
) -> None:
    """The session stops (-x, --maxfail, --sw): stop the run, but take its workers' farewells.

    Plain pytest's plugins finish with the data of every test that ran (pytest-benchmark's
    results, syrupy's report); workers still running a test finish it and hand theirs
    over (``worker_down``) before the run is ``done``.  Nothing they ran after the
    stopping point is replayed: plain pytest never ran it.  A farm that does not
    end the run within :data:`STOP_WAIT` is cancelled outright.
    """
    receiver.stop()
    try:
        async with asyncio.timeout(STOP_WAIT):
            async for event in events:
                if event["t"] in AFTER_STOP:
                    replayer.handle(event)
    except TimeoutError:
        receiver.cancel()
