"""A large transformation matrix end to end: before (another checkout) vs this code, side by side.

Run with plain Python from the repository root::

    python benchmarks/variants.py [--tests 10000] [--transformations 100] [--before /work/main]
                                  [--served]

Writes a suite of ``--tests`` tests that all fail and ``--transformations``
env-only transformations, then runs ``pytest --psyduck --psyduck-transform all -x``
on it twice, each a fresh process: once with ``--before`` first on
``PYTHONPATH`` (the code to compare with), once with this repository.  A tiny
plugin records when collection ends and when the run has its manifest; the
process's peak RSS comes from ``wait4``.  Target: accepted, ``1 failed``,
exit 1, within 120 s and under 2.5 GiB.  With ``--served`` both runs go to a
real ``psyduck farm serve`` (two local slots) started for each, whose own
peak RSS is printed too; without, to the embedded farm.  Prints ``name: value``
lines, ratios first.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import _transformation_suite as transformation_suite

HERE = Path(__file__).resolve().parent.parent
MODULES = 20

PHASES = """
import json, os, time, pytest
from pytest_psyduck import session as _session

_marks = {"started": time.perf_counter()}
_build = _session.build_manifest

def _timed_build(*args, **kwargs):
    manifest = _build(*args, **kwargs)
    _marks["manifest"] = time.perf_counter()
    return manifest

_session.build_manifest = _timed_build

def pytest_collection_finish(session):
    _marks["collected"] = time.perf_counter()
    _marks["items"] = len(session.items)

def pytest_unconfigure(config):
    if not hasattr(config, "workerinput") and "collected" in _marks:
        with open(os.environ["BENCH_PHASES_OUT"], "w") as f:
            json.dump(_marks, f)
"""


def write_suite(root: Path, tests: int, transformations: int) -> None:
    """Node ids of about 80 characters, as in a real project's tree."""
    per_module = tests // MODULES
    package = root / "tests" / "storage" / "replication"
    package.mkdir(parents=True)
    for m in range(MODULES):
        body = "\n".join(
            f"def test_write_path_case_{t}():\n    assert {t} < 0\n" for t in range(per_module)
        )
        (package / f"test_replicated_writes_{m}.py").write_text(body)
    transformation_suite.write_transformations(root, transformations)
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "bench_phases.py").write_text(PHASES)


TOKEN = "bench-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/v1/health", timeout=5).close()
    except OSError:
        return False
    return True


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def served_farm(root: Path, code: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """``psyduck farm serve`` with two local slots, running *code*: its URL, and its peak RSS
    (filled in when it stops)."""
    state = Path(tempfile.mkdtemp(dir=root))
    port = _free_port()
    (state / "token").write_text(TOKEN)
    config = state / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{state / "token"}"\n'
        f'state_dir = "{state / "state"}"\n\n[[hosts]]\nurl = "local"\nslots = 2\n'
    )
    url = f"http://127.0.0.1:{port}"
    farm = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "farm", "serve", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(code)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    figures: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            if farm.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the served farm did not come up")
            time.sleep(0.2)
        yield url, figures
        figures["farm_peak_rss_bytes"] = _peak_rss(farm.pid)
    finally:
        farm.terminate()
        farm.wait(timeout=60)


def run(root: Path, code: Path, farm: str | None = None) -> dict[str, float | int | str]:
    out = root / "phases.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-p", "bench_phases", "-p", "no:cacheprovider"]
    command += ["--psyduck", "--psyduck-transform", "all", "-x", "-q"]
    env = {**os.environ, "PYTHONPATH": f"{code}:{root}", "BENCH_PHASES_OUT": str(out)}
    if farm is not None:
        command.append(f"--psyduck-farm={farm}")
        env["PSYDUCK_TOKEN"] = TOKEN
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    output = process.stdout.read()
    # Reaped here rather than by Popen, for the child's own resource usage.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    phases = json.loads(out.read_text()) if out.exists() else {}
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return {
        "wall_s": wall,
        "collection_s": phases.get("collected", started) - phases.get("started", started),
        "manifest_s": phases.get("manifest", 0.0) - phases.get("collected", 0.0),
        "items": phases.get("items", 0),
        "exit": process.returncode,
        "summary": last,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
    }


def run_on(root: Path, code: Path, served: bool) -> dict[str, float | int | str]:
    if not served:
        return run(root, code)
    with served_farm(root, code) as (url, figures):
        result = run(root, code, url)
    return {**result, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10_000)
    parser.add_argument("--transformations", type=int, default=100)
    parser.add_argument("--before", type=Path, default=Path("/work/main"))
    parser.add_argument("--served", action="store_true", help="run on a real served farm")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_suite(root, options.tests, options.transformations)
        before = run_on(root, options.before, options.served)
        after = run_on(root, HERE, options.served)
    for key in ("wall_s", "collection_s", "peak_rss_bytes"):
        ratio = after[key] / before[key] if before[key] else float("nan")
        print(f"{key.removesuffix('_s').removesuffix('_bytes')}_after_vs_before: {ratio:.2f}")
    for name, result in (("before", before), ("after", after)):
        for key, value in result.items():
            shown = f"{value:.2f}" if isinstance(value, float) else value
            print(f"{name}_{key}: {shown}")
    fine = (
        after["exit"] == 1
        and "1 failed" in str(after["summary"])
        and after["wall_s"] <= 120
        and after["peak_rss_bytes"] < 2.5 * 2**30  # the issue measures in GiB
    )
    print(f"within_target: {'yes' if fine else 'no'}")


if __name__ == "__main__":
    main()
