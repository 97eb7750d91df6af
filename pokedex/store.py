"""The on-disk blob and ref store of one node (also used as a client's local content cache).

Layout under the data directory::

    blobs/sha256/<first 2 hex>/<64 hex>     immutable blob files, named by their digest
    blobs/sha256/<xx>/.tmp-*                 blobs being written (removed at start-up)
    refs/<name with '/' as '%'>              one file per ref: its consensus slot, JSON
    ref-floor                                the promise floor of pruned ref slots, JSON
    uploads/<uuid>                           registry upload sessions (see registry.py)

Durability rule: a blob file appears under its final name only after its bytes were hashed
while streaming, matched the expected digest, were fsync'ed, renamed into place and the
directory fsync'ed. So after ``kill -9`` or a power cut, every name that exists is a complete,
correct blob, and a reader can never see a partial one.

Use tracking (a node's store; see :mod:`pokedex.retention`): a blob file's mtime is its use
stamp. Answering "present" (:meth:`BlobStore.has`, :meth:`BlobStore.size`) refreshes a stale
stamp, and :meth:`BlobStore.evict` removes a blob only if its stamp is still old; one lock
makes those two, and the rename that commits a blob, atomic with respect to each other, so
an eviction never removes a blob that was just used or just (re)written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterator
from pathlib import Path

from . import digest as dg
from . import names, refs
from .durable import (
    DigestMismatch,
    SizeError,
    StoreError,
    fsync_dir,
    fsync_path,
    receive,
    write_all,
    write_atomically,
)


class BlobStore:
    """Content-addressed files under ``root``; safe against crashes at any instant.

    ``touch_every`` (seconds) turns on use tracking, for a node's store; a client's cache
    leaves it off (its files may be hard-linked into trees, whose mtimes must not change).
    ``used_bytes`` counts blob bytes (from start-up with tracking, else only those added);
    ``on_grow``, if set, is called from any thread after a commit added bytes.
    """

    def __init__(self, root: str | os.PathLike[str], *, touch_every: float | None = None) -> None:
        self.root = Path(root)
        self.blob_root = self.root / "blobs" / dg.ALGORITHM
        self.ref_root = self.root / "refs"
        self.upload_root = self.root / "uploads"
        for d in (self.blob_root, self.ref_root, self.upload_root):
            d.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.blob_root / f"{i:02x}").mkdir(exist_ok=True)
        fsync_dir(self.blob_root)
        self._ref_lock = asyncio.Lock()
        self.floor_path = self.root / "ref-floor"
        self.ref_floor = self._read_floor()
        self.remove_partials()
        self.touch_every = touch_every
        self._use_lock = threading.Lock()
        self.on_grow: Callable[[], None] | None = None
        self.used_bytes = 0
        if touch_every is not None:
            self.used_bytes = sum(size for _, size, _ in self.inventory())

    # -- blobs -------------------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists). Validates the digest first."""
        hexd = dg.hex_part(digest)
        return self.blob_root / hexd[:2] / hexd

    def _use(self, digest: str) -> os.stat_result | None:
        """The blob file's stat, or None if absent; with use tracking, a stamp older than
        ``touch_every`` is set to now first (the caller is about to rely on the blob)."""
        path = self.path(digest)
        try:
            if self.touch_every is None:
                return path.stat()
            with self._use_lock:
                st = path.stat()
                if time.time() - st.st_mtime >= self.touch_every:
                    os.utime(path)
            return st
        except FileNotFoundError:
            return None

    def has(self, digest: str) -> bool:
        """Whether the blob is here; records a use (see the module docstring)."""
        return self._use(digest) is not None

    def size(self, digest: str) -> int | None:
        """The blob's size, or None if it is not here; records a use."""
        st = self._use(digest)
        return None if st is None else st.st_size

    def evict(self, digest: str, unused_since: float) -> int | None:
        """Remove a blob unless it was used at or after ``unused_since`` (epoch seconds).

        Returns the bytes freed, or None if the blob was kept or is already gone. Readers
        that have the file open keep reading it; a later upload simply writes it again.
        The directory is not fsync'ed: a crash that undoes the removal brings back a
        complete, correct blob.
        """
        path = self.path(digest)
        with self._use_lock:
            try:
                st = path.stat()
            except FileNotFoundError:
                return None
            if st.st_mtime >= unused_since:
                return None
            path.unlink()
            self.used_bytes -= st.st_size
        return st.st_size

    def digests(self) -> Iterator[str]:
        """Every stored digest (no particular order)."""
        for shard in sorted(self.blob_root.iterdir()):
            for entry in os.scandir(shard):
                if not entry.name.startswith("."):
                    yield f"{dg.ALGORITHM}:{entry.name}"

    def inventory(self) -> list[tuple[str, int, float]]:
        """(digest, size, use stamp) of every stored blob, without recording a use."""
        out = []
        for shard in self.blob_root.iterdir():
            for entry in os.scandir(shard):
                if not entry.name.startswith("."):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # evicted meanwhile
                        continue
                    out.append((f"{dg.ALGORITHM}:{entry.name}", st.st_size, st.st_mtime))
        return out

    def stats(self) -> tuple[int, int]:
        """(number of blobs, total bytes)."""
        blobs = self.inventory()
        return len(blobs), sum(size for _, size, _ in blobs)

    def remove_partials(self, session_max_age: float = 86400.0) -> int:
        """Delete temp files left by a crash (they were never visible as blobs) and registry
        upload sessions untouched for ``session_max_age`` seconds (abandoned pushes)."""
        removed = 0
        for shard in self.blob_root.iterdir():
            for entry in os.scandir(shard):
                if entry.name.startswith(".tmp-"):
                    os.unlink(entry.path)
                    removed += 1
        for entry in os.scandir(self.ref_root):
            if entry.name.startswith(".tmp-"):
                os.unlink(entry.path)
        cutoff = time.time() - session_max_age
        for entry in os.scandir(self.upload_root):
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        return removed

    def _temp(self, final: Path) -> tuple[int, Path]:
        tmp = final.parent / f".tmp-{final.name[:16]}-{secrets.token_hex(6)}"
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), tmp

    def _commit(self, tmp: Path, final: Path) -> None:
        grew = tmp.stat().st_size
        with self._use_lock:  # exact count, and never racing evict() on the same name
            with contextlib.suppress(FileNotFoundError):
                grew -= final.stat().st_size
            os.utime(tmp)  # a registry session file may be old: the commit is the first use
            os.replace(tmp, final)
            self.used_bytes += grew
        fsync_dir(final.parent)
        if grew > 0 and self.on_grow is not None:
            self.on_grow()

    async def write_stream(
        self,
        chunks: AsyncIterable[bytes],
        expected: str,
        *,
        size: int | None = None,
        max_size: int | None = None,
    ) -> int:
        """Store a blob from an async byte stream, verifying it against ``expected``.

        Returns the blob size. Raises :class:`DigestMismatch` / :class:`SizeError` and stores
        nothing on any failure (including the stream breaking off).
        """
        final = self.path(expected)
        fd, tmp = self._temp(final)
        try:
            received = await receive(chunks, fd, expected, size=size, max_size=max_size)
            os.close(fd)
            fd = -1
            await asyncio.to_thread(self._commit, tmp, final)
            return received
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        """Store small in-memory content synchronously; returns its digest."""
        actual = dg.of_bytes(data)
        if expected is not None and dg.parse(expected) != actual:
            raise DigestMismatch(f"content digest is {actual}, not {expected}")
        final = self.path(actual)
        if not self.has(actual):
            fd, tmp = self._temp(final)
            try:
                try:
                    write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._commit(tmp, final)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return actual

    def install(self, src: Path, digest: str) -> None:
        """Move in a file whose content the caller hashed while writing it (no re-read).

        Blocking (fsync): call from a worker thread.
        """
        fsync_path(src)
        self._commit(src, self.path(digest))

    def adopt(self, src: Path, expected: str) -> int:
        """Move an already-written file (same filesystem) in as blob ``expected``.

        Blocking: hashes the file, so call it from a worker thread. The file is consumed on
        success; on a mismatch it is left for the caller to keep or delete.
        """
        final = self.path(expected)
        actual = dg.of_file(str(src))
        if actual != expected:
            raise DigestMismatch(f"content digest is {actual}, not {expected}")
        self.install(src, expected)
        return final.stat().st_size

    def read_bytes(self, digest: str, limit: int) -> bytes | None:
        """Whole small blob, or None if absent. Refuses blobs larger than ``limit``."""
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise SizeError(f"blob larger than {limit} bytes")
        return data

    # -- refs --------------------------------------------------------------------------------

    def _ref_path(self, name: str) -> Path:
        return self.ref_root / names.check_ref(name).replace("/", "%")

    def _read_floor(self) -> refs.Ballot:
        try:
            return refs.ballot_from_wire(json.loads(self.floor_path.read_text()))
        except FileNotFoundError:
            return refs.ZERO
        except ValueError as e:
            raise StoreError(f"ref floor file {str(self.floor_path)!r} is damaged: {e}") from None

    def _read_slot(self, path: Path) -> refs.Slot:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return refs.Slot(promised=self.ref_floor)  # never written, or pruned
        if dg.is_digest(text.strip()):  # a ref file from before refs were versioned
            return refs.Slot(value=text.strip())
        try:
            return refs.slot_from_wire(json.loads(text))
        except ValueError as e:
            raise StoreError(f"ref file {path.name!r} is damaged: {e}") from None

    def ref_slot(self, name: str) -> refs.Slot:
        """This node's acceptor state for ref ``name`` (an empty slot if it has none)."""
        return self._read_slot(self._ref_path(name))

    def ref_slots(self, prefix: str = "") -> dict[str, refs.Slot]:
        """Acceptor state of every ref whose name starts with ``prefix``, tombstones included.

        A damaged slot is left out: this node abstains on that ref, the others decide it.
        """
        out = {}
        for entry in os.scandir(self.ref_root):
            name = entry.name.replace("%", "/")
            if not entry.name.startswith(".") and name.startswith(prefix):
                with contextlib.suppress(StoreError):
                    out[name] = self._read_slot(Path(entry.path))
        return dict(sorted(out.items()))

    async def ref_step(
        self, name: str, step: Callable[[refs.Slot], tuple[refs.Slot, bool]]
    ) -> tuple[refs.Slot, bool]:
        """Run an acceptor transition (:func:`.refs.prepare` / :func:`.refs.accept`) on ref
        ``name`` and make its new state durable before returning it.

        The lock makes read-transition-write atomic within this node; the write goes to a
        temporary file, fsync'ed, renamed over the old one, and the directory fsync'ed, so
        after ``kill -9`` the slot is either the old or the new one, never a mix.
        """
        path = self._ref_path(name)
        async with self._ref_lock:
            before = self._read_slot(path)
            after, ok = step(before)
            if after != before:
                data = json.dumps(refs.slot_to_wire(after)).encode()
                await asyncio.to_thread(write_atomically, path, data)
            return after, ok

    async def prune_refs(self, listed: dict[str, refs.Slot], older_than: float) -> int:
        """Forget the tombstones in ``listed`` (name → the slot a prune pass saw here) whose
        slot is still that one and was last written before ``older_than`` (epoch seconds).

        Under the ref lock, so no write slips in between the check and the removal. The
        promise floor is raised and made durable before any file goes (see :mod:`.refs`);
        a crash that undoes a removal only brings a tombstone back. Returns how many went.
        """
        async with self._ref_lock:
            return await asyncio.to_thread(self._prune, listed, older_than)

    def _prune(self, listed: dict[str, refs.Slot], older_than: float) -> int:
        doomed: list[Path] = []
        floor = self.ref_floor
        for name, seen in listed.items():
            path = self._ref_path(name)
            try:
                if path.stat().st_mtime >= older_than or self._read_slot(path) != seen:
                    continue
            except (FileNotFoundError, StoreError):
                continue
            if seen.value is None:
                doomed.append(path)
                floor = refs.floor(floor, seen)
        if floor != self.ref_floor:
            write_atomically(self.floor_path, json.dumps(refs.ballot_to_wire(floor)).encode())
            self.ref_floor = floor
        for path in doomed:
            path.unlink()
        if doomed:
            fsync_dir(self.ref_root)
        return len(doomed)
