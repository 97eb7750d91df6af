"""The farm protocol's client side: submit a run, stream its events, cancel it.

Used by the pytest plugin (against the embedded farm or a remote one) and by
the ``psyduck`` CLI.  It runs on :mod:`farm.http`, not aiohttp, so that the
user's pytest process never pays aiohttp's import.  Every call has a timeout;
the event stream counts on the farm's heartbeat pings, because a test may
legitimately stay silent for hours.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from farm import http
from farm.manifest import RunManifest, manifest_to_wire
from farm.protocol import (
    HEARTBEAT,
    HEARTBEAT_HEADER,
    MAX_MESSAGE_BYTES,
    MSGPACK,
    ProtocolError,
    decode,
    encode,
)

REQUEST_TIMEOUT = 120.0
ATTACH_TIMEOUT = 30.0
#: Seconds an image check may take: hosts may pull the image first (up to 11 minutes).
CHECK_TIMEOUT = 900.0


def idle_timeout(heartbeat: float) -> float:
    """Silence after which the event stream is taken for dead: the farm pings every *heartbeat*."""
    return 2 * heartbeat + 5.0


STREAM_IDLE_TIMEOUT = idle_timeout(HEARTBEAT)


class FarmError(RuntimeError):
    """The farm refused or failed a request; the text is the farm's explanation."""


def _refusal(url: str, status: int, body: bytes) -> FarmError:
    """The farm's explanation of a refusal, also when its body is not a protocol message
    (a proxy's page, or an older farm's plain text)."""
    try:
        message = decode(body).get("message")
    except ProtocolError:
        message = body[:500].decode("utf-8", "replace").strip() or "(the body was empty)"
    hint = (
        "\n(the token comes from --psyduck-token-file / --token-file, else PSYDUCK_TOKEN)"
        if status == 401
        else ""
    )
    return FarmError(f"the farm at {url} refused ({status}): {message}{hint}")


class RunStream:
    """The events of one run, and the means to acknowledge them and to cancel the run.

    The farm sends at most :data:`~farm.protocol.STREAM_WINDOW` batches beyond
    those acknowledged: iterating the stream acknowledges each batch once its
    events were all taken; :meth:`batches` leaves that to the caller
    (:mod:`farm.receiver` acknowledges a batch when its consumer takes it).
    """

    def __init__(self, ws: http.WebSocket, url: str) -> None:
        self._ws = ws
        self._url = url

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Each batch of events as it arrives, unacknowledged; the last ends with ``done``."""
        while True:
            try:
                data = await self._ws.receive()
            except http.HTTPError as exc:
                raise FarmError(f"lost the event stream from {self._url}: {exc}") from exc
            if data is None:
                break
            try:
                events = decode(data)["events"]
            except (ProtocolError, KeyError) as exc:
                raise FarmError(f"the farm sent a malformed event: {exc}") from exc
            yield events
            if any(event["t"] == "done" for event in events):
                return
        raise FarmError("the farm closed the event stream before the run finished")

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for events in self.batches():
            for event in events:
                yield event
                if event["t"] == "done":
                    return
            await self.ack()

    async def ack(self) -> None:
        """Tell the farm one more batch was taken, so it may send another."""
        await self._send({"t": "ack"})

    async def cancel(self) -> None:
        await self._send({"t": "cancel"})

    async def stop(self) -> None:
        """Cancel gracefully: running workers finish their test and say farewell first."""
        await self._send({"t": "stop"})

    async def _send(self, message: dict[str, Any]) -> None:
        if not self._ws.closed:
            try:
                await self._ws.send(encode(message))
            except http.HTTPError:
                pass  # the stream is gone; the farm cancels runs whose client left

    async def close(self) -> None:
        await self._ws.close()


class FarmClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def __aenter__(self) -> FarmClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass  # every request has its own connection, closed when it is answered

    async def _request(
        self, method: str, path: str, body: bytes = b"", timeout: float = REQUEST_TIMEOUT
    ) -> dict:
        try:
            response = await http.request(
                method,
                self.url + path,
                headers={**self._headers, "Content-Type": MSGPACK, "Accept": MSGPACK},
                body=body,
                timeout=timeout,
                max_bytes=MAX_MESSAGE_BYTES,
            )
        except http.HTTPError as exc:
            raise FarmError(f"cannot reach the farm at {self.url}: {exc}") from exc
        if response.status >= 400:
            raise _refusal(self.url, response.status, response.body)
        try:
            return decode(response.body)
        except ProtocolError as exc:
            raise FarmError(
                f"the farm at {self.url} answered {response.status} with an unreadable body: {exc}"
            ) from exc

    async def submit(self, manifest: RunManifest) -> str:
        body = encode(manifest_to_wire(manifest))
        if len(body) > MAX_MESSAGE_BYTES:
            # Refused here, not by the farm: it would only answer 413 after the
            # whole body had crossed the network.
            raise FarmError(
                f"the run's manifest ({len(manifest.tests):,} tests) is {len(body):,} bytes, "
                f"over the {MAX_MESSAGE_BYTES:,} a farm accepts; "
                "run fewer tests at once (-k, -m or a directory)"
            )
        return (await self._request("POST", "/v1/runs", body))["run"]

    async def warm(self, manifest: RunManifest) -> int:
        """Have an idle farm start its container slots' workers for *manifest* (a run
        without its tests, still being collected); how many slots it asked."""
        body = encode({**manifest_to_wire(manifest), "t": "warm", "tests": []})
        return int((await self._request("POST", "/v1/warm", body)).get("slots", 0))

    async def attach(self, run_id: str) -> RunStream:
        try:
            ws = await http.WebSocket.connect(
                f"{self.url}/v1/runs/{run_id}/events",
                headers=self._headers,
                timeout=ATTACH_TIMEOUT,
                max_bytes=MAX_MESSAGE_BYTES,
                idle_timeout=STREAM_IDLE_TIMEOUT,
            )
        except http.Refused as exc:
            raise _refusal(self.url, exc.response.status, exc.response.body) from exc
        except http.HTTPError as exc:
            raise FarmError(f"cannot attach to run {run_id} at {self.url}: {exc}") from exc
        heartbeat = ws.headers.get(HEARTBEAT_HEADER.lower(), "")
        try:
            ws.idle_timeout = idle_timeout(float(heartbeat))
        except ValueError:
            pass  # a farm that does not say: the default heartbeat's
        return RunStream(ws, self.url)

    async def cancel(self, run_id: str) -> None:
        await self._request("POST", f"/v1/runs/{run_id}/cancel")

    async def check_image(self, request: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The farm's verdict on a ``check_image`` request: (one line per unusable host's
        image, one line per difference from the client's machine of a usable one).

        Its hosts may first pull the image and then start a container of it.
        """
        reply = await self._request("POST", "/v1/images/check", encode(request), CHECK_TIMEOUT)
        problems = [str(problem) for problem in reply.get("problems") or ()]
        return problems, [str(note) for note in reply.get("notes") or ()]

    async def info(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/info")

    async def status(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/status")
