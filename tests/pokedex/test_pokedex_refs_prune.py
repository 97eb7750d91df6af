"""Deleted refs' tombstones pruned, and refs repaired by the periodic repair loop, on real
node processes (see the pruning part of :mod:`pokedex.refs`'s design note)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pokedex_testlib import nodes, wait_until
from test_pokedex_refs_cluster import A, B, C, call, cluster, restart

from pokedex import Client

GONE = [f"gone/{i}" for i in range(40)]
KEPT = [f"kept/{i}" for i in range(5)]


def ref_files(data: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in (data / "refs").iterdir() if p.name.startswith(prefix))


def test_tombstones_go_only_once_every_node_holds_them_and_stale_cas_stays_refused(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path, extra=("--tombstone-grace", "0")) as procs:
        first, _, lagging = procs
        for name in GONE:
            assert (
                call(first.url, "PUT", f"/refs/{name}", {"digest": A, "expected": None})[0] == 200
            )
        for name in KEPT:
            assert call(first.url, "PUT", f"/refs/{name}", {"digest": B})[0] == 200
        lagging.kill()  # it keeps A for every gone/* ref
        for name in GONE:
            assert (
                call(first.url, "PUT", f"/refs/{name}", {"digest": None, "expected": A})[0] == 200
            )

        # With a node down nothing is pruned: it still holds A, which a majority made of it
        # and nodes that forgot the deletion would choose again.
        status, report = call(first.url, "POST", "/repair")
        assert status == 200 and report["refs_pruned"] == 0, report
        for p in procs[:2]:
            assert len(ref_files(p.data, "gone%")) == len(GONE)

        restart(lagging)

        def pruned() -> bool:
            status, report = call(first.url, "POST", "/repair")  # repairs, then prunes
            assert status == 200 and "refs_error" not in report, report
            return not any(ref_files(p.data, "gone%") for p in procs)

        wait_until(pruned, 120, "every node to drop the tombstones")
        for p in procs:
            assert ref_files(p.data, "kept%") == [n.replace("/", "%") for n in KEPT]
            assert (p.data / "ref-floor").exists()
            assert call(p.url, "GET", "/refs?prefix=") == (200, {"refs": dict.fromkeys(KEPT, B)})
            assert call(p.url, "GET", "/refs/gone/0")[0] == 404
            # A CAS from before the deletion is refused on every node, the lagging one too.
            status, body = call(p.url, "PUT", "/refs/gone/1", {"digest": C, "expected": A})
            assert status == 409 and body["detail"]["current"] is None, body
        assert call(lagging.url, "PUT", "/refs/gone/1", {"digest": C, "expected": None})[0] == 200
        for p in procs:
            assert call(p.url, "GET", "/refs/gone/1") == (200, {"name": "gone/1", "digest": C})


def test_the_repair_loop_catches_up_a_lagging_node_and_prunes(tmp_path: Path) -> None:
    args = ("--tombstone-grace", "0", "--repair-interval", "0.2")
    with cluster(tmp_path, extra=args) as procs:
        first, _, lagging = procs
        lagging.kill()
        assert call(first.url, "PUT", "/refs/loop/x", {"digest": A})[0] == 200
        restart(lagging)

        def slot_on_lagging() -> dict[str, object]:
            # The acceptor's own slot: reading it repairs nothing (a /refs read would).
            return call(lagging.url, "GET", "/peer/refs?name=loop/x")[1]["slots"]["loop/x"]

        wait_until(lambda: slot_on_lagging()["value"] == A, 60, "the loop to repair the ref")
        assert call(first.url, "PUT", "/refs/loop/x", {"digest": None, "expected": A})[0] == 200
        wait_until(
            lambda: not any(ref_files(p.data, "loop%") for p in procs), 60, "the loop to prune"
        )
        assert call(lagging.url, "GET", "/refs/loop/x")[0] == 404
        wait_until(
            lambda: "refs_pruned" in call(lagging.url, "GET", "/status")[1]["last_repair"],
            60,
            "the loop's ref figures in /status",
        )


def test_tombstones_younger_than_the_grace_period_stay(tmp_path: Path) -> None:
    async def go() -> None:
        async with nodes(tmp_path, 3) as started:  # the default grace: an hour
            async with Client([started[0].url]) as c:
                await c.set_ref("young/x", A)
                await c.set_ref("young/x", None, expected=A)
            report = await started[0].node.refs.repair()
            assert report["refs_pruned"] == 0
            for n in started:
                assert n.node.store.ref_slot("young/x").accepted.counter > 0

    asyncio.run(go())
