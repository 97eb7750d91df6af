"""The ref consensus rules without a server: codecs, acceptor transitions, and a model check.

The model check runs the proposer algorithm of :mod:`pokedex.refquorum` over the pure rules of
:mod:`pokedex.refs` with hypothesis choosing the interleaving of messages, which of them are
lost, and when operations start, then checks that the history of compare-and-set operations is
linearizable.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
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


# -- model check: deletes and tombstone pruning ----------------------------------------------


@dataclass
class Acceptor:
    """One node's slot for the register, as :class:`BlobStore` keeps it: a file (``present``)
    or, once pruned, nothing but the node's promise floor."""

    slot: Slot = field(default_factory=Slot)
    present: bool = False
    floor: Ballot = refs.ZERO

    def step(self, r: Round) -> tuple[Slot, bool]:
        phase, ballot, value = r
        before = self.slot if self.present else Slot(promised=self.floor)
        if phase == "prepare":
            after, ok = refs.prepare(before, ballot)
        else:
            after, ok = refs.accept(before, ballot, value)
        if after != before:
            self.slot, self.present = after, True
        return after, ok

    def prune(self, seen: Slot) -> None:
        """:meth:`BlobStore.prune_refs` for this one slot."""
        if self.present and self.slot == seen and seen.value is None:
            self.floor = refs.floor(self.floor, seen)
            self.slot, self.present = Slot(), False


@dataclass
class Pass:
    """A prune pass: lists every acceptor (each read may be lost), then asks each to prune."""

    pending: list[int]
    listed: dict[int, Slot] = field(default_factory=dict)
    pruning: bool = False


def linearizable(ops: list[Op], final: str | None) -> bool:
    """Whether some order of the operations, consistent with real time, explains every
    answer and the final value. Acknowledged and refused operations must appear (a refusal
    reports the value it saw); those with no definite answer may appear or not."""
    definite = [o for o in ops if o.result is not None and o.result[0] in ("ok", "conflict")]

    def fits(op: Op, state: str | None) -> bool:
        change, (status, seen) = op.change, op.result or ("", None)
        applies = not change.check or state == change.expected
        if status == "conflict":
            return not applies and seen == state
        return applies

    seen_states: set[tuple[frozenset[int], str | None]] = set()

    def search(placed: frozenset[int], state: str | None) -> bool:
        if (placed, state) in seen_states:
            return False
        seen_states.add((placed, state))
        if all(id(o) in placed for o in definite) and state == final:
            return True
        for op in ops:
            if id(op) in placed or not fits(op, state):
                continue
            if any(a.end < op.start for a in definite if id(a) not in placed and a.end):
                continue
            moved = state if op.result and op.result[0] == "conflict" else op.change.new
            if search(placed | {id(op)}, moved):
                return True
        return False

    return search(frozenset(), None)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(3, 4), st.integers(3, 6), st.integers(1, 4))
def test_histories_with_deletes_and_prunes_stay_linearizable(
    data: st.DataObject, n_acc: int, n_ops: int, n_passes: int
) -> None:
    """CAS, compare-and-delete and prune passes, interleaved at random with a quarter of all
    messages lost: pruning never brings a deleted value back, never lets a stale CAS
    through and never loses an acknowledged write.

    A create (expected unset) never runs while a delete does: a create retried after an
    unconfirmed accept re-applies if the ref became unset again meanwhile (ABA, a limit of
    the retry rule in :func:`refs.decide` whether or not anything is pruned)."""
    accs = [Acceptor() for _ in range(n_acc)]
    ops: list[Op] = []
    passes: list[Pass] = []
    known: list[str | None] = [None]
    clock = 0
    while len(ops) < n_ops or any(o.result is None for o in ops) or passes:
        clock += 1
        running_ops = [o for o in ops if o.result is None]
        running: list[Op | Pass] = [*running_ops, *passes]
        if (len(ops) < n_ops or n_passes) and (not running or data.draw(st.booleans(), "start")):
            if len(ops) >= n_ops or (n_passes and data.draw(st.integers(0, 2), "pass") == 0):
                n_passes -= 1
                passes.append(Pass(list(range(n_acc))))
                continue
            creating = any(o.change.expected is None for o in running_ops)
            deleting = any(o.change.new is None for o in running_ops)
            choices = [k for k in known if k is not None or not deleting]
            expected = data.draw(st.sampled_from(choices), "expected")
            delete = expected is not None and not creating and data.draw(st.booleans(), "delete")
            new = None if delete else dg.of_bytes(f"op{len(ops)}".encode())
            op = Op(Change(new, check=True, expected=expected), None, clock)  # type: ignore[arg-type]
            op.gen = proposer(f"p{len(ops)}", op.change, n_acc)
            op.advance(None, n_acc)
            ops.append(op)
            known.append(new)
            continue
        actor = data.draw(st.sampled_from(running), "actor")
        i = data.draw(st.sampled_from(actor.pending), "acceptor")
        actor.pending.remove(i)
        lost = data.draw(st.integers(0, 3), "lose") == 0
        if isinstance(actor, Pass):
            if not actor.pruning and accs[i].present:  # a lost listing only means no prune
                actor.listed[i] = accs[i].slot
            elif actor.pruning and not lost:
                accs[i].prune(actor.listed[i])
                event("a prune message was delivered")
            if not actor.pending:
                listings = [{"r": s} for s in actor.listed.values()]
                if not actor.pruning and refs.tombstones(listings, n_acc):
                    actor.pruning, actor.pending = True, list(range(n_acc))
                else:
                    passes.remove(actor)
            continue
        op = actor
        assert op.round is not None
        if not lost:
            op.answers.append(accs[i].step(op.round))
        if not op.pending:
            op.advance(op.answers, n_acc)
            if op.result is not None:
                op.end = clock
    reader = proposer("reader", None, n_acc)  # type: ignore[arg-type]
    r = next(reader)
    try:
        while True:
            r = reader.send([a.step(r) for a in accs])
    except StopIteration as stop:
        status, final = stop.value
    assert status == "ok"
    assert linearizable(ops, final), [(o.change, o.result, o.start, o.end) for o in ops]


def test_pruning_leaves_a_durable_promise_floor(tmp_path: Path) -> None:
    a, b5, b6 = dg.of_bytes(b"a"), Ballot(5, "n"), Ballot(6, "m")
    store = BlobStore(tmp_path)

    async def go() -> None:
        for name, value in (("gone", None), ("moved", None), ("set", a)):
            await store.ref_step(name, lambda s: refs.prepare(s, b5))
            await store.ref_step(name, lambda s, v=value: refs.accept(s, b5, v))  # type: ignore[misc]
        await store.ref_step("moved", lambda s: refs.prepare(s, b6))
        listed = {"gone": Slot(b5, b5), "moved": Slot(b5, b5), "set": Slot(b5, b5, a)}
        assert await store.prune_refs(listed, older_than=0) == 0  # none old enough
        # "moved" was written since it was listed, "set" is no tombstone: only "gone" goes.
        assert await store.prune_refs(listed, older_than=time.time() + 60) == 1
        assert set(store.ref_slots()) == {"moved", "set"}

    asyncio.run(go())
    again = BlobStore(tmp_path)  # the floor survives a restart
    assert again.ref_slot("gone") == again.ref_slot("never") == Slot(promised=b5)

    async def after() -> None:
        slot, ok = await again.ref_step("gone", lambda s: refs.prepare(s, Ballot(5, "n")))
        assert not ok and slot.promised == b5  # the refusal tells the proposer to jump past
        slot, ok = await again.ref_step("gone", lambda s: refs.prepare(s, Ballot(6, "a")))
        assert ok and slot == Slot(promised=Ballot(6, "a"))

    asyncio.run(after())


def test_tombstones_are_those_every_node_holds_alike() -> None:
    a, b1, b2 = dg.of_bytes(b"a"), Ballot(1, "n"), Ballot(2, "n")
    same = {"x": Slot(b2, b1), "y": Slot(b1, b1, a), "z": Slot(b1, b1)}
    other = {"x": Slot(b1, b1), "y": Slot(b1, b1, a), "z": Slot(b2, b2)}
    assert refs.tombstones([same, other, {"x": Slot(b1, b1)}], 3) == ["x"]
    assert refs.tombstones([same, other], 3) == []  # a node did not answer
    assert refs.tombstones([same, {}], 2) == []  # a node lacks it (pruned there already)
    assert refs.floor(refs.ZERO, Slot(b2, b1)) == b2
