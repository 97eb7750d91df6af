"""The wire codec and the manifest validation: round trips, and clear errors for bad input."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.manifest import (
    ManifestError,
    RunManifest,
    TestSpec,
    WorkerSpec,
    manifest_to_wire,
    parse_manifest,
)
from farm.protocol import VERSION, FrameDecoder, ProtocolError, decode, encode, frame

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
messages = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("v", "t")), values, max_size=6
).map(lambda d: {"t": "event", **d})


@given(messages)
def test_messages_round_trip(message):
    assert decode(encode(message)) == {"v": VERSION, **message}


@given(st.lists(messages, max_size=5), st.integers(1, 64))
def test_frames_survive_any_chunking(batch, chunk):
    stream = b"".join(frame(m) for m in batch)
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        out.extend(decoder.feed(stream[i : i + chunk]))
    assert out == [{"v": VERSION, **m} for m in batch]
    assert decoder.pending == 0


@given(st.binary(max_size=200))
def test_garbage_gives_protocol_error_not_a_crash(data):
    try:
        decode(data)
    except ProtocolError:
        pass


@given(messages, st.integers(1, 50))
def test_truncated_frame_is_pending_not_decoded(message, cut):
    data = frame(message)
    cut = min(cut, len(data) - 1)
    decoder = FrameDecoder()
    assert decoder.feed(data[:-cut]) == []
    assert decoder.pending == len(data) - cut


@given(st.lists(messages, min_size=1, max_size=5), st.binary(min_size=1, max_size=20))
def test_messages_before_a_bad_frame_are_delivered_then_it_is_raised(before, garbage):
    decoder = FrameDecoder()
    bad = (2**32 - 1).to_bytes(4, "big") + garbage
    good = [{"v": VERSION, **m} for m in before]
    assert decoder.feed(b"".join(frame(m) for m in before) + bad) == good
    assert decoder.failed
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.feed(b"")
    with pytest.raises(ProtocolError):
        decoder.feed(frame(before[0]))  # nothing after a bad frame can be trusted


def test_version_mismatch_is_explained():
    with pytest.raises(ProtocolError, match="protocol version mismatch: got 99"):
        decode(msgpack.packb({"v": 99, "t": "run"}))


def test_oversized_frame_rejected_before_reading_its_body():
    decoder = FrameDecoder(max_bytes=100)
    with pytest.raises(ProtocolError, match="exceeds the limit of 100"):
        decoder.feed((10**9).to_bytes(4, "big") + b"x")


def test_oversized_message_rejected():
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(encode({"t": "x", "blob": b"a" * 200}), max_bytes=100)


def test_message_without_type():
    with pytest.raises(ProtocolError, match="type"):
        decode(msgpack.packb({"v": VERSION}))


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
specs = st.builds(
    TestSpec,
    id=names,
    group=names,
    estimate=st.floats(0, 1e6),
    timeout=st.none() | st.floats(0.001, 1e6),
    requires=st.dictionaries(names, names, max_size=3),
    cpus=st.none() | st.floats(0, 64),
    memory=st.none() | st.integers(1, 2**40),
)
manifests = st.builds(
    RunManifest,
    tests=st.lists(specs, min_size=1, max_size=20, unique_by=lambda t: t.id).map(tuple),
    worker=st.builds(
        WorkerSpec,
        argv=st.lists(names, min_size=1, max_size=4).map(tuple),
        cwd=names,
        env=st.dictionaries(names, names, max_size=3),
    ),
    name=st.text(max_size=20),
    image=st.none() | names,
    snapshot=st.none() | names,
    network=st.booleans(),
)


@given(manifests)
def test_manifest_round_trips_through_the_wire(manifest):
    assert parse_manifest(decode(encode(manifest_to_wire(manifest)))) == manifest


def test_a_tests_default_fields_stay_off_the_wire():
    worker = WorkerSpec(argv=("m",), cwd="/")
    plain = RunManifest(tests=(TestSpec(id="t.py::a", group="t.py"),), worker=worker)
    assert manifest_to_wire(plain)["tests"] == [{"id": "t.py::a", "group": "t.py"}]


@given(st.dictionaries(st.text(max_size=8), values, max_size=8))
def test_arbitrary_maps_are_rejected_with_manifest_errors(data):
    try:
        parse_manifest(data)
    except ManifestError:
        pass


@given(
    manifests,
    st.sampled_from(["tests", "worker", "argv", "id", "timeout", "requires", "memory"]),
    values,
)
def test_corrupted_fields_give_manifest_errors(manifest, field, junk):
    wire = manifest_to_wire(manifest)
    targets = {"tests": wire, "worker": wire, "argv": wire["worker"]}
    target = targets.get(field, wire["tests"][0])
    target[field] = junk
    try:
        parse_manifest(wire)
    except ManifestError as exc:
        assert str(exc)


def test_duplicate_ids_named():
    wire = {
        "tests": [{"id": "a", "group": "g"}, {"id": "a", "group": "g"}],
        "worker": {"argv": ["m"], "cwd": "/"},
    }
    with pytest.raises(ManifestError, match="'a' appears twice"):
        parse_manifest(wire)


def test_empty_run_refused():
    with pytest.raises(ManifestError, match="nothing to run"):
        parse_manifest({"tests": [], "worker": {"argv": ["m"], "cwd": "/"}})
