"""A run's event stream received on a thread of its own, for a consumer that may be busy long.

The plugin replays each result through the user's hooks on pytest's main
thread, and a slow terminal or plugin may keep that thread from the network
for as long as it likes.  Read on that thread, the stream would leave the
farm's heartbeat pings unanswered until the farm closed it — how a
500,000-variant run once lost its stream after 442,921 results.  Here a thread
with its own event loop owns the websocket: it answers pings at once whatever
the consumer does, and hands each batch to the consumer's loop.  It
acknowledges a batch only when the consumer takes it, so the farm holds back
the rest (flow control rather than a timeout) and no more than
:data:`~farm.protocol.STREAM_WINDOW` batches ever wait in this process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from farm.client import FarmClient, FarmError, RunStream
from farm.protocol import STREAM_WINDOW

#: Seconds the receiving thread may take to close the stream and end.
CLOSE_TIMEOUT = 10.0

_Item = list[dict[str, Any]] | FarmError


def _as_farm_error(exc: Exception) -> FarmError:
    if isinstance(exc, FarmError):
        return exc
    return FarmError(f"the event stream failed: {type(exc).__name__}: {exc}")


class StreamReceiver:
    """Attach to a run and receive its events on a thread; iterate :meth:`events` to take them.

    Created on the consumer's running loop; :meth:`close` always, once done.
    """

    def __init__(self, client: FarmClient, run_id: str) -> None:
        self._client = client
        self._run_id = run_id
        self._consumer = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._attached: asyncio.Future[None] = self._consumer.create_future()
        self._loop = asyncio.new_event_loop()
        self._closing = asyncio.Event()
        self._stream: RunStream | None = None
        self._unacknowledged = 0
        self._sends: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._main, name="psyduck-stream", daemon=True)
        self._thread.start()

    # -- the receiving thread ---------------------------------------------------
    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._loop.close()

    async def _run(self) -> None:
        receiving = asyncio.create_task(self._receive())
        await self._closing.wait()
        receiving.cancel()
        await asyncio.gather(receiving, *self._sends, return_exceptions=True)
        if self._stream is not None:
            await self._stream.close()

    async def _receive(self) -> None:
        try:
            self._stream = await self._client.attach(self._run_id)
        except Exception as exc:
            self._tell(self._opened, _as_farm_error(exc))
            return
        self._tell(self._opened, None)
        try:
            async for batch in self._stream.batches():
                self._unacknowledged += 1
                if self._unacknowledged > STREAM_WINDOW:
                    raise FarmError(
                        f"the farm sent more than {STREAM_WINDOW} unacknowledged batches of events"
                    )
                self._deliver(batch)
        except Exception as exc:  # whatever it was, the consumer must not wait forever
            self._deliver(_as_farm_error(exc))

    def _deliver(self, item: _Item) -> None:
        self._tell(self._inbox.put_nowait, item)

    def _tell(self, *args: Any) -> None:
        """Run ``args`` on the consumer's loop."""
        try:
            self._consumer.call_soon_threadsafe(*args)
        except RuntimeError:
            pass  # the consumer's loop is gone: nobody is left to tell

    def _opened(self, exc: FarmError | None) -> None:
        if self._attached.done():
            return
        if exc is None:
            self._attached.set_result(None)
        else:
            self._attached.set_exception(exc)

    def _send(self, action: str) -> None:
        """On the receiving thread: send an ``ack``, a ``cancel`` or a ``stop``."""
        if self._stream is None:
            return
        if action == "ack":
            self._unacknowledged -= 1
            coro = self._stream.ack()
        elif action == "stop":
            coro = self._stream.stop()
        else:
            coro = self._stream.cancel()
        task = self._loop.create_task(coro)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _call(self, *args: Any) -> None:
        """Run ``args`` on the receiving thread's loop, unless it has ended already."""
        try:
            self._loop.call_soon_threadsafe(*args)
        except RuntimeError:
            pass

    # -- the consumer's side ----------------------------------------------------
    async def attached(self) -> None:
        """Return once the stream is open; :class:`FarmError` when the farm refused it."""
        await self._attached

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The run's events until ``done``; :class:`FarmError` when the stream is lost."""
        while True:
            item = await self._inbox.get()
            if isinstance(item, FarmError):
                raise item
            self._call(self._send, "ack")
            for event in item:
                yield event
                if event["t"] == "done":
                    return

    def cancel(self) -> None:
        """Ask the farm to cancel the run; its ``done`` follows on the stream."""
        self._call(self._send, "cancel")

    def stop(self) -> None:
        """Ask the farm to stop the run gracefully; workers' ``worker_down`` events, then
        its ``done``, follow on the stream."""
        self._call(self._send, "stop")

    def close(self) -> None:
        """Close the stream (before ``done``, the farm cancels the run) and end the thread."""
        self._call(self._closing.set)
        self._thread.join(timeout=CLOSE_TIMEOUT)
