"""Python volumes: a test image's Python installation served from the engine's own disk.

Some storage drivers serve every file of an image through a userspace daemon
(``fuse-overlayfs``, where the kernel's overlayfs is not available): each
``stat`` and ``open`` of an import then waits for that daemon, and a worker
imports thousands of files of the standard library and ``site-packages``
before its first test — slow, and slower still when the daemon competes for
the CPUs the shards use.  So, once per image id and interpreter, the engine
copies the directories of the image's ``sys.path`` that belong to its Python
installation into named volumes (Docker's own copy of an image's content into
an empty volume as a container is created: owners, modes and timestamps kept,
so the bytes and the bytecode checks are the image's), and every worker
container mounts them read-only at the same paths.  Each shard still gets its
own fresh container; its root filesystem is read-only already, so a test that
writes into ``site-packages`` fails exactly as it did before.

The volumes belong to the engine, not to a farm: every farm reaching it shares
them.  A marker volume, created only once its data volumes are complete, names
them (and the directories) in its labels; a farm that loses the race to create
it removes its own copies.  The reaper removes the volumes of images the
engine no longer has, and copies no marker names whose farm is gone.  A host
option (``python_volumes = false``) turns all of it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Iterable

import docker.errors

from farm.hosts.containers import FARM_ID, LABEL_FARM, owner_is_gone
from farm.hosts.docker.engine import Engine, explanation
from farm.images.probe import remove_one_off, run_one_off, sealed_host_config

log = logging.getLogger("psyduck.farm.docker")

#: Label of every Python volume: the key (image id and interpreter) it serves.
LABEL_PYTHON = "psyduck.python"
#: Label of a marker volume: JSON ``{directory: data volume}``.
LABEL_PYTHON_DIRS = "psyduck.python.dirs"
#: Label of a data volume: the image id it copies (for the reaper).
LABEL_PYTHON_IMAGE = "psyduck.python.image"
#: Label of a data volume: the farm that made it (its copies nobody names are its own).
LABEL_PYTHON_MAKER = "psyduck.python.maker"
#: Seconds the engine may take to copy an image's Python directories into volumes.
FILL_TIMEOUT = 300.0
#: Seconds the listing of an image's Python directories may take (it starts Python).
LIST_TIMEOUT = 120.0

#: Prints (JSON) the directories of ``sys.path`` inside the interpreter's prefixes,
#: outermost only, without symlinks in their paths.
LIST_SCRIPT = """\
import json, os, sys
prefixes = {os.path.realpath(p) for p in
            (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)} - {"/"}
found = []
for entry in sys.path:
    if not entry or not os.path.isabs(entry) or not os.path.isdir(entry):
        continue
    path = os.path.normpath(entry)
    if os.path.realpath(path) != path:
        continue
    if any(path != p and os.path.commonpath([path, p]) == p for p in prefixes):
        found.append(path)
print("PSYDUCK-PYTHON-DIRS " + json.dumps(sorted(set(found))))
"""


def outermost(paths: Iterable[str]) -> list[str]:
    """*paths* without those inside another one of them (each mount covers its subtree)."""
    kept: list[str] = []
    for path in sorted({posixpath.normpath(p) for p in paths}):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


#: Changes when the volumes' making changes: volumes made otherwise are not used.
FORMAT = "2"


def python_key(image_id: str, python: str) -> str:
    """The key of an image's Python volumes: its id, the interpreter workers start, and
    :data:`FORMAT`."""
    return hashlib.sha256(f"{FORMAT}\0{image_id}\0{python}".encode()).hexdigest()[:24]


def parse_listing(output: str) -> list[str]:
    """The directories :data:`LIST_SCRIPT` printed; ValueError if it printed none."""
    for line in reversed(output.splitlines()):
        if line.startswith("PSYDUCK-PYTHON-DIRS "):
            dirs = json.loads(line.partition(" ")[2])
            if isinstance(dirs, list) and all(isinstance(d, str) for d in dirs):
                return outermost(d for d in dirs if posixpath.isabs(d))
    raise ValueError(f"no listing of its Python directories in its output: {output[-500:]!r}")


async def python_volumes(engine: Engine, image: str, python: str) -> dict[str, str]:
    """``{directory: volume}`` holding *image*'s Python installation, made if missing."""
    api = engine.api
    image_id = (await engine.call(api.inspect_image, image))["Id"]
    key = python_key(image_id, python)
    marker = f"psyduck-python-{key}"
    try:
        found = await engine.call(api.inspect_volume, marker)
    except docker.errors.NotFound:
        found = None
    if found is not None:
        dirs = _marked(found)
        if await _all_present(engine, dirs.values()):
            return dirs
        await _remove(engine, [marker])  # its data volumes were removed: make them again
    listed = await _list_dirs(engine, image, python)
    ours = await _fill(engine, image, python, image_id, key, listed)
    labels = {LABEL_PYTHON: key, LABEL_PYTHON_IMAGE: image_id, LABEL_PYTHON_DIRS: json.dumps(ours)}
    made = await engine.call(api.create_volume, marker, labels=labels)
    winner = _marked(made)
    if winner != ours:
        await _remove(engine, list(ours.values()))  # another farm marked its copies first
    log.info("engine %s: Python of %s in volumes for %s", engine.name, image, sorted(winner))
    return winner


def _marked(volume: dict) -> dict[str, str]:
    labels = volume.get("Labels") or {}
    dirs = json.loads(labels.get(LABEL_PYTHON_DIRS) or "{}")
    return {str(d): str(v) for d, v in dirs.items()}


async def _all_present(engine: Engine, names: Iterable[str]) -> bool:
    for name in names:
        try:
            await engine.call(engine.api.inspect_volume, name)
        except docker.errors.NotFound:
            return False
    return True


async def _list_dirs(engine: Engine, image: str, python: str) -> list[str]:
    """The Python directories of *image* (:data:`LIST_SCRIPT` in a throw-away container)."""
    _, output = await run_one_off(
        engine,
        image,
        [python, "-c", LIST_SCRIPT],
        timeout=LIST_TIMEOUT,
        overdue=f"its Python did not list its directories in {LIST_TIMEOUT:.0f} s",
        labels={LABEL_FARM: FARM_ID},
        host_config=sealed_host_config(engine.api),
    )
    return parse_listing(output.decode("utf-8", "replace"))


async def _fill(
    engine: Engine, image: str, python: str, image_id: str, key: str, dirs: list[str]
) -> dict[str, str]:
    """New data volumes holding *dirs* of *image*: the engine copies them as a container
    that mounts the empty volumes there is created (it is never started)."""
    api = engine.api
    maker = hashlib.sha256(f"{FARM_ID}\0{os.urandom(8).hex()}".encode()).hexdigest()[:12]
    labels = {LABEL_PYTHON: key, LABEL_PYTHON_IMAGE: image_id, LABEL_PYTHON_MAKER: FARM_ID}
    volumes = {d: f"psyduck-python-{key}-{maker}-{i}" for i, d in enumerate(dirs)}
    try:
        for name in volumes.values():
            await engine.call(api.create_volume, name, labels=labels)
        created = await engine.call(
            api.create_container,
            image,
            ["true"],
            labels={LABEL_FARM: FARM_ID},
            network_disabled=True,
            host_config=api.create_host_config(
                binds={v: {"bind": d, "mode": "rw"} for d, v in volumes.items()},
                network_mode="none",
            ),
            use_config_proxy=False,
            deadline=FILL_TIMEOUT,
        )
        await remove_one_off(engine, created["Id"])
        await _copy_directory_times(engine, image, python, volumes)
    except BaseException:
        await _remove(engine, list(volumes.values()))
        raise
    return volumes


#: Gives each copied directory (mounted at ``FILL_DIR/N``) its original's timestamps:
#: the engine's copy keeps those of files, not of directories.
DIRECTORY_TIMES = """\
import json, os, sys
for src, dst in json.loads(sys.argv[1]):
    for here, _, _ in os.walk(src, topdown=False):
        st = os.lstat(here)
        target = os.path.normpath(os.path.join(dst, os.path.relpath(here, src)))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
"""
#: Where :data:`DIRECTORY_TIMES` sees the volumes.
FILL_DIR = "/psyduck-python-fill"


async def _copy_directory_times(
    engine: Engine, image: str, python: str, volumes: dict[str, str]
) -> None:
    places = {d: f"{FILL_DIR}/{i}" for i, d in enumerate(volumes)}
    status, output = await run_one_off(
        engine,
        image,
        [python, "-c", DIRECTORY_TIMES, json.dumps(list(places.items()))],
        timeout=FILL_TIMEOUT,
        overdue=f"copying directory times took longer than {FILL_TIMEOUT:.0f} s",
        user="0:0",
        labels={LABEL_FARM: FARM_ID},
        host_config=engine.api.create_host_config(
            binds={v: {"bind": places[d], "mode": "rw"} for d, v in volumes.items()},
            network_mode="none",
            security_opt=["no-new-privileges"],
            log_config={"type": "json-file", "config": {}},
        ),
    )
    if status != 0:
        raise ValueError(f"copying directory times failed: {output[-2000:]!r}")


async def _remove(engine: Engine, names: list[str]) -> None:
    for name in names:
        try:
            await engine.call(engine.api.remove_volume, name)
        except docker.errors.APIError:
            pass  # in use, or gone: the reaper looks again


async def reap_python_volumes(engine: Engine) -> list[str]:
    """Remove Python volumes of images the engine no longer has, and unmarked copies
    whose farm is gone; volumes in use stay.  Returns the names removed."""
    api = engine.api
    listing = await engine.call(api.volumes, filters={"label": LABEL_PYTHON})
    volumes = (listing or {}).get("Volumes") or []
    images = {image["Id"] for image in await engine.call(api.images, all=True)}
    named = {v for vol in volumes for v in _marked(vol).values()}
    stale = []
    for vol in volumes:
        labels = vol.get("Labels") or {}
        image_gone = labels.get(LABEL_PYTHON_IMAGE) not in images
        maker = labels.get(LABEL_PYTHON_MAKER)
        orphan = maker is not None and vol["Name"] not in named and owner_is_gone(maker)
        if image_gone or orphan:
            stale.append(vol["Name"])
    removed = []
    for name in stale:
        try:
            await engine.call(api.remove_volume, name)
            removed.append(name)
        except docker.errors.APIError as exc:
            log.debug("engine %s: Python volume %s stays: %s", engine.name, name, explanation(exc))
    return removed
