"""The disk store: verified, atomic writes; refs with compare-and-set; crash leftovers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pokedex import digest as dg
from pokedex.store import BlobStore, DigestMismatch, RefConflict, SizeError


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


def test_refs_compare_and_set(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    a, b = dg.of_bytes(b"a"), dg.of_bytes(b"b")

    async def go() -> None:
        await store.set_ref("snap/main", a, expected=None, check=True)
        with pytest.raises(RefConflict) as e:
            await store.set_ref("snap/main", b, expected=None, check=True)
        assert e.value.current == a
        await store.set_ref("snap/main", b, expected=a, check=True)
        await store.set_ref("snap", a)  # a prefix of another ref is a separate ref
        assert store.list_refs("snap") == [("snap", a), ("snap/main", b)]
        await store.set_ref("snap", None)
        assert store.get_ref("snap") is None

    asyncio.run(go())


def test_concurrent_cas_has_one_winner(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    async def attempt(i: int) -> bool:
        try:
            await store.set_ref("race", dg.of_bytes(bytes([i])), expected=None, check=True)
            return True
        except RefConflict:
            return False

    async def go() -> list[bool]:
        return await asyncio.gather(*(attempt(i) for i in range(50)))

    assert sum(asyncio.run(go())) == 1
