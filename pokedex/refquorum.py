"""Refs over the cluster: this node's acceptor, and the proposer that runs clients' requests.

The rules live in :mod:`.refs` (pure) and the slots on disk in :mod:`.store`; this module
adds the effects in between: it sends each round to every node (itself directly, the peers
through :meth:`.Cluster.ask_acceptor`, each call with a timeout), counts a majority, and
retries with higher ballots when concurrent proposers collide. Its repair pass (the repair
loop and ``POST /repair``) also prunes the tombstones of deleted refs that every node agrees
on. See :mod:`.refs` for why this makes refs linearizable and what happens when nodes fail.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from . import names, refs
from .cluster import Cluster
from .durable import StoreError
from .refs import Ballot, Change, Decision, Slot
from .replies import ApiError, decode_body
from .store import BlobStore

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTENTION_DEADLINE = 10.0  # seconds a request keeps retrying against concurrent writers
UNREACHABLE_DEADLINE = 2.0  # seconds it keeps retrying while no majority answers
MAX_PAUSE = 0.3  # seconds, the cap of the random pause between rounds
TOMBSTONE_GRACE = 3600.0  # seconds a deleted ref's slot is kept before a prune pass may drop it
PRUNE_BATCH = 1000  # names per prune request (each slot is well under 1 KB of JSON)


class NoQuorum(Exception):
    """No majority of nodes took part in time: nothing can be decided (HTTP 503)."""


class OutcomeUnknown(Exception):
    """A write may or may not have been applied (HTTP 503): its accept round went
    unconfirmed and the ref has moved on since."""


class RefQuorum:
    """The acceptor and proposer of one node. ``cluster.nodes`` are every ref's acceptors."""

    def __init__(
        self, cluster: Cluster, store: BlobStore, tombstone_grace: float = TOMBSTONE_GRACE
    ) -> None:
        self.cluster = cluster
        self.store = store
        self.tombstone_grace = tombstone_grace
        self.counter = 0
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._stragglers: set[asyncio.Future[Any]] = set()

    @property
    def need(self) -> int:
        return refs.quorum(len(self.cluster.nodes))

    async def close(self) -> None:
        """Stop the calls still running in the background (at node shutdown)."""
        for task in list(self._stragglers):
            task.cancel()
        await asyncio.gather(*self._stragglers, return_exceptions=True)

    # -- acceptor (this node's own slots; also served to peers under /peer/refs) -------------

    async def prepare(self, name: str, ballot: Ballot) -> tuple[Slot, bool]:
        return await self.store.ref_step(name, functools.partial(refs.prepare, ballot=ballot))

    async def accept(self, name: str, ballot: Ballot, value: str | None) -> tuple[Slot, bool]:
        step = functools.partial(refs.accept, ballot=ballot, value=value)
        return await self.store.ref_step(name, step)

    # -- talking to all acceptors ------------------------------------------------------------

    async def _until(
        self, calls: list[Awaitable[T | None]], enough: Callable[[list[T]], bool]
    ) -> list[T]:
        """The answers of ``calls`` (run together; None means "no answer"), returned once
        ``enough`` of them are in or all are done. The rest run on in the background, so a
        slow node still gets the message while a hung one holds up no request (each call has
        its own timeout)."""
        pending = {asyncio.ensure_future(c) for c in calls}
        got: list[T] = []
        while pending and not enough(got):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            got.extend(a for a in (t.result() for t in done) if a is not None)
        for task in pending:
            self._stragglers.add(task)
            task.add_done_callback(self._stragglers.discard)
        return got

    async def _step_on(
        self, node: str, phase: str, name: str, ballot: Ballot, value: str | None
    ) -> tuple[Slot, bool] | None:
        """One prepare/accept on one node; None if it did not answer."""
        if node == self.cluster.self_url:
            try:
                if phase == "prepare":
                    return await self.prepare(name, ballot)
                return await self.accept(name, ballot, value)
            except StoreError:
                log.exception("local acceptor failed for ref %r", name)
                return None
        body = {"name": name, "ballot": refs.ballot_to_wire(ballot), "value": value}
        answer = await self.cluster.ask_acceptor(node, "POST", f"/peer/refs/{phase}", body)
        try:
            return None if answer is None else refs.answer_from_wire(answer)
        except refs.WireError:
            return None

    async def _round(
        self, phase: str, name: str, ballot: Ballot, value: str | None, everyone: bool
    ) -> list[tuple[Slot, bool]]:
        """Run one phase on every node: the answers, once a majority complied (with
        ``everyone``: once all answered or timed out)."""
        got = await self._until(
            [self._step_on(n, phase, name, ballot, value) for n in self.cluster.nodes],
            lambda got: not everyone and sum(ok for _, ok in got) >= self.need,
        )
        self.counter = max(self.counter, refs.highest_seen(s for s, _ in got))
        return got

    async def _listings(
        self, query: dict[str, str], everyone: bool = False
    ) -> dict[str, dict[str, Slot]]:
        """Slots for ``{"prefix": P}`` or ``{"name": N}`` from the nodes that answered (node →
        slots): all of them with ``everyone``, else as soon as a majority agrees on every name."""

        async def one(node: str) -> tuple[str, dict[str, Slot]] | None:
            if node == self.cluster.self_url:
                try:
                    if "name" in query:
                        return node, {query["name"]: self.store.ref_slot(query["name"])}
                    return node, self.store.ref_slots(query["prefix"])
                except StoreError:
                    log.exception("local acceptor cannot list refs")
                    return None
            answer = await self.cluster.ask_acceptor(node, "GET", f"/peer/refs?{urlencode(query)}")
            try:
                return None if answer is None else (node, refs.listing_from_wire(answer))
            except refs.WireError:
                return None

        def settled(got: list[tuple[str, dict[str, Slot]]]) -> bool:
            slots = [listing for _, listing in got]
            return not everyone and len(got) >= self.need and not refs.merge(slots, self.need)[1]

        got = await self._until([one(n) for n in self.cluster.nodes], settled)
        if len(got) < self.need:
            raise NoQuorum(self._too_few(len(got)))
        return dict(got)

    def _too_few(self, answered: int) -> str:
        return (
            f"only {answered} of {len(self.cluster.nodes)} pokedex nodes answered; refs need "
            f"a majority ({self.need}) up and reachable"
        )

    # -- proposer ----------------------------------------------------------------------------

    async def change(
        self, name: str, change: Change | None, *, resent: bool = False, everyone: bool = False
    ) -> Decision:
        """Run ``change`` (None: a repairing read) on ref ``name`` until a majority accepts.

        ``resent``: this request may already have been carried out elsewhere (a node it was
        handed to vanished). ``everyone``: return only once every reachable node has the
        decided value (repair), not as soon as a majority has.

        Returns the decision (``status`` "ok" or "conflict"). Raises :class:`NoQuorum` when
        no majority answers in time, :class:`OutcomeUnknown` as described there.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        rounds = 0
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:  # this node's own requests for one ref take turns, not ballots
            while True:
                ballot = Ballot(self.counter + 1, self.cluster.self_url)
                promises = await self._round("prepare", name, ballot, None, everyone)
                granted = [s for s, ok in promises if ok]
                answered = len(promises)
                if len(granted) >= self.need:
                    decision = refs.decide(change, refs.current(granted).value, resent)
                    accepts = await self._round("accept", name, ballot, decision.value, everyone)
                    answered = len(accepts)
                    took = sum(ok for _, ok in accepts)
                    if took >= self.need:
                        if decision.status == "unknown":
                            raise OutcomeUnknown(
                                f"ref {name!r}: the write may or may not have been applied "
                                "(a node failed or a concurrent writer intervened mid-write); "
                                f"the ref is now {decision.value or 'unset'}"
                            )
                        return decision
                    # Accepted anywhere, or unanswered: a later round may carry it forward.
                    maybe_kept = took > 0 or answered < len(self.cluster.nodes)
                    if change is not None and decision.status == "ok" and maybe_kept:
                        resent = True
                waited = loop.time() - started
                if answered < self.need and waited > UNREACHABLE_DEADLINE:
                    raise NoQuorum(f"ref {name!r}: {self._too_few(answered)}")
                if waited > CONTENTION_DEADLINE:
                    raise NoQuorum(
                        f"ref {name!r}: no decision within {CONTENTION_DEADLINE:.0f} s "
                        "(too many concurrent writers, or nodes failing)"
                    )
                rounds += 1
                await asyncio.sleep(random.uniform(0, min(MAX_PAUSE, 0.005 * 2**rounds)))

    async def read(self, name: str) -> str | None:
        """The ref's value: from a majority that agrees, else by a repairing read round."""
        listings = await self._listings({"name": name})
        top = refs.agreed((listing.get(name, Slot()) for listing in listings.values()), self.need)
        if top is not None:
            return top.value
        return (await self.change(name, None)).value

    async def settle(
        self,
        prefix: str,
        *,
        everyone: bool = False,
        listings: dict[str, dict[str, Slot]] | None = None,
    ) -> tuple[dict[str, str], int]:
        """Decided values of the refs under ``prefix``, and how many names needed a
        repairing read round: those a majority disagrees on (with ``everyone``: those any
        answering node lags on). ``listings``: the nodes' slots, if the caller has them."""
        if listings is None:
            listings = await self._listings({"prefix": prefix}, everyone)
        values, unsettled = refs.merge(listings.values(), self.need, everyone)
        for name in unsettled:
            value = (await self.change(name, None, everyone=everyone)).value
            if value is not None:
                values[name] = value
        return dict(sorted(values.items())), len(unsettled)

    async def repair(self) -> dict[str, int]:
        """Bring every reachable node's ref slots up to date, then prune the tombstones every
        node agrees on (run by the repair loop and ``POST /repair``; see :mod:`.refs`)."""
        listings = await self._listings({"prefix": ""}, everyone=True)
        values, repaired = await self.settle("", everyone=True, listings=listings)
        doomed = refs.tombstones(listings.values(), len(self.cluster.nodes))
        pruned = await asyncio.gather(
            *(self._prune_on(n, {k: s[k] for k in doomed}) for n, s in listings.items())
        )
        return {"refs": len(values), "refs_repaired": repaired, "refs_pruned": min(pruned)}

    async def _prune_on(self, node: str, slots: dict[str, Slot]) -> int:
        """Ask one node to forget these tombstones (as it listed them) if they are older than
        the grace period by its own clock; how many it did."""
        done = 0
        items = sorted(slots.items())
        for i in range(0, len(items), PRUNE_BATCH):
            batch = dict(items[i : i + PRUNE_BATCH])
            if node == self.cluster.self_url:
                done += await self.store.prune_refs(batch, time.time() - self.tombstone_grace)
                continue
            body = {
                "slots": {k: refs.slot_to_wire(v) for k, v in batch.items()},
                "grace": self.tombstone_grace,
            }
            answer = await self.cluster.ask_acceptor(node, "POST", "/peer/refs/prune", body)
            if not isinstance(answer, dict) or type(answer.get("pruned")) is not int:
                break
            done += answer["pruned"]
        return done


def add_acceptor_routes(app: web.Application, quorum: RefQuorum) -> None:
    """Mount this node's acceptor for its peers' proposers (``/peer/refs...``)."""

    async def step(request: web.Request) -> web.Response:
        body = decode_body(request.content_type, await request.read())
        try:
            name, ballot, value = refs.parse_round(body)
        except refs.WireError as e:
            raise ApiError(400, "BAD_BODY", str(e)) from None
        names.check_ref(name)
        if request.match_info["phase"] == "prepare":
            slot, ok = await quorum.prepare(name, ballot)
        else:
            slot, ok = await quorum.accept(name, ballot, value)
        return web.json_response(refs.answer_to_wire(slot, ok))

    async def slots(request: web.Request) -> web.Response:
        if "name" in request.query:
            name = names.check_ref(request.query["name"])
            found = {name: quorum.store.ref_slot(name)}
        else:
            found = quorum.store.ref_slots(request.query.get("prefix", ""))
        return web.json_response({"slots": {k: refs.slot_to_wire(v) for k, v in found.items()}})

    async def prune(request: web.Request) -> web.Response:
        body = decode_body(request.content_type, await request.read())
        try:
            listed = refs.listing_from_wire(body)
            grace = body.get("grace")
            if type(grace) not in (int, float) or not 0 <= grace < math.inf:
                raise refs.WireError("grace is seconds, at least 0")
        except refs.WireError as e:
            raise ApiError(400, "BAD_BODY", str(e)) from None
        for name in listed:
            names.check_ref(name)
        pruned = await quorum.store.prune_refs(listed, time.time() - grace)
        return web.json_response({"pruned": pruned})

    app.router.add_post("/peer/refs/{phase:prepare|accept}", step)
    app.router.add_post("/peer/refs/prune", prune)
    app.router.add_get("/peer/refs", slots)
