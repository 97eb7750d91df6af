"""A run's spool is bounded on disk: a client that lags holds back its own run, no other.

A real served farm with a small ``spool_max_bytes`` and two real ``pytest
--psyduck-farm`` sessions.  The first one's replay is stuck (a plugin's
``pytest_runtest_logreport`` waits for a file) while its tests print enough
for their results to pass the farm's memory bound and the cap: the farm stops
handing that run shards (``held_back`` in its status, its queue unchanged),
and the second session's run is served meanwhile and completes.  Released, the
first session catches up, its run gets shards again and every result arrives
exactly once.  The spool's own bookkeeping is checked with hypothesis.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.client import FarmClient
from farm.spool import EventSpool
from tests.conftest import SESSION_TIMEOUT, on_farm, start_pytest, wait_until
from tests.test_cli import _free_port, serve_farm
from tests.test_stream import SLOW_REPLAY

TOKEN = "pressure-token"
#: Results of the stuck session: each prints this much, which its report carries.
TESTS, PRINTED = 600, 32 * 1024
CAP = "1M"


def _status(url: str) -> dict:
    async def ask() -> dict:
        async with FarmClient(url, TOKEN) as client:
            return await client.status()

    return asyncio.run(ask())


def _run_named(url: str, name: str) -> dict | None:
    """The status of the run of the project directory *name*."""
    return next((r for r in _status(url)["runs"] if r["name"].endswith(f":{name}")), None)


def test_a_client_that_lags_holds_back_its_own_run_and_no_other(tmp_path, suite):
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN)
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n'
        f'state_dir = "{tmp_path / "state"}"\nspool_max_bytes = "{CAP}"\n\n'
        '[[hosts]]\nurl = "local"\nslots = 2\n'
    )
    url, farm = serve_farm(config, port)
    blocked, release = tmp_path / "blocked", tmp_path / "release"
    project = suite(
        {
            "lagging/conftest.py": SLOW_REPLAY.format(blocked=str(blocked), release=str(release)),
            "lagging/test_loud.py": (
                "import pytest\n\n"
                f"@pytest.mark.parametrize('n', range({TESTS}))\n"
                f"def test_loud(n):\n    print(str(n) * {PRINTED})\n"
            ),
            "brisk/test_quiet.py": (
                "import pytest\n\n"
                "@pytest.mark.parametrize('n', range(50))\n"
                "def test_quiet(n):\n    pass\n"
            ),
        }
    )
    env = {"PSYDUCK_TOKEN": TOKEN}
    junit = tmp_path / "lagging.xml"
    try:
        lagging = start_pytest(
            project / "lagging", *on_farm(url), f"--junitxml={junit}", "-q", env=env
        )
        wait_until(blocked.exists, "the replay to block", timeout=SESSION_TIMEOUT)

        def held_back() -> bool:
            run = _run_named(url, "lagging")
            return run is not None and run["held_back"]

        wait_until(held_back, "the farm to hold the lagging run back", timeout=SESSION_TIMEOUT)
        held = _run_named(url, "lagging")
        assert held["spooled"] > 1024 * 1024
        assert held["queued"] > 0, held  # work is left that the farm does not hand out
        shown = subprocess.run(
            [sys.executable, "-m", "farm.cli", "farm", "status", "--farm", url],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert f"{held['id']:<17} default     held back" in shown.stdout, shown.stdout

        brisk = start_pytest(project / "brisk", *on_farm(url), env=env)
        output, _ = brisk.communicate(timeout=SESSION_TIMEOUT)
        assert brisk.returncode == 0, output
        assert "50 passed" in output

        # The other run was served in full meanwhile; this one got no shard since.
        still = _run_named(url, "lagging")
        assert still["held_back"] and still["queued"] == held["queued"], (held, still)
        assert lagging.poll() is None

        release.write_text("go")
        output, _ = lagging.communicate(timeout=SESSION_TIMEOUT)
        assert lagging.returncode == 0, output
        assert f"{TESTS} passed" in output
        cases = Counter(case.get("name") for case in ET.parse(junit).getroot().iter("testcase"))
        assert len(cases) == TESTS and set(cases.values()) == {1}  # each once
    finally:
        farm.terminate()
        farm.communicate(timeout=60)


@given(
    st.lists(st.tuples(st.booleans(), st.binary(max_size=2000)), max_size=300),
    st.integers(1, 5000),
)
@settings(deadline=None, max_examples=60)
def test_the_spool_says_over_past_its_cap_and_not_over_below_half_of_it(steps, cap):
    """``on_pressure`` alternates True/False, True exactly when the file passed the cap,
    False once it is back at half of it or less; every event still comes out in order."""

    async def scenario() -> None:
        said: list[bool] = []
        spool = EventSpool(memory_bytes=1000, disk_bytes=cap, on_pressure=said.append)
        expected, got = [], []
        for index, (take, data) in enumerate(steps):
            if take and not spool.empty():
                got.append(spool.get_nowait())
                assert spool.over or spool.spilled <= cap
            else:
                spool.put_nowait({"t": "output", "id": index, "data": data})
                expected.append({"t": "output", "id": index, "data": data})
            if spool.over:
                assert spool.spilled > cap // 2
            else:
                assert spool.spilled <= cap
            assert said == [index % 2 == 0 for index in range(len(said))]
            assert spool.over == (bool(said) and said[-1])
        while not spool.empty():
            got.append(await spool.get())
        assert got == expected
        assert not spool.over
        spool.close()

    asyncio.run(scenario())
