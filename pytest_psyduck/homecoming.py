"""Files tests write into the project on a container host, brought into the user's tree.

A container's worker runs in a private copy of the project (the farm sets
``PSYDUCK_CODE_COPY`` to the copy and ``PSYDUCK_CODE_COPIED_FROM`` to its
read-only source).  What tests and plugins write there — syrupy's
``--snapshot-update`` files, hypothesis's example database, pytest-benchmark's
``.benchmarks/`` — would be lost with the container, while plain pytest leaves
it in the user's tree.  At its end the worker therefore sends every file under
the copy that is new or differs (size or modification time) from the source,
and the user's process writes them at the same relative paths.

The boundary: files only, never deletions (a file a test removes stays in the
user's tree, where plain pytest would have removed it: keeping is the safe
side); not version-control or tool caches (:data:`SKIP_DIRS`); not bytecode;
not coverage data files, which pytest-cov brings home itself through
``workeroutput``.  Directory stores merge file by file: several workers adding
entries to hypothesis's database all land.  A file several workers write is
last-writer-wins, as when local workers write it.  Local workers write the
user's tree directly and send nothing.
"""

from __future__ import annotations

import filecmp
import fnmatch
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

#: The variables a container's bootstrap sets: the private copy, and what it copied.
COPY_VARIABLE = "PSYDUCK_CODE_COPY"
SOURCE_VARIABLE = "PSYDUCK_CODE_COPIED_FROM"
#: Directories never sent home: version control, environments, tool caches.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".tox",
        ".nox",
        ".venv",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "node_modules",
    }
)
#: File names never sent home: bytecode, and coverage data (pytest-cov's ``workeroutput``).
SKIP_FILES = ("*.pyc", ".coverage", ".coverage.*")
#: Bytes of files (and their names) one worker sends home at most; past it, files are
#: named, not sent.
MAX_HOMECOMING_BYTES = 12 * 1024 * 1024
#: Names (files, or directories with a count) a notice gives of the files left out.
MAX_NAMED = 10


#: When this process began working in its copy: psyduck's worker imports this module
#: as it configures, before any test, after its container copied the project.
WORKER_STARTED_NS = time.time_ns()


def may_come_home(config: pytest.Config) -> bool:
    """Whether some worker of this session's run may write into a copy of the project:
    any host but the embedded farm's local ones (a remote farm's hosts are unknown here)."""
    from farm.hosts import host_kind
    from pytest_psyduck.plugin import remote_farm_url

    if remote_farm_url(config.option):
        return True
    hosts = config.getoption("psyduck_hosts") or config.getini("psyduck_hosts") or "local"
    return any(host_kind(spec.strip()) != "local" for spec in hosts.split(",") if spec.strip())


def copied_tree(environ: Mapping[str, str]) -> tuple[Path, Path] | None:
    """(copy, source) when this worker runs in a private copy of the project, else None."""
    copy, source = environ.get(COPY_VARIABLE), environ.get(SOURCE_VARIABLE)
    if not copy or not source:
        return None
    return Path(copy), Path(source)


def _skipped(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SKIP_FILES)


def written_files(
    copy: Path, source: Path, limit: int = MAX_HOMECOMING_BYTES, since_ns: int | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """Files under *copy* written since *since_ns* and differing from *source*: (sent, left out).

    Only files modified since the worker started count (*since_ns*, default: when
    this module was imported, as the worker configured, after its container copied
    the project with the files' own times).  Comparing with *source* alone is not
    enough: on a local docker host *source* is your live tree, which an earlier
    worker's files may already have changed, and a file this worker never touched
    would then look changed and bring back the old version.

    Keys are POSIX paths relative to *copy*.  Files past *limit* bytes in all
    (their contents and names: thousands of empty files cost their names) are
    left out, by name, so the user hears which did not come home.
    """
    since = WORKER_STARTED_NS if since_ns is None else since_ns
    sent: dict[str, bytes] = {}
    left_out: list[str] = []
    total = 0
    for directory, dirs, files in os.walk(copy):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        here = Path(directory)
        relative_dir = here.relative_to(copy)
        for name in sorted(files):
            if _skipped(name):
                continue
            path = here / name
            relative = relative_dir / name
            try:
                stat = path.lstat()
                if not path.is_file() or path.is_symlink() or stat.st_mtime_ns < since:
                    continue
                try:
                    original = (source / relative).lstat()
                except FileNotFoundError:
                    original = None
                if original is not None and original.st_size == stat.st_size:
                    if original.st_mtime_ns == stat.st_mtime_ns or _same_bytes(
                        path, source / relative
                    ):
                        # Rewritten with what it held (syrupy rewrites a module's whole
                        # snapshot file): sending it could undo another worker's update.
                        continue
                key = relative.as_posix()
                if total + stat.st_size + len(key) > limit:
                    left_out.append(key)
                    continue
                sent[key] = path.read_bytes()
                total += stat.st_size + len(key)
            except OSError:
                continue  # removed while we looked: nothing to bring
    return sent, left_out


def farewell_files(environ: Mapping[str, str], room: int) -> dict[str, Any]:
    """What a farewell carries of the files this worker wrote: ``files``, and the
    ``left_out`` ones named (:func:`name_left_out`) and counted (``left_out_files``).

    At most :data:`MAX_HOMECOMING_BYTES`, and no more than *room*: what the rest
    of the farewell (``workeroutput``, pytest-cov's data above all) leaves, so
    that files never make the whole farewell too big to send.
    """
    copied = copied_tree(environ)
    if copied is None:
        return {}
    sent, left_out = written_files(*copied, limit=max(0, min(MAX_HOMECOMING_BYTES, room)))
    return {"files": sent, "left_out": name_left_out(left_out), "left_out_files": len(left_out)}


def name_left_out(paths: list[str], most: int = MAX_NAMED) -> list[str]:
    """At most *most* names for *paths*: the paths, or their directories, each with its
    count of files (``out/t15/ (64 files)``), as deep as that many names allow."""
    if len(paths) <= most:
        return paths
    dirs = [PurePosixPath(p).parts[:-1] for p in paths]
    for depth in range(max(len(d) for d in dirs), -1, -1):
        groups = Counter("/".join(d[:depth]) + "/" if d[:depth] else "./" for d in dirs)
        if len(groups) <= most:
            return [f"{name} ({count:,} files)" for name, count in groups.items()]
    raise AssertionError("unreachable: depth 0 is one group")


def left_out_notice(farewell: Mapping[str, Any]) -> str | None:
    """The line that tells the user which files of a farewell were not brought home."""
    named = farewell.get("left_out") or []
    if not named:
        return None
    count = farewell.get("left_out_files") or len(named)
    return (
        f"{count:,} files were not brought home (a worker brings home "
        f"{MAX_HOMECOMING_BYTES:,} bytes at most): {', '.join(map(str, named))}"
    )


def _same_bytes(one: Path, other: Path) -> bool:
    return filecmp.cmp(one, other, shallow=False)


def target_in(root: Path, relative: str) -> Path | None:
    """Where *relative* (sent by a worker) goes under *root*; None if it would leave *root*."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts or "\\" in relative:
        return None
    target = root.joinpath(*parts)
    resolved_root = root.resolve()
    if not target.parent.resolve().is_relative_to(resolved_root) or target.is_symlink():
        return None
    return target


def bring_home(root: Path, files: Mapping[str, bytes]) -> list[str]:
    """Write *files* under *root* (creating directories); the paths refused, with why."""
    refused = []
    for relative, data in files.items():
        target = target_in(root, relative) if isinstance(relative, str) else None
        if target is None or not isinstance(data, bytes):
            refused.append(f"{relative!r}: not a file path inside the project")
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(root.resolve()):
                refused.append(f"{relative}: not a file path inside the project")
                continue
            partial = target.with_name(f".{target.name}.psyduck-partial")
            partial.write_bytes(data)
            os.replace(partial, target)
        except OSError as exc:
            refused.append(f"{relative}: {exc.strerror or exc}")
    return refused
