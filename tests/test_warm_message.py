"""The ``warm`` message (a run without its tests) and a warm spare's held output: pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.hosts.docker.spares import HELD_OUTPUT_BYTES, HeldOutput
from farm.intake import read_run, read_warm
from farm.manifest import RunManifest, TestSpec, WorkerSpec, manifest_to_wire
from farm.protocol import ProtocolError, encode

WORKER = WorkerSpec(argv=("pytest_psyduck.workermain", "-q"), cwd="/src", env={"A": "1"})


def warm_body(**changes) -> bytes:
    message = {**manifest_to_wire(RunManifest(tests=(), worker=WORKER, image="img")), "t": "warm"}
    return encode({**message, "tests": [], **changes})


def test_a_warm_message_is_the_run_without_its_tests():
    manifest = read_warm(warm_body())
    assert manifest.tests == () and manifest.worker == WORKER and manifest.image == "img"


def test_a_warm_message_naming_tests_or_a_run_without_tests_is_refused():
    one = manifest_to_wire(RunManifest(tests=(TestSpec("t.py::a", "t.py"),), worker=WORKER))
    with pytest.raises(ProtocolError, match="names no tests"):
        read_warm(warm_body(tests=one["tests"]))
    with pytest.raises(ProtocolError, match="expected a 'warm' message"):
        read_warm(encode({**one, "t": "run"}))
    with pytest.raises(ProtocolError, match="nothing to run"):
        read_run(encode({**one, "tests": []}))


@given(chunks=st.lists(st.binary(max_size=20_000), max_size=12), after=st.binary(max_size=50))
def test_held_output_reaches_the_run_in_order_and_bounded(chunks, after):
    held, seen = HeldOutput(), []
    for chunk in chunks:
        held(chunk)
    held.hand_to(seen.append)
    held(after)
    everything = b"".join(chunks)
    assert b"".join(seen) == everything[:HELD_OUTPUT_BYTES] + after
