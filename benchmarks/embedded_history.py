"""A fresh clone's run on the embedded farm, scheduled with and without its duration history.

Run with plain Python from the repository root::

    python benchmarks/embedded_history.py [--quick 40] [--quick-seconds 0.05] [--slow-seconds 3]

A suite of many quick tests in one module and one slow test in another runs
with ``pytest --psyduck --psyduck-hosts local:2 -p no:cacheprovider`` (no
pytest cache: a fresh clone, CI) three times, each session timed whole:

* ``without``: the embedded farm's state directory is empty, as before the
  farm kept a history — every duration is unknown and the slow test, alone in
  the smaller module, is handed out last;
* ``priming``: same state directory as ``with``, filling its history;
* ``with``: a fresh clone of the suite whose durations only that history knows —
  the slow test goes first and the quick ones fill the other slot meanwhile.

Prints ``name: value`` lines, ratios first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_suite(root: Path, quick: int, quick_seconds: float, slow_seconds: float) -> Path:
    project = root / "history_bench"
    project.mkdir(parents=True)
    (project / "test_quick.py").write_text(
        "import time\n\nimport pytest\n\n"
        f"@pytest.mark.parametrize('n', range({quick}))\n"
        f"def test_quick(n):\n    time.sleep({quick_seconds})\n"
    )
    (project / "test_slow.py").write_text(
        f"import time\n\ndef test_slow():\n    time.sleep({slow_seconds})\n"
    )
    return project


def session_seconds(project: Path, state: Path) -> float:
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(state),
        "PSYDUCK_STANDBY": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--psyduck"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--psyduck-hosts", "local:2"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the session failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", type=int, default=40)
    parser.add_argument("--quick-seconds", type=float, default=0.05)
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="psyduck-history-bench-") as tmp:
        root = Path(tmp)
        suite = (args.quick, args.quick_seconds, args.slow_seconds)
        without = session_seconds(write_suite(root / "a", *suite), root / "empty-state")
        primed = root / "state"
        session_seconds(write_suite(root / "b", *suite), primed)
        with_history = session_seconds(write_suite(root / "c", *suite), primed)
    work = args.quick * args.quick_seconds + args.slow_seconds
    print(f"fresh_clone_with_history_over_without: {with_history / without:.2f}")
    print(f"fresh_clone_without_history_s: {without:.2f}")
    print(f"fresh_clone_with_history_s: {with_history:.2f}")
    print(f"work_s: {work:.2f} (on 2 slots, at best {max(args.slow_seconds, work / 2):.2f})")


if __name__ == "__main__":
    main()
