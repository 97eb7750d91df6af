"""Memory the user's pytest process gains per result: ``pytest --psyduck`` beside plain pytest.

Run with plain Python from the repository root::

    python benchmarks/replay_memory.py [--tests 10000] [--transformations 11] [--hosts local:2]

The same suite (tests x env-only transformations) runs twice: once with
psyduck on the embedded farm, once in-process without it.  A tiny plugin
reads the process's resident memory (``VmRSS``, after a full garbage
collection) when collection ends and when the session finishes; what the run
added, divided by the number of results, is the cost of a result.  Plain
pytest keeps every report too (the terminal's statistics), so the ratio says
what psyduck holds beyond it.  Each process's peak RSS comes from ``wait4``,
and both must end with the same summary line.  ``--tests 5000
--transformations 99`` is issue 14's 500,000 variants, whose target is a
user's process under 2 GB.  Prints ``name: value`` lines, ratios first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _transformation_suite as transformation_suite

MODULES = 50

PROBE = """
import gc, json, os

_marks = {}


def _rss():
    gc.collect()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024


def pytest_collection_finish(session):
    _marks["collected"] = _rss()
    _marks["items"] = len(session.items)


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    _marks["finished"] = _rss()
    with open(os.environ["BENCH_MEMORY_OUT"], "w") as f:
        json.dump(_marks, f)
"""


def write_suite(root: Path, tests: int, transformations: int) -> None:
    transformation_suite.write_suite(root, tests, transformations, MODULES)
    (root / "bench_memory.py").write_text(PROBE)


def measure(root: Path, extra: tuple[str, ...]) -> tuple[dict, float]:
    """The probe's marks plus the process's peak RSS and summary line, and its wall time."""
    out = root / "memory.json"
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-p", "bench_memory", *extra),
        ],
        cwd=root,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), *sys.path[1:2]]),
            "BENCH_MEMORY_OUT": str(out),
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    last = ""
    for line in process.stdout:
        last = line.strip() or last
    # Reaped here rather than by Popen, for the child's own resource usage.
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pytest {' '.join(extra)} failed: {last}")
    marks = json.loads(out.read_text())
    marks["peak"] = usage.ru_maxrss * 1024
    marks["summary"] = re.sub(r" in [\d.]+s.*$", "", last.strip("= "))
    return marks, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10_000)
    parser.add_argument("--transformations", type=int, default=11)
    parser.add_argument("--hosts", default="local:2")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_suite(root, options.tests, options.transformations)
        psyduck, psyduck_s = measure(root, ("--psyduck", f"--psyduck-hosts={options.hosts}"))
        plain, plain_s = measure(root, ("--psyduck-transform", "all"))
    results = plain["items"]
    assert psyduck["items"] == results, (psyduck["items"], results)

    def per_result(marks: dict) -> float:
        return (marks["finished"] - marks["collected"]) / results

    print(f"rss_per_result_ratio: {per_result(psyduck) / per_result(plain):.2f}")
    print(f"peak_rss_ratio: {psyduck['peak'] / plain['peak']:.2f}")
    print(f"wall_time_ratio: {psyduck_s / plain_s:.2f}")
    print(f"results: {results}")
    print(f"summary_psyduck: {psyduck['summary']}")
    print(f"summary_plain: {plain['summary']}")
    print(f"same_summary: {'yes' if psyduck['summary'] == plain['summary'] else 'no'}")
    print(f"peak_rss_bytes_psyduck: {psyduck['peak']}")
    print(f"peak_rss_bytes_plain: {plain['peak']}")
    print(f"psyduck_under_2gb: {'yes' if psyduck['peak'] < 2e9 else 'no'}")
    print(f"rss_per_result_bytes_psyduck: {per_result(psyduck):.0f}")
    print(f"rss_per_result_bytes_plain: {per_result(plain):.0f}")
    for name, marks in (("psyduck", psyduck), ("plain", plain)):
        print(f"rss_after_collection_mb_{name}: {marks['collected'] / 2**20:.0f}")
        print(f"rss_at_session_finish_mb_{name}: {marks['finished'] / 2**20:.0f}")
    print(f"wall_seconds_psyduck: {psyduck_s:.1f}")
    print(f"wall_seconds_plain: {plain_s:.1f}")


if __name__ == "__main__":
    main()
