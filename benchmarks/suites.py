"""Plain pytest vs pytest-xdist vs psyduck on the same suites, in one run.

    python benchmarks/suites.py [--repeat 3] [--only trivial,sleep,more-itertools]
                                [--bytecode-cache on|off] [--unbuffered on|off]
                                [--standby on|off] [--install editable|wheel]

Prints ``name: value`` lines, ratios first (below 1.0 means psyduck is faster),
then the seconds behind them and the machine's speed at the end of the run.
The three commands take turns: one warm-up round (caches, durations, and the
standby farm the next psyduck run claims), then ``--repeat`` rounds; the best
wall time of each counts.

The environment is a developer's terminal unless told otherwise:
``--bytecode-cache off`` is what ``PYTHONDONTWRITEBYTECODE=1`` does, common in
CI images (pytest then rewrites every test module's asserts on every run);
``--unbuffered on`` is ``PYTHONUNBUFFERED=1``, also common there (every
progress dot is then a write of its own); ``--standby off`` starts a fresh
embedded farm for every run (``PSYDUCK_STANDBY=0``).  ``--install wheel`` runs
all three from a virtual environment with psyduck installed as users install
it, not from this checkout's editable install (pytest treats the two
differently: it marks an installed plugin's packages for assertion rewriting).

Suites: 2,000 trivial tests; 400 tests sleeping 25 ms each with 8 slots;
more-itertools' own test suite, downloaded from PyPI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from farm.standby import standby_pids

HERE = Path(__file__).resolve().parent
#: Plugins installed beside psyduck (its test extras) that the suites do not use.
#: Hypothesis' plugin imports all of hypothesis in its terminal summary (0.2 to 0.4 s
#: since 6.1xx), a fixed cost in all three commands that would only blur the ratios.
NO_BYSTANDERS = ["-p", "no:hypothesispytest"]


def make_trivial(root: Path) -> Path:
    for m in range(20):
        body = "\n".join(f"def test_{i}():\n    assert {i} + 1 > {i}\n" for i in range(100))
        (root / f"test_m{m}.py").write_text(body)
    return root


def make_sleep(root: Path) -> Path:
    for m in range(20):
        body = "import time\n" + "\n".join(
            f"def test_{i}():\n    time.sleep(0.025)\n" for i in range(20)
        )
        (root / f"test_s{m}.py").write_text(body)
    return root


def make_more_itertools(root: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            str(root),
            "more-itertools",
        ],
        check=True,
    )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "more-itertools"], check=True)
    archive = next(root.glob("more_itertools-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    source = next(p for p in root.iterdir() if p.is_dir())
    return source / "tests"


def timed(
    python: str, cwd: Path, variants: dict[str, list[str]], repeat: int, base: dict[str, str]
) -> dict[str, tuple[float, float, float]]:
    """Best wall time, time after collection and exit time of ``pytest ARGS`` for each variant.

    The exit time runs from the end of the session (``pytest_sessionfinish``)
    to the process's end: the terminal summary, unconfiguring, the interpreter's
    teardown.

    The variants take turns, round after round, so that a machine slowing down
    or speeding up over the minutes of a run weighs on all of them alike.
    """
    times_file = cwd / ".bench-times.json"
    env = {**base, "PSYDUCK_BENCH_TIMES": str(times_file)}
    runtime_dir = Path(base["XDG_RUNTIME_DIR"])
    best = {name: (float("inf"), float("inf"), float("inf")) for name in variants}
    for attempt in range(repeat + 1):
        for name, args in variants.items():
            cmd = [python, "-m", "pytest", "-q", "-p", "_phase_timer", *args, *NO_BYSTANDERS]
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            ended = time.time()
            if done.returncode not in (0, 1):
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
            # The standby a psyduck run leaves warms up once that pytest exits; let
            # it finish rather than slow the next command, as a developer's
            # editing between two runs would.
            settle_standbys(runtime_dir)
            after = exiting = float("inf")
            if times_file.exists():  # pytest-xdist's controller never collects
                phases = json.loads(times_file.read_text())
                after, exiting = phases["after_collection"], ended - phases["finished_at"]
                times_file.unlink()
            if attempt == 0:
                continue  # warm-up: bytecode, assertion rewriting, durations, standby farm
            best[name] = tuple(map(min, best[name], (wall, after, exiting)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="trivial,sleep,more-itertools")
    parser.add_argument("--bytecode-cache", choices=("on", "off"), default="on")
    parser.add_argument("--unbuffered", choices=("on", "off"), default="off")
    parser.add_argument("--standby", choices=("on", "off"), default="on")
    parser.add_argument("--install", choices=("editable", "wheel"), default="editable")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    suites = {
        "trivial": (make_trivial, cpus),
        "sleep": (make_sleep, 8),
        "more-itertools": (make_more_itertools, cpus),
    }
    ratios: list[str] = []
    details: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = environment(args, Path(tmp))
        python = sys.executable if args.install == "editable" else installed(Path(tmp))
        for name in args.only.split(","):
            make, slots = suites[name]
            root = Path(tmp) / name
            root.mkdir()
            path = make(root)
            variants = {
                "plain": [],
                "xdist": ["-n", str(slots)],
                "psyduck": ["--psyduck", f"--psyduck-hosts=local:{slots}"],
            }
            best = timed(python, path, variants, args.repeat, env)
            (plain, _, plain_exit), (xdist, _, _), (psy, psy_after, psy_exit) = (
                best[v] for v in variants
            )
            ratios.append(f"{name}_psyduck_vs_plain: {psy / plain:.2f}")
            ratios.append(f"{name}_psyduck_vs_xdist: {psy / xdist:.2f}")
            if name == "sleep":
                ideal = max(0.025, 400 * 0.025 / slots)
                ratios.append(f"sleep_after_collection_vs_ideal: {psy_after / ideal:.2f}")
            details += [
                f"{name}_plain_seconds: {plain:.2f}",
                f"{name}_xdist_seconds: {xdist:.2f}",
                f"{name}_psyduck_seconds: {psy:.2f}",
                f"{name}_plain_exit_seconds: {plain_exit:.3f}",
                f"{name}_psyduck_exit_seconds: {psy_exit:.3f}",
            ]
        stop_standbys(Path(tmp))
    settings = [f"{k}: {v}" for k, v in vars(args).items() if k not in ("only", "repeat")]
    single, pair = machine_speed()
    machine = [
        f"machine_spin_seconds: {single:.2f}",
        f"machine_two_spins_vs_one: {pair / single:.2f}",
    ]
    print("\n".join(ratios + details + [f"cpus: {cpus}", *machine, *settings]))


#: A fixed CPU-bound loop.
SPIN = "for i in range(10_000_000): pass"


def machine_speed() -> tuple[float, float]:
    """Wall seconds of a fixed loop alone, and of two copies run at once.

    On a shared VM both drift, and psyduck's ratios with them: only its side of
    each comparison needs two cores at once.  Printed so that runs can be compared.
    """

    def spins(count: int) -> float:
        started = time.perf_counter()
        running = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
        for process in running:
            process.wait()
        return time.perf_counter() - started

    return spins(1), spins(2)


def installed(tmp: Path) -> str:
    """A virtual environment's python with psyduck installed from this checkout, not editable.

    It sees this interpreter's packages (pytest, xdist, aiohttp...): only psyduck differs.
    """
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(HERE.parent)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return python


def environment(args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    """The benchmark's environment; standby farms live in *tmp*, not the user's runtime dir."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "XDG_RUNTIME_DIR": str(tmp / "run"),
        "PSYDUCK_STANDBY": "1" if args.standby == "on" else "0",
    }
    for name, wanted in (
        ("PYTHONDONTWRITEBYTECODE", args.bytecode_cache == "off"),
        ("PYTHONUNBUFFERED", args.unbuffered == "on"),
    ):
        env.pop(name, None)
        if wanted:
            env[name] = "1"
    return env


def settle_standbys(runtime_dir: Path, timeout: float = 10.0) -> None:
    """Wait until the standby farms under *runtime_dir* use no more CPU (warmed up, waiting)."""
    deadline = time.monotonic() + timeout

    def cpu_ticks() -> int:
        total = 0
        for pid in standby_pids(runtime_dir):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total

    before = cpu_ticks()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_ticks()
        if now == before:
            return
        before = now


def stop_standbys(tmp: Path) -> None:
    """End the standby farms the psyduck runs left in *tmp*."""
    for pid in standby_pids(tmp):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
