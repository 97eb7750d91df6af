"""Standby farms: a session's farm leaves a warm successor, and the next session claims it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from farm import standby
from tests.conftest import run_pytest, start_pytest, wait_until

ON_ONE_WORKER = ("-p", "no:cacheprovider", "--psyduck", "--psyduck-hosts=local:1")
SUITE = {"test_a.py": "def test_one():\n    pass\n\ndef test_two():\n    assert 0\n"}


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch):
    """A runtime directory of the test's own (short: socket paths are limited), standbys on."""
    path = Path(tempfile.mkdtemp(prefix="psy-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    monkeypatch.setenv("PSYDUCK_STANDBY", "1")
    yield path
    for pid in standby.standby_pids(path):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def sockets_in(runtime_dir: Path) -> list[Path]:
    return list(runtime_dir.glob("psyduck/*.sock"))


def waiting_standby(runtime_dir: Path) -> int:
    """The pid of the one standby waiting in *runtime_dir*, once its socket is there."""
    wait_until(
        lambda: len(standby.standby_pids(runtime_dir)) == 1 and sockets_in(runtime_dir),
        "a standby farm to wait",
    )
    [pid] = standby.standby_pids(runtime_dir)
    return pid


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_next_session_claims_the_standby_its_predecessor_left(suite, runtime_dir):
    path = suite(SUITE)
    first = run_pytest(path, *ON_ONE_WORKER)
    assert first.outcomes() == {"passed": 1, "failed": 1}, first.stdout + first.stderr
    standby_pid = waiting_standby(runtime_dir)
    second = run_pytest(path, *ON_ONE_WORKER)
    assert (second.returncode, second.outcomes()) == (first.returncode, first.outcomes())
    assert "def test_two" in second.stdout  # the failure's traceback came through it
    # It served that session (it would otherwise idle ten minutes), then left a successor.
    wait_until(lambda: not alive(standby_pid), "the claimed standby to end with its session")
    assert waiting_standby(runtime_dir) != standby_pid


def test_an_unclaimed_standby_exits_after_its_idle_time(suite, runtime_dir):
    result = run_pytest(suite(SUITE), *ON_ONE_WORKER, env={"PSYDUCK_STANDBY_IDLE": "1"})
    assert result.outcomes() == {"passed": 1, "failed": 1}
    standby_pid = waiting_standby(runtime_dir)
    wait_until(lambda: not alive(standby_pid), "the idle standby to exit")
    assert sockets_in(runtime_dir) == []


def test_one_standby_waits_per_socket(runtime_dir):
    path = standby.standby_path()
    started = [
        subprocess.Popen(standby.farm_command("--standby", str(path)), stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        wait_until(lambda: any(p.poll() is not None for p in started), "one of the two to give way")
        loser = next(p for p in started if p.poll() is not None)
        assert loser.returncode == 0, loser.stderr.read()
        winner = next(p for p in started if p is not loser)
        assert winner.poll() is None and sockets_in(runtime_dir) == [path]
    finally:
        for p in started:
            p.kill()
            p.communicate()


def test_garbage_on_the_socket_leaves_the_standby_waiting_for_a_real_session(suite, runtime_dir):
    path = standby.standby_path()
    process = subprocess.Popen(standby.farm_command("--standby", str(path)))
    try:
        wait_until(path.exists, "the standby's socket")
        r, w = os.pipe()
        for payload, fds in [
            (b"not json", []),
            (json.dumps({"hosts": "local:1"}).encode(), []),  # no descriptors
            (json.dumps({"env": {}, "cwd": "/"}).encode(), [r, w]),  # too few
            (json.dumps(["a", "list"]).encode(), [r, w, r, w]),
            (b"", []),  # connects and hangs up
        ]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(path))
                if payload:
                    socket.send_fds(sock, [payload], fds)
        os.close(r)
        os.close(w)
        result = run_pytest(suite(SUITE), *ON_ONE_WORKER)
        assert result.outcomes() == {"passed": 1, "failed": 1}, result.stdout + result.stderr
        process.wait(timeout=60)  # it served that session and ended with it
    finally:
        process.kill()
        process.communicate()


def test_a_standby_that_drops_the_request_is_replaced_by_a_fresh_farm(suite, runtime_dir):
    """A standby exiting just as a session connects must not cost the session its run."""
    path = standby.standby_path()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def drop_one() -> None:
        conn, _ = listener.accept()
        conn.close()  # the request's descriptors go with it, unread

    dropper = threading.Thread(target=drop_one, daemon=True)
    dropper.start()
    try:
        result = run_pytest(suite(SUITE), *ON_ONE_WORKER)
    finally:
        listener.close()
    assert not dropper.is_alive()  # the session did try the standby first
    assert result.outcomes() == {"passed": 1, "failed": 1}, result.stdout + result.stderr


def test_a_killed_session_takes_its_claimed_standby_and_workers_along(suite, runtime_dir, tmp_path):
    path = suite(SUITE)
    run_pytest(path, *ON_ONE_WORKER)
    standby_pid = waiting_standby(runtime_dir)
    started = tmp_path / "started"
    suite(
        {
            "test_slow.py": "import pathlib, time\n"
            "def test_slow():\n"
            f"    pathlib.Path({str(started)!r}).write_text('x')\n"
            "    time.sleep(120)\n"
        }
    )
    proc = start_pytest(path, *ON_ONE_WORKER, "test_slow.py")
    wait_until(lambda: started.exists() or proc.poll() is not None, "the test to start")
    assert proc.poll() is None
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
    workers = [int(pid) for pid in children.split()]
    assert workers and standby_pid not in workers  # the farm is the standby, not a child
    proc.kill()
    proc.communicate(timeout=60)
    wait_until(
        lambda: not alive(standby_pid) and not any(alive(pid) for pid in workers),
        "the farm and its worker to go",
        timeout=30,
    )


def aiohttp_loaded(pid: int) -> bool:
    """Whether *pid* has imported aiohttp (its compiled parser shows in the memory map)."""
    return "/aiohttp/" in Path(f"/proc/{pid}/maps").read_text()


def test_a_successor_warms_up_only_once_the_pytest_it_follows_has_exited(runtime_dir):
    """Its imports would otherwise compete with that pytest's last steps for the CPU."""
    path = standby.standby_path()
    session = subprocess.Popen(["sleep", "600"])  # stands in for the pytest that just ran
    process = subprocess.Popen(standby.farm_command("--standby", str(path), str(session.pid)))
    try:
        wait_until(path.exists, "the standby's socket")
        assert not aiohttp_loaded(process.pid)
        session.kill()
        session.wait()
        wait_until(lambda: aiohttp_loaded(process.pid), "the standby to warm up")
    finally:
        session.kill()
        process.kill()
        process.communicate()


def test_a_standby_still_waiting_for_its_predecessor_to_exit_serves_a_new_session(
    suite, runtime_dir
):
    path = standby.standby_path()
    previous = subprocess.Popen(["sleep", "600"])
    process = subprocess.Popen(standby.farm_command("--standby", str(path), str(previous.pid)))
    try:
        wait_until(path.exists, "the standby's socket")
        result = run_pytest(suite(SUITE), *ON_ONE_WORKER)
        assert result.outcomes() == {"passed": 1, "failed": 1}, result.stdout + result.stderr
        process.wait(timeout=60)  # the standby served it, not a fresh farm
    finally:
        previous.kill()
        process.kill()
        process.communicate()


def test_the_socket_names_the_interpreter_and_its_import_path(monkeypatch, runtime_dir):
    here = standby.standby_path()
    assert standby.standby_path() == here
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert standby.standby_path() != here
    assert here.parent.stat().st_mode & 0o777 == 0o700


def test_standbys_can_be_turned_off(suite, runtime_dir):
    result = run_pytest(suite(SUITE), *ON_ONE_WORKER, env={"PSYDUCK_STANDBY": "0"})
    assert result.outcomes() == {"passed": 1, "failed": 1}
    assert standby.standby_pids(runtime_dir) == [] and sockets_in(runtime_dir) == []


def test_the_farm_command_ignores_the_working_directory(tmp_path):
    """A user's own top-level ``farm`` package must not shadow psyduck's."""
    (tmp_path / "farm").mkdir()
    (tmp_path / "farm" / "__init__.py").write_text("raise SystemExit('the wrong farm')")
    done = subprocess.run(
        [*standby.farm_command()[:-2], "-c", "import farm.standby"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
