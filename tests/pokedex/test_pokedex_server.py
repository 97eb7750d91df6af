"""One real node over HTTP: the blob API, refs, status, auth, and malformed requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
from pathlib import Path

import aiohttp
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pokedex_testlib import TOKEN, ThreadedNode, nodes, wait_until

from pokedex import digest as dg

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_blob_put_get_head_range_missing(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    d = dg.of_bytes(data)

    async def go() -> None:
        async with nodes(tmp_path) as [n], aiohttp.ClientSession() as http:
            async with http.put(f"{n.url}/blobs/{d}", data=data) as r:
                assert r.status == 201 and (await r.json())["copies"] == 1
            async with http.get(f"{n.url}/blobs/{d}") as r:
                assert r.status == 200 and await r.read() == data
                assert r.headers["Docker-Content-Digest"] == d
            async with http.get(f"{n.url}/blobs/{d}", headers={"Range": "bytes=10-19"}) as r:
                assert r.status == 206 and await r.read() == data[10:20]
            async with http.head(f"{n.url}/blobs/{d}") as r:
                assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
            other = dg.of_bytes(b"absent")
            async with http.post(f"{n.url}/missing", json={"digests": [d, other]}) as r:
                assert (await r.json()) == {"missing": [other]}
            async with http.post(
                f"{n.url}/missing",
                data=msgpack.packb([other, d]),
                headers={"Content-Type": "application/msgpack"},
            ) as r:
                assert msgpack.unpackb(await r.read()) == {"missing": [other]}
            async with http.get(f"{n.url}/blobs/{other}") as r:
                assert r.status == 404 and (await r.json())["error"] == "BLOB_UNKNOWN"
            async with http.get(f"{n.url}/status") as r:
                st_ = await r.json()
                assert st_["blobs"] == 1 and st_["bytes"] == len(data)

    asyncio.run(go())


def test_refs_compare_and_set_over_http(tmp_path: Path) -> None:
    a, b = dg.of_bytes(b"a"), dg.of_bytes(b"b")

    async def go() -> None:
        async with nodes(tmp_path) as [n], aiohttp.ClientSession() as http:
            url = f"{n.url}/refs/snapshots/main"
            async with http.get(url) as r:
                assert r.status == 404
            async with http.put(url, json={"digest": a, "expected": None}) as r:
                assert r.status == 200
            async with http.put(url, json={"digest": b, "expected": None}) as r:
                assert r.status == 409 and (await r.json())["detail"]["current"] == a
            async with http.put(url, json={"digest": b, "expected": a}) as r:
                assert r.status == 200
            async with http.get(url) as r:
                assert (await r.json())["digest"] == b
            async with http.get(f"{n.url}/refs?prefix=snapshots/") as r:
                assert (await r.json()) == {"refs": {"snapshots/main": b}}

    asyncio.run(go())


def test_token_guards_writes_and_optionally_reads(tmp_path: Path) -> None:
    d = dg.of_bytes(b"x")

    async def go() -> None:
        async with aiohttp.ClientSession() as http:
            async with nodes(tmp_path / "w", token=TOKEN) as [n]:
                async with http.put(f"{n.url}/blobs/{d}", data=b"x") as r:
                    assert r.status == 401 and "WWW-Authenticate" in r.headers
                bad = {"Authorization": "Bearer nope"}
                async with http.put(f"{n.url}/blobs/{d}", data=b"x", headers=bad) as r:
                    assert r.status == 401
                async with http.put(f"{n.url}/blobs/{d}", data=b"x", headers=AUTH) as r:
                    assert r.status == 201
                async with http.get(f"{n.url}/blobs/{d}") as r:
                    assert r.status == 200  # reads are open by default
            async with nodes(tmp_path / "r", token=TOKEN, auth_reads=True) as [n]:
                async with http.get(f"{n.url}/blobs/{d}") as r:
                    assert r.status == 401
                async with http.get(f"{n.url}/status", headers=AUTH) as r:
                    assert r.status == 200

    asyncio.run(go())


def _raw(port: int, payload: bytes, close_early: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        if close_early:
            return b""
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_truncated_upload_stores_nothing(threaded_node: ThreadedNode) -> None:
    data = os.urandom(1 << 20)
    d = dg.of_bytes(data)
    head = (
        f"PUT /blobs/{d} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    _raw(threaded_node.port, head + data[: len(data) // 2], close_early=True)
    store = threaded_node.node.node.store
    wait_until(lambda: not list(store.blob_root.rglob(".tmp-*")), what="temp file cleanup")
    assert not store.has(d)


def test_body_longer_than_declared_is_refused(threaded_node: ThreadedNode) -> None:
    data = b"01234GARBAGE\r\n\r\n"
    head = (
        f"PUT /blobs/{dg.of_bytes(data)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 5\r\n\r\n"
    ).encode()
    reply = _raw(threaded_node.port, head + data)
    statuses = [int(line.split()[1]) for line in reply.split(b"\r\n") if line.startswith(b"HTTP/")]
    assert statuses and all(400 <= s < 500 for s in statuses), reply[:500]
    assert not threaded_node.node.node.store.has(dg.of_bytes(data))


# -- hypothesis: malformed requests always get a 4xx --------------------------------------

nasty = st.one_of(
    st.text(min_size=0, max_size=40),
    st.sampled_from(
        [
            "..",
            "../..",
            "%2e%2e",
            "%00",
            "a%00b",
            "/etc/passwd",
            "x" * 5000,
            "sha256:" + "0" * 63,
            "sha256:" + "G" * 64,
            "SHA256:" + "a" * 64,
            "sha256:" + "a" * 64 + "/..",
            "..%2f..%2fetc",
        ]
    ),
)
targets = st.sampled_from(
    [
        "/blobs/{x}",
        "/refs/{x}",
        "/refs/a/{x}",
        "/v2/{x}/blobs/sha256:" + "a" * 64,
        "/v2/{x}/manifests/latest",
        "/v2/library/x/manifests/{x}",
        "/v2/x/blobs/{x}",
        "/v2/x/blobs/uploads/{x}",
        "/swarm/active/{x}",
    ]
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.just(b'{"digest": "sha256:zz"}'),
    st.just(b'{"schemaVersion": 2, "layers": "no"}'),
    st.just(b"\xff\xfe"),
)
methods = st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])


def _request(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(
            method, path, body=body if method not in ("GET", "HEAD") else None, headers=headers
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _quote(x: str) -> str:
    from urllib.parse import quote

    return quote(x, safe="/%:") or "%20"


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    methods,
    targets,
    nasty,
    bodies,
    st.booleans(),
    st.sampled_from(["application/json", "application/msgpack", "text/plain"]),
)
def test_malformed_requests_get_4xx(
    shared_node: ThreadedNode,
    method: str,
    target: str,
    x: str,
    body: bytes,
    auth: bool,
    ctype: str,
) -> None:
    headers = {"Content-Type": ctype, **(AUTH if auth else {})}
    status = _request(shared_node.port, method, target.replace("{x}", _quote(x)), body, headers)
    assert status < 500, (method, target, x, body, status)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.text(max_size=80), max_size=5).map(
            lambda xs: json.dumps({"digests": xs}).encode()
        ),
    ),
    st.sampled_from(["/missing", "/swarm/plan"]),
)
def test_garbage_bodies_get_400(shared_node: ThreadedNode, body: bytes, path: str) -> None:
    status = _request(
        shared_node.port, "POST", path, body, {"Content-Type": "application/json", **AUTH}
    )
    assert status in (200, 400, 413), (body, status)


def test_wrong_digest_upload_is_400_and_not_stored(shared_node: ThreadedNode) -> None:
    wrong = dg.of_bytes(b"something else")
    status = _request(shared_node.port, "PUT", f"/blobs/{wrong}", b"payload", AUTH)
    assert status == 400
    assert not shared_node.node.node.store.has(wrong)
