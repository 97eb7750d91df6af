"""Directory trees as content-addressed manifests.

A tree manifest lists every regular file (path, mode, size, digest) and symlink (path,
target) of a directory; file contents are separate blobs. The encoding is canonical
(sorted entries, sorted keys, no whitespace, ASCII), so the same tree always has the same
manifest digest, and :func:`decode` accepts only canonical bytes, so one tree can never have
two digests. Directories are implied by paths (empty directories are not kept).

:func:`decode` also refuses anything unsafe to materialize: traversal paths (``..``,
absolute, NUL, over-long), duplicate paths, a path below a file or a symlink. Pure functions
here (:func:`encode`, :func:`decode`); :func:`scan` and :func:`materialize` are the local
filesystem edges used by :meth:`pokedex.Client.push_tree` / ``pull_tree``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgpack

from . import digest as dg
from . import names

FORMAT = "pokedex-tree/1"
MAX_MANIFEST = 256 << 20
MAX_TARGET = 4096


class TreeError(ValueError):
    """A manifest is malformed or unsafe, or a tree cannot be scanned."""


@dataclass(frozen=True)
class Entry:
    """One file (``digest`` set) or symlink (``target`` set) of a tree."""

    path: str
    mode: int = 0o644
    size: int = 0
    digest: str | None = None
    target: str | None = None

    def to_json(self) -> dict[str, object]:
        if self.target is not None:
            return {"path": self.path, "type": "symlink", "target": self.target}
        return {
            "path": self.path,
            "type": "file",
            "mode": self.mode,
            "size": self.size,
            "digest": self.digest,
        }


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode(entries: Iterable[Entry]) -> bytes:
    """Canonical manifest bytes for ``entries`` (validated as :func:`decode` would)."""
    ordered = sorted(entries, key=lambda e: e.path)
    data = _canonical({"format": FORMAT, "entries": [e.to_json() for e in ordered]})
    decode(data)
    return data


def _entry(item: object) -> Entry:
    if not isinstance(item, dict):
        raise TreeError("entry is not an object")
    try:
        path = names.check_relpath(item.get("path"))
    except names.NameError_ as e:
        raise TreeError(str(e)) from None
    kind = item.get("type")
    if kind == "symlink":
        target = item.get("target")
        if set(item) != {"path", "type", "target"} or not isinstance(target, str):
            raise TreeError(f"bad symlink entry {path!r}")
        if not target or "\x00" in target or len(target) > MAX_TARGET:
            raise TreeError(f"bad symlink target for {path!r}")
        return Entry(path=path, target=target)
    if kind == "file" and set(item) == {"path", "type", "mode", "size", "digest"}:
        mode, size, digest = item["mode"], item["size"], item["digest"]
        if (
            isinstance(mode, int)
            and not isinstance(mode, bool)
            and 0 <= mode <= 0o7777
            and isinstance(size, int)
            and not isinstance(size, bool)
            and 0 <= size < 1 << 50
            and dg.is_digest(digest)
        ):
            return Entry(path=path, mode=mode, size=size, digest=digest)
    raise TreeError(f"bad file entry {path!r}")


def decode(data: bytes) -> list[Entry]:
    """Parse and validate manifest bytes; raises :class:`TreeError` if malformed or unsafe."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise TreeError("manifest is not JSON") from None
    except RecursionError:
        raise TreeError("manifest is nested too deeply") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or set(doc)
        != {
            "format",
            "entries",
        }
    ):
        raise TreeError(f"not a {FORMAT} manifest")
    raw = doc["entries"]
    if not isinstance(raw, list):
        raise TreeError("entries must be a list")
    entries = [_entry(item) for item in raw]
    paths = [e.path for e in entries]
    if paths != sorted(set(paths)):
        raise TreeError("entries must be sorted by path and unique")
    leaves = set(paths)  # files and symlinks: nothing may live below them
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in leaves:
                raise TreeError(f"{p!r} lies below a file or symlink")
    if _canonical(doc) != data:
        raise TreeError("manifest is not in canonical encoding")
    return entries


# -- filesystem edges ------------------------------------------------------------------------


def list_paths(root: Path) -> list[str]:
    """Relative paths to include: ``git ls-files -co --exclude-standard`` in a git work tree
    (tracked plus untracked-but-not-ignored, i.e. what .gitignore allows), else everything
    except ``.git`` directories."""
    try:
        inside = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
            == "true"
        )
    except (OSError, subprocess.TimeoutExpired):
        inside = False
    if inside:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout
        return sorted({os.fsdecode(p) for p in out.split(b"\x00") if p})
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        rel = os.path.relpath(dirpath, root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.append(name if rel == "." else f"{rel}/{name}")
    return sorted(found)


HashCache = dict[str, list[int | str]]  # absolute path -> [size, mtime_ns, inode, digest]
RACY_NS = 2_000_000_000  # files modified this recently are re-hashed next time too


def scan(
    root: str | os.PathLike[str], workers: int = 4, hash_cache: HashCache | None = None
) -> tuple[list[Entry], dict[str, Path]]:
    """Entries of the tree at ``root`` and, for each file digest, one local path holding it.

    Files are hashed in ``workers`` threads (hashlib releases the GIL). Paths that vanished,
    directories (git submodules) and special files are skipped. With ``hash_cache`` (updated
    in place), a file whose size, mtime and inode are unchanged is not read again — what
    makes re-pushing a multi-gigabyte working tree cheap. As in git's "racy" rule, a file
    modified within RACY_NS of the scan is not cached, since a later change within the same
    timestamp could go unnoticed.
    """
    base = Path(root)
    if not base.is_dir():
        raise TreeError(f"{root} is not a directory")
    cache = hash_cache if hash_cache is not None else {}
    now = time.time_ns()

    def file_digest(full: Path, st: os.stat_result) -> str:
        key = str(full.absolute())
        sig = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = cache.get(key)
        if hit is not None and hit[:3] == sig:
            return str(hit[3])
        d = dg.of_file(str(full))
        if now - st.st_mtime_ns > RACY_NS:
            cache[key] = [*sig, d]
        return d

    def one(rel: str) -> Entry | None:
        full = base / rel
        try:
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                return Entry(path=rel, target=os.readlink(full))
            if stat.S_ISREG(st.st_mode):
                return Entry(
                    path=rel,
                    mode=stat.S_IMODE(st.st_mode),
                    size=st.st_size,
                    digest=file_digest(full, st),
                )
        except FileNotFoundError:
            pass
        return None

    with ThreadPoolExecutor(workers) as pool:
        entries = [e for e in pool.map(one, list_paths(base)) if e is not None]
    sources = {e.digest: base / e.path for e in entries if e.digest is not None}
    return entries, sources


def _clear(path: Path) -> None:
    """Remove whatever is at ``path`` (file, link or directory) so an entry can go there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _make_parents(dest: Path, rel: str) -> None:
    """Create the parent directories of ``rel`` under ``dest``, replacing any symlink or file
    in the way, so a materialized path can never escape ``dest``."""
    current = dest
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            current.unlink()
        if not current.exists():
            current.mkdir()


def materialize(
    entries: Iterable[Entry],
    dest: str | os.PathLike[str],
    blob_path: Callable[[str], Path],
    *,
    link: bool = False,
) -> None:
    """Write ``entries`` under ``dest`` from blobs already in a local cache.

    Files are copied (``link=True``: hard-linked when the cache file already has the wanted
    mode — faster, but then editing the file in place would corrupt the cache). Whatever is
    at an entry's path is replaced; other files under ``dest`` are left alone. Only the
    permission bits (0o777) of a mode are applied: setuid, setgid and sticky bits from a
    manifest are dropped, so pulling a tree as root never creates a setuid file.
    """
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    for e in entries:
        _make_parents(root, e.path)
        target = root / e.path
        _clear(target)
        if e.target is not None:
            os.symlink(e.target, target)
            continue
        assert e.digest is not None
        src = blob_path(e.digest)
        mode = e.mode & 0o777
        if link and stat.S_IMODE(src.stat().st_mode) == mode:
            try:
                os.link(src, target)
                continue
            except OSError:
                pass  # other filesystem or link limit: fall back to copying
        shutil.copyfile(src, target)
        os.chmod(target, mode)


def load_hash_cache(path: str | os.PathLike[str] | None) -> HashCache:
    """The hash cache at ``path``; empty if absent or unreadable (it is only a cache)."""
    if path is None:
        return {}
    try:
        value = msgpack.unpackb(Path(path).read_bytes())
    except (OSError, ValueError, msgpack.UnpackException):
        return {}
    return value if isinstance(value, dict) else {}


def save_hash_cache(path: Path, cache: HashCache) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(msgpack.packb(cache))
    os.replace(tmp, path)
