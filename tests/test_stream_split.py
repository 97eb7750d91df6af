"""No message exceeds the limit because events were batched: batches are split by size.

A real served farm and a real ``pytest --psyduck-farm`` session on five local
slots whose workers each hand home a farewell of nearly 16 MiB (a plugin's
``workeroutput``).  The session's replay waits on its first result until the
farm says the run is complete, so all five farewells wait at the farm together
— 80 MiB, more than the 64 MiB a client accepts in one message (a farm that
sent whatever waited as one batch cut the stream here).  Each must arrive
whole.  How batches stop taking events and how events are split into
messages are checked on their own, the splitting with hypothesis.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.manifest import RunManifest, WorkerSpec
from farm.protocol import decode, events_messages
from farm.runs import MAX_BATCH_BYTES, Run, event_batches
from farm.spool import weight
from tests.conftest import SESSION_TIMEOUT, on_farm, run_pytest
from tests.test_cli import _free_port, serve_farm

TOKEN = "split-token"
SLOTS = 5
#: Bytes each worker hands home: a farewell just under its 16 MiB limit.
HANDED_HOME = 16 * 1024 * 1024 - 64 * 1024

CONFTEST = f"""
import json, os, pathlib, time, urllib.request

WAITED = pathlib.Path("waited")
HOME = pathlib.Path("home.jsonl")

def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["blob"] = os.urandom({HANDED_HOME})

def pytest_testnodedown(node, error):
    blob = node.workeroutput.get("blob", b"")
    with HOME.open("a") as f:
        f.write(json.dumps([node.gateway.id, len(blob), error]) + "\\n")

def _all_workers_down():
    request = urllib.request.Request(
        os.environ["FARM_URL"] + "/v1/status",
        headers={{"Authorization": "Bearer " + os.environ["PSYDUCK_TOKEN"],
                  "Accept": "application/json"}},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.load(response)["runs"]
    return bool(runs) and runs[0]["status"] == "complete"

def pytest_runtest_logreport(report):
    # In the user's process, on the first result: wait until every farewell waits at the farm.
    if os.environ.get("PYTEST_XDIST_WORKER") or WAITED.exists():
        return
    WAITED.write_text("")
    deadline = time.monotonic() + 300
    while not _all_workers_down() and time.monotonic() < deadline:
        time.sleep(0.1)
"""


def test_several_16_mib_farewells_in_one_batch_reach_the_client_whole(tmp_path, suite):
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN)
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n\n'
        f'[[hosts]]\nurl = "local"\nslots = {SLOTS}\n'
    )
    url, farm = serve_farm(config, port)
    project = suite(
        {
            "proj/conftest.py": CONFTEST,
            "proj/test_many.py": (
                "import pytest\n\n"
                "@pytest.mark.parametrize('n', range(100))\n"
                "def test_n(n):\n    pass\n"
            ),
        }
    )
    try:
        session = run_pytest(
            project / "proj",
            *on_farm(url),
            env={"PSYDUCK_TOKEN": TOKEN, "FARM_URL": url},
            timeout=SESSION_TIMEOUT,
        )
        assert session.returncode == 0, session.stdout + session.stderr
        assert "100 passed" in session.stdout
        home = (project / "proj" / "home.jsonl").read_text().splitlines()
        downs = [json.loads(line) for line in home]
        assert len(downs) == SLOTS, downs  # every slot had a worker, each said farewell
        assert all(size == HANDED_HOME and error is None for _, size, error in downs), downs
    finally:
        farm.terminate()
        farm.communicate(timeout=60)


events_strategy = st.lists(
    st.one_of(
        st.builds(
            lambda n: {"t": "result", "id": f"t{n}", "payload": b"r" * n}, st.integers(0, 900)
        ),
        st.builds(lambda n: {"t": "output", "data": b"o" * n}, st.integers(0, 900)),
        st.builds(
            lambda n: {"t": "worker_down", "worker": "gw1", "data": b"f" * n, "error": None},
            st.integers(0, 900),
        ),
    ),
    max_size=40,
)


@given(events_strategy, st.integers(200, 3000))
@settings(deadline=None, max_examples=200)
def test_events_are_split_into_messages_under_the_limit_in_order(events, limit):
    messages = list(events_messages(events, max_bytes=limit))
    assert all(len(m) <= limit for m in messages)
    received = [event for m in messages for event in decode(m)["events"]]
    assert len(received) == len(events)
    for sent, got in zip(events, received, strict=True):
        if 64 + len(msgpack.packb(sent, use_bin_type=True)) <= limit:
            assert got == sent  # whatever fits goes as it is
        elif sent["t"] == "result":
            assert got["t"] == "crashed" and got["id"] == sent["id"] and "exceeds" in got["message"]
        elif sent["t"] == "worker_down":
            assert got["data"] is None and "exceeds" in got["error"]
        else:
            assert got["t"] == "notice"
    # Never more messages than needed: each but the last was full enough to need the next.
    for first, second in itertools.pairwise(messages):
        assert len(first) + len(second) > limit - 64


def test_a_batch_takes_no_more_events_once_it_holds_its_bytes():
    """Farewells waiting together leave in several batches, so a batch never holds in
    memory much more than the spool itself would."""
    big = 10 * 1024 * 1024

    async def scenario() -> list[list[dict]]:
        run = Run("r", RunManifest(tests=(), worker=WorkerSpec(argv=("w",), cwd="/")), "me")
        for n in range(8):
            run.emit({"t": "worker_down", "worker": f"gw{n}", "data": bytes(big), "error": None})
        run.emit({"t": "done", "status": "complete", "reason": ""})
        return [batch async for batch in event_batches(run)]

    batches = asyncio.run(scenario())
    assert [e.get("worker") for b in batches for e in b] == [f"gw{n}" for n in range(8)] + [None]
    assert all(sum(weight(e) for e in b) < MAX_BATCH_BYTES + big + 1024 for b in batches)
    assert len(batches) > 1
