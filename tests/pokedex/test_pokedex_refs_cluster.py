"""Refs across real node processes that are killed (-9) and restarted.

The first tests reproduce what went wrong when one "primary" node decided every CAS of a ref
and mirrored the result best-effort; the soak then kills and restarts each node in turn under
concurrent compare-and-set traffic and checks the whole history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pokedex_testlib import TOKEN, NodeProcess, ThreadedNode, free_port, nodes, wait_until

from pokedex import Client, placement
from pokedex import digest as dg
from pokedex.client import PokedexError, RefConflict
from pokedex.cluster import ACCEPTOR_TIMEOUT
from pokedex.refs import Change

AUTH = {"Authorization": f"Bearer {TOKEN}"}
A, B, C = (dg.of_bytes(x) for x in (b"a", b"b", b"c"))


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP request to one node, no retries: (status, JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method=method, headers=AUTH)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def answers(node: NodeProcess) -> bool:
    try:
        return call(node.url, "GET", "/status")[0] == 200
    except OSError:
        return False


def restart(node: NodeProcess) -> None:
    node.start()
    wait_until(lambda: answers(node), 30, f"{node.url} to answer /status")


@contextlib.contextmanager
def cluster(
    tmp_path: Path, count: int = 3, extra: tuple[str, ...] = ()
) -> Iterator[list[NodeProcess]]:
    """``count`` token-protected node processes that know each other, stopped on exit;
    ``extra`` is added to each one's command line."""
    ports = [free_port() for _ in range(count)]
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    procs = []
    for i, port in enumerate(ports):
        (tmp_path / f"n{i}").mkdir()
        args = ("--peers", peers, "--replicas", "2", *extra)
        procs.append(NodeProcess(tmp_path / f"n{i}", port, token_file, args))
    try:
        for p in procs:
            restart(p)
        yield procs
    finally:
        for p in procs:
            p.stop()


def primary_of(name: str, procs: list[NodeProcess]) -> tuple[NodeProcess, list[NodeProcess]]:
    """The node that used to decide every CAS of ``name``, and the others."""
    first = placement.rank(f"ref:{name}", [p.url for p in procs])[0]
    return next(p for p in procs if p.url == first), [p for p in procs if p.url != first]


def ref_everywhere(procs: list[NodeProcess], name: str) -> list[str | None]:
    out = []
    for p in procs:
        status, body = call(p.url, "GET", f"/refs/{name}")
        assert status in (200, 404), body
        out.append(body["digest"] if status == 200 else None)
    return out


def test_an_acknowledged_cas_survives_its_primary_restarting(tmp_path: Path) -> None:
    with cluster(tmp_path) as procs:
        primary, others = primary_of("runs/1", procs)
        assert call(primary.url, "PUT", "/refs/runs/1", {"digest": A, "expected": None})[0] == 200
        primary.kill()
        status, _ = call(others[0].url, "PUT", "/refs/runs/1", {"digest": B, "expected": A})
        assert status == 200
        restart(primary)
        assert ref_everywhere(procs, "runs/1") == [B, B, B]


def test_a_stale_cas_is_refused_after_the_primary_returns(tmp_path: Path) -> None:
    with cluster(tmp_path) as procs:
        primary, others = primary_of("runs/2", procs)
        assert call(others[1].url, "PUT", "/refs/runs/2", {"digest": A, "expected": None})[0] == 200
        primary.kill()
        assert call(others[1].url, "PUT", "/refs/runs/2", {"digest": B, "expected": A})[0] == 200
        restart(primary)
        for p in procs:  # every node, the returning primary included, knows A is stale
            status, body = call(p.url, "PUT", "/refs/runs/2", {"digest": C, "expected": A})
            assert status == 409 and body["detail"]["current"] == B, body


def test_a_ref_created_while_its_primary_is_down_survives_its_return(tmp_path: Path) -> None:
    with cluster(tmp_path) as procs:
        primary, others = primary_of("tags/new", procs)
        primary.kill()
        assert (
            call(others[0].url, "PUT", "/refs/tags/new", {"digest": A, "expected": None})[0] == 200
        )
        restart(primary)
        assert ref_everywhere(procs, "tags/new") == [A, A, A]
        for p in procs:
            assert call(p.url, "GET", "/refs?prefix=tags/") == (200, {"refs": {"tags/new": A}})
            status, body = call(p.url, "PUT", "/refs/tags/new", {"digest": B, "expected": None})
            assert status == 409 and body["detail"]["current"] == A


def test_with_a_majority_down_refs_refuse_clearly_and_nothing_lands(tmp_path: Path) -> None:
    with cluster(tmp_path) as procs:
        survivor, down = procs[0], procs[1:]
        assert call(survivor.url, "PUT", "/refs/x", {"digest": A, "expected": None})[0] == 200
        for p in down:
            p.kill()
        for method, path, body in [
            ("PUT", "/refs/x", {"digest": B, "expected": A}),
            ("PUT", "/refs/y", {"digest": B}),
            ("GET", "/refs/x", None),
            ("GET", "/refs?prefix=", None),
        ]:
            status, reply = call(survivor.url, method, path, body)
            assert status == 503, (method, path, reply)
            assert reply["error"] == "UNAVAILABLE" and "majority (2)" in reply["message"]

        async def via_client() -> None:
            async with Client([survivor.url], TOKEN) as c:
                with pytest.raises(PokedexError, match="majority"):
                    await c.set_ref("x", C, expected=A)

        asyncio.run(via_client())
        for p in down:
            restart(p)
        assert ref_everywhere(procs, "x") == [A, A, A]
        assert ref_everywhere(procs, "y") == [None, None, None]


def test_peer_routes_refuse_malformed_requests(tmp_path: Path) -> None:
    with cluster(tmp_path, 1) as [node]:
        for body in (
            [],
            {"name": "x"},
            {"name": "x", "ballot": [1]},
            {"name": "../x", "ballot": [1, "n"]},
            {"name": "x", "ballot": [1, "n"], "value": "sha256:zz"},
        ):
            for phase in ("prepare", "accept"):
                status, reply = call(node.url, "POST", f"/peer/refs/{phase}", body)
                assert 400 <= status < 500 and reply["message"], (phase, body, reply)
        assert call(node.url, "GET", "/peer/refs?name=..")[0] == 400


def test_a_hung_node_holds_up_no_ref_request(tmp_path: Path) -> None:
    with cluster(tmp_path) as procs:
        primary, others = primary_of("runs/h", procs)
        hung = others[1]
        assert hung.proc is not None
        hung.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            value = None
            for i in range(5):
                new = dg.of_bytes(str(i).encode())
                body = {"digest": new, "expected": value}
                assert call(others[0].url, "PUT", "/refs/runs/h", body)[0] == 200
                value = new
            assert call(primary.url, "GET", "/refs/runs/h")[1]["digest"] == value
            assert call(others[0].url, "GET", "/refs?prefix=runs/") == (
                200,
                {"refs": {"runs/h": value}},
            )
            # Waiting for the hung node would cost ACCEPTOR_TIMEOUT per round.
            assert time.monotonic() - started < ACCEPTOR_TIMEOUT.total
        finally:
            hung.proc.send_signal(signal.SIGCONT)
        assert ref_everywhere(procs, "runs/h") == [value] * 3


json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
round_bodies = st.fixed_dictionaries(
    {"name": st.text(max_size=20) | st.just("a/b"), "ballot": json_junk, "value": json_junk}
)
prune_bodies = st.fixed_dictionaries(
    {
        "slots": st.dictionaries(st.text(max_size=10) | st.just("a/b"), json_junk, max_size=3),
        "grace": json_junk | st.floats(),
    }
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(
        ["/peer/refs/prepare", "/peer/refs/accept", "/peer/refs/propose/a/b", "/peer/refs/prune"]
    ),
    st.one_of(json_junk, round_bodies, prune_bodies).map(json.dumps),
)
def test_peer_routes_never_fail_with_5xx(shared_node: ThreadedNode, path: str, body: str) -> None:
    req = urllib.request.Request(
        f"{shared_node.url}{path}", data=body.encode(), method="POST", headers=AUTH
    )
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
        assert json.loads(e.read())["message"]
    assert status < 500, (path, body, status)


# -- soak: each node killed and restarted in turn during concurrent CAS ----------------------


@dataclass
class Write:
    """One CAS the soak sent: ref ``name`` to counter ``n`` over ``prev``, and the answer."""

    name: str
    n: int
    prev: str | None
    outcome: str = "pending"  # ok | conflict | unknown


@dataclass
class Soak:
    urls: list[str]
    writes: dict[str, Write]
    acked: int = 0

    async def request(
        self, http: aiohttp.ClientSession, method: str, url: str, body: Any = None
    ) -> tuple[int | None, Any]:
        try:
            async with http.request(method, url, json=body, headers=AUTH) as r:
                return r.status, await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            return None, repr(e)

    async def worker(self, name: str, who: int, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=60, connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            seq = 0
            while not stop.is_set():
                status, body = await self.request(
                    http, "GET", f"{random.choice(self.urls)}/refs/{name}"
                )
                if status not in (200, 404):
                    await asyncio.sleep(0.01)  # that node is down or restarting: pace retries
                    continue
                current = body["digest"] if status == 200 else None
                n = 0 if current is None else self.writes[current].n
                seq += 1
                new = dg.of_bytes(f"{name}|{n + 1}|{who}|{seq}".encode())
                write = self.writes[new] = Write(name, n + 1, current)
                status, body = await self.request(
                    http,
                    "PUT",
                    f"{random.choice(self.urls)}/refs/{name}",
                    {"digest": new, "expected": current},
                )
                if status == 200:
                    write.outcome = "ok"
                    self.acked += 1
                elif status == 409:
                    write.outcome = "conflict"
                    assert body["detail"]["current"] != current
                else:
                    write.outcome = "unknown"

    def chain(self, final: str | None) -> list[str]:
        """The successful writes, oldest first, walked back from the final value."""
        out = []
        while final is not None:
            out.append(final)
            write = self.writes[final]
            assert write.prev is None or self.writes[write.prev].n == write.n - 1
            final = write.prev
        return out[::-1]


def test_refs_stay_linearizable_while_each_node_is_killed_and_restarted(tmp_path: Path) -> None:
    names = ["soak/a", "soak/b", "soak/c"]
    with cluster(tmp_path) as procs:
        soak = Soak([p.url for p in procs], {})

        def progress(more: int) -> None:
            target = soak.acked + more
            wait_until(lambda: soak.acked >= target, 60, f"{more} more acknowledged CAS")

        def kill_each_in_turn() -> None:
            for p in procs * 2:
                progress(12)
                p.kill()
                progress(12)  # writes go on with one node down
                restart(p)
            progress(12)

        async def run() -> None:
            stop = asyncio.Event()
            workers = [
                asyncio.create_task(soak.worker(names[i % len(names)], i, stop)) for i in range(6)
            ]
            try:
                await asyncio.to_thread(kill_each_in_turn)
            finally:
                stop.set()
                await asyncio.gather(*workers)

        asyncio.run(run())

        # After recovery: one repair pass, then every node holds and answers the same values.
        status, report = call(procs[0].url, "POST", "/repair")
        assert status == 200 and "refs_error" not in report, report
        landed_unacked = 0
        for name in names:
            finals = ref_everywhere(procs, name)
            assert len(set(finals)) == 1, finals
            slots = [call(p.url, "GET", f"/peer/refs?name={name}")[1]["slots"][name] for p in procs]
            assert all(s["accepted"] == slots[0]["accepted"] for s in slots), slots
            assert all(s["value"] == finals[0] for s in slots), slots

            chain = soak.chain(finals[0])
            outcomes = [soak.writes[d].outcome for d in chain]
            assert "conflict" not in outcomes, "a CAS answered 409 took effect"
            assert "pending" not in outcomes
            acked = {d for d, w in soak.writes.items() if w.name == name and w.outcome == "ok"}
            assert acked <= set(chain), "an acknowledged CAS was lost"
            # Each success moved n to n+1, so the final counter counts the successes: the
            # acknowledged ones plus those whose answer was lost with a killed node.
            assert soak.writes[chain[-1]].n == len(chain)
            assert len(chain) == len(acked) + outcomes.count("unknown")
            landed_unacked += outcomes.count("unknown")
        acked_total = sum(1 for w in soak.writes.values() if w.outcome == "ok")
        assert acked_total == soak.acked >= 12 * 13
        # No two acknowledged CAS from the same expected value.
        froms = [(w.name, w.prev) for w in soak.writes.values() if w.outcome == "ok"]
        assert len(froms) == len(set(froms))
        print(f"soak: {acked_total} acknowledged CAS, {landed_unacked} unacknowledged that landed")


def test_a_node_with_a_damaged_slot_abstains_and_the_majority_decides(tmp_path: Path) -> None:
    async def go() -> None:
        async with nodes(tmp_path, 3) as cluster:
            broken = cluster[0]
            async with Client([broken.url]) as c:
                await c.set_ref("tags/x", A, expected=None)
                (broken.node.store.ref_root / "tags%x").write_text("{not json")
                assert await c.get_ref("tags/x") == A
                await c.set_ref("tags/x", B, expected=A)
                with pytest.raises(RefConflict):
                    await c.set_ref("tags/x", C, expected=A)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{broken.url}/refs?prefix=tags/") as r:
                    assert await r.json() == {"refs": {"tags/x": B}}
            for n in cluster[1:]:
                assert n.node.store.ref_slot("tags/x").value == B

    asyncio.run(go())


def test_a_retried_cas_that_finds_its_own_write_succeeds(tmp_path: Path) -> None:
    async def go() -> None:
        async with nodes(tmp_path, 3) as cluster:
            async with Client([n.url for n in cluster]) as c:
                await c.set_ref("runs/9", A, expected=None)
                await c.set_ref("runs/9", B, expected=A)
                await c.set_ref("runs/9", B, expected=A)  # the retry after a lost answer
                with pytest.raises(RefConflict) as e:
                    await c.set_ref("runs/9", C, expected=A)
                assert e.value.current == B
                assert await c.get_ref("runs/9") == B

    asyncio.run(go())


def test_a_listing_larger_than_one_read_arrives_whole(tmp_path: Path) -> None:
    """Every node's slots for 1,500 long ref names (some 400 KB of JSON from each peer)
    reach the node that lists them whole, however the peers' answers are split."""
    value = dg.of_bytes(b"listed")

    async def go() -> None:
        async with nodes(tmp_path, count=3, replicas=2, token=TOKEN) as started:
            names = [f"tags/{'x' * 230}/{i:05d}" for i in range(1500)]
            await started[0].node.refs.change(names[0], Change(value), everyone=True)
            # The other slots as the acceptors would hold them after the same change.
            for n in started:
                slot = n.node.store._ref_path(names[0]).read_bytes()
                for name in names[1:]:
                    n.node.store._ref_path(name).write_bytes(slot)
            async with aiohttp.ClientSession() as http:
                async with http.get(
                    f"{started[1].url}/refs?prefix=tags/",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as r:
                    assert r.status == 200, await r.text()
                    listed = (await r.json())["refs"]
            assert listed == dict.fromkeys(names, value)

    asyncio.run(go())
