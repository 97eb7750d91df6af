"""The coordinator's HTTP face: thin aiohttp handlers over :class:`~farm.coordinator.Coordinator`.

Routes (every one but ``/v1/health`` needs ``Authorization: Bearer <token>``,
one of :class:`~farm.tokens.Tokens`; a run belongs to the name whose token
submitted it, and only that name or an admin may watch or cancel it):

* ``POST /v1/runs`` — body: a msgpack ``run`` manifest; 201 with the run id.
* ``GET /v1/runs/{id}/events`` — websocket; binary msgpack ``events`` messages,
  each a batch of the events ready at that moment (split where it would exceed
  :data:`~farm.protocol.MAX_MESSAGE_BYTES`), until ``done``.  The client
  sends ``ack`` for each batch it has taken: no more than
  :data:`~farm.protocol.STREAM_WINDOW` batches are ever unacknowledged.  The
  upgrade's ``X-Psyduck-Heartbeat`` header says how often the farm pings.
  The client may send ``cancel``, or ``stop`` (cancel once running workers finished
  their test and said farewell: :meth:`~farm.coordinator.Coordinator.stop`);
  closing the socket before ``done`` cancels the run.
* ``POST /v1/runs/{id}/cancel``
* ``POST /v1/warm`` — body: a msgpack ``warm`` manifest (a run without its tests);
  202.  An idle farm starts its container slots' workers while the client still
  collects (:meth:`~farm.coordinator.Coordinator.warm`); the run takes them only
  if they are the very workers it would get.  The embedded farm's client sends it.
* ``GET /v1/status`` — hosts, slots, runs and queued tests, each run's events
  waiting on disk (``spooled``, bytes) and whether that holds it back
  (``held_back``: :mod:`farm.spool`); ``slowest``: the
  :data:`SLOWEST` longest tests of the farm's duration history (:mod:`farm.history`).
* ``POST /v1/images/check`` — msgpack ``check_image`` {image, python, pytest,
  release}; 200 with ``problems``, one line per docker/ssh host whose test image
  cannot run this client's workers, and ``notes``, one line per difference from
  the client's machine of a usable one (:mod:`farm.images.check`); the client
  asks before it submits a run.
* ``GET /v1/info`` — protocol version and the farm's pokedex URLs (where
  clients push their snapshots).

Bodies are msgpack; a client that sends ``Accept: application/json`` gets JSON
status and error bodies, for humans with curl.  Every refusal — a wrong token,
a JSON body, a body over :data:`~farm.protocol.MAX_MESSAGE_BYTES` — is such an
error body, never aiohttp's plain text.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from aiohttp import WSMsgType, web

from farm.coordinator import Coordinator, Run, event_batches
from farm.images.check import check_context, hosts_verdicts, parse_check_request
from farm.intake import Unplaceable, read_run, read_warm
from farm.protocol import (
    HEARTBEAT,
    HEARTBEAT_HEADER,
    MAX_MESSAGE_BYTES,
    MSGPACK,
    STREAM_WINDOW,
    VERSION,
    ProtocolError,
    decode,
    encode,
    events_messages,
)
from farm.tokens import Holder, Tokens

COORDINATOR_KEY = web.AppKey("coordinator", Coordinator)
TOKENS_KEY = web.AppKey("tokens", Tokens)
#: Tests ``GET /v1/status`` lists from the duration history, slowest first.
SLOWEST = 10
#: Seconds between the pings of an event stream (``[farm] heartbeat``).
HEARTBEAT_KEY = web.AppKey("heartbeat", float)
#: Request key of the :class:`~farm.tokens.Holder` whose token the request carried.
HOLDER = web.RequestKey("holder", Holder)


def reply(request: web.Request, message: dict[str, Any], status: int = 200) -> web.Response:
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(message, status=status)
    return web.Response(body=encode(message), status=status, content_type=MSGPACK)


def error(request: web.Request, status: int, text: str) -> web.Response:
    return reply(request, {"t": "error", "message": text}, status)


@web.middleware
async def guard(request: web.Request, handler):
    """The token check, then refusals of bodies the farm cannot read, as error bodies."""
    if request.path == "/v1/health":
        return await handler(request)
    holder = request.app[TOKENS_KEY].holder(request.headers.get("Authorization"))
    if holder is None:
        return error(request, 401, "missing or wrong token (send 'Authorization: Bearer <token>')")
    request[HOLDER] = holder
    if request.body_exists and "json" in request.content_type:
        return error(request, 400, f"expected a msgpack body (Content-Type {MSGPACK}), got JSON")
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error(
            request,
            413,
            f"request body over the farm's limit of {MAX_MESSAGE_BYTES} bytes",
        )


def _owned_run(request: web.Request, action: str) -> tuple[Run, None] | tuple[None, web.Response]:
    """The run the path names, or the error to answer when it is unknown or someone else's."""
    run = request.app[COORDINATOR_KEY].runs.get(request.match_info["run_id"])
    if run is None:
        return None, error(request, 404, f"unknown run {request.match_info['run_id']!r}")
    holder = request[HOLDER]
    if not holder.may_touch(run.owner):
        return None, error(
            request,
            403,
            f"run {run.id} belongs to {run.owner!r}; {holder.name!r} may not {action} it "
            "(only its owner or an admin may)",
        )
    return run, None


async def create_run(request: web.Request) -> web.Response:
    """Admit a run: 201, 400 (malformed), 422 (no host has the labels) or 503 (those that
    have them are quarantined).  Reading and planning a huge manifest runs in a thread
    (:mod:`farm.intake`), so the farm keeps serving everyone else meanwhile."""
    try:
        manifest = await asyncio.to_thread(read_run, await request.read())
    except ProtocolError as exc:
        return error(request, 400, str(exc))
    try:
        run = await request.app[COORDINATOR_KEY].submit(manifest, owner=request[HOLDER].name)
    except Unplaceable as exc:
        return error(request, 503 if exc.waiting else 422, str(exc))
    return reply(request, {"t": "created", "run": run.id}, 201)


async def warm(request: web.Request) -> web.Response:
    """Start idle slots' workers for a run its client is still collecting: 202."""
    try:
        manifest = read_warm(await request.read())
    except ProtocolError as exc:
        return error(request, 400, str(exc))
    slots = request.app[COORDINATOR_KEY].warm(manifest)
    return reply(request, {"t": "warming", "slots": slots}, 202)


async def run_events(request: web.Request) -> web.StreamResponse:
    """Stream a run's events with flow control: at most :data:`STREAM_WINDOW` batches go
    out beyond those the client acknowledged (``ack``, one per batch it has taken).

    A client busy replaying results therefore never has more than a few batches
    coming its way, its network side keeps reading and answers the heartbeat's
    pings at once, and what it has not taken yet waits in the run's
    :class:`~farm.spool.EventSpool`, bounded in memory.
    """
    run, refusal = _owned_run(request, "watch")
    if refusal is not None:
        return refusal
    if run.attached:
        return error(request, 409, f"run {run.id} already has a client attached")
    run.attached = True
    coordinator = request.app[COORDINATOR_KEY]
    heartbeat = request.app[HEARTBEAT_KEY]
    ws = web.WebSocketResponse(heartbeat=heartbeat, max_msg_size=1024 * 1024)
    ws.headers[HEARTBEAT_HEADER] = f"{heartbeat:g}"
    await ws.prepare(request)
    credit = asyncio.BoundedSemaphore(STREAM_WINDOW)

    async def listen() -> None:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            try:
                kind = decode(msg.data)["t"]
                if kind == "ack":
                    credit.release()
                elif kind == "cancel":
                    await coordinator.cancel(run.id, "cancelled by the client")
                elif kind == "stop":
                    await coordinator.stop(run.id, "stopped by the client")
            except ProtocolError:
                await ws.close(code=1003, message=b"malformed message")
            except ValueError:
                await ws.close(code=1008, message=b"acknowledged more batches than were sent")

    async def send() -> None:
        batches = event_batches(run)
        while True:
            await credit.acquire()  # before taking events: those not sent stay in the spool
            batch = await anext(batches, None)
            if batch is None:
                return
            for index, message in enumerate(events_messages(batch)):
                if index:  # a batch too big for one message: each part is a batch to the client
                    await credit.acquire()
                await ws.send_bytes(message)

    sender = asyncio.create_task(send())
    listener = asyncio.create_task(listen())
    try:
        await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, listener):
            task.cancel()
        await asyncio.gather(sender, listener, return_exceptions=True)
        await coordinator.cancel(run.id, "the client went away")
        run.events.close()
        await ws.close()
    return ws


async def cancel_run(request: web.Request) -> web.Response:
    run, refusal = _owned_run(request, "cancel")
    if refusal is not None:
        return refusal
    await request.app[COORDINATOR_KEY].cancel(run.id, "cancelled by request")
    return reply(request, {"t": "cancelled", "run": run.id})


async def status(request: web.Request) -> web.Response:
    """The coordinator's status, and the slowest tests of its duration history if it keeps one."""
    coordinator = request.app[COORDINATOR_KEY]
    report = coordinator.status()
    for entry in report["runs"]:
        if (run := coordinator.runs.get(entry["id"])) is not None:
            # Bytes of events waiting on disk, and whether the run gets no shards for it.
            entry["spooled"] = run.events.spilled
            entry["held_back"] = run.events.over
    if coordinator.history is not None:
        try:
            report["slowest"] = await asyncio.to_thread(coordinator.history.slowest, SLOWEST)
        except sqlite3.Error as exc:
            report["history_problem"] = f"{coordinator.history.path}: {exc}"
    return reply(request, report)


async def info(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR_KEY]
    return reply(
        request, {"t": "info", "version": VERSION, "pokedex": list(coordinator.pokedex_urls)}
    )


async def check_image(request: web.Request) -> web.Response:
    try:
        image, expect = parse_check_request(decode(await request.read()))
    except ProtocolError as exc:
        return error(request, 400, str(exc))
    coordinator = request.app[COORDINATOR_KEY]
    hosts = [state.host for state in coordinator.hosts if not state.quarantined]
    context = check_context(coordinator.pokedex_urls, coordinator.pokedex_token)
    problems, notes = await hosts_verdicts(hosts, image, expect, context)
    return reply(request, {"t": "image_checked", "problems": problems, "notes": notes})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(
    coordinator: Coordinator, tokens: Tokens, heartbeat: float = HEARTBEAT
) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_MESSAGE_BYTES)
    app[COORDINATOR_KEY] = coordinator
    app[TOKENS_KEY] = tokens
    app[HEARTBEAT_KEY] = heartbeat
    app.router.add_post("/v1/runs", create_run)
    app.router.add_post("/v1/warm", warm)
    app.router.add_get("/v1/runs/{run_id}/events", run_events)
    app.router.add_post("/v1/runs/{run_id}/cancel", cancel_run)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/info", info)
    app.router.add_post("/v1/images/check", check_image)
    app.router.add_get("/v1/health", health)
    return app
