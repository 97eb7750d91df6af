"""The pure parts of retention: the eviction plan, the reachability walk, sizes and durations."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pokedex import digest as dg
from pokedex import retention, tree, units
from pokedex.collector import parse_gc_request
from pokedex.replies import ApiError
from pokedex.retention import Blob, Kind, Policy

# -- plan ------------------------------------------------------------------------------------

NOW = 1_000_000.0


@st.composite
def stores(draw: st.DrawFn) -> tuple[list[Blob], set[str], int, float]:
    """Blobs (unique digests), a keep set among them, a target and a grace period."""
    count = draw(st.integers(0, 40))
    blobs = [
        Blob(
            digest=dg.of_bytes(str(i).encode()),
            size=draw(st.integers(0, 1000)),
            used=NOW - draw(st.integers(0, 5000)),
        )
        for i in range(count)
    ]
    keep = {b.digest for b in blobs if draw(st.booleans())}
    total = sum(b.size for b in blobs)
    target = draw(st.integers(0, total + 10))
    grace = float(draw(st.integers(0, 3000)))
    return blobs, keep, target, grace


@given(stores())
@settings(max_examples=300)
def test_plan_invariants(case: tuple[list[Blob], set[str], int, float]) -> None:
    blobs, keep, target, grace = case
    chosen = retention.plan(blobs, keep, target, NOW, grace)
    total = sum(b.size for b in blobs)
    left = total - sum(b.size for b in chosen)
    evictable = [b for b in blobs if b.digest not in keep and NOW - b.used >= grace]
    # Never the closure of the roots, never anything used within the grace period.
    assert all(b.digest not in keep and NOW - b.used >= grace for b in chosen)
    assert len({b.digest for b in chosen}) == len(chosen)
    # Oldest use first.
    assert chosen == sorted(chosen, key=lambda b: (b.used, b.digest))
    assert chosen == sorted(evictable, key=lambda b: (b.used, b.digest))[: len(chosen)]
    # Under the target whenever the evictable blobs allow it, and no more evicted than needed.
    if total - sum(b.size for b in evictable) <= target:
        assert left <= target
    else:
        assert chosen == sorted(evictable, key=lambda b: (b.used, b.digest))
    if chosen:
        assert left + chosen[-1].size > target


@given(stores())
def test_next_expiry_is_when_protection_by_age_first_runs_out(
    case: tuple[list[Blob], set[str], int, float],
) -> None:
    blobs, keep, _, grace = case
    policy = Policy(grace=grace, keep_recent=2 * grace)
    recent = {b.digest for b in retention.recent(blobs, NOW, policy.keep_recent)}
    at = retention.next_expiry(blobs, keep, recent, NOW, policy)
    young = [b for b in blobs if b.digest not in keep and NOW - b.used < grace]
    if not young and not recent:
        assert at is None
        return
    assert at is not None and at > NOW
    # Nothing changes before ``at``; at ``at``, a blob may go or a tree stops being recent.
    before = at - 1e-3
    assert retention.plan(blobs, keep, 0, before, grace) == retention.plan(
        blobs, keep, 0, NOW, grace
    )
    assert {b.digest for b in retention.recent(blobs, before, policy.keep_recent)} >= recent
    gone = len(retention.plan(blobs, keep, 0, at, grace)) > len(
        retention.plan(blobs, keep, 0, NOW, grace)
    )
    aged = {b.digest for b in retention.recent(blobs, at, policy.keep_recent)} < recent
    assert gone or aged


@given(st.floats(0, 1e7), st.floats(0, 1e7))
def test_a_recorded_use_always_protects_for_most_of_the_grace(
    grace: float, keep_recent: float
) -> None:
    policy = Policy(grace=grace, keep_recent=keep_recent)
    assert policy.touch_every <= grace / 4 and policy.touch_every <= keep_recent / 4
    assert policy.touch_every <= retention.MAX_TOUCH_EVERY


def test_budget_target_is_below_the_budget() -> None:
    policy = Policy(max_bytes=1000)
    assert policy.target == 900
    assert policy.over_budget(1001) and not policy.over_budget(1000)
    assert not Policy().over_budget(1 << 60)


# -- closure ---------------------------------------------------------------------------------


def _manifest(config: str, layers: list[str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config},
            "layers": [{"digest": d} for d in layers],
        }
    ).encode()


def _index(manifests: list[str]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "manifests": [{"digest": d} for d in manifests]}
    ).encode()


def _tree(files: list[str]) -> bytes:
    entries = [tree.Entry(path=f"f{i}", size=1, digest=d) for i, d in enumerate(files)]
    return tree.encode(entries)


@st.composite
def graphs(draw: st.DrawFn) -> tuple[dict[str, bytes], list[str], set[str]]:
    """Stored documents, the roots, and what a model of the walk says is reachable."""
    docs: dict[str, bytes] = {}

    def add(data: bytes) -> str:
        d = dg.of_bytes(data)
        docs[d] = data
        return d

    leaves = [add(draw(st.binary(min_size=1, max_size=20))) for _ in range(draw(st.integers(1, 8)))]
    # A leaf that looks like a tree: reached as a tree's file it must not be parsed.
    fake = add(_tree(leaves[:1]))
    leaves.append(fake)
    subset = st.lists(st.sampled_from(leaves), max_size=4, unique=True)
    trees = {add(_tree(fs)): fs for fs in (draw(subset) for _ in range(draw(st.integers(0, 3))))}
    manifests = {}
    for _ in range(draw(st.integers(0, 3))):
        config, layers = draw(st.sampled_from(leaves)), draw(subset)
        manifests[add(_manifest(config, layers))] = [config, *layers]
    indexes = {}
    if manifests:
        for _ in range(draw(st.integers(0, 2))):
            entries = draw(st.lists(st.sampled_from(sorted(manifests)), min_size=1, unique=True))
            indexes[add(_index(entries))] = entries
    absent = dg.of_bytes(b"never stored")
    everything = [*docs, absent]
    roots = draw(st.lists(st.sampled_from(everything), max_size=5, unique=True))
    expected = set(roots)
    for r in roots:
        expected.update(trees.get(r, []))
        expected.update(manifests.get(r, []))
        for m in indexes.get(r, []):
            expected.add(m)
            expected.update(manifests[m])
    if fake in roots:  # a root is parsed whatever else it is
        expected.update(leaves[:1])
    return docs, roots, expected


@given(graphs())
@settings(max_examples=200)
def test_closure_is_exactly_what_roots_reach(
    case: tuple[dict[str, bytes], list[str], set[str]],
) -> None:
    docs, roots, expected = case
    read_calls: list[str] = []

    async def read(d: str) -> bytes | None:
        read_calls.append(d)
        return docs.get(d)

    assert asyncio.run(retention.closure(roots, read)) == expected
    assert len(read_calls) == len(set(read_calls))  # each document read once


def test_closure_fails_when_a_document_cannot_be_read() -> None:
    async def read(d: str) -> bytes | None:
        raise OSError("node down")

    with pytest.raises(OSError):
        asyncio.run(retention.closure([dg.of_bytes(b"x")], read))


def test_children_of_each_kind() -> None:
    a, b = dg.of_bytes(b"a"), dg.of_bytes(b"b")
    assert retention.children(_tree([b, a]), Kind.ROOT) == (sorted([a, b]), Kind.LEAF)
    assert retention.children(_tree([a]), Kind.OCI) == ([], Kind.LEAF)
    assert retention.children(_manifest(a, [b]), Kind.ROOT) == ([a, b], Kind.LEAF)
    assert retention.children(_index([a]), Kind.OCI) == ([a], Kind.OCI)
    assert retention.children(b'{"entries":[garbage', Kind.ROOT) == ([], Kind.LEAF)
    assert retention.children(b'{"schemaVersion": 1}', Kind.ROOT) == ([], Kind.LEAF)
    assert retention.children(b"\x1f\x8b binary layer", Kind.ROOT) == ([], Kind.LEAF)


def test_recent_picks_small_recently_used_blobs() -> None:
    old = Blob(dg.of_bytes(b"1"), 10, NOW - 100)
    new = Blob(dg.of_bytes(b"2"), 10, NOW - 1)
    big = Blob(dg.of_bytes(b"3"), retention.MAX_DOCUMENT + 1, NOW)
    assert retention.recent([old, new, big], NOW, 50) == [new]


# -- units and the /gc body ------------------------------------------------------------------


@given(
    st.integers(1, 10_000),
    st.sampled_from(["", "k", "M", "g", "T"]),
    st.sampled_from(["", "B", "iB"]),
)
def test_sizes_parse_in_binary_units(number: int, unit: str, suffix: str) -> None:
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit.lower()]
    text = f"{number}{unit}{suffix if unit else ''}"
    assert units.parse_size(text) == number * scale
    assert units.parse_size(number) == number


@pytest.mark.parametrize("bad", ["", "G", "-1M", "0", 0, -5, "10X", "1e3", True, "1.2.3G"])
def test_bad_sizes_are_refused_with_the_accepted_forms(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        units.parse_size(bad)  # type: ignore[arg-type]


@given(st.integers(0, 10_000), st.sampled_from(["", "s", "m", "h", "d", "w"]))
def test_durations_parse(number: int, unit: str) -> None:
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert units.parse_duration(f"{number}{unit}") == number * scale


@pytest.mark.parametrize("bad", ["", "h", "-1h", "1y", "inf", float("nan"), -1, True])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        units.parse_duration(bad)  # type: ignore[arg-type]


@given(st.integers(0, 1 << 50))
def test_format_size_reads_back_close(size: int) -> None:
    text = units.format_size(size)
    number, unit = text.split()
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[unit]
    assert abs(float(number) * scale - size) <= 0.05 * scale


def test_gc_request_body() -> None:
    assert parse_gc_request({}) == 0
    assert parse_gc_request({"keep_bytes": 5}) == 5
    for bad in ([], {"keep_bytes": -1}, {"keep_bytes": "5G"}, {"keep_bytes": True}, {"x": 1}):
        with pytest.raises(ApiError) as e:
            parse_gc_request(bad)
        assert e.value.status == 400
