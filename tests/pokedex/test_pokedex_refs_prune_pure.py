"""Tombstone pruning without a server: a model check of histories with deletes and prune
passes under message loss, the store's promise floor, and which tombstones qualify.

The model runs the proposer of :mod:`test_pokedex_refs_pure` against acceptors that keep
their slot as :class:`~pokedex.store.BlobStore` does (a file, or after pruning only the
node's floor), with prune passes as :meth:`pokedex.refquorum.RefQuorum.repair` runs them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_pokedex_refs_pure import Op, Round, proposer

from pokedex import digest as dg
from pokedex import refs
from pokedex.refs import Ballot, Change, Slot
from pokedex.store import BlobStore


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


def test_a_node_missing_the_tombstone_blocks_pruning_which_would_bring_the_value_back() -> None:
    """Why every node must hold the tombstone: here the deletion's accept never reached the
    third node. Pruning on the two that agree (a majority) would let the old value win."""
    accs = [Acceptor() for _ in range(3)]
    v = dg.of_bytes(b"v")

    def run(pid: str, change: Change | None, skip_accept: int | None = None) -> str | None:
        gen = proposer(pid, change, 3)  # type: ignore[arg-type]
        r = next(gen)
        try:
            while True:
                skip = skip_accept if r[0] == "accept" else None
                r = gen.send([a.step(r) for i, a in enumerate(accs) if i != skip])
        except StopIteration as stop:
            return stop.value[1]

    run("p1", Change(v, check=True, expected=None))
    run("p2", Change(None, check=True, expected=v), skip_accept=2)
    assert refs.tombstones([{"r": a.slot} for a in accs], 3) == []
    assert refs.tombstones([{"r": a.slot} for a in accs[:2]], 2) == ["r"]  # the majority's view
    for a in accs[:2]:  # what pruning on that view would do
        a.prune(a.slot)
    assert run("reader", None) == v, "the deleted value came back"
