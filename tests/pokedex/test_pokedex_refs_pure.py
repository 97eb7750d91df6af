"""The ref consensus rules without a server: codecs, acceptor transitions, and a model check.

The model check runs the proposer algorithm of :mod:`pokedex.refquorum` over the pure rules of
:mod:`pokedex.refs` with hypothesis choosing the interleaving of messages, which of them are
lost, and when operations start, then checks that the history of compare-and-set operations is
linearizable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pokedex import digest as dg
from pokedex import refs
from pokedex.durable import StoreError
from pokedex.refs import Ballot, Change, Slot
from pokedex.store import BlobStore

digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}")
values = st.none() | digests
ballots = st.builds(Ballot, st.integers(0, 2**62), st.text(max_size=30))
slots = st.builds(Slot, ballots, ballots, values)

# -- codecs ----------------------------------------------------------------------------------


@given(slots, st.booleans())
def test_slots_and_answers_round_trip_through_json(slot: Slot, ok: bool) -> None:
    wire = json.loads(json.dumps(refs.answer_to_wire(slot, ok)))
    assert refs.answer_from_wire(wire) == (slot, ok)
    listing = {"slots": {"a/b": refs.slot_to_wire(slot)}}
    assert refs.listing_from_wire(json.loads(json.dumps(listing))) == {"a/b": slot}


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


@given(junk)
def test_malformed_peer_messages_raise_wire_error_only(value: Any) -> None:
    for parse in (
        refs.ballot_from_wire,
        refs.slot_from_wire,
        refs.answer_from_wire,
        refs.listing_from_wire,
        refs.parse_round,
    ):
        try:
            parse(value)
        except refs.WireError:
            pass


@pytest.mark.parametrize(
    "ballot",
    [[1], [1, 2], [-1, "n"], [True, "n"], [1.5, "n"], ["1", "n"], [1, "x" * 3000], None],
)
def test_bad_ballots_are_refused(ballot: Any) -> None:
    with pytest.raises(refs.WireError):
        refs.parse_round({"name": "a", "ballot": ballot})


# -- acceptor rules and decisions ------------------------------------------------------------


@given(slots, st.lists(st.tuples(st.booleans(), ballots, values), max_size=20))
def test_acceptor_state_only_moves_forward(slot: Slot, steps: list[Any]) -> None:
    for is_prepare, ballot, value in steps:
        if is_prepare:
            after, ok = refs.prepare(slot, ballot)
        else:
            after, ok = refs.accept(slot, ballot, value)
        assert after.promised >= slot.promised and after.accepted >= slot.accepted
        if not ok:
            assert after == slot
        elif is_prepare:
            assert after.promised == ballot > slot.accepted and after.accepted == slot.accepted
        else:
            assert after == Slot(ballot, ballot, value)
        slot = after


def test_decide_table() -> None:
    a, b, c = (dg.of_bytes(x) for x in (b"a", b"b", b"c"))
    cas = Change(b, check=True, expected=a)
    assert refs.decide(cas, a) == refs.Decision(b, "ok")
    assert refs.decide(cas, c) == refs.Decision(c, "conflict")
    assert refs.decide(cas, b, resent=True) == refs.Decision(b, "ok")  # our earlier round won
    assert refs.decide(cas, a, resent=True) == refs.Decision(b, "ok")  # it did not: apply now
    assert refs.decide(cas, c, resent=True) == refs.Decision(c, "unknown")
    assert refs.decide(Change(b), c) == refs.Decision(b, "ok")
    assert refs.decide(Change(b, check=True), None) == refs.Decision(b, "ok")
    assert refs.decide(None, c) == refs.Decision(c, "ok")


def test_merge_settles_agreement_and_flags_disagreement() -> None:
    a, b = dg.of_bytes(b"a"), dg.of_bytes(b"b")
    b1, b2 = Ballot(1, "n1"), Ballot(2, "n2")
    one = {"x": Slot(b1, b1, a), "y": Slot(b2, b2, b), "gone": Slot(b2, b2, None)}
    two = {"x": Slot(b1, b1, a), "y": Slot(b1, b1, a), "gone": Slot(b2, b2, None)}
    three = {"x": Slot(b2, b1, a)}
    assert refs.merge([one, two, three], 2) == ({"x": a}, ["y"])
    assert refs.merge([one, two, three], 2, everyone=True) == ({"x": a}, ["gone", "y"])
    assert refs.quorum(1) == 1 and refs.quorum(2) == 2 and refs.quorum(3) == 2


# -- model check: CASPaxos under message loss and reordering ---------------------------------

Round = tuple[str, Ballot, "str | None"]


def proposer(
    pid: str, change: Change, acceptors: int
) -> Generator[Round, list[tuple[Slot, bool]], tuple[str, str | None]]:
    """The loop of :meth:`RefQuorum.change` as a generator: yields a round, gets answers."""
    need, counter, resent = refs.quorum(acceptors), 0, False
    for _ in range(6):
        ballot = Ballot(counter + 1, pid)
        promises = yield ("prepare", ballot, None)
        counter = max(counter, refs.highest_seen(s for s, _ in promises))
        granted = [s for s, ok in promises if ok]
        if len(granted) < need:
            continue
        decision = refs.decide(change, refs.current(granted).value, resent)
        accepts = yield ("accept", ballot, decision.value)
        counter = max(counter, refs.highest_seen(s for s, _ in accepts))
        took = sum(ok for _, ok in accepts)
        if took >= need:
            return decision.status, decision.value
        if decision.status == "ok" and (took > 0 or len(accepts) < acceptors):
            resent = True
    return "unavailable", None


@dataclass
class Op:
    change: Change
    gen: Generator[Round, list[tuple[Slot, bool]], tuple[str, str | None]]
    start: int
    round: Round | None = None
    pending: list[int] = field(default_factory=list)
    answers: list[tuple[Slot, bool]] = field(default_factory=list)
    result: tuple[str, str | None] | None = None
    end: int | None = None

    def advance(self, answers: list[tuple[Slot, bool]] | None, acceptors: int) -> None:
        try:
            self.round = self.gen.send(answers) if answers is not None else next(self.gen)
            self.pending, self.answers = list(range(acceptors)), []
        except StopIteration as stop:
            self.result, self.round = stop.value, None


def deliver(state: list[Slot], i: int, r: Round) -> tuple[Slot, bool]:
    phase, ballot, value = r
    if phase == "prepare":
        state[i], ok = refs.prepare(state[i], ballot)
    else:
        state[i], ok = refs.accept(state[i], ballot, value)
    return state[i], ok


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(3, 5), st.integers(2, 6))
def test_cas_histories_are_linearizable_under_loss_and_reordering(
    data: st.DataObject, acceptors: int, n_ops: int
) -> None:
    state = [Slot() for _ in range(acceptors)]
    ops: list[Op] = []
    known: list[str | None] = [None]
    clock = 0
    while len(ops) < n_ops or any(o.result is None for o in ops):
        clock += 1
        running = [o for o in ops if o.result is None]
        if len(ops) < n_ops and (not running or data.draw(st.booleans(), "start")):
            new = dg.of_bytes(f"op{len(ops)}".encode())
            expected = data.draw(st.sampled_from(known), "expected")
            op = Op(Change(new, check=True, expected=expected), None, clock)  # type: ignore[arg-type]
            op.gen = proposer(f"p{len(ops)}", op.change, acceptors)
            op.advance(None, acceptors)
            ops.append(op)
            known.append(new)
            continue
        op = data.draw(st.sampled_from(running), "op")
        assert op.round is not None
        i = data.draw(st.sampled_from(op.pending), "acceptor")
        op.pending.remove(i)
        if not data.draw(st.integers(0, 3), "lose") == 0:  # a quarter of messages are lost
            op.answers.append(deliver(state, i, op.round))
        if not op.pending:
            op.advance(op.answers, acceptors)
            if op.result is not None:
                op.end = clock
    # A final read with no losses (the identity change) says what the register holds.
    reader = proposer("reader", None, acceptors)  # type: ignore[arg-type]
    r = next(reader)
    try:
        while True:
            r = reader.send([deliver(state, i, r) for i in range(acceptors)])
    except StopIteration as stop:
        status, final = stop.value
    assert status == "ok"
    check_linearizable(ops, final)


def check_linearizable(ops: list[Op], final: str | None) -> None:
    """Every new value is unique, so the successful CAS form one chain ending at ``final``."""
    by_new = {o.change.new: o for o in ops}
    chain: list[Op] = []
    value = final
    while value is not None:
        op = by_new[value]  # only operations' values are ever chosen
        chain.append(op)
        value = op.change.expected
        assert len(chain) <= len(ops), "the history loops"
    chain.reverse()
    for op in ops:
        assert op.result is not None
        status, _ = op.result
        if status == "ok":
            assert op in chain, "an acknowledged CAS was lost"
        elif status == "conflict":
            assert op not in chain, "a CAS answered 409 took effect"
    # Real-time order: an operation acknowledged before another started comes first.
    for a in chain:
        for b in chain:
            if a.result and a.result[0] == "ok" and a.end is not None and a.end < b.start:
                assert chain.index(a) < chain.index(b)


# -- slot storage ----------------------------------------------------------------------------


def test_slots_persist_and_old_ref_files_still_read(tmp_path: Path) -> None:
    a = dg.of_bytes(b"a")
    store = BlobStore(tmp_path)
    (store.ref_root / "old%tag").write_text(a + "\n")  # the format before versioned refs
    assert store.ref_slot("old/tag") == Slot(value=a)

    async def go() -> None:
        slot, ok = await store.ref_step("new/x", lambda s: refs.prepare(s, Ballot(3, "n")))
        assert ok and slot == Slot(promised=Ballot(3, "n"))
        slot, ok = await store.ref_step("new/x", lambda s: refs.accept(s, Ballot(2, "m"), a))
        assert not ok

    asyncio.run(go())
    again = BlobStore(tmp_path)  # what a restarted node sees
    assert again.ref_slot("new/x") == Slot(promised=Ballot(3, "n"))
    assert again.ref_slots("new/") == {"new/x": Slot(promised=Ballot(3, "n"))}
    assert set(again.ref_slots()) == {"new/x", "old/tag"}
    assert not [p for p in store.ref_root.iterdir() if p.name.startswith(".tmp-")]


def test_a_damaged_slot_file_is_a_clear_error(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    (store.ref_root / "bad").write_text('{"promised": [1, "n"]')
    with pytest.raises(StoreError, match="ref file 'bad' is damaged"):
        store.ref_slot("bad")
    assert store.ref_slots() == {}  # in listings the node abstains on it
