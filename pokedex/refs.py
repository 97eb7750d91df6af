"""Refs as linearizable registers: the pure half of CASPaxos (ballots, acceptor rules, choices).

Why consensus: a ref is a mutable name (a run's snapshot, a registry tag) that clients update
with compare-and-set. When one "primary" node decided every CAS and mirrored the result
best-effort, losing that node split the ref: the next node decided from missing or stale
data, and the returning primary's old value won. Refs must instead behave like one register
that never forgets an acknowledged update and never accepts a stale CAS, as long as a
majority of nodes is up; with a majority down they must refuse clearly rather than guess.

Design (CASPaxos, Rystsov 2018: single-decree Paxos re-run for every change of one register):

* Every node is an *acceptor* for every ref (refs are tiny, so all nodes hold all refs; a
  majority of the cluster is the quorum). Per ref it keeps a :class:`Slot`: the highest
  ballot it promised, the ballot of the value it last accepted, and that value (``None`` is
  "unset"; a deleted ref keeps its slot as a tombstone so the deletion has a version too,
  until a prune pass drops it: see "Pruning tombstones" below).
  A slot is written to disk (atomically, fsync'ed) before the acceptor answers.
* Any node can be the *proposer* of a client's request. A ballot is ``(counter, node URL)``:
  totally ordered and unique per proposer. A change is one function from the current value
  to the new one (set, CAS, delete; a read is the identity):

  1. prepare(ballot) to all nodes; an acceptor promises if the ballot is above everything
     it has promised or accepted (:func:`prepare`), and replies with its slot either way.
  2. With promises from a majority, the current value is the one with the highest accepted
     ballot among them (:func:`current`): any value acknowledged earlier was accepted by a
     majority, which intersects this one, and later ballots only ever carry it forward.
  3. Apply the change (:func:`decide`). A CAS mismatch is the 409, and the current value is
     still written back in step 4, which is the read repair: whatever the client was told is
     now chosen, so no later request can see an older value.
  4. accept(ballot, value) to all nodes (:func:`accept`); a majority of acceptances chooses
     the value and the request is acknowledged.

  A proposer that meets a higher ballot retries with a higher one after a random pause.
  To make that rare, a node hands each write to the ref's first reachable node by rendezvous
  ranking, whose proposer serves one ref's writes in turn; safety never depends on this, so
  while nodes come and go two proposers may compete, and only lose time.
  A request whose accept round was not confirmed may still have been chosen; the retry
  round recognizes its own value (success) and otherwise answers "outcome unknown" rather
  than a 409 that might be false (:func:`decide` with ``resent``).
* A plain read first *peeks* at every node's slot (no promise, no disk write): if a majority
  reports the same accepted ballot and value, that value is chosen and at least as new as
  anything acknowledged before the read began (:func:`agreed`). Otherwise the read runs the
  identity change, which also repairs the lagging nodes. Listing does the same per name
  (:func:`merge`).

Proposer counters are not persisted: after a restart the first ballots are refused by
acceptors that promised higher ones, the refusals carry those ballots, and the proposer jumps
past them. Reusing an old ``(counter, node)`` cannot choose a second value: if its old use
got as far as an accept, a majority had promised it, every new majority contains one of
those acceptors, and they refuse a ballot that is not above their promise.

Pruning tombstones: a deleted ref's slot ``(promised p, accepted bt, value None)`` cannot simply
be forgotten. If some node still held an older value ``(b0 < bt, v)``, a majority made of that
node and nodes that forgot the tombstone would choose ``v`` again (a deleted ref comes back);
and a node that forgot its promise could accept an old ballot it had refused. So a prune pass
(:meth:`.RefQuorum.repair`, run by the periodic repair loop and ``pokedex repair``) prunes a
name only when **every** node of the cluster answered its listing and all hold a tombstone
with the same accepted ballot ``bt`` (:func:`tombstones`), and then only on nodes where that
slot is unchanged since the listing and older than a grace period. The node removing the file
first raises and fsyncs a node-wide *promise floor* to at least ``max(p, bt)`` (:func:`floor`);
an absent slot then reads as ``(promised=floor, accepted=ZERO, value=None)``, so the ordinary
rules refuse prepares not above the floor and accepts below it, and the refusal carries the
floor for the proposer to jump past. Why no history changes:

* Raising a promise is always safe in Paxos; the floor keeps every promise the slot ever gave.
* Accepted ballots only grow, except by pruning, which sets them to ZERO. All nodes held
  ``bt`` at the listing, so afterwards every node's accepted ballot is ZERO (pruned), ``bt``,
  or above ``bt``. A prepare with ballot ``b' <= bt`` is refused by every pruned node (the
  floor is at least ``bt``), so its majority reports pre-prune state: the classic argument.
* A prepare with ``b' > bt`` that a node granted cannot report an accepted ballot below ``bt``:
  that node would have promised ``b'`` before accepting ``bt < b'``, which it refuses. So its
  majority reports ZERO (pruned), the tombstone, or values accepted above ``bt``. If the last
  chosen value was chosen at a ballot ``<= bt`` it is None (everything accepted at ``bt`` or
  later carries the chosen value), and all those reports carry None: None is picked. If it was
  chosen above ``bt``, the majority that accepted it did so after the listing; none of them can
  have pruned *this* tombstone afterwards (their slot changed, the re-check under the store's
  lock refuses), so the intersecting acceptor reports it and the classic argument holds.
* Accepting a ballot equal to the floor stays allowed (an acceptor may accept the ballot it
  promised): refusing it would be safe too, but would cost the proposer that holds exactly
  that promise a round. A late duplicate of the ``bt`` accept recreates the same tombstone.
* Pruning on only some nodes (a crash mid-pass, one node's slot younger than the grace) is
  covered by the same argument; the next repair rewrites such a name as a tombstone at a new
  ballot on every node, and a later pass prunes it. Reads and listings already treat None as
  unset, so a pruned ref is never shown. A node that loses its disk loses its floor too: as
  before, Paxos assumes acceptors keep what they fsync'ed.

Availability: ``--replicas`` places blobs only; refs need a majority of *all* nodes, so one
node is its own majority, two nodes need both, three tolerate the loss of one.

This module is pure (no I/O): the store persists slots, :mod:`.refquorum` runs the rounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import digest as dg

MAX_NODE_ID = 2048  # characters of a node URL inside a ballot


class WireError(ValueError):
    """A ballot, slot or peer request that does not have the documented shape."""


@dataclass(frozen=True, order=True)
class Ballot:
    """A proposal number: ordered by counter, ties broken by the proposing node's URL."""

    counter: int
    node: str


ZERO = Ballot(0, "")  # below every real ballot: "never promised / never accepted"


@dataclass(frozen=True)
class Slot:
    """One acceptor's state for one ref."""

    promised: Ballot = ZERO
    accepted: Ballot = ZERO
    value: str | None = None


@dataclass(frozen=True)
class Change:
    """What a client asked for: ``new`` (None deletes), only if the ref is ``expected`` when
    ``check`` (``expected=None`` then means "only if unset")."""

    new: str | None
    check: bool = False
    expected: str | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of applying a :class:`Change` to the current value.

    ``value`` is what the accept round writes; ``status`` is ``"ok"``, ``"conflict"`` (the
    409) or ``"unknown"`` (an earlier round of the same request may have been chosen).
    """

    value: str | None
    status: str


def quorum(nodes: int) -> int:
    """Acceptors needed for a majority of ``nodes``."""
    return nodes // 2 + 1


def prepare(slot: Slot, ballot: Ballot) -> tuple[Slot, bool]:
    """Acceptor, phase 1: promise ``ballot`` if it is above all it promised or accepted."""
    if ballot <= slot.promised or ballot <= slot.accepted:
        return slot, False
    return replace(slot, promised=ballot), True


def accept(slot: Slot, ballot: Ballot, value: str | None) -> tuple[Slot, bool]:
    """Acceptor, phase 2: accept unless a higher ballot was promised or one as high accepted."""
    if ballot < slot.promised or ballot <= slot.accepted:
        return slot, False
    return Slot(promised=ballot, accepted=ballot, value=value), True


def highest_seen(slots: Iterable[Slot]) -> int:
    """The largest ballot counter in ``slots``; a proposer must go above it."""
    return max((max(s.promised.counter, s.accepted.counter) for s in slots), default=0)


def _rank(slot: Slot) -> tuple[Ballot, str]:
    # Equal ballots carry equal values except for slots converted from the old ref files
    # (all at ZERO); the value breaks that tie the same way on every node.
    return slot.accepted, slot.value or ""


def current(promises: Iterable[Slot]) -> Slot:
    """Among a majority's promises, the slot with the highest accepted ballot."""
    return max(promises, key=_rank, default=Slot())


def decide(change: Change | None, value: str | None, resent: bool = False) -> Decision:
    """Apply ``change`` (None: a read, the identity) to the current ``value``.

    ``resent``: an earlier accept round of this same request proposed ``change.new`` and was
    not confirmed. Finding that value in place means the round was chosen; finding the change
    still applicable means it was not; anything else leaves the outcome unknown.
    """
    if change is None:
        return Decision(value, "ok")
    if resent and value == change.new:
        return Decision(value, "ok")
    if change.check and value != change.expected:
        return Decision(value, "unknown" if resent else "conflict")
    return Decision(change.new, "ok")


def agreed(slots: Iterable[Slot], need: int) -> Slot | None:
    """The chosen slot if at least ``need`` of ``slots`` hold the highest one; else None."""
    slots = list(slots)
    if not slots:
        return None
    top = current(slots)
    same = sum(1 for s in slots if _rank(s) == _rank(top))
    return top if same >= need else None


def merge(
    listings: Iterable[Mapping[str, Slot]], need: int, everyone: bool = False
) -> tuple[dict[str, str], list[str]]:
    """Combine the slot listings of several acceptors.

    Returns (settled name → value, names to settle by a read round). A name is settled when
    ``need`` listings agree on its highest slot (a listing lacking the name counts as an empty
    slot); with ``everyone`` only when all of them do, which is what repair wants. Deleted
    refs are settled but left out of the values.
    """
    listings = list(listings)
    names = sorted({n for listing in listings for n in listing})
    values: dict[str, str] = {}
    unsettled: list[str] = []
    for name in names:
        slots = [listing.get(name, Slot()) for listing in listings]
        top = agreed(slots, len(slots) if everyone else need)
        if top is None:
            unsettled.append(name)
        elif top.value is not None:
            values[name] = top.value
    return values, unsettled


def tombstones(listings: Iterable[Mapping[str, Slot]], nodes: int) -> list[str]:
    """Names that may be pruned: all ``nodes`` listings hold the name with value None and
    the same accepted ballot (see the design note). Fewer listings than nodes: none."""
    listings = list(listings)
    if len(listings) < nodes or not listings:
        return []
    out = []
    for name, slot in listings[0].items():
        if slot.value is None and all(
            (s := listing.get(name)) is not None and s.value is None and s.accepted == slot.accepted
            for listing in listings[1:]
        ):
            out.append(name)
    return out


def floor(before: Ballot, slot: Slot) -> Ballot:
    """The node's promise floor once it forgets ``slot``: no ballot it promised or accepted
    there may be granted again."""
    return max(before, slot.promised, slot.accepted)


# -- wire and disk encoding --------------------------------------------------------------------


def ballot_to_wire(b: Ballot) -> list[Any]:
    return [b.counter, b.node]


def ballot_from_wire(value: Any) -> Ballot:
    """``[counter, node]`` → Ballot; WireError if it is anything else."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or type(value[0]) is not int
        or value[0] < 0
        or not isinstance(value[1], str)
        or len(value[1]) > MAX_NODE_ID
    ):
        raise WireError(f"a ballot is [counter >= 0, node URL], not {str(value)[:100]!r}")
    return Ballot(value[0], value[1])


def _value_from_wire(value: Any) -> str | None:
    if value is not None and not dg.is_digest(value):
        raise WireError(f"a ref value is sha256:<64 hex> or null, not {str(value)[:100]!r}")
    return value


def slot_to_wire(s: Slot) -> dict[str, Any]:
    return {
        "promised": ballot_to_wire(s.promised),
        "accepted": ballot_to_wire(s.accepted),
        "value": s.value,
    }


def slot_from_wire(value: Any) -> Slot:
    """The inverse of :func:`slot_to_wire`; WireError on anything malformed."""
    if not isinstance(value, dict):
        raise WireError("a slot is an object with promised, accepted and value")
    try:
        promised, accepted = value["promised"], value["accepted"]
        raw = value["value"]
    except KeyError as e:
        raise WireError(f"a slot needs {e.args[0]!r}") from None
    return Slot(ballot_from_wire(promised), ballot_from_wire(accepted), _value_from_wire(raw))


def parse_round(body: Any) -> tuple[str, Ballot, str | None]:
    """A peer's prepare/accept request ``{"name", "ballot", "value"?}``; WireError if bad.

    The name is checked by the caller (it owns the naming rules).
    """
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise WireError('want {"name": ref, "ballot": [counter, node], "value": digest|null}')
    return body["name"], ballot_from_wire(body.get("ballot")), _value_from_wire(body.get("value"))


def answer_to_wire(slot: Slot, ok: bool) -> dict[str, Any]:
    """An acceptor's reply to prepare/accept: whether it complied, and its slot either way."""
    return {"ok": ok, "slot": slot_to_wire(slot)}


def answer_from_wire(value: Any) -> tuple[Slot, bool]:
    """The inverse of :func:`answer_to_wire`; WireError on anything malformed."""
    if not isinstance(value, dict) or not isinstance(value.get("ok"), bool):
        raise WireError('an acceptor answers {"ok": bool, "slot": {...}}')
    return slot_from_wire(value.get("slot")), value["ok"]


def listing_from_wire(value: Any) -> dict[str, Slot]:
    """An acceptor's ``{"slots": {name: slot}}``; WireError on anything malformed."""
    if not isinstance(value, dict) or not isinstance(value.get("slots"), dict):
        raise WireError('an acceptor lists {"slots": {name: slot, ...}}')
    return {str(k): slot_from_wire(v) for k, v in value["slots"].items()}
