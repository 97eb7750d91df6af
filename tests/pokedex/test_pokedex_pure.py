"""Property tests of the pure pieces: digests, names, placement, tree manifests, tracker."""

from __future__ import annotations

import hashlib
import json
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pokedex import digest as dg
from pokedex import names, placement, tree
from pokedex.registry import parse_manifest
from pokedex.replies import ApiError, authorized, needs_auth, parse_ref_update
from pokedex.swarm import ORIGIN, ChunkHasher, Tracker, chunk_count, chunk_range

hexdigits = st.text("0123456789abcdef", min_size=64, max_size=64)
digests = hexdigits.map(lambda h: f"sha256:{h}")


@given(st.binary())
def test_digest_of_bytes_is_valid_and_matches_hashlib(data: bytes) -> None:
    d = dg.of_bytes(data)
    assert dg.parse(d) == d
    assert d == "sha256:" + hashlib.sha256(data).hexdigest()


@given(st.text(max_size=80))
def test_parse_rejects_everything_not_strictly_sha256(value: str) -> None:
    ok = (
        value.startswith("sha256:")
        and len(value) == 71
        and all(c in "0123456789abcdef" for c in value[7:])
    )
    if ok:
        assert dg.parse(value) == value
    else:
        with pytest.raises(dg.DigestError):
            dg.parse(value)


@given(digests)
def test_uppercase_or_padded_digests_are_refused(d: str) -> None:
    assume(d.upper()[7:] != d[7:])
    for bad in (d.upper(), "SHA256:" + d[7:], d + "\n", " " + d, d[:-1], d + "0"):
        assert not dg.is_digest(bad)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "..",
        "a/../../b",
        "a/./b",
        "a//b",
        "a/",
        "a\x00b",
        "a\\..\\b",
        "x" * 256,
        "a/" * 3000,
    ],
)
def test_relpath_refuses_traversal(path: str) -> None:
    with pytest.raises(names.NameError_):
        names.check_relpath(path)


@given(
    st.lists(
        st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=20),
        min_size=1,
        max_size=5,
    )
)
def test_relpath_accepts_plain_components(parts: list[str]) -> None:
    assume(all(p not in (".", "..") for p in parts))
    path = "/".join(parts)
    assert names.check_relpath(path) == path


@given(st.text(max_size=300))
def test_ref_names_are_safe_file_names(name: str) -> None:
    try:
        names.check_ref(name)
    except names.NameError_:
        return
    assert ".." not in name.split("/") and not name.startswith("/") and "\x00" not in name
    assert "%" not in name and len(name) <= names.MAX_REF_LEN


@pytest.mark.parametrize("name", ["library/alpine", "a", "my-org/my_repo.x/sub"])
def test_repository_names_ok(name: str) -> None:
    assert names.check_repository(name) == name


@pytest.mark.parametrize("name", ["", "A", "a//b", "/a", "a/", "../a", "a:b", "a b", "-a"])
def test_repository_names_refused(name: str) -> None:
    with pytest.raises(names.NameError_):
        names.check_repository(name)


node_lists = st.lists(
    st.integers(1, 65535).map(lambda p: f"http://127.0.0.1:{p}"),
    min_size=1,
    max_size=12,
    unique=True,
)


@given(digests, node_lists, st.integers(1, 5), st.randoms())
def test_placement_is_deterministic_distinct_and_order_free(
    d: str, nodes: list[str], r: int, rnd
) -> None:
    chosen = placement.place(d, nodes, r)
    assert len(chosen) == min(r, len(nodes)) == len(set(chosen))
    assert set(chosen) <= set(nodes)
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert placement.place(d, shuffled, r) == chosen
    assert placement.rank(d, nodes)[: len(chosen)] == chosen


@given(digests, node_lists, st.integers(1, 4))
def test_placement_moves_minimally(d: str, nodes: list[str], r: int) -> None:
    before = placement.place(d, nodes, r)
    # Removing a node outside the placement changes nothing.
    for n in nodes:
        if n not in before:
            assert placement.place(d, [m for m in nodes if m != n], r) == before
    # Adding a node either changes nothing or swaps in exactly the new node.
    new = "http://10.0.0.1:1"
    after = placement.place(d, [*nodes, new], r)
    assert set(after) - set(before) <= {new}
    assert len(set(before) - set(after)) <= 1


def test_placement_spreads_load() -> None:
    nodes = [f"http://n{i}" for i in range(4)]
    counts = dict.fromkeys(nodes, 0)
    for i in range(4000):
        for n in placement.place(dg.of_bytes(str(i).encode()), nodes, 2):
            counts[n] += 1
    assert all(1700 < c < 2300 for c in counts.values()), counts


safe_component = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=8)
entries_st = st.dictionaries(
    st.lists(safe_component, min_size=1, max_size=3).map("/".join),
    st.one_of(
        st.tuples(st.integers(0, 0o7777), st.integers(0, 1 << 40), digests).map(
            lambda t: {"mode": t[0], "size": t[1], "digest": t[2]}
        ),
        st.text(min_size=1, max_size=30)
        .filter(lambda t: "\x00" not in t)
        .map(lambda t: {"target": t}),
    ),
    max_size=20,
)


def _valid_entries(spec: dict[str, dict]) -> list[tree.Entry]:
    paths = sorted(spec)
    keep = [p for p in paths if not any(p.startswith(q + "/") for q in paths)]
    return [tree.Entry(path=p, **spec[p]) for p in keep]


@given(entries_st)
def test_tree_manifest_round_trips_canonically(spec: dict[str, dict]) -> None:
    entries = _valid_entries(spec)
    data = tree.encode(entries)
    assert tree.decode(data) == sorted(entries, key=lambda e: e.path)
    assert tree.encode(reversed(entries)) == data  # order of input does not matter


@given(entries_st)
def test_tree_decode_refuses_non_canonical_bytes(spec: dict[str, dict]) -> None:
    data = tree.encode(_valid_entries(spec))
    with pytest.raises(tree.TreeError):
        tree.decode(json.dumps(json.loads(data), indent=1).encode() + b" ")


@pytest.mark.parametrize(
    "path", ["../x", "/abs", "a/../../x", "a/./b", "a//b", "a\x00b", "x" * 300]
)
def test_tree_decode_refuses_traversal(path: str) -> None:
    doc = {
        "entries": [
            {"digest": dg.of_bytes(b""), "mode": 420, "path": path, "size": 0, "type": "file"}
        ],
        "format": tree.FORMAT,
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(tree.TreeError):
        tree.decode(data)


def test_tree_decode_refuses_paths_below_a_symlink() -> None:
    entries = [
        tree.Entry(path="link", target="/etc"),
        tree.Entry(path="link/passwd", digest=dg.of_bytes(b"")),
    ]
    with pytest.raises(tree.TreeError):
        tree.encode(entries)


@given(st.binary(max_size=200))
def test_tree_decode_never_crashes_on_garbage(data: bytes) -> None:
    with pytest.raises(tree.TreeError):
        tree.decode(data)


@given(st.binary(max_size=300))
def test_manifest_parser_refuses_garbage_with_api_error(data: bytes) -> None:
    try:
        parse_manifest(data, None)
    except ApiError as e:
        assert e.status == 400
        assert e.code == "MANIFEST_INVALID"


def test_manifest_parser_types_and_references() -> None:
    cfg, layer = dg.of_bytes(b"c"), dg.of_bytes(b"l")
    doc = {"schemaVersion": 2, "config": {"digest": cfg}, "layers": [{"digest": layer}]}
    assert parse_manifest(json.dumps(doc).encode(), None) == (
        "application/vnd.oci.image.manifest.v1+json",
        [cfg, layer],
    )
    docker = {**doc, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    assert parse_manifest(json.dumps(docker).encode(), None)[0] == docker["mediaType"]
    index = {"schemaVersion": 2, "manifests": [{"digest": cfg}]}
    assert parse_manifest(json.dumps(index).encode(), None)[0].endswith("index.v1+json")


def test_auth_rules() -> None:
    import base64

    assert needs_auth("PUT", "/blobs/x", False) and needs_auth("POST", "/missing", False)
    assert not needs_auth("GET", "/blobs/x", False) and needs_auth("GET", "/blobs/x", True)
    assert needs_auth("GET", "/v2/", False)
    assert authorized("Bearer tok", "tok") and not authorized("Bearer tok2", "tok")
    basic = base64.b64encode(b"anyone:tok").decode()
    assert authorized(f"Basic {basic}", "tok") and not authorized("Basic !!!", "tok")
    assert not authorized(None, "tok") and not authorized("Digest tok", "tok")


def test_ref_update_parsing() -> None:
    d = dg.of_bytes(b"x")
    assert parse_ref_update({"digest": d}) == (d, False, None)
    assert parse_ref_update({"digest": d, "expected": None}) == (d, True, None)
    assert parse_ref_update({"digest": None, "expected": d}) == (None, True, d)
    for bad in ({}, [], {"digest": "nope"}, {"digest": d, "expected": "x"}):
        with pytest.raises(ApiError):
            parse_ref_update(bad)


def test_tracker_hands_each_chunk_to_the_origin_once() -> None:
    t = Tracker()
    d = dg.of_bytes(b"big")
    a = t.plan("http://a", d, want=[0, 1, 2], slots=2, now=0)
    assert a == {0: ORIGIN, 1: ORIGIN}
    b = t.plan("http://b", d, want=[0, 1, 2], slots=4, now=1)
    assert b == {2: ORIGIN}  # 0 and 1 are leased to a
    c = t.plan("http://a", d, have=[0], want=[], now=2)
    assert c == {}
    assert t.plan("http://b", d, want=[0, 1], now=3) == {0: "http://a"}
    # A lease that expired goes to whoever asks next.
    assert t.plan("http://b", d, want=[1], now=100) == {1: ORIGIN}
    t.leave("http://a")
    assert t.plan("http://c", d, want=[0], now=101) == {0: ORIGIN}
    assert t.active(d) == 2
    t.done("http://b", d)
    assert t.active(d) == 1


def test_chunk_arithmetic() -> None:
    assert chunk_count(0) == 1 and chunk_count(10, 4) == 3
    assert chunk_range(2, 10, 4) == (8, 9) and chunk_range(0, 10, 4) == (0, 3)


@given(st.binary(max_size=100), st.lists(st.integers(1, 30), max_size=10))
def test_chunk_hasher_matches_slicing(data: bytes, cuts: list[int]) -> None:
    h = ChunkHasher(chunk_size=7)
    pos = 0
    for c in cuts:
        h.feed(data[pos : pos + c])
        pos += c
    h.feed(data[pos:])
    expected = [hashlib.sha256(data[i : i + 7]).hexdigest() for i in range(0, len(data), 7)]
    assert h.finish() == (expected or [hashlib.sha256(b"").hexdigest()])
    assert len(h.hashes) == chunk_count(len(data), 7)
