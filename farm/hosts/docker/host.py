"""``DockerHost``: the slots of one Docker engine, one ephemeral container per shard.

Each shard gets a fresh container (``reuse_workers = False``) planned by
:mod:`farm.hosts.containers`; while it runs, the slot's next container (its
spare) already starts, and an idle host starts its slots' first containers while
the client still collects (warm spares).  A host with ``container_scope = "run"`` (an opt-in)
instead keeps one container per slot for the shards of one run, as local
workers are kept; a new run, or a new profile, always gets new containers.
The engine connection, the workers, the spares, the images and the payload
volumes each have their own module in this package.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import docker
import docker.errors

from farm.hosts.base import Host, HostError, OutputHandler, RunContext
from farm.hosts.containers import (
    CONTAINER_SCOPES,
    FARM_ID,
    LABEL_FARM,
    SCOPE_RUN,
    SCOPE_SHARD,
    ContainerPlan,
    Limits,
    host_share,
    inject_sources,
    owner_is_gone,
    plan_container,
    shard_limits,
)
from farm.hosts.docker.engine import (
    API_TIMEOUT,
    Connect,
    Engine,
    EngineLost,
    bounded,
    local_engine,
)
from farm.hosts.docker.images import ImagePull, ImageSupply
from farm.hosts.docker.pythonvolumes import python_volumes, reap_python_volumes
from farm.hosts.docker.spares import Spare, SpareSlots, StartClock
from farm.hosts.docker.volumes import PayloadVolumes, VolumeFill
from farm.hosts.docker.worker import DockerWorker, Shipped, discard, start_container
from farm.hosts.local import default_cache_dir
from farm.images.check import Expectation, Verdict
from farm.images.probefacts import ProbeFacts
from farm.manifest import TestSpec
from farm.scheduling.capacity import Capacity
from farm.snapshots import SnapshotCache

log = logging.getLogger("psyduck.farm.docker")

#: A container of another farm still in state "created" is left alone this long:
#: its coordinator may be about to start it.
CREATED_GRACE = 120.0


def _owner(path: str) -> str:
    """``uid:gid`` owning *path*: the container runs as the code's owner, so it can read it."""
    st = os.stat(path)
    return f"{st.st_uid}:{st.st_gid}"


class DockerHost(ImageSupply, PayloadVolumes, SpareSlots, Host):
    """``docker:N`` — N slots on a Docker engine, one ephemeral container per shard."""

    reuse_workers = False
    #: A slot's next container (its spare) is created and started, and its worker has
    #: imported pytest and the plugins, while the slot's current shard runs; once the
    #: spare is handed its shard, the shard costs the slot's critical path its hand-off
    #: and the collection of the shard's own files only.  That start-up still costs
    #: CPU, and where the slots use every CPU (as many slots as cores, the usual
    #: setting) it delays the running shards as much as if it were not overlapped: so
    #: every shard must be worth several container start-ups.  The minimum is sized so
    #: that on a small machine a container's start is a small part of its shard; the
    #: price is that the last shard of a slot may end that much after the others
    #: (benchmarks/containers.py measures both suites; the README quotes the figures).
    min_shard_seconds = 6.0

    def __init__(
        self,
        slots: int | None,
        connect: Connect | None = None,
        *,
        name: str = "docker",
        labels: dict[str, str] | None = None,
        image: str | None = None,
        python: str = "python3",
        copy_code: bool = True,
        memory: int | None = None,
        cpus: float | None = None,
        cache_dir: str | None = None,
        remote: bool = False,
        embedded: bool = False,
        container_scope: str = SCOPE_SHARD,
        python_volumes: bool = True,
    ) -> None:
        if container_scope not in CONTAINER_SCOPES:
            raise ValueError(
                f"container_scope must be one of {', '.join(CONTAINER_SCOPES)}, "
                f"not {container_scope!r}"
            )
        self.name = name
        #: Whether a container runs one shard (the default) or a run's shards on its slot.
        self.container_scope = container_scope
        if container_scope == SCOPE_RUN:
            # The coordinator keeps the slot's worker while the run's shards last;
            # shards are then no dearer than on a local host.
            self.reuse_workers = True
            self.min_shard_seconds = Host.min_shard_seconds
        #: The engine does not share the coordinator's disk: payloads go in volumes.
        self.remote = remote
        #: The farm runs on the client's machine as its user (the embedded farm):
        #: psyduck's packages come from where the client's pytest has them.
        self.embedded = embedded
        self.slots = slots or 0
        self._connect = connect or local_engine()
        self.labels = {"kind": "docker", **(labels or {})}
        self.image = image
        self.python = python
        self.copy_code = copy_code
        self._memory = memory
        self._cpus = cpus
        cache = cache_dir or default_cache_dir(name)
        self.snapshots = SnapshotCache(cache, name)
        self._probe_facts = ProbeFacts(cache)
        self._engine: Engine | None = None
        self._engine_lock = asyncio.Lock()
        #: Per test image the run asked for: the reference its containers start from,
        #: once the engine has it (looked up, or pulled from pokedex: once at a time).
        self._images: dict[str, asyncio.Future[str]] = {}
        self._verdicts: dict[tuple[str, Expectation, str], asyncio.Future[Verdict]] = {}
        self._pulls: set[ImagePull] = set()
        self._spares: dict[int, Spare] = {}
        #: How long this host's containers take to get ready.
        self._start_clock = StartClock()
        self._background: set[asyncio.Future[None]] = set()
        #: Per image reference: its own ``PYTHONPATH``, which workers extend.
        self._image_paths: dict[str, str] = {}
        #: Payload volumes by name (filled, or being filled), oldest first.
        self._volumes: dict[str, VolumeFill] = {}
        #: Whether workers import the image's Python from volumes (``pythonvolumes``).
        self.python_volumes = python_volumes
        #: Per image reference: ``{directory: volume}`` of its Python installation.
        self._pythons: dict[str, asyncio.Future[dict[str, str]]] = {}

    # -- engine ------------------------------------------------------------------
    def connect_engine(self) -> docker.APIClient:
        """A new, blocking client of this host's engine, for tools (``psyduck image build``)."""
        return self._connect()

    async def _ensure_engine(self) -> Engine:
        async with self._engine_lock:
            if self._engine is not None and self._engine.alive:
                return self._engine
            if self._engine is not None:
                await self._engine.close()
            try:
                api = await bounded(asyncio.to_thread(self._connect), API_TIMEOUT + 5)
            except HostError:
                raise
            except Exception as exc:
                raise EngineLost(
                    f"host {self.name}: cannot reach the Docker engine: {exc}"
                ) from exc
            engine = Engine(api, self.name)
            await engine.start()
            self._engine = engine
            self._images.clear()
            self._image_paths.clear()
            self._pythons.clear()
            return engine

    async def start(self) -> None:
        engine = await self._ensure_engine()
        info = engine.info
        if not self.slots:
            self.slots = int(info.get("NCPU") or 1)
        # The engine's facts are defaults; labels given by spec or farm.toml win.
        self.labels = {
            "arch": str(info.get("Architecture", "")),
            "docker": str(info.get("ServerVersion", "")),
            **self.labels,
        }
        await self.reap()

    async def reap(self) -> list[str]:
        """Remove psyduck containers whose coordinator is gone; returns their ids."""
        engine = await self._ensure_engine()
        containers = await engine.call(
            engine.api.containers, all=True, filters={"label": LABEL_FARM}
        )
        removed = []
        for c in containers:
            farm = (c.get("Labels") or {}).get(LABEL_FARM, "")
            if farm == FARM_ID:
                continue
            state, gone = c.get("State", ""), owner_is_gone(farm)
            if state == "running" and not gone:
                continue
            if (
                state == "created"
                and not gone
                and time.time() - c.get("Created", 0) < CREATED_GRACE
            ):
                continue
            try:
                await engine.call(engine.api.remove_container, c["Id"], force=True)
                removed.append(c["Id"])
            except docker.errors.APIError:
                pass  # already being removed
        if removed:
            log.info("host %s: removed %d orphaned psyduck containers", self.name, len(removed))
        volumes = await engine.call(engine.api.volumes, filters={"label": LABEL_FARM})
        orphans = [
            v["Name"]
            for v in (volumes or {}).get("Volumes") or []
            if (farm := (v.get("Labels") or {}).get(LABEL_FARM, "")) != FARM_ID
            and owner_is_gone(farm)
        ]
        if orphans:
            gone = await self._remove_volumes(engine, orphans)
            log.info("host %s: removed %d orphaned psyduck volumes", self.name, len(gone))
        stale = await reap_python_volumes(engine)
        if stale:
            log.info("host %s: removed %d stale Python volumes", self.name, len(stale))
        return removed

    async def close(self) -> None:
        for pull in list(self._pulls):
            pull.abort()
        await asyncio.gather(
            *self._images.values(), *self._pythons.values(), return_exceptions=True
        )
        for verdict in self._verdicts.values():
            verdict.cancel()  # a probe still running removes its container as it ends
        await asyncio.gather(*self._verdicts.values(), return_exceptions=True)
        spares, self._spares = self._spares, {}
        for spare in spares.values():
            self._drop_spare(spare)
        await asyncio.gather(*self._background)
        volumes, self._volumes = self._volumes, {}
        if volumes and self._engine is not None and self._engine.alive:
            fills = {id(fill): fill.task for fill in volumes.values()}
            await asyncio.gather(*fills.values(), return_exceptions=True)
            try:
                await self._remove_volumes(self._engine, list(volumes), patience=10.0)
            except EngineLost:
                pass  # the next farm's reaper removes them
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    def describe(self) -> dict[str, Any]:
        info = self._engine.info if self._engine else {}
        return {
            **super().describe(),
            "kind": "docker",
            "docker_version": info.get("ServerVersion"),
            "cpus": info.get("NCPU"),
            "memory": info.get("MemTotal"),
            "connected": bool(self._engine and self._engine.alive),
        }

    async def check(self, image: str | None) -> dict[str, Any]:
        result = {**self.describe(), "reachable": True}
        if image:
            try:
                await self._check_image(await self._ensure_engine(), image)
                result["image_present"] = True
            except HostError as exc:
                result["image_present"] = False
                result["problem"] = str(exc)
        return result

    async def _code_dir(self, run: RunContext) -> tuple[str, str]:
        """(where the run's code is on the engine's machine, where it goes in the container).

        The container always sees the code at the client's project root, so node
        ids and absolute arguments are the client's; the source is the run's
        snapshot when it has one, else the client's own directory.
        """
        root = run.manifest.worker.project_root
        return await self.snapshots.tree(run) or root, root

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _create_worker(
        self, run: RunContext, slot: int, worker_id: str, on_output: OutputHandler
    ) -> DockerWorker:
        engine = await self._ensure_engine()
        plan, limits, limits_for, shipped = await self._plan_worker(engine, run, slot, worker_id)
        # Not interruptible: a create cancelled halfway would leave a container nobody
        # knows about, so a cancelled caller hands the finished worker to discard.
        starting = asyncio.ensure_future(
            start_container(
                engine, plan, limits, limits_for, on_output, self._in_background, shipped
            )
        )
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            self._in_background(discard(starting))
            raise
        except docker.errors.APIError as exc:
            raise HostError(f"host {self.name}: cannot start a container: {exc}") from exc

    async def _plan_worker(
        self, engine: Engine, run: RunContext, slot: int, worker_id: str
    ) -> tuple[ContainerPlan, Limits, Callable[[Sequence[TestSpec]], Limits], Shipped]:
        """The container a worker of *run* gets on *slot*, its limits (the host's share
        until its shard is known), and the wait for the payloads it mounts (None when
        it mounts none: the container may start once that wait is over)."""
        image = run.manifest.image or self.image
        if not image:
            raise HostError(
                f"host {self.name}: no test image (pass --psyduck-image or set psyduck_image)"
            )
        image = await self._run_image(engine, image, run)
        pythons = await self._python_dirs(engine, image)
        module_dirs = inject_sources(run.manifest.worker.inject, client_disk=self.embedded)
        image_pythonpath = await self._image_pythonpath(engine, image)
        code_dir, code_root = await self._code_dir(run)
        user = _owner(code_dir)
        inject_volume = shipped = None
        if self.remote:
            inject_volume, code_dir, shipped = await self._payloads(
                engine, run, image, code_dir, module_dirs
            )
        limits_for = self._limits_for(engine)
        limits = limits_for(())
        plan = plan_container(
            run,
            worker_id,
            host=self.name,
            slot=slot,
            image=image,
            python=self.python,
            code_dir=code_dir,
            code_root=code_root,
            copy_code=self.copy_code,
            user=user,
            limits=limits,
            module_dirs=module_dirs,
            inject_volume=inject_volume,
            image_pythonpath=image_pythonpath,
            scope=self.container_scope,
            python_volumes=pythons,
        )
        return plan, limits, limits_for, shipped

    async def _python_dirs(self, engine: Engine, image: str) -> dict[str, str]:
        """``{directory: volume}`` of *image*'s Python installation, once per image.

        An engine that cannot make them (an image whose Python cannot list its
        directories, a refused volume) costs nothing but speed: its workers read
        the image's own files, and the host does not ask again for that image.
        """
        if not self.python_volumes:
            return {}
        ready = self._pythons.get(image)
        if ready is None:
            ready = asyncio.ensure_future(self._make_python_dirs(engine, image))
            self._pythons[image] = ready
        return await asyncio.shield(ready)

    async def _make_python_dirs(self, engine: Engine, image: str) -> dict[str, str]:
        try:
            return await python_volumes(engine, image, self.python)
        except (docker.errors.APIError, ValueError, TimeoutError) as exc:
            log.warning(
                "host %s: workers read %s's Python from the image itself: %s", self.name, image, exc
            )
            return {}

    def capacity(self) -> Capacity | None:
        """The configured memory and CPUs, else the engine's (known once it is reached)."""
        info = self._engine.info if self._engine is not None else {}
        cpus = self._cpus or info.get("NCPU")
        memory = self._memory or info.get("MemTotal")
        return Capacity(float(cpus), int(memory)) if cpus and memory else None

    def _limits_for(self, engine: Engine) -> Callable[[Sequence[TestSpec]], Limits]:
        """Limits of a container running given tests: their hints, else the host's share."""
        info = engine.info
        memory_share, cpu_share = host_share(
            self._memory or int(info.get("MemTotal", 1 << 32)),
            self._cpus or int(info.get("NCPU", 1)),
            self.slots,
        )

        def limits_for(tests: Sequence[TestSpec]) -> Limits:
            return shard_limits(tests, memory_share=memory_share, cpu_share=cpu_share)

        return limits_for
