"""What a lagging client's run leaves on the farm's disk, with the spool's cap and without.

Run with plain Python from the repository root::

    python benchmarks/spool_cap.py [--tests 2000] [--printed 16384] [--cap 4M]

A served farm (``psyduck farm serve``, two local slots) runs a suite whose
tests each print *printed* bytes (their reports carry it) for a ``pytest
--psyduck-farm`` session whose replay stands still on its first result.
While it stands, the farm's status is polled until the run makes no more
progress: with ``[farm] spool_max_bytes`` the run is held back once its spool
passes the cap, without it (a cap larger than the run) every result waits on
disk.  The session is then released and must pass in full.  Prints ``name:
value`` lines, ratios first.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "spool-bench-token"

STUCK = """
import os, pathlib, time

def pytest_runtest_logreport(report):
    blocked, release = pathlib.Path("blocked"), pathlib.Path("release")
    if os.environ.get("PYTEST_XDIST_WORKER") or blocked.exists():
        return
    blocked.write_text("")
    while not release.exists():
        time.sleep(0.05)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status(url: str) -> dict:
    request = urllib.request.Request(
        url + "/v1/status",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def wait(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.2)


def lagging_run(root: Path, cap: str, tests: int, printed: int) -> tuple[int, int, int]:
    """(bytes spooled once the run stood still, tests done by then, tests in all)."""
    root.mkdir()
    port = free_port()
    (root / "token").write_text(TOKEN)
    (root / "farm.toml").write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{root / "token"}"\n'
        f'state_dir = "{root / "state"}"\nspool_max_bytes = "{cap}"\n\n'
        '[[hosts]]\nurl = "local"\nslots = 2\n'
    )
    project = root / "loud"
    project.mkdir()
    (project / "conftest.py").write_text(STUCK)
    (project / "test_loud.py").write_text(
        "import pytest\n\n"
        f"@pytest.mark.parametrize('n', range({tests}))\n"
        f"def test_loud(n):\n    print('x' * {printed})\n"
    )
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PSYDUCK_TOKEN": TOKEN, "PSYDUCK_STANDBY": "0"}
    url = f"http://127.0.0.1:{port}"
    farm = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "farm", "serve", "--config", str(root / "farm.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait(lambda: _up(url), "the farm")
        url_arg = f"--psyduck-farm={url}"
        session = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--psyduck", url_arg],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait((project / "blocked").exists, "the replay to stand still")
        seen: list[dict] = []

        def still() -> bool:
            runs = status(url)["runs"]
            if not runs:
                return False
            seen.append(runs[0])
            done = runs[0]["done"] == tests or runs[0].get("held_back")
            return bool(done and runs[0]["workers"] == 0 and len(seen) > 1 and seen[-2] == seen[-1])

        wait(still, "the run to stand still")
        (project / "release").write_text("")
        output, _ = session.communicate(timeout=600)
        if session.returncode != 0 or f"{tests} passed" not in output:
            sys.exit(f"the session failed:\n{output}")
        return seen[-1]["spooled"], seen[-1]["done"], tests
    finally:
        farm.terminate()
        farm.wait(timeout=60)


def _up(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/v1/health", timeout=5).close()
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--printed", type=int, default=16384)
    parser.add_argument("--cap", default="4M")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="psyduck-spool-bench-") as tmp:
        capped, capped_done, tests = lagging_run(
            Path(tmp) / "capped", args.cap, args.tests, args.printed
        )
        whole, _, _ = lagging_run(Path(tmp) / "uncapped", "1T", args.tests, args.printed)
    print(f"spooled_with_cap_over_without: {capped / whole:.3f}")
    print(f"spooled_with_cap_bytes: {capped}")
    print(f"spooled_without_cap_bytes: {whole}")
    print(f"cap: {args.cap}")
    print(f"tests_done_while_held_back: {capped_done}/{tests}")


if __name__ == "__main__":
    main()
