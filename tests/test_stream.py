"""A long run never loses its stream: flow control instead of a heartbeat timeout.

A real served farm with a one-second heartbeat and a real ``pytest
--psyduck-farm`` session whose replay is stuck (a plugin's
``pytest_runtest_logreport`` waits for a file the test writes) for several
heartbeats while the farm finishes the whole run: the session keeps its
stream and reports every result.  The run's event spool keeps every event in
order within its memory bound (hypothesis).
"""

from __future__ import annotations

import asyncio
import time

from hypothesis import event, given, settings
from hypothesis import strategies as st

from farm.client import FarmClient
from farm.embedded import start_embedded_farm
from farm.hosts.local import LocalHost
from farm.manifest import RunManifest, TestSpec, WorkerSpec
from farm.protocol import STREAM_WINDOW
from farm.runs import MAX_BATCH
from farm.spool import EventSpool, weight
from tests.conftest import SESSION_TIMEOUT, on_farm, start_pytest, wait_until
from tests.test_cli import _free_port, serve_farm

TOKEN = "stream-token"
HEARTBEAT = 1.0
#: More results than the farm may have in flight to the client, so some wait at the farm.
TESTS = (STREAM_WINDOW + 2) * MAX_BATCH

SLOW_REPLAY = """
import os, pathlib, time

BLOCKED = pathlib.Path({blocked!r})
RELEASE = pathlib.Path({release!r})

def pytest_runtest_logreport(report):
    # Only in the user's process, on the first result: replay stands still until released.
    if os.environ.get("PYTEST_XDIST_WORKER") or BLOCKED.exists():
        return
    BLOCKED.write_text(report.nodeid)
    deadline = time.monotonic() + 300
    while not RELEASE.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def _status(url: str) -> dict:
    async def ask() -> dict:
        async with FarmClient(url, TOKEN) as client:
            return await client.status()

    return asyncio.run(ask())


def test_a_client_stuck_replaying_for_many_heartbeats_keeps_its_stream(tmp_path, suite):
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN)
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n'
        f"heartbeat = {HEARTBEAT}\n\n"
        '[[hosts]]\nurl = "local"\nslots = 2\n'
    )
    url, farm = serve_farm(config, port)
    blocked, release = tmp_path / "blocked", tmp_path / "release"
    project = suite(
        {
            "proj/conftest.py": SLOW_REPLAY.format(blocked=str(blocked), release=str(release)),
            "proj/test_many.py": (
                "import pytest\n\n"
                f"@pytest.mark.parametrize('n', range({TESTS}))\n"
                "def test_n(n):\n    pass\n"
            ),
        }
    )
    try:
        session = start_pytest(
            project / "proj",
            *on_farm(url),
            env={"PSYDUCK_TOKEN": TOKEN},
        )
        wait_until(blocked.exists, "the replay to block", timeout=SESSION_TIMEOUT)
        stuck_since = time.monotonic()

        def run_complete() -> bool:
            runs = _status(url)["runs"]
            return bool(runs) and runs[0]["done"] == TESTS

        wait_until(run_complete, "the farm to run every test", timeout=SESSION_TIMEOUT)
        # The client has taken at most a window of batches: the rest waits at the farm.
        assert _status(url)["runs"][0]["events"] > 0
        # Stuck for several heartbeats: an unanswered ping closes a stream after 1.5 of them.
        wait_until(
            lambda: time.monotonic() - stuck_since > 4 * HEARTBEAT, "four heartbeats", timeout=60
        )
        assert session.poll() is None, session.stdout.read()
        release.write_text("go")
        output, _ = session.communicate(timeout=SESSION_TIMEOUT)
        assert session.returncode == 0, output
        assert f"{TESTS} passed" in output
        assert "lost the event stream" not in output
    finally:
        farm.terminate()
        farm.communicate(timeout=60)


events_strategy = st.lists(
    st.tuples(st.booleans(), st.binary(max_size=3000)),
    max_size=300,
)


@given(events_strategy, st.integers(300, 6000))
@settings(deadline=None, max_examples=60)
def test_the_spool_keeps_every_event_in_order_within_its_memory_bound(steps, bound):
    """Puts and gets interleave at random; memory never holds more than the bound
    (plus the one event that brought it over, read back from disk)."""

    async def scenario() -> None:
        spool = EventSpool(memory_bytes=bound)
        expected: list[dict] = []
        got: list[dict] = []
        biggest = 0
        spilled = False
        for index, (take, data) in enumerate(steps):
            if take and not spool.empty():
                got.append(spool.get_nowait())
            else:
                put = {"t": "result", "id": f"t{index}", "payload": data}
                biggest = max(biggest, weight(put))
                spool.put_nowait(put)
                expected.append(put)
            assert spool._held <= bound + biggest
            spilled = spilled or spool.spilled > 0
        while not spool.empty():
            got.append(await spool.get())
        assert got == expected
        assert spool.spilled == 0
        event("spilled" if spilled else "memory only")
        spool.close()

    asyncio.run(scenario())


def test_a_spool_waits_for_its_next_event():
    async def scenario() -> None:
        spool = EventSpool(memory_bytes=1)
        waiting = asyncio.create_task(spool.get())
        await asyncio.sleep(0)
        assert not waiting.done()
        spool.put_nowait({"t": "output", "data": b"x" * 10})
        assert await waiting == {"t": "output", "data": b"x" * 10}
        spool.close()

    asyncio.run(scenario())


def test_the_farm_never_sends_more_than_its_window_of_unacknowledged_batches(suite):
    """A client that takes no batch leaves the run's events at the farm: every event is
    either among the window's batches it received or still queued there."""
    project = suite(
        {
            "test_many.py": (
                "import pytest\n\n"
                f"@pytest.mark.parametrize('n', range({TESTS}))\n"
                "def test_n(n):\n    pass\n"
            )
        }
    )
    tests = tuple(
        TestSpec(id=f"test_many.py::test_n[{n}]", group="test_many.py") for n in range(TESTS)
    )
    manifest = RunManifest(
        tests=tests,
        worker=WorkerSpec(
            argv=("pytest_psyduck.workermain", "-p", "no:cacheprovider"), cwd=str(project)
        ),
    )

    async def scenario() -> None:
        farm = await start_embedded_farm([LocalHost(2)])
        try:
            async with FarmClient(farm.url, farm.token) as client:
                run_id = await client.submit(manifest)
                stream = await client.attach(run_id)
                received = []
                batches = stream.batches()
                for _ in range(STREAM_WINDOW):
                    received.extend(await anext(batches))
                run = farm.coordinator.runs[run_id]
                while not run.finished:
                    await asyncio.sleep(0.05)
                # Only the window's batches were sent: everything else waits at the farm.
                assert run.events.qsize() > 0
                while not received or received[-1]["t"] != "done":
                    await stream.ack()
                    received.extend(await anext(batches))
                results = [e["id"] for e in received if e["t"] == "result"]
                assert sorted(results) == sorted(t.id for t in tests)
                assert run.events.qsize() == 0
                await stream.close()
        finally:
            await farm.close()

    asyncio.run(asyncio.wait_for(scenario(), SESSION_TIMEOUT))
