"""The farm's duration history: a real SQLite file, kept across restarts, feeding fresh clients.

Unit tests drive :class:`farm.history.History` on real database files (last
N durations, pruning, projects kept apart, the client's estimate winning,
corrupt and locked files refused with a clear error).  End to end, a real
served farm records a real session's durations, keeps them through a restart,
lists the slowest in ``psyduck farm status``, schedules a fresh client's run
with them, and still serves (history off, with a warning) when its database
file is corrupt.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.client import FarmClient
from farm.config import parse_config
from farm.history import LOOKUP_CHUNK, History, HistoryError, project_of
from farm.manifest import RunManifest, TestSpec, WorkerSpec
from tests.conftest import on_farm, run_pytest, wait_until
from tests.served import ServedFarm

TOKEN = "history-token"


def _manifest(root: str, *tests: TestSpec) -> RunManifest:
    return RunManifest(tests=tests, worker=WorkerSpec(argv=("m",), cwd=root, root=root))


def _reopen(history: History) -> History:
    history.close()  # writes what was queued
    return History(history.path, history.keep, history.max_age_days)


def test_each_test_keeps_its_last_durations_and_their_median(tmp_path):
    history = History(tmp_path / "h.sqlite3", keep=3)
    for seconds in (100.0, 1.0, 2.0, 3.0, 50.0):
        history.record("proj", "t.py::test_a", seconds)
    history.record("proj", "t.py::test_b", 0.5)
    history = _reopen(history)
    assert history.estimates("proj") == {"t.py::test_a": 3.0, "t.py::test_b": 0.5}
    assert history.slowest(1) == [
        {"project": "proj", "test": "t.py::test_a", "estimate": 3.0, "runs": 3}
    ]
    history.close()


@given(
    st.lists(st.lists(st.floats(0, 1e5), min_size=1, max_size=8), min_size=1, max_size=4),
    st.integers(1, 12),
)
@settings(deadline=None, max_examples=40)
def test_any_sequence_of_runs_keeps_the_last_durations_and_their_median(runs, keep):
    """Runs written in separate transactions (and reopenings) keep exactly the last *keep*
    durations, to six significant digits, and their median as the estimate."""
    with tempfile.TemporaryDirectory() as tmp:
        history = History(Path(tmp) / "h.sqlite3", keep=keep)
        for run in runs:
            for seconds in run:
                history.record("p", "t", seconds)
            history = _reopen(history)
        everything = [seconds for run in runs for seconds in run]
        [row] = history.slowest(1)
        assert row["runs"] == min(keep, len(everything))
        expected = statistics.median(everything[-keep:])
        assert row["estimate"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
        history.close()


def test_a_whole_suites_results_merge_with_what_earlier_runs_stored(tmp_path):
    """One write of more tests than one lookup holds (:data:`farm.history.LOOKUP_CHUNK`),
    of two projects, each test's durations appended to its stored ones."""
    tests = [f"tests/test_m{n % 7}.py::test_{n}" for n in range(3 * LOOKUP_CHUNK + 11)]
    history = History(tmp_path / "h.sqlite3", keep=3)
    for run in range(1, 4):
        for project in ("shop", "blog"):
            for n, test in enumerate(tests):
                history.record(project, test, float(run * n))
        history = _reopen(history)
    for project in ("shop", "blog"):
        assert history.estimates(project) == {test: 2.0 * n for n, test in enumerate(tests)}
    history.close()


def test_two_projects_with_the_same_test_ids_do_not_share_durations(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    history.record(project_of(_manifest("/home/a/shop")), "tests/test_x.py::test_ok", 9.0)
    history.record(project_of(_manifest("/home/a/blog")), "tests/test_x.py::test_ok", 1.0)
    history = _reopen(history)
    assert history.estimates("shop") == {"tests/test_x.py::test_ok": 9.0}
    assert history.estimates("blog") == {"tests/test_x.py::test_ok": 1.0}
    history.close()


def test_the_clients_own_estimate_wins_and_the_farm_fills_the_rest(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    for test in ("a", "b"):
        history.record("shop", test, 7.0)
    history = _reopen(history)
    manifest = _manifest(
        "/elsewhere/clone/shop",
        TestSpec(id="a", group="g", estimate=2.0),
        TestSpec(id="b", group="g"),
        TestSpec(id="new", group="g"),
    )
    filled, count = history.with_estimates(manifest)
    assert [t.estimate for t in filled.tests] == [2.0, 7.0, 0.0]
    assert count == 1
    history.close()


def test_tests_not_seen_for_max_age_days_are_pruned(tmp_path):
    history = History(tmp_path / "h.sqlite3", max_age_days=30)
    history.record("proj", "old", 1.0)
    history = _reopen(history)
    with sqlite3.connect(history.path) as db:  # last seen 31 days ago
        db.execute("UPDATE durations SET seen = seen - 31 * 86400 WHERE test = 'old'")
    history.record("proj", "fresh", 1.0)
    history = _reopen(history)  # pruned when opened (and hourly while serving)
    assert history.estimates("proj") == {"fresh": 1.0}
    history.close()


def test_a_corrupt_database_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"this is not a database, just some bytes " * 200)
    with pytest.raises(HistoryError, match=r"h\.sqlite3: file is not a database"):
        History(path)


def test_a_database_another_process_holds_locked_is_refused(tmp_path):
    path = tmp_path / "h.sqlite3"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(HistoryError, match="database is locked"):
            History(path)
    finally:
        holder.communicate("", timeout=30)


def test_history_options_and_their_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    hosts = {"hosts": [{"url": "local"}]}
    default = parse_config(hosts).history
    assert (default.path, default.keep, default.max_age_days) == (
        str(tmp_path / "psyduck" / "history.sqlite3"),
        10,
        30.0,
    )
    chosen = parse_config(
        {**hosts, "farm": {"state_dir": "/srv/f"}, "history": {"keep": 3, "max_age_days": 7}}
    ).history
    assert (chosen.path, chosen.keep, chosen.max_age_days) == ("/srv/f/history.sqlite3", 3, 7.0)
    assert parse_config({**hosts, "history": {"enabled": False}}).history.path is None
    with pytest.raises(ValueError, match=r"\[history\] keep must be a whole number"):
        parse_config({**hosts, "history": {"keep": 0}})


# -- a real served farm ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path: Path) -> ServedFarm:
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN)
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n\n'
        '[[hosts]]\nurl = "local"\nslots = 2\n'
    )
    return ServedFarm(config, f"http://127.0.0.1:{port}")


def _stop(farm: ServedFarm) -> None:
    farm.stop()
    assert farm.proc.stdout is not None
    farm.proc.stdout.close()


def _status(url: str) -> dict:
    async def ask() -> dict:
        async with FarmClient(url, TOKEN) as client:
            return await client.status()

    return asyncio.run(ask())


SUITE = {
    "shop/test_shop.py": (
        "import time\n\n"
        "def test_slow():\n    time.sleep(0.3)\n\n"
        "def test_quick():\n    pass\n\n"
        "def test_also_quick():\n    pass\n"
    )
}


def test_a_served_farm_keeps_durations_across_restarts_and_schedules_fresh_clients(tmp_path, suite):
    project = suite(SUITE) / "shop"
    env = {"PSYDUCK_TOKEN": TOKEN}
    farm = _serve(tmp_path)
    try:
        # on_farm runs without a pytest cache: every session is a fresh clone's.
        first = run_pytest(project, *on_farm(farm.url), env=env)
        assert first.returncode == 0, first.stdout
        assert _status(farm.url)["runs"][0]["from_history"] == 0
        assert (tmp_path / "state" / "spool").is_dir()  # where slow clients' events would wait
        wait_until(lambda: len(_status(farm.url)["slowest"]) == 3, "the durations to be written")
    finally:
        _stop(farm)
    farm = _serve(tmp_path)
    try:
        slowest = _status(farm.url)["slowest"]
        assert (slowest[0]["project"], slowest[0]["test"]) == ("shop", "test_shop.py::test_slow")
        assert slowest[0]["estimate"] >= 0.3
        shown = subprocess.run(
            [sys.executable, "-m", "farm.cli", "farm", "status", "--farm", farm.url],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert "SLOWEST TESTS (farm history)" in shown.stdout, shown.stderr
        assert "test_shop.py::test_slow" in shown.stdout
        second = run_pytest(project, *on_farm(farm.url), env=env)
        assert second.returncode == 0, second.stdout
        assert _status(farm.url)["runs"][0]["from_history"] == 3
    finally:
        _stop(farm)


def test_a_farm_whose_history_file_is_corrupt_warns_and_serves_without_it(tmp_path, suite):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "history.sqlite3").write_bytes(b"garbage " * 1000)
    project = suite(SUITE) / "shop"
    farm = _serve(tmp_path)
    try:
        warning = farm.wait_for_line("duration history disabled")
        assert "history.sqlite3: file is not a database" in warning
        session = run_pytest(project, *on_farm(farm.url), env={"PSYDUCK_TOKEN": TOKEN})
        assert session.returncode == 0, session.stdout
        assert "slowest" not in _status(farm.url)
    finally:
        _stop(farm)
