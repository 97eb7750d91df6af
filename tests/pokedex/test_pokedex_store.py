"""The disk store: verified, atomic writes; refs with compare-and-set; crash leftovers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pokedex import digest as dg
from pokedex.durable import DigestMismatch, SizeError
from pokedex.store import BlobStore


async def _stream(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


def _files(store: BlobStore) -> list[str]:
    return sorted(p.name for p in store.blob_root.rglob("*") if p.is_file())


def test_write_stream_verifies_and_is_readable(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(9 << 20)  # crosses the writer-thread buffer size
    d = dg.of_bytes(data)
    size = asyncio.run(store.write_stream(_stream(data[:5], data[5:]), d, size=len(data)))
    assert size == len(data) and store.path(d).read_bytes() == data
    assert store.stats() == (1, len(data)) and list(store.digests()) == [d]
    assert store.path(d).parent.name == d[7:9]


@pytest.mark.parametrize(
    ("parts", "size", "error"),
    [
        ((b"hello",), None, DigestMismatch),
        ((b"hell",), 5, SizeError),  # shorter than declared
        ((b"hello", b"!"), 5, SizeError),  # longer than declared
    ],
)
def test_bad_writes_store_nothing(tmp_path: Path, parts, size, error) -> None:
    store = BlobStore(tmp_path)
    expected = dg.of_bytes(b"hello") if error is not DigestMismatch else dg.of_bytes(b"x")
    with pytest.raises(error):
        asyncio.run(store.write_stream(_stream(*parts), expected, size=size))
    assert _files(store) == []


def test_broken_stream_stores_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (5 << 20)
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(store.write_stream(broken(), dg.of_bytes(b"whatever")))
    assert _files(store) == []


def test_partials_from_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    d = store.put_bytes(b"kept")
    (store.path(d).parent / ".tmp-deadbeef-123").write_bytes(b"half a blob")
    again = BlobStore(tmp_path)
    assert _files(again) == [d[7:]]


def test_adopt_checks_the_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    f = store.upload_root / "x"
    f.write_bytes(b"abc")
    with pytest.raises(DigestMismatch):
        store.adopt(f, dg.of_bytes(b"abd"))
    assert store.adopt(f, dg.of_bytes(b"abc")) == 3 and not f.exists()
