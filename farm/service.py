"""The coordinator's HTTP face: thin aiohttp handlers over :class:`~farm.coordinator.Coordinator`.

Routes (every one but ``/v1/health`` needs ``Authorization: Bearer <token>``):

* ``POST /v1/runs`` — body: a msgpack ``run`` manifest; 201 with the run id.
* ``GET /v1/runs/{id}/events`` — websocket; binary msgpack ``events`` messages,
  each a batch of the events ready at that moment, until ``done``.
  The client may send ``cancel``; closing the socket before ``done`` cancels the run.
* ``POST /v1/runs/{id}/cancel``
* ``GET /v1/status`` — hosts, slots, runs and queued tests.
* ``POST /v1/images/check`` — msgpack ``check_image`` {image, python, pytest}; 200
  with ``problems``, one line per docker/ssh host whose test image cannot run
  this client's workers (:mod:`farm.images.check`); the client asks before it
  submits a run.
* ``GET /v1/info`` — protocol version and the farm's pokedex URLs (where
  clients push their snapshots).

Bodies are msgpack; a client that sends ``Accept: application/json`` gets JSON
status and error bodies, for humans with curl.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from aiohttp import WSMsgType, web

from farm.coordinator import Coordinator, event_batches
from farm.images.check import check_context, hosts_problems, parse_check_request
from farm.manifest import parse_manifest
from farm.protocol import (
    HEARTBEAT,
    MAX_MESSAGE_BYTES,
    MSGPACK,
    VERSION,
    ProtocolError,
    decode,
    encode,
)

COORDINATOR_KEY = web.AppKey("coordinator", Coordinator)
TOKEN_KEY = web.AppKey("token", str)


def reply(request: web.Request, message: dict[str, Any], status: int = 200) -> web.Response:
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(message, status=status)
    return web.Response(body=encode(message), status=status, content_type=MSGPACK)


def error(request: web.Request, status: int, text: str) -> web.Response:
    return reply(request, {"t": "error", "message": text}, status)


@web.middleware
async def require_token(request: web.Request, handler):
    if request.path == "/v1/health":
        return await handler(request)
    expected = request.app[TOKEN_KEY]
    given = request.headers.get("Authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        return error(request, 401, "missing or wrong token (send 'Authorization: Bearer <token>')")
    return await handler(request)


def _unknown_run(request: web.Request) -> web.Response:
    return error(request, 404, f"unknown run {request.match_info['run_id']!r}")


async def create_run(request: web.Request) -> web.Response:
    try:
        message = decode(await request.read())
        if message["t"] != "run":
            raise ProtocolError(f"expected a 'run' message, got {message['t']!r}")
        manifest = parse_manifest(message)
    except ProtocolError as exc:
        return error(request, 400, str(exc))
    run, unplaceable = request.app[COORDINATOR_KEY].submit(manifest, owner=request.remote or "")
    if run is None:
        names = "\n  ".join(f"{t.id} requires {dict(t.requires)}" for t in unplaceable[:50])
        more = f"\n  … and {len(unplaceable) - 50} more" if len(unplaceable) > 50 else ""
        return error(
            request,
            422,
            f"no host can run {len(unplaceable)} test(s):\n  {names}{more}\n"
            "(add hosts with those labels, or deselect the tests: -k, --psyduck-transform)",
        )
    return reply(request, {"t": "created", "run": run.id}, 201)


async def run_events(request: web.Request) -> web.StreamResponse:
    run = request.app[COORDINATOR_KEY].runs.get(request.match_info["run_id"])
    if run is None:
        return _unknown_run(request)
    if run.attached:
        return error(request, 409, f"run {run.id} already has a client attached")
    run.attached = True
    coordinator = request.app[COORDINATOR_KEY]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=1024 * 1024)
    await ws.prepare(request)

    async def listen() -> None:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            try:
                if decode(msg.data)["t"] == "cancel":
                    await coordinator.cancel(run.id, "cancelled by the client")
            except ProtocolError:
                await ws.close(code=1003, message=b"malformed message")
        await coordinator.cancel(run.id, "the client went away")

    listener = asyncio.create_task(listen())
    try:
        async for batch in event_batches(run):
            await ws.send_bytes(encode({"t": "events", "events": batch}))
    except (ConnectionError, RuntimeError):
        pass
    finally:
        listener.cancel()
        await coordinator.cancel(run.id, "the client went away")
        await ws.close()
    return ws


async def cancel_run(request: web.Request) -> web.Response:
    run = request.app[COORDINATOR_KEY].runs.get(request.match_info["run_id"])
    if run is None:
        return _unknown_run(request)
    await request.app[COORDINATOR_KEY].cancel(run.id, "cancelled by request")
    return reply(request, {"t": "cancelled", "run": run.id})


async def status(request: web.Request) -> web.Response:
    return reply(request, request.app[COORDINATOR_KEY].status())


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
    problems = await hosts_problems(hosts, image, expect, context)
    return reply(request, {"t": "image_checked", "problems": problems})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(coordinator: Coordinator, token: str) -> web.Application:
    app = web.Application(middlewares=[require_token], client_max_size=MAX_MESSAGE_BYTES)
    app[COORDINATOR_KEY] = coordinator
    app[TOKEN_KEY] = token
    app.router.add_post("/v1/runs", create_run)
    app.router.add_get("/v1/runs/{run_id}/events", run_events)
    app.router.add_post("/v1/runs/{run_id}/cancel", cancel_run)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/info", info)
    app.router.add_post("/v1/images/check", check_image)
    app.router.add_get("/v1/health", health)
    return app
