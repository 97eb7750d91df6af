"""Durable, verified file writes: the disk half of every blob that arrives.

A blob is hashed while it streams to disk and fsync'ed before anyone may see it under its
name (:mod:`pokedex.store` does the renaming). Kept apart from the store because the
registry's chunked uploads, the client's downloads and the swarm's ranged pieces write
through the same few functions without being a store themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
from collections.abc import AsyncIterable, Callable
from pathlib import Path

from . import digest as dg

CHUNK = 4 << 20  # bytes handed to a writer thread at once
FLUSH_EVERY = 64 << 20  # start writeback this often while receiving


class StoreError(ValueError):
    """Content refused by the store; the message is meant for the client."""


class DigestMismatch(StoreError):
    pass


class SizeError(StoreError):
    pass


def fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_atomically(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data`` all at once: a temp file beside it is written, fsync'ed and
    renamed over it, then the directory is fsync'ed. On any failure (a full disk, say) the
    temp file is removed and ``path`` is left as it was."""
    tmp = path.parent / f".tmp-{path.name[:16]}-{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def writeback_starter() -> Callable[[int, int, int], None]:
    """``start(fd, offset, length)``: begin writing a file range to disk without waiting.

    Linux's sync_file_range(SYNC_FILE_RANGE_WRITE), through ctypes since Python lacks it;
    a no-op elsewhere. Why: without it a large upload sits dirty in the page cache until the
    final fsync, so the disk idles while the network delivers and then the client waits for
    the whole flush. Starting writeback as data arrives overlaps the two.
    """
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)

    def start(fd: int, offset: int, length: int) -> None:
        fn(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; failure only loses the overlap

    return start


start_writeback = writeback_starter()


async def pump(
    chunks: AsyncIterable[bytes], fd: int, hasher: dg.Hasher, *, limit: int | None = None
) -> int:
    """Append a stream to ``fd`` while feeding ``hasher``; returns the byte count.

    Hashing and writing run in a worker thread, one buffer behind the network, so the event
    loop keeps receiving while the disk and the CPU work; writeback of what was written starts
    every FLUSH_EVERY bytes. Raises :class:`SizeError` past ``limit``.
    """
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    buf: list[bytes] = []
    buffered = received = 0
    unflushed_from = os.lseek(fd, 0, os.SEEK_END)

    def work(data: bytes) -> None:
        nonlocal unflushed_from
        hasher.update(data)
        write_all(fd, data)
        end = os.lseek(fd, 0, os.SEEK_CUR)
        if end - unflushed_from >= FLUSH_EVERY:
            start_writeback(fd, unflushed_from, end - unflushed_from)
            unflushed_from = end

    try:
        async for chunk in chunks:
            received += len(chunk)
            if limit is not None and received > limit:
                raise SizeError(f"body longer than declared/allowed ({received} bytes so far)")
            buf.append(chunk)
            buffered += len(chunk)
            if buffered >= CHUNK:
                data = b"".join(buf)
                buf, buffered = [], 0
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, work, data)
        if pending is not None:
            await pending
            pending = None
        if buf:
            await loop.run_in_executor(None, work, b"".join(buf))
    finally:
        if pending is not None:  # never close the fd under a running writer
            with contextlib.suppress(BaseException):
                await pending
    return received


async def receive(
    chunks: AsyncIterable[bytes],
    fd: int,
    expected: str,
    *,
    size: int | None = None,
    max_size: int | None = None,
) -> int:
    """Write a stream to ``fd`` while hashing it; check length and digest; fsync.

    ``size`` is the length the sender declared (checked exactly), ``max_size`` a cap.
    Returns the byte count; raises :class:`SizeError` / :class:`DigestMismatch` (the caller
    discards the file).
    """
    limits = [n for n in (size, max_size) if n is not None]
    hasher = dg.Hasher()
    received = await pump(chunks, fd, hasher, limit=min(limits) if limits else None)
    if size is not None and received != size:
        raise SizeError(f"body has {received} bytes, {size} declared")
    actual = hasher.digest()
    if actual != expected:
        raise DigestMismatch(f"content digest is {actual}, not {expected}")
    await asyncio.to_thread(os.fsync, fd)
    return received
