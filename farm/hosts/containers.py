"""The pure part of docker hosts: what container a shard gets, and who owns a container.

Nothing here talks to an engine, so the isolation defaults, the resource limits
and the reaper's ownership rule can be read (and unit-tested) on their own.
:mod:`farm.hosts.docker` turns these plans into API calls.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.hosts.base import RunContext, RunError
from farm.hosts.bootstrap import BOOTSTRAP, COPY_CODE
from farm.hosts.local import worker_environment
from farm.manifest import TestSpec
from farm.packages import WORKER_PACKAGES, package_dirs

#: Where psyduck's own worker code is mounted inside a container.
INJECT_DIR = "/opt/psyduck"
#: Where the run's code is mounted read-only when tests get a private writable copy.
SOURCE_DIR = "/psyduck/src"
#: Private scratch (TMPDIR, HOME, pytest's cache) of every container.
SCRATCH_DIR = "/tmp"
PIDS_LIMIT = 4096

LABEL_FARM = "psyduck.farm"
LABEL_RUN = "psyduck.run"
LABEL_WORKER = "psyduck.worker"
LABEL_SLOT = "psyduck.slot"
LABEL_HOST = "psyduck.host"

#: A container's own variables: where it may write, how it imports psyduck, and
#: the settings of its bootstrap and worker.  The invoker's variables of these
#: names (``--psyduck-pass-env``) do not pass; the image's ``PATH`` stays.
CONTAINER_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONDONTWRITEBYTECODE",
        "PSYDUCK_CODE_SRC",
        "PSYDUCK_CODE_ROOT",
        "PSYDUCK_CODE_COPY",
        "PSYDUCK_CODE_COPIED_FROM",
        "PSYDUCK_WORKER_FD",
    }
)


def _process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot; None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def farm_identity(pid: int | None = None) -> str:
    """``hostname:pid:start`` of a coordinator process: unique, and checkable for liveness."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


#: The identity put on every container this coordinator starts: its own
#: process's, or for an embedded farm that of the pytest process owning it
#: (``PSYDUCK_FARM_OWNER``), whose end is what makes the containers orphans.
FARM_ID = farm_identity(int(os.environ.get("PSYDUCK_FARM_OWNER") or os.getpid()))


def owner_is_gone(farm_id: str) -> bool:
    """True when *farm_id* names a coordinator on this machine that no longer runs.

    Owners on other machines cannot be checked from here; their containers end
    by themselves (their stdin closes with the attach connection) and are
    removed by the engine.
    """
    host, _, rest = farm_id.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _process_start(int(pid)) != start


#: CFS period (µs) of a container's hard CPU quota.
CPU_PERIOD = 100_000


@dataclass(frozen=True)
class Limits:
    """A container's resources.  ``cpu_quota`` (µs per :data:`CPU_PERIOD`) is a hard CPU
    limit, set only when tests ask for a number of CPUs: CFS quotas stall latency-bound
    tests, so the host's share is otherwise a relative weight (``cpu_shares``) that binds
    only when CPUs are contended.  A quota, not ``NanoCpus``: the engine cannot change
    ``NanoCpus`` on a running container (nor set a quota next to it), and a container
    started ahead of its shard receives that shard's limits once it already runs
    (:func:`update_fields`).
    """

    memory: int
    cpu_shares: int
    cpu_quota: int | None = None
    pids: int = PIDS_LIMIT


def host_share(memory: int, cpus: float, slots: int) -> tuple[int, float]:
    """(memory, CPUs) of one slot of a host with *memory* bytes and *cpus* CPUs in all."""
    slots = max(slots, 1)
    return memory // slots, cpus / slots


def shard_limits(tests: Iterable[TestSpec], memory_share: int, cpu_share: float) -> Limits:
    """Limits for a container running *tests*: their largest hints, else the host's share."""
    tests = list(tests)
    memory = max((t.memory for t in tests if t.memory), default=None) or memory_share
    cpus = max((t.cpus for t in tests if t.cpus), default=None)
    return Limits(
        memory=memory,
        cpu_shares=max(int(1024 * (cpus or cpu_share)), 2),
        cpu_quota=max(int(cpus * CPU_PERIOD), 1000) if cpus else None,
    )


def update_fields(limits: Limits) -> dict[str, int]:
    """``update_container`` arguments that set a running container to *limits*.

    Memory and memory+swap move together (no swap); a quota of -1 lifts a
    hard CPU limit the container's previous shard had.  The pids limit is the
    same for every shard and is not touched.
    """
    return {
        "mem_limit": limits.memory,
        "memswap_limit": limits.memory,
        "cpu_shares": limits.cpu_shares,
        "cpu_period": CPU_PERIOD,
        "cpu_quota": limits.cpu_quota or -1,
    }


def image_variable(image_env: Iterable[str], name: str) -> str:
    """The value of *name* in an image's ``Config.Env`` (``NAME=VALUE`` strings), or ""."""
    for entry in image_env:
        key, _, value = entry.partition("=")
        if key == name:
            return value
    return ""


def worker_pythonpath(image_pythonpath: str) -> str:
    """The image's own ``PYTHONPATH`` extended with psyduck's packages, never replaced.

    The image's entries come first: a package the image provides wins over the
    injected copy, as it would in the image's own interpreter.
    """
    return os.pathsep.join([*filter(None, image_pythonpath.split(os.pathsep)), INJECT_DIR])


#: A fresh container for every shard: the default, and the promise of docker hosts.
SCOPE_SHARD = "shard"
#: One container per slot and run, running that run's shards one after another
#: (an opt-in); runs never share a container.
SCOPE_RUN = "run"
CONTAINER_SCOPES = (SCOPE_SHARD, SCOPE_RUN)


def container_environment(
    run: RunContext, worker_id: str, image_pythonpath: str = "", *, scope: str = SCOPE_SHARD
) -> dict[str, str]:
    """A worker container's variables, on top of its image's environment.

    The invoker's passed variables and the variables every worker gets
    (:func:`~farm.hosts.local.worker_environment`: xdist's, the run id; never a
    credential), less those that are the container's own (:data:`CONTAINER_VARIABLES`),
    then the container's own.  A container that runs one shard makes only that
    shard's tests; one that serves a run's shards collects the suite, as a local
    worker does.
    """
    environment = {
        **{
            name: value
            for name, value in worker_environment(run, worker_id).items()
            if name not in CONTAINER_VARIABLES
        },
        "PYTHONPATH": worker_pythonpath(image_pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": SCRATCH_DIR,
        "HOME": SCRATCH_DIR,
    }
    if scope == SCOPE_SHARD:
        environment["PSYDUCK_SHARD_COLLECTION"] = "1"
    return environment


def inject_sources(requested: Mapping[str, str], *, client_disk: bool) -> dict[str, str]:
    """name → directory on the farm's disk of each package the run's workers need.

    *requested* is the manifest's ``worker.inject``: directories on the client's
    machine.  A farm sharing the client's disk (the embedded farm) uses them, so
    workers run the very psyduck the user's pytest runs; any other farm its own
    installation of each name (:mod:`farm.packages`), never a path a client names.
    Raises RunError naming what is missing: the run cannot start on any host of
    this farm, and no host is to blame.
    """
    if client_disk:
        found = {name: path for name, path in requested.items() if os.path.isdir(path)}
        where = "where the run says"
    else:
        found = package_dirs(requested)
        where = "installed on the farm"
    missing = sorted(set(requested) - set(found))
    if missing:
        raise RunError(f"the run's workers need {', '.join(missing)}, not {where}")
    return found


def checked_sources(run: RunContext, *, client_disk: bool) -> dict[str, str]:
    """What an image check mounts: the packages *run* names (:func:`inject_sources`), or
    for a check without a run's packages (``psyduck hosts check --image``, the check a
    client asks for before it submits) the farm's own installation of
    :data:`~farm.packages.WORKER_PACKAGES`."""
    if run.manifest.worker.inject:
        return inject_sources(run.manifest.worker.inject, client_disk=client_disk)
    return package_dirs(WORKER_PACKAGES)


def injected_binds(module_dirs: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Read-only binds of psyduck's worker packages under :data:`INJECT_DIR`."""
    return {
        path: {"bind": f"{INJECT_DIR}/{name}", "mode": "ro"} for name, path in module_dirs.items()
    }


@dataclass(frozen=True)
class ContainerPlan:
    """Everything ``create_container`` needs for one shard's worker."""

    image: str
    command: list[str]
    environment: dict[str, str]
    working_dir: str
    user: str
    labels: dict[str, str]
    host_config: dict[str, Any]


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def python_mounts(volumes: Mapping[str, str], taken: Iterable[str]) -> dict[str, str]:
    """The ``{directory: volume}`` of *volumes* that neither hold nor sit in a path in *taken*.

    *taken* are the container's other mount points and its working directory:
    a Python volume there would hide the run's code, psyduck's packages or the
    scratch, or be hidden by them.
    """
    taken = [os.path.normpath(t) for t in taken if t]
    return {
        d: v
        for d, v in volumes.items()
        if d != "/" and not any(_within(d, t) or _within(t, d) for t in taken)
    }


def scratch_cache_args(argv: Sequence[str]) -> list[str]:
    """Point pytest's cache into the container's scratch (the code is read-only), unless
    the run turned the cache provider off: then ``cache_dir`` is an unknown ini key, which
    ``--strict-config`` or ``filterwarnings = error`` turn into a failure of every worker."""
    pairs = itertools.pairwise(argv)
    if "-pno:cacheprovider" in argv or ("-p", "no:cacheprovider") in pairs:
        return []
    return ["-o", f"cache_dir={SCRATCH_DIR}/.pytest_cache"]


def plan_container(
    run: RunContext,
    worker_id: str,
    *,
    host: str,
    slot: int,
    image: str,
    python: str,
    code_dir: str,
    code_root: str,
    copy_code: bool,
    user: str,
    limits: Limits,
    module_dirs: Mapping[str, str],
    inject_volume: str | None = None,
    image_pythonpath: str = "",
    scope: str = SCOPE_SHARD,
    python_volumes: Mapping[str, str] | None = None,
) -> ContainerPlan:
    """The container for one worker: locked down, limited, labelled, removed when done.

    The run's code (*code_dir* on the engine's machine) appears at *code_root*,
    the path it has on the client (the worker's cwd is at or below it), so node
    ids and paths in reports are the client's own.  With *copy_code* it is
    mounted read-only at :data:`SOURCE_DIR` and copied at start into a private
    tmpfs at *code_root*, so tests may write next to themselves; otherwise it is
    mounted read-only at *code_root* itself.  Workers import psyduck from
    :data:`INJECT_DIR`, appended to the image's own *image_pythonpath*.

    For an engine on another machine, *code_dir* is instead the name of a volume
    holding the code and *inject_volume* one holding psyduck's packages (see
    :mod:`farm.hosts.docker.volumes`): the same read-only mounts, with volumes as sources.
    *scope* says whether the container runs one shard or a run's shards
    (:func:`container_environment`).  *python_volumes* (``{directory: volume}``,
    :mod:`farm.hosts.docker.pythonvolumes`) are mounted read-only over the
    image's own Python directories, except where they would overlap another mount
    or the working directory.
    """
    if inject_volume:
        binds = {inject_volume: {"bind": INJECT_DIR, "mode": "ro"}}
    else:
        binds = injected_binds(module_dirs)
    tmpfs = {SCRATCH_DIR: "rw,exec,mode=1777"}
    environment = container_environment(run, worker_id, image_pythonpath, scope=scope)
    argv = [*run.worker_argv, *scratch_cache_args(run.worker_argv)]
    command = [python, "-c", BOOTSTRAP, *argv]
    if copy_code:
        command = [python, "-S", "-c", COPY_CODE, BOOTSTRAP, *argv]
        binds[code_dir] = {"bind": SOURCE_DIR, "mode": "ro"}
        tmpfs[code_root] = "rw,exec,mode=1777"
        environment["PSYDUCK_CODE_SRC"] = SOURCE_DIR
        environment["PSYDUCK_CODE_ROOT"] = code_root
    else:
        binds[code_dir] = {"bind": code_root, "mode": "ro"}
    taken = [*(b["bind"] for b in binds.values()), *tmpfs, run.manifest.worker.cwd]
    for directory, volume in python_mounts(python_volumes or {}, taken).items():
        binds[volume] = {"bind": directory, "mode": "ro"}
    return ContainerPlan(
        image=image,
        command=command,
        environment=environment,
        working_dir=run.manifest.worker.cwd,
        user=user,
        labels={
            LABEL_FARM: FARM_ID,
            LABEL_RUN: run.run_id,
            LABEL_WORKER: worker_id,
            LABEL_SLOT: str(slot),
            LABEL_HOST: host,
        },
        host_config={
            "binds": binds,
            "tmpfs": tmpfs,
            "network_mode": "bridge" if run.manifest.network else "none",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "privileged": False,
            "read_only": True,
            "init": True,
            "auto_remove": True,
            # Frames and output travel over the attach stream; a log driver would only
            # copy every frame to disk and slow the stream down.
            "log_config": {"type": "none", "config": {}},
            "mem_limit": limits.memory,
            "memswap_limit": limits.memory,
            "cpu_shares": limits.cpu_shares,
            "cpu_period": CPU_PERIOD if limits.cpu_quota else None,
            "cpu_quota": limits.cpu_quota,
            "pids_limit": limits.pids,
        },
    )
