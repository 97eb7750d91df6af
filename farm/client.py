"""The farm protocol's client side: submit a run, stream its events, cancel it.

Used by the pytest plugin (against the embedded farm or a remote one) and by
the ``psyduck`` CLI.  Every call has a timeout; the event stream relies on
websocket heartbeats, because a test may legitimately stay silent for hours.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from farm.manifest import RunManifest, manifest_to_wire
from farm.protocol import ProtocolError, decode, encode
from farm.service import HEARTBEAT, MSGPACK

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 120.0


class FarmError(RuntimeError):
    """The farm refused or failed a request; the text is the farm's explanation."""


class RunStream:
    """The events of one run, and the means to cancel it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    events = decode(msg.data)["events"]
                except (ProtocolError, KeyError) as exc:
                    raise FarmError(f"the farm sent a malformed event: {exc}") from exc
                for event in events:
                    yield event
                    if event["t"] == "done":
                        return
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break
        raise FarmError("the farm closed the event stream before the run finished")

    async def cancel(self) -> None:
        if not self._ws.closed:
            await self._ws.send_bytes(encode({"t": "cancel"}))

    async def close(self) -> None:
        await self._ws.close()


class FarmClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FarmClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=CONNECT_TIMEOUT),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict:
        assert self._session is not None, "use FarmClient as an async context manager"
        try:
            async with self._session.request(
                method,
                self.url + path,
                data=None if body is None else encode(body),
                headers={"Content-Type": MSGPACK},
            ) as response:
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FarmError(f"cannot reach the farm at {self.url}: {exc}") from exc
        try:
            message = decode(data)
        except ProtocolError as exc:
            raise FarmError(
                f"the farm at {self.url} answered {response.status} with an unreadable body: {exc}"
            ) from exc
        if response.status >= 400:
            raise FarmError(f"the farm refused ({response.status}): {message.get('message')}")
        return message

    async def submit(self, manifest: RunManifest) -> str:
        return (await self._request("POST", "/v1/runs", manifest_to_wire(manifest)))["run"]

    async def attach(self, run_id: str) -> RunStream:
        assert self._session is not None
        try:
            ws = await self._session.ws_connect(
                f"{self.url}/v1/runs/{run_id}/events",
                heartbeat=HEARTBEAT,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FarmError(f"cannot attach to run {run_id} at {self.url}: {exc}") from exc
        return RunStream(ws)

    async def cancel(self, run_id: str) -> None:
        await self._request("POST", f"/v1/runs/{run_id}/cancel")

    async def info(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/info")

    async def status(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/status")
