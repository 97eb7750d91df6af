"""Collection cost of test transformations: 1,000 tests x 20 transformations vs 1,000 tests.

Run with plain Python from the repository root::

    python benchmarks/transformations.py [--tests 1000] [--transformations 20] [--repeat 5]

Each measurement is a fresh ``pytest --collect-only`` process; a tiny plugin
times the ``pytest_collection`` hook (importing, collecting and multiplying
the tests, not interpreter start-up).  The best of ``--repeat`` runs is
reported.  Target: the transformations add at most 1 second.  Prints
``name: value`` lines, ratios first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _transformation_suite as transformation_suite

MODULES = 20

TIMER = """
import os, time, pytest

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection(session):
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        with open(os.environ["BENCH_TIMER_OUT"], "w") as f:
            f.write(f"{time.perf_counter() - started} {len(session.items)}")
"""


def write_suite(root: Path, tests: int, transformations: int) -> None:
    transformation_suite.write_suite(root, tests, transformations, MODULES)
    (root / "bench_timer.py").write_text(TIMER)


def collect(root: Path, selection: str) -> tuple[float, int]:
    out = root / "timer.out"
    subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "--collect-only", "-qq", "-p", "no:cacheprovider"),
            *("-p", "bench_timer", "--psyduck-transform", selection),
        ],
        cwd=root,
        env={
            **os.environ,
            # The suite's timer plugin, then whatever code the caller chose.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
            "BENCH_TIMER_OUT": str(out),
        },
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds, items = out.read_text().split()
    return float(seconds), int(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--transformations", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_suite(root, options.tests, options.transformations)
        plain = min(collect(root, "none") for _ in range(options.repeat))
        multiplied = min(collect(root, "all") for _ in range(options.repeat))
    added = multiplied[0] - plain[0]
    print(f"collection_time_ratio: {multiplied[0] / plain[0]:.2f}")
    print(f"collection_added_seconds: {added:.3f}")
    print(f"collection_added_seconds_target: {1.0:.3f}")
    print(f"collection_seconds_plain: {plain[0]:.3f}")
    print(f"collection_seconds_transformed: {multiplied[0]:.3f}")
    print(f"items_plain: {plain[1]}")
    print(f"items_transformed: {multiplied[1]}")
    print(f"added_microseconds_per_variant: {added / max(1, multiplied[1] - plain[1]) * 1e6:.1f}")
    print(f"within_target: {'yes' if added <= 1.0 else 'no'}")


if __name__ == "__main__":
    main()
