"""The embedded farm keeps the duration history too: a fresh clone is scheduled from it.

Real ``pytest --psyduck`` sessions on the embedded farm (one local slot, so the
order tests run in is the order the scheduler hands them out), each in a state
directory of the test's own.  Without a pytest cache the session knows no
durations: its first run hands out the module with more tests first; once the
farm's history knows that one test takes a second, a fresh clone's run starts
with it.  A standby farm (the embedded farm kept warm) keeps the history of the
session that claims it, not of the one that started it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tests.conftest import run_pytest, wait_until
from tests.test_standby import alive, runtime_dir, waiting_standby  # noqa: F401 (a fixture)

ON_ONE_SLOT = ("-p", "no:cacheprovider", "--psyduck", "--psyduck-hosts=local:1")

#: Five quick tests in one module, one slow test in another; each writes its id to ORDER.
SUITE = {
    "conftest.py": (
        "import os, pytest\n\n"
        "@pytest.fixture(autouse=True)\n"
        "def _order(request):\n"
        "    with open(os.environ['ORDER'], 'a') as f:\n"
        "        f.write(request.node.nodeid + '\\n')\n"
    ),
    "test_a.py": "".join(f"def test_quick_{n}():\n    pass\n\n" for n in range(5)),
    "test_z.py": "import time\n\ndef test_slow():\n    time.sleep(1)\n",
}


def clone(root: Path) -> Path:
    """A checkout of the suite at ``root/timings`` (no pytest cache: a fresh clone)."""
    project = root / "timings"
    project.mkdir(parents=True)
    for name, text in SUITE.items():
        (project / name).write_text(text)
    return project


def estimates(state: Path) -> dict[str, float]:
    return {test: estimate for test, (estimate, _) in recorded(state).items()}


def recorded(state: Path) -> dict[str, tuple[float, int]]:
    """test id → (estimate, durations kept) in the history under *state*."""
    with contextlib.closing(sqlite3.connect(state / "psyduck" / "history.sqlite3")) as db:
        rows = db.execute(
            "SELECT test, estimate, recent FROM durations WHERE project = 'timings'"
        ).fetchall()
    return {test: (estimate, len(recent.split(","))) for test, estimate, recent in rows}


def run_order(project: Path, state: Path, tmp_path: Path) -> list[str]:
    """Run the suite on one slot; the test ids in the order they ran."""
    order = tmp_path / "order"
    order.unlink(missing_ok=True)
    session = run_pytest(
        project, *ON_ONE_SLOT, env={"XDG_STATE_HOME": str(state), "ORDER": str(order)}
    )
    assert session.returncode == 0, session.stdout + session.stderr
    assert session.outcomes() == {"passed": 6}, session.stdout
    return order.read_text().split()


def test_a_fresh_clone_is_scheduled_from_the_embedded_farms_history(tmp_path):
    state = tmp_path / "state"
    first = run_order(clone(tmp_path / "a"), state, tmp_path)
    assert first[0].startswith("test_a.py::")  # durations unknown: the bigger module first
    known = estimates(state)
    assert len(known) == 6 and known["test_z.py::test_slow"] >= 1.0
    fresh = clone(tmp_path / "b")  # another checkout, no pytest cache
    second = run_order(fresh, state, tmp_path)
    assert second[0] == "test_z.py::test_slow", second


def test_a_claimed_standby_keeps_the_history_of_the_session_that_claimed_it(
    tmp_path,
    runtime_dir,  # noqa: F811 (the fixture)
):
    project = clone(tmp_path)
    before, after = tmp_path / "state-before", tmp_path / "state-after"
    run_order(project, before, tmp_path)
    standby_pid = waiting_standby(runtime_dir)  # started in the first session's environment
    run_order(project, after, tmp_path)
    wait_until(lambda: not alive(standby_pid), "the claimed standby to end with its session")
    # It served the second session and wrote where that session's XDG_STATE_HOME says.
    assert recorded(after)["test_z.py::test_slow"][1] == 1
    assert recorded(before)["test_z.py::test_slow"][1] == 1
