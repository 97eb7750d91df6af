"""The container bootstrap's relay, with real processes (no engine needed).

Every worker container runs :data:`farm.hosts.bootstrap.BOOTSTRAP`: it forks
the worker and relays its frames to stdout, gathering those that come close
together into one write.  Here its stdout is a SOCK_SEQPACKET socket, so each
write the relay makes arrives as one packet and can be counted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from farm.hosts.bootstrap import BOOTSTRAP, RELAY_BATCH

WORKERS = {
    # Writes its frames one by one, then dies as the OOM killer would end it.
    "killed.py": """
import os, signal, sys
count, size = int(sys.argv[1]), int(sys.argv[2])
for n in range(count):
    os.write(1, n.to_bytes(4, "big") * (size // 4))
os.kill(os.getpid(), signal.SIGKILL)
""",
    # Leaves a child holding the pipe, then exits with 3.
    "leaves_a_child.py": """
import os, subprocess, sys
child = subprocess.Popen(["sleep", "600"], stdout=1, close_fds=False)
os.write(1, str(child.pid).encode())
sys.exit(3)
""",
    # Says it is ready, then waits for a signal.
    "waits.py": """
import os, signal
os.write(1, b"ready")
while True:
    signal.pause()
""",
}


@pytest.fixture
def start(tmp_path: Path):
    for name, text in WORKERS.items():
        (tmp_path / name).write_text(text)
    started: list[subprocess.Popen[bytes]] = []

    def start(
        worker: str, *args: str, kind: int = socket.SOCK_SEQPACKET
    ) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """The relay running *worker*; with the default *kind*, each write is one packet."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
        ours.settimeout(60)
        relay = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, worker, *args],
            stdin=subprocess.PIPE,
            stdout=theirs,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
        )
        theirs.close()
        started.append(relay)
        return relay, ours

    yield start
    for relay in started:
        relay.kill()
        relay.wait()


def packets(sock: socket.socket) -> list[bytes]:
    received = []
    while packet := sock.recv(RELAY_BATCH + 1):
        received.append(packet)
    return received


def expected(count: int, size: int) -> bytes:
    return b"".join(n.to_bytes(4, "big") * (size // 4) for n in range(count))


@pytest.mark.parametrize(
    ("count", "size"), [(0, 4), (1, 4), (2_000, 100)], ids=["nothing", "one", "many"]
)
def test_frames_written_before_the_worker_is_killed_all_arrive_gathered(start, count, size):
    """The worker writes each frame at once; the relay passes them on in a few writes."""
    relay, sock = start("killed", str(count), str(size))
    received = packets(sock)
    assert b"".join(received) == expected(count, size)
    assert relay.wait(timeout=60) == 128 + signal.SIGKILL
    assert len(received) <= max(1, count // 10)


def test_more_than_a_batch_arrives_whole(start):
    """Frames of tens of MB (a worker's farewell may be 16 MiB) pass through whole."""
    relay, sock = start("killed", "40", "1000000", kind=socket.SOCK_STREAM)
    assert b"".join(packets(sock)) == expected(40, 1_000_000)
    assert relay.wait(timeout=60) == 128 + signal.SIGKILL


def test_a_child_holding_the_pipe_does_not_keep_the_relay_after_the_worker(start):
    relay, sock = start("leaves_a_child")
    child = int(sock.recv(100))
    try:
        assert relay.wait(timeout=60) == 3
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_signal_to_the_relay_ends_the_worker_with_it(start):
    relay, sock = start("waits")
    assert sock.recv(100) == b"ready"
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=60) == 128 + signal.SIGTERM


def test_the_worker_ends_when_its_stdin_hangs_up(start):
    relay, sock = start("waits")
    assert sock.recv(100) == b"ready"
    assert relay.stdin is not None
    relay.stdin.close()
    assert relay.wait(timeout=60) == 75
