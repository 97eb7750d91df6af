"""The farm client's HTTP and websocket layer: frames, bodies, and clear errors for bad answers.

Frames are generated with hypothesis and fed to the reader as a server would
send them; bad answers come from real asyncio servers on loopback that answer
what a broken or hostile server would.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm import http

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A frame as a server sends it: unmasked, with the shortest length encoding."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


class _Sink:
    """Stands in for the writer: collects what the client sends (pongs, close)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def feed(data: bytes, max_bytes: int = 1 << 20) -> tuple[list[bytes], _Sink]:
    """Every message a websocket client reads from a server that sent *data* and hung up."""
    sink = _Sink()

    async def scenario() -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        ws = http.WebSocket(reader, sink, max_bytes=max_bytes, idle_timeout=5)  # type: ignore[arg-type]
        messages = []
        while (message := await ws.receive()) is not None:
            messages.append(message)
        return messages

    return asyncio.run(scenario()), sink


fragmented_messages = st.lists(
    st.lists(st.binary(max_size=300), min_size=1, max_size=4), max_size=6
)


@given(fragmented_messages, st.data())
def test_messages_come_back_whole_across_fragments_and_pings(messages, data):
    stream = bytearray()
    pings = []
    for fragments in messages:
        for i, fragment in enumerate(fragments):
            opcode = 0x2 if i == 0 else 0x0
            stream += server_frame(opcode, fragment, fin=i == len(fragments) - 1)
            if data.draw(st.booleans()):
                ping = data.draw(st.binary(max_size=20))
                pings.append(ping)
                stream += server_frame(0x9, ping)
    stream += server_frame(0x8, struct.pack("!H", 1000))
    got, sink = feed(bytes(stream))
    assert got == [b"".join(f) for f in messages]
    # Every ping was answered with a masked pong carrying its payload.
    assert sink.data.count(bytes([0x8A])) >= len(pings)


@pytest.mark.parametrize("size", [125, 126, 65535, 65536])
def test_every_length_encoding_is_read(size):
    closing = server_frame(0x8, struct.pack("!H", 1000))
    assert feed(server_frame(0x2, b"x" * size) + closing)[0] == [b"x" * size]


def test_a_masked_server_frame_is_refused():
    frame = struct.pack("!BB", 0x82, 0x80 | 4) + b"mask" + b"data"
    with pytest.raises(http.HTTPError, match="masked"):
        feed(frame)


def test_an_oversized_frame_is_refused_before_it_is_read():
    with pytest.raises(http.HTTPError, match="exceeds 1024"):
        feed(struct.pack("!BBQ", 0x82, 127, 1 << 40), max_bytes=1024)


def test_fragments_may_not_add_up_past_the_limit():
    stream = server_frame(0x2, b"x" * 600, fin=False) + server_frame(0x0, b"x" * 600)
    with pytest.raises(http.HTTPError, match="larger than 1000"):
        feed(stream, max_bytes=1000)


def test_a_cut_stream_is_an_error_not_a_hang():
    with pytest.raises(http.HTTPError, match="cut"):
        feed(server_frame(0x2, b"whole")[:4])


def test_a_silent_server_is_taken_for_dead():
    async def scenario():
        reader = asyncio.StreamReader()  # never fed, never closed
        ws = http.WebSocket(reader, _Sink(), max_bytes=1024, idle_timeout=0.2)  # type: ignore[arg-type]
        await ws.receive()

    with pytest.raises(http.HTTPError, match=r"sent nothing for 0\.2s"):
        asyncio.run(scenario())


async def _serving(handler: Handler, scenario: Callable[[str], Awaitable[object]]) -> object:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await scenario(f"http://127.0.0.1:{port}/v1/x")
    finally:
        server.close()


def _answering(raw: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()

    return handler


def get(raw: bytes, *, timeout: float = 5.0, max_bytes: int = 1 << 20) -> http.Response:
    async def scenario(url: str) -> http.Response:
        return await http.request("GET", url, headers={}, timeout=timeout, max_bytes=max_bytes)

    return asyncio.run(_serving(_answering(raw), scenario))  # type: ignore[return-value]


def test_a_chunked_body_is_joined():
    response = get(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    )
    assert (response.status, response.body) == (200, b"hello world")


def test_a_body_without_length_runs_to_the_end_of_the_connection():
    assert get(b"HTTP/1.1 404 Not Found\r\n\r\nno such run").body == b"no such run"
    large = b"x" * ((1 << 20) + 1)  # spans many reads of the stream
    assert get(b"HTTP/1.1 200 OK\r\n\r\n" + large, max_bytes=2 << 20).body == large
    with pytest.raises(http.HTTPError, match="larger than 1048576 bytes"):
        get(b"HTTP/1.1 200 OK\r\n\r\n" + large)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "malformed response body"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n", "exceeds 1024"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed"),
        (b"", "closed the connection without answering"),
    ],
)
def test_bad_answers_are_clear_errors(raw, match):
    with pytest.raises(http.HTTPError, match=match):
        get(raw, max_bytes=1024)


def test_a_server_that_never_answers_hits_the_deadline():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def scenario(url: str) -> None:
        await http.request("GET", url, headers={}, timeout=0.3, max_bytes=1024)

    with pytest.raises(http.HTTPError, match=r"no answer from 127\.0\.0\.1:\d+ within 0\.3s"):
        asyncio.run(_serving(silent, scenario))


def test_nothing_listening_is_a_clear_error():
    with pytest.raises(http.HTTPError, match=r"cannot connect to 127\.0\.0\.1:1\b"):
        asyncio.run(http.request("GET", "http://127.0.0.1:1/", headers={}, timeout=5, max_bytes=1))


def test_a_refused_upgrade_carries_the_servers_answer():
    async def scenario(url: str) -> None:
        await http.WebSocket.connect(url, headers={}, timeout=5, max_bytes=1024, idle_timeout=5)

    refusal = _answering(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 9\r\n\r\nbad token")
    with pytest.raises(http.Refused) as caught:
        asyncio.run(_serving(refusal, scenario))
    assert (caught.value.response.status, caught.value.response.body) == (401, b"bad token")


def test_an_upgrade_with_a_wrong_accept_key_is_refused():
    async def scenario(url: str) -> None:
        await http.WebSocket.connect(url, headers={}, timeout=5, max_bytes=1024, idle_timeout=5)

    wrong = _answering(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n"
    )
    with pytest.raises(http.HTTPError, match="wrong accept key"):
        asyncio.run(_serving(wrong, scenario))


@pytest.mark.parametrize("url", ["ftp://farm/", "http://", "http://farm:notaport/"])
def test_urls_the_client_cannot_use_are_named(url):
    with pytest.raises(http.HTTPError, match=r"URL|port"):
        asyncio.run(http.request("GET", url, headers={}, timeout=1, max_bytes=1))
