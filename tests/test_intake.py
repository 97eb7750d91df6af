"""Admitting a run off the event loop: the streaming decoder agrees with the plain one,
planning in a thread queues what ``add_run`` queued, and the fault rules hold."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.faults import MAX_LOSSES, QUARANTINE_AFTER, REST, REST_MAX, HostHealth, LossBudget
from farm.intake import decode_run, read_run
from farm.manifest import RunManifest, TestSpec, WorkerSpec, manifest_to_wire, parse_manifest
from farm.protocol import VERSION, ProtocolError, decode, encode
from farm.scheduler import Scheduler

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
values = st.recursive(
    scalars | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.binary(max_size=2), inner, max_size=4)
    ),
    max_leaves=20,
)
tests_field = st.lists(
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=6), "group": st.text(max_size=3)}),
    max_size=5,
)
messages = st.dictionaries(
    st.sampled_from(["v", "t", "tests", "worker", "name"]) | st.text(max_size=3),
    values | tests_field,
    max_size=6,
).map(lambda m: {"v": VERSION, "t": "run", **m} if "v" not in m else m)


def _outcome(decoder, body: bytes):
    try:
        return decoder(body)
    except ProtocolError:
        return ProtocolError


@given(messages | values, st.data())
@settings(max_examples=400, deadline=None)
def test_decode_run_accepts_and_refuses_what_decode_does(message, data):
    body = msgpack.packb(message, use_bin_type=True)
    mutation = data.draw(st.sampled_from(["none", "truncate", "append"]))
    if mutation == "truncate" and body:
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    elif mutation == "append":
        body += data.draw(st.binary(min_size=1, max_size=3))
    assert _outcome(decode_run, body) == _outcome(decode, body)


def test_decode_run_keeps_the_size_limit():
    body = encode({"t": "run", "tests": [{"id": "x" * 100, "group": "g"}]})
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode_run(body, max_bytes=len(body) - 1)


def test_read_run_builds_the_manifest_parse_manifest_does():
    manifest = RunManifest(
        tests=tuple(TestSpec(id=f"t.py::t{i}", group="t.py", estimate=i / 10) for i in range(50)),
        worker=WorkerSpec(argv=("m",), cwd="/w"),
        snapshot="sha256:" + "a" * 64,
    )
    body = encode(manifest_to_wire(manifest))
    assert read_run(body) == parse_manifest(decode(body)) == manifest
    with pytest.raises(ProtocolError, match="expected a 'run' message"):
        read_run(encode({"t": "status"}))


suites = st.lists(
    st.tuples(st.integers(0, 4), st.floats(0.0, 5.0), st.sampled_from([{}, {"os": "linux"}])),
    min_size=1,
    max_size=40,
).map(
    lambda rows: [
        TestSpec(id=f"m{g}.py::t{i}", group=f"m{g}.py", estimate=d, requires=r)
        for i, (g, d, r) in enumerate(sorted(rows, key=lambda r: r[0]))
    ]
)


@given(suites, st.booleans())
@settings(max_examples=100, deadline=None)
def test_a_plan_installed_later_checks_placement_against_the_slots_then(tests, linux_goes):
    """Planned with a linux slot present; if that slot is gone by install, its tests are
    refused and nothing is queued."""
    scheduler = Scheduler()
    scheduler.add_slot("plain/0", "plain")
    scheduler.add_slot("linux/0", "linux", {"os": "linux"})
    plan = scheduler.planner()(tests)
    if linux_goes:
        scheduler.remove_slot("linux/0")
    refused = scheduler.install("r", plan)
    needs_linux = [t for t in tests if t.requires]
    if linux_goes and needs_linux:
        assert refused == needs_linux
        assert "r" not in scheduler.runs()
    else:
        assert refused == []
        assert scheduler.queued("r") == len(tests)


def test_a_host_rests_longer_each_quarantine_in_a_row_until_a_test_passes_on_it():
    health = HostHealth()
    assert [health.failed("down") for _ in range(QUARANTINE_AFTER)] == [False, False, True]
    assert health.quarantined and health.problem == "down" and health.rest == REST
    rests = []
    for _ in range(8):
        health.readmit()
        assert not health.quarantined
        assert health.failed("still down"), "on probation, one failure quarantines again"
        rests.append(health.rest)
    assert rests[0] == 2 * REST and rests[-1] == REST_MAX
    health.readmit()
    health.worked()
    assert health.rest == REST and health.failures == 0


def test_a_test_lost_too_often_is_given_up_with_every_reason():
    budget = LossBudget()
    test = TestSpec(id="t.py::t", group="t.py")
    for n in range(1, MAX_LOSSES):
        assert budget.lose([test], f"host h: loss {n}") == ([test], [])
    assert budget.lose([test], "host h: last") == ([], [test])
    message = budget.message(test.id)
    assert f"lost {MAX_LOSSES} times" in message
    assert "host h: loss 1" in message and "host h: last" in message
