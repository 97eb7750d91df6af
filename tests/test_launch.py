"""The launch socket between the embedded farm and the pytest process that starts its workers.

Real socket pairs on both ends; the peer misbehaves in the ways a bug or a
dying process would: garbage, refusals, hanging up with a launch pending.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from farm.hosts.base import HostError, RunContext
from farm.hosts.local import RemoteLauncher, Workdir
from farm.manifest import RunManifest, TestSpec, WorkerSpec
from farm.protocol import decode, encode
from pytest_psyduck.forking import LaunchServer

RUN = RunContext(
    "run-1",
    RunManifest(
        tests=(TestSpec(id="t.py::t", group="t.py"),),
        worker=WorkerSpec(argv=("pytest_psyduck.workermain",), cwd="/"),
    ),
    workers=1,
)
WHERE = Workdir("/", ("pytest_psyduck.workermain",))


def pair() -> tuple[socket.socket, socket.socket]:
    farm_end, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    peer.setblocking(False)
    return farm_end, peer


def test_a_refused_launch_is_a_host_error_and_garbage_is_ignored():
    async def scenario() -> None:
        farm_end, peer = pair()
        launcher = RemoteLauncher(farm_end)
        launching = asyncio.ensure_future(launcher.launch(RUN, "gw0", {}, WHERE))
        await asyncio.get_running_loop().sock_recv(peer, 65536)  # the request
        peer.send(b"\xc1 not msgpack")
        peer.send(encode({"t": "launched", "id": 0, "pid": 1}))  # no fds: refused
        peer.send(encode({"t": "failed", "id": 0, "message": "fork failed: no memory"}))
        with pytest.raises(HostError, match="fork failed: no memory"):
            await launching
        peer.close()

    asyncio.run(scenario())


def test_a_launcher_that_hangs_up_fails_pending_launches_and_loses_running_workers():
    async def scenario() -> None:
        farm_end, peer = pair()
        launcher = RemoteLauncher(farm_end)
        first = asyncio.ensure_future(launcher.launch(RUN, "gw0", {}, WHERE))
        await asyncio.get_running_loop().sock_recv(peer, 65536)
        channel, _ = socket.socketpair()
        read_fd, write_fd = os.pipe()
        socket.send_fds(
            peer,
            [encode({"t": "launched", "id": 0, "pid": 2**22 + 7})],
            [channel.fileno(), read_fd],
        )
        process = await first
        second = asyncio.ensure_future(launcher.launch(RUN, "gw1", {}, WHERE))
        await asyncio.get_running_loop().sock_recv(peer, 65536)
        peer.close()
        with pytest.raises(HostError, match="left"):
            await second
        assert process.exited is not None
        info = await process.exited
        assert info.host_lost and "left" in info.detail
        with pytest.raises(HostError, match="gone"):
            await launcher.launch(RUN, "gw2", {}, WHERE)
        for fd in (read_fd, write_fd, process.output_fd):
            os.close(fd)
        process.channel.close()
        channel.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "request_",
    [
        {"t": "launch", "id": 3},
        {"t": "launch", "id": 3, "env": "not a map", "fresh": True, "cwd": "/", "argv": []},
    ],
)
def test_the_pytest_side_answers_a_malformed_request_with_a_refusal(request_):
    async def scenario() -> dict:
        server = LaunchServer(session=None, fork=False)  # type: ignore[arg-type]
        server.serve()
        server.farm_end.setblocking(False)
        server.farm_end.send(encode(request_))
        async with asyncio.timeout(10):
            answer = decode(await asyncio.get_running_loop().sock_recv(server.farm_end, 65536))
        server.close()
        server.farm_end.close()
        return answer

    answer = asyncio.run(scenario())
    assert answer["t"] == "failed" and answer["id"] == 3 and answer["message"]
