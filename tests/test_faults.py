"""Crashes, hangs, -x and Ctrl-C: the run survives, says what happened, leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.conftest import SESSION_TIMEOUT, junit_cases, run_pytest, start_pytest, wait_until

SPAWNS = pytest.mark.parametrize("spawn", ["fork", "exec"])


@SPAWNS
def test_a_test_that_kills_its_worker_fails_alone(suite, spawn):
    path = suite(
        {
            "test_crash.py": """
import ctypes, os

def test_before(): pass

def test_exit():
    os._exit(3)

def test_segfault():
    ctypes.string_at(0)

def test_sigkill():
    os.kill(os.getpid(), 9)

def test_after(): pass
""",
            "test_other.py": "\n".join(f"def test_{i}(): pass" for i in range(20)),
        }
    )
    result = run_pytest(
        path,
        "-p",
        "no:cacheprovider",
        "--psyduck",
        f"--psyduck-spawn={spawn}",
        "--junitxml=out.xml",
    )
    assert result.outcomes() == {"failed": 3, "passed": 22}, result.stdout
    assert (
        "worker crashed while running test_crash.py::test_exit: exited with status 3"
        in result.stdout
    )
    assert (
        "worker crashed while running test_crash.py::test_segfault: killed by signal SIGSEGV"
        in result.stdout
    )
    assert "while running test_crash.py::test_sigkill: killed by signal SIGKILL" in result.stdout
    # faulthandler's dump names the line that crashed.
    assert "Fatal Python error: Segmentation fault" in result.stdout
    cases = junit_cases(path / "out.xml")
    assert cases["test_crash::test_exit"][0] == "failure"
    assert cases["test_crash::test_after"] == ("passed", "")


def test_garbage_on_the_worker_channel_fails_that_test_only(suite):
    path = suite(
        {
            "test_garbage.py": """
import os, socket

def test_writes_garbage():
    channel = socket.socket(fileno=os.dup(int(os.environ["PSYDUCK_WORKER_FD"])))
    channel.sendall(b"\\xff\\xff\\xff\\xffnot a frame")

def test_fine(): pass
""",
        }
    )
    result = run_pytest(path, "-p", "no:cacheprovider", "--psyduck", "--psyduck-spawn=exec")
    assert result.outcomes() == {"failed": 1, "passed": 1}, result.stdout
    assert "bad message from worker" in result.stdout
    assert "exceeds the limit" in result.stdout


@SPAWNS
def test_hung_test_is_killed_with_its_stack(suite, spawn):
    path = suite(
        {
            "test_hang.py": """
import time, pytest

def wait_forever():
    while True:
        time.sleep(0.05)

@pytest.mark.psyduck(timeout=1)
def test_hangs():
    wait_forever()

def test_fine(): pass
""",
        }
    )
    result = run_pytest(path, "-p", "no:cacheprovider", "--psyduck", f"--psyduck-spawn={spawn}")
    assert result.outcomes() == {"failed": 1, "passed": 1}, result.stdout
    assert "Timeout: test_hang.py::test_hangs ran longer than 1s and was killed" in result.stdout
    assert "in wait_forever" in result.stdout
    assert "time.sleep(0.05)" in result.stdout


def test_global_timeout_option(suite):
    path = suite({"test_hang.py": "import time\ndef test_hangs(): time.sleep(60)"})
    result = run_pytest(path, "-p", "no:cacheprovider", "--psyduck", "--psyduck-timeout=0.5")
    assert result.outcomes() == {"failed": 1}
    assert "ran longer than 0.5s" in result.stdout


def test_exitfirst_stops_promptly_and_cancels_queued_work(suite):
    slow = "\n".join(f"def test_slow_{i}(): __import__('time').sleep(0.5)" for i in range(40))
    path = suite({"test_a.py": "def test_fails(): assert 0\n" + slow})
    started = time.monotonic()
    result = run_pytest(
        path, "-p", "no:cacheprovider", "--psyduck", "-x", "--psyduck-hosts=local:2"
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "stopping after 1 failures" in result.stdout
    assert result.outcomes()["failed"] == 1
    # 40 x 0.5 s on two workers would take 10 s; cancelling leaves well under that.
    assert result.outcomes().get("passed", 0) < 10
    assert elapsed < SESSION_TIMEOUT


def _children_of(pid: int) -> set[int]:
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,pgid="], capture_output=True, text=True
    ).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, ppid, _ in rows if ppid in frontier} - found
        found |= frontier
    return found


def _session_in_a_long_test(suite, tmp_path, *args: str) -> subprocess.Popen:
    """A ``pytest --psyduck`` session whose one test is running (and would for two minutes)."""
    started_file = tmp_path / "started"
    path = suite(
        {
            "test_slow.py": f"""
import time, pathlib
def test_slow():
    pathlib.Path({str(started_file)!r}).write_text("x")
    time.sleep(120)
""",
        }
    )
    proc = start_pytest(path, "-p", "no:cacheprovider", "--psyduck", *args)
    wait_until(lambda: started_file.exists() or proc.poll() is not None, "the test to start")
    assert proc.poll() is None
    return proc


@SPAWNS
def test_ctrl_c_cancels_the_run_and_leaves_no_worker(suite, spawn, tmp_path):
    proc = _session_in_a_long_test(suite, tmp_path, f"--psyduck-spawn={spawn}")
    workers = _children_of(proc.pid)
    assert workers
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "KeyboardInterrupt" in out
    wait_until(lambda: not any(_is_alive(pid) for pid in workers), "workers to go", timeout=10)


def test_a_killed_session_takes_its_embedded_farm_and_workers_along(suite, tmp_path):
    proc = _session_in_a_long_test(suite, tmp_path)
    descendants = _children_of(proc.pid)
    assert len(descendants) >= 2  # the embedded farm and at least one worker
    proc.kill()
    proc.communicate(timeout=60)
    wait_until(
        lambda: not any(_is_alive(pid) for pid in descendants),
        "the farm and its workers to go",
        timeout=30,
    )


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_farm_whose_hosts_cannot_serve_is_a_usage_error(suite):
    path = suite({"test_a.py": "def test_ok(): pass"})
    result = run_pytest(
        path, "-p", "no:cacheprovider", "--psyduck", "--psyduck-hosts=ssh://nobody@127.0.0.1:1"
    )
    assert result.returncode == 4
    assert "no host can serve" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
