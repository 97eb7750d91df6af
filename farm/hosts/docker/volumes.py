"""Payload volumes: psyduck's packages and the run's code for engines on other machines.

A local engine (``docker:N``) shares the coordinator's disk, so psyduck's own
packages and the run's code are bind-mounted read-only.  An engine on another
machine (``remote``: ssh hosts) cannot see that disk: there both payloads go
through the Docker API instead — once per host and content (the snapshot's
digest, else the run, or on the embedded farm its session), the coordinator
streams a gzipped tar of them with ``put_archive`` into named volumes, through
one helper container that mounts every volume still to fill, created from the
run's image (no network, no capabilities) and never started: a helper costs the
engine a mount of the image's root filesystem, which on drivers such as
``fuse-overlayfs`` is a daemon of its own.  The volumes are then mounted
read-only where the binds would be, carry the farm's label, and are removed
when the host closes, when a host keeps too many run volumes, or by the reaper
once their coordinator is gone.

A fill is on the critical path of a run's first containers, so its steps
overlap: the archive is built while the volumes and the helper are created,
and the workers' containers are created (they need only the volumes to exist)
while the archive uploads; they start once it is in.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import IO, Any

import docker.errors

from farm.hosts.base import HostError, RunContext
from farm.hosts.bootstrap import COPY_SKIP
from farm.hosts.containers import FARM_ID, LABEL_FARM, LABEL_HOST
from farm.hosts.docker.engine import Engine, EngineLost, bounded

log = logging.getLogger("psyduck.farm.docker")

#: Seconds building and uploading one payload (code or psyduck's packages) may take.
PAYLOAD_TIMEOUT = 300.0
#: Run-code volumes a remote host keeps (older ones not in use are removed).
CODE_VOLUMES_KEPT = 4
#: gzip level of payload archives: the fastest, most of the gain on source code.
PAYLOAD_GZIP_LEVEL = 1
#: Where a payload helper container mounts the volume it fills.
PAYLOAD_DIR = "/psyduck-payload"


def _skip_cached(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if os.path.basename(info.name) in COPY_SKIP else info


def payload_tar(sources: Mapping[str, str]) -> IO[bytes]:
    """A gzipped tar (in a temporary file, rewound) of each ``arcname → local path``.

    Caches and VCS data (:data:`COPY_SKIP`) are left out; owners and modes are
    kept, so the container's user (the code's owner) can read what it could read
    through a bind mount.  Compressed at gzip's fastest level, which the engine
    unpacks itself: source code shrinks to a fraction, and every byte saved is
    one the SSH connection need not encrypt and carry.
    """
    archive = tempfile.TemporaryFile()
    try:
        with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=PAYLOAD_GZIP_LEVEL) as tar:
            for arcname, path in sources.items():
                tar.add(path, arcname=arcname, filter=_skip_cached)
        archive.seek(0)
    except BaseException:
        archive.close()
        raise
    return archive


def _close_unused_archive(building: asyncio.Future[IO[bytes]]) -> None:
    """Close the archive a failed fill built but never uploaded."""
    if not building.cancelled() and building.exception() is None:
        building.result().close()


def volume_name(kind: str, key: str, host: str) -> str:
    """This farm's volume for one payload on one host: farm, host and content key, hashed.

    Two of a farm's hosts may share an engine (two ssh specs reaching one machine):
    each fills and removes its own volumes, never one the other is filling.
    """
    digest = hashlib.sha256(f"{FARM_ID}\0{host}\0{key}".encode()).hexdigest()[:20]
    return f"psyduck-{kind}-{digest}"


@dataclass(frozen=True)
class VolumeFill:
    """One fill of one or more payload volumes: *created* once they exist (a container
    may mount them then), *task* once they hold their sources."""

    created: asyncio.Future[None]
    task: asyncio.Future[None]

    def failed(self) -> bool:
        """Whether it ended without filling (the next run's fill retries)."""
        task = self.task
        return task.done() and (task.cancelled() or task.exception() is not None)


class PayloadVolumes:
    """The part of :class:`~farm.hosts.docker.DockerHost` that ships payloads in volumes."""

    name: str
    embedded: bool
    #: Payload volumes by name: the fill of each (which may fill several), oldest first.
    _volumes: dict[str, VolumeFill]
    _in_background: Callable[[Coroutine[Any, Any, None]], None]

    async def _payloads(
        self,
        engine: Engine,
        run: RunContext,
        image: str,
        code_dir: str,
        module_dirs: Mapping[str, str],
    ) -> tuple[str, str, Callable[[], Awaitable[None]]]:
        """(volume of psyduck's packages, volume of the run's code, a wait for their
        fill), once both volumes exist: a container may mount them before the fill is
        done, and start once it is.

        psyduck's packages get one volume per content, the code one per snapshot,
        else per run; concurrent shards wait for one upload of each.  The embedded
        farm serves one session: the containers started while it collected (warm),
        the run's and their spares all mount one copy of the code, taken as it began.
        """
        per_run = "session" if self.embedded else f"run:{run.run_id}"
        code_key = run.manifest.snapshot or per_run
        inject = self._inject_name(module_dirs)
        code = volume_name("code", code_key, self.name)
        fills = self._fills(engine, image, {inject: dict(module_dirs), code: {".": code_dir}})
        await self._shipping([fill.created for fill in fills])
        return inject, code, functools.partial(self._shipping, [fill.task for fill in fills])

    async def _shipping(self, steps: list[asyncio.Future[None]]) -> None:
        """Wait for one step (creating the volumes, or filling them) of every fill the
        run's code and psyduck's packages need; a failure is the host's."""
        try:
            await asyncio.gather(*(asyncio.shield(step) for step in steps))
        except docker.errors.APIError as exc:
            raise HostError(f"host {self.name}: cannot ship the run's code: {exc}") from exc
        except TimeoutError as exc:
            raise HostError(f"host {self.name}: shipping the run's code timed out") from exc
        except OSError as exc:  # archiving it on the farm's disk
            raise HostError(f"host {self.name}: cannot ship the run's code: {exc}") from exc

    async def _inject_volume(
        self, engine: Engine, image: str, module_dirs: Mapping[str, str]
    ) -> str:
        """The filled volume of psyduck's packages *module_dirs*, one per content."""
        name = self._inject_name(module_dirs)
        (fill,) = self._fills(engine, image, {name: dict(module_dirs)})
        await asyncio.shield(fill.task)
        return name

    def _inject_name(self, module_dirs: Mapping[str, str]) -> str:
        """The volume of psyduck's packages *module_dirs* on this host: one per content."""
        key = "\0".join(f"{name}={path}" for name, path in sorted(module_dirs.items()))
        return volume_name("inject", key, self.name)

    def _fills(
        self, engine: Engine, image: str, payloads: Mapping[str, Mapping[str, str]]
    ) -> list[VolumeFill]:
        """The fills of the volumes *payloads* names; those neither filled nor being
        filled (or whose fill failed) start now, together."""
        unfilled = {
            name: sources
            for name, sources in payloads.items()
            if name not in self._volumes or self._volumes[name].failed()
        }
        if unfilled:
            created = asyncio.get_running_loop().create_future()
            # Its failure is also the task's, which is what a caller is told.
            created.add_done_callback(lambda f: f.cancelled() or f.exception())
            task = asyncio.ensure_future(self._fill_volumes(engine, image, unfilled, created))
            fill = VolumeFill(created, task)
            for name in unfilled:
                self._volumes[name] = fill
            self._in_background(self._trim_volumes(engine))
        return list({id(self._volumes[name]): self._volumes[name] for name in payloads}.values())

    async def _fill_volumes(
        self,
        engine: Engine,
        image: str,
        payloads: Mapping[str, Mapping[str, str]],
        created: asyncio.Future[None],
    ) -> None:
        """Create the volumes *payloads* names (then resolve *created*), then fill
        each with its ``arcname → path`` sources through one helper container and one
        archive, built meanwhile."""
        api = engine.api
        labels = {LABEL_FARM: FARM_ID, LABEL_HOST: self.name}
        mounts = {name: f"{PAYLOAD_DIR}/{index}" for index, name in enumerate(payloads)}
        sources = {
            os.path.normpath(os.path.join(str(index), arcname)): path
            for index, volume_sources in enumerate(payloads.values())
            for arcname, path in volume_sources.items()
        }
        building = asyncio.ensure_future(
            bounded(asyncio.to_thread(payload_tar, sources), PAYLOAD_TIMEOUT)
        )
        try:
            await asyncio.gather(
                *(engine.call(api.create_volume, name, labels=labels) for name in payloads)
            )
            created.set_result(None)
            helper = await engine.call(
                api.create_container,
                image,
                ["true"],
                labels=labels,
                network_disabled=True,
                host_config=api.create_host_config(
                    binds={name: {"bind": path, "mode": "rw"} for name, path in mounts.items()},
                    network_mode="none",
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    log_config={"type": "none", "config": {}},
                ),
                use_config_proxy=False,
            )
            try:
                archive = await building
                try:
                    ok = await engine.call(
                        api.put_archive,
                        helper["Id"],
                        PAYLOAD_DIR,
                        archive,
                        deadline=PAYLOAD_TIMEOUT,
                    )
                finally:
                    archive.close()
                if not ok:
                    names = ", ".join(payloads)
                    raise HostError(f"host {self.name}: the engine refused the payload for {names}")
            finally:
                try:
                    await engine.call(api.remove_container, helper["Id"], force=True)
                except docker.errors.APIError:
                    pass  # the reaper takes it
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                created.cancel()
            elif not created.done():
                created.set_exception(exc)
            building.add_done_callback(_close_unused_archive)
            building.cancel()
            for name in payloads:
                try:
                    await engine.call(api.remove_volume, name, force=True)
                except Exception:
                    pass  # the reaper takes it
            raise
        log.info("host %s: shipped %s", self.name, ", ".join(payloads))

    async def _trim_volumes(self, engine: Engine) -> None:
        """Remove the oldest run-code volumes beyond :data:`CODE_VOLUMES_KEPT` (if unused)."""
        code = [
            name
            for name, fill in self._volumes.items()
            if name.startswith("psyduck-code-") and fill.task.done()
        ]
        old = code[: max(len(code) - CODE_VOLUMES_KEPT, 0)]
        try:
            for name in await self._remove_volumes(engine, old):
                self._volumes.pop(name, None)
        except EngineLost:
            pass

    async def _remove_volumes(
        self, engine: Engine, names: list[str], patience: float = 0.0
    ) -> list[str]:
        """Remove volumes; one still in use is retried for *patience* seconds, then left."""
        removed = []
        deadline = time.monotonic() + patience
        for name in names:
            while True:
                try:
                    await engine.call(engine.api.remove_volume, name)
                    removed.append(name)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    if time.monotonic() >= deadline:
                        break  # in use: by a container still being removed, or another run
                    await asyncio.sleep(0.25)
        return removed
