"""Refs as clients see them: ``GET/PUT /refs/<name>`` and ``GET /refs?prefix=``.

The node-to-node half (acceptor rounds) is :mod:`.refquorum`'s; the rules are :mod:`.refs`'.
This is the part in front of them: it validates a client's request, hands a write to the
proposer the name's rendezvous ranking prefers, and turns the quorum's decision into an
HTTP answer. The registry (:mod:`.registry`) calls :meth:`RefApi.call` and
:meth:`RefApi.values` for its tags, so tags and refs share one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import names, refs
from .cluster import Cluster, PeerLost
from .refquorum import RefQuorum
from .replies import ApiError, decode_body, error_body, parse_ref_update


def _ref_name(request: web.Request) -> str:
    try:
        return names.check_ref(request.match_info["name"])
    except names.NameError_ as e:
        raise ApiError(400, "NAME_INVALID", str(e)) from None


@dataclass
class RefApi:
    """The client-facing ref routes of one node."""

    cluster: Cluster
    quorum: RefQuorum

    async def call(
        self, method: str, name: str, body: Any = None, *, here: bool = False
    ) -> tuple[int, Any]:
        """GET or PUT a ref through the cluster's majority; (HTTP status, JSON body).

        Any node can read. A write is handed to the first reachable node of the name's
        rendezvous ranking (``here``: a peer handed it to this node), so writers to one ref
        normally queue at one proposer instead of outbidding each other's ballots;
        correctness never depends on that (see :mod:`.refs`). Raises
        :class:`~.refquorum.NoQuorum` / :class:`~.refquorum.OutcomeUnknown` (the node's
        guard answers 503).
        """
        if method == "GET":
            value = await self.quorum.read(name)
            if value is None:
                return 404, error_body("/refs", "REF_UNKNOWN", f"ref {name!r} is not set")
            return 200, {"name": name, "digest": value}
        new, check, expected = parse_ref_update(body)
        resent = False
        for node in [] if here else self.cluster.ranked(f"ref:{name}"):
            if node == self.cluster.self_url:
                break
            try:
                answer = await self.cluster.delegate(node, f"/peer/refs/propose/{name}", body)
            except PeerLost:
                resent = True
                break
            if answer is not None:
                return answer
        change = refs.Change(new, check, expected)
        decision = await self.quorum.change(name, change, resent=resent)
        if decision.status == "conflict":
            current = decision.value
            detail = {"name": name, "current": current}
            message = f"ref {name!r} is {current or 'unset'}"
            return 409, error_body("/refs", "REF_CONFLICT", message, detail)
        return 200, {"name": name, "digest": new}

    async def values(self, prefix: str) -> dict[str, str]:
        """The decided value of every ref under ``prefix`` (sorted by name)."""
        decided, _ = await self.quorum.settle(prefix)
        return decided

    async def get(self, request: web.Request) -> web.Response:
        status, value = await self.call("GET", _ref_name(request))
        return web.json_response(value, status=status)

    async def put(self, request: web.Request) -> web.Response:
        name = _ref_name(request)
        body = decode_body(request.content_type, await request.read())
        parse_ref_update(body)  # refuse garbage before handing it to another node
        here = request.method == "POST"  # POST /peer/refs/propose/<name>: handed over by a peer
        status, value = await self.call("PUT", name, body, here=here)
        return web.json_response(value, status=status)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"refs": await self.values(request.query.get("prefix", ""))})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/refs", self.list)
        app.router.add_get("/refs/{name:.+}", self.get)
        app.router.add_put("/refs/{name:.+}", self.put)
        app.router.add_post("/peer/refs/propose/{name:.+}", self.put)
