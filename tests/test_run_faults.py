"""A run's own faults end that run with its reason; the farm goes on serving everyone else.

Real served farms (``psyduck farm serve`` with its pokedex), real local and
Docker hosts, real ``pytest --psyduck-farm`` sessions: a run whose working
directory the host lacks, or whose snapshot cannot be pulled, ends with one
clear error and no hang, its hosts are not quarantined, and the next run on
the same farm passes (Docker hosts: ``tests/farm_hosts/test_host_faults.py``).
A huge manifest is admitted without silencing the
farm for the other clients meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request
from pathlib import Path

from farm.client import FarmClient
from farm.manifest import RunManifest, TestSpec, WorkerSpec, manifest_to_wire
from farm.protocol import MSGPACK, decode, encode
from tests.conftest import SESSION_TIMEOUT, on_farm, run_pytest, start_pytest, wait_until
from tests.test_cli import serve_farm

TOKEN = "tok"
PROJECT = {
    "proj/pytest.ini": "[pytest]\n",
    "proj/tests/test_a.py": "def test_one(): pass\ndef test_two(): pass\n",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _farm(tmp_path: Path, host: str) -> tuple[str, object]:
    """A served farm with *host* (a ``[[hosts]]`` table's body) and its own pokedex."""
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN)
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        f"[[hosts]]\n{host}\n\n"
        f'[pokedex]\ndata = "{tmp_path / "store"}"\n'
    )
    return serve_farm(config, port, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})


def _status(url: str) -> dict:
    async def ask() -> dict:
        async with FarmClient(url, TOKEN) as client:
            return await client.status()

    return asyncio.run(ask())


def test_a_run_whose_directory_the_host_lacks_fails_with_that_reason(tmp_path, suite):
    """The session runs from an empty directory, which its snapshot cannot hold."""
    project = suite(PROJECT) / "proj"
    (project / "empty").mkdir()
    url, proc = _farm(tmp_path, 'url = "local"\nslots = 2')
    try:
        failed = run_pytest(
            project / "empty", *on_farm(url), "../tests", env={"PSYDUCK_TOKEN": TOKEN}, timeout=120
        )
        assert failed.outcomes() == {"failed": 2}, failed.stdout + failed.stderr
        assert "working directory" in failed.stdout and "does not exist" in failed.stdout
        assert "/empty does not exist on this host" in failed.stdout
        assert "Traceback" not in failed.stderr
        assert not any(h["quarantined"] for h in _status(url)["hosts"])
        passed = run_pytest(project, *on_farm(url), env={"PSYDUCK_TOKEN": TOKEN})
        assert passed.outcomes() == {"passed": 2}, passed.stdout + passed.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


#: A module whose every test waits for a flag file, so the run spans what the test does.
WAITING = """
import pathlib, time
import pytest

@pytest.mark.parametrize("n", range(4))
def test_waits(n):
    pathlib.Path({started!r}).write_text("x")
    while not pathlib.Path({flag!r}).exists():
        time.sleep(0.05)
"""


def _health_answers(url: str, stop: threading.Event, answers: list[bytes]) -> None:
    """Ask ``/v1/health`` until *stop*, keeping each answer (a farm busy elsewhere waits)."""
    while not stop.is_set():
        with urllib.request.urlopen(url + "/v1/health", timeout=600) as response:
            answers.append(response.read())
        stop.wait(0.1)


def _submit_raw(url: str, body: bytes, sent: threading.Event) -> dict:
    """POST a run with a plain socket: *sent* is set once the farm has the whole body."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/runs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {MSGPACK}\r\nAccept: {MSGPACK}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=600) as sock:
        sock.sendall(head + body)
        sent.set()
        reply = b""
        while chunk := sock.recv(1 << 16):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert b" 201 " in status_line, reply[:2000]
    return decode(rest.partition(b"\r\n\r\n")[2])


def test_a_million_test_manifest_does_not_stall_the_farm(tmp_path, suite):
    """While a 1,000,000-test run is admitted, health answers and another run completes."""
    started, flag = tmp_path / "started", tmp_path / "flag"
    other = suite({"other/test_w.py": WAITING.format(started=str(started), flag=str(flag))})
    url, proc = _farm(tmp_path, 'url = "local"\nslots = 1')
    session = start_pytest(other / "other", *on_farm(url), env={"PSYDUCK_TOKEN": TOKEN})
    try:
        wait_until(lambda: started.exists() or session.poll() is not None, "the other run")
        tests = tuple(
            TestSpec(id=f"t/m{i // 100}.py::t{i}", group=f"t/m{i // 100}.py")
            for i in range(1_000_000)
        )
        body = encode(
            manifest_to_wire(RunManifest(tests, WorkerSpec(argv=("m",), cwd=str(tmp_path))))
        )
        answers: list[bytes] = []
        stop, sent = threading.Event(), threading.Event()
        replies: list[dict] = []
        submitter = threading.Thread(target=lambda: replies.append(_submit_raw(url, body, sent)))
        submitter.start()
        sent.wait(timeout=SESSION_TIMEOUT)
        poller = threading.Thread(target=_health_answers, args=(url, stop, answers))
        poller.start()
        submitter.join(timeout=600)
        during = len(answers)
        stop.set()
        poller.join(timeout=600)
        assert replies, "the huge run was not admitted"
        assert during >= 3, f"health answered {during} time(s) while the huge run was admitted"
        run_id = replies[0]["run"]
        urllib.request.urlopen(
            urllib.request.Request(
                f"{url}/v1/runs/{run_id}/cancel",
                method="POST",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ),
            timeout=120,
        ).close()
        flag.write_text("go")
        out, _ = session.communicate(timeout=SESSION_TIMEOUT)
        assert session.returncode == 0, out
        assert "4 passed" in out and "cancelled" not in out and "Interrupted" not in out, out
        runs = {r["id"]: r for r in _status(url)["runs"]}
        assert runs[run_id]["status"] == "cancelled" and runs[run_id]["tests"] == 1_000_000
        assert [r["status"] for i, r in runs.items() if i != run_id] == ["complete"]
    finally:
        flag.write_text("go")
        if session.poll() is None:
            session.kill()
            session.communicate()
        proc.terminate()
        proc.wait(timeout=60)
