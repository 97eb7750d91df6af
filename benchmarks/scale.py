"""The scheduler at a million variants: issue 14's target workloads through ``psyduck simulate``.

Run with plain Python from the repository root::

    python benchmarks/scale.py [--tests 10000] [--variants 100] [--seed 1] [--only NAME]

Each workload is one ``psyduck simulate --json`` subprocess (so its peak
memory is its own) on 150 hosts x 16 slots of 16 cores / 64 GiB, 10,000
tests x 100 variants, 20% estimate noise, 5% of tests needing 8 cores /
16 GiB, 0.1% lasting 1-2 hours and a 50-test run arriving mid-way:

* ``target`` — as above;
* ``unknown`` — the same with 20% of tests never timed, and (``with_history``)
  the same runs again once the farm's duration history knows those tests;
* ``bulk`` — without the hours-long tests, whose length otherwise *is* the
  lower bound: this one shows how tightly the rest is packed;
* ``unknown_bulk`` — both: without the hours-long tests, 20% untimed (and
  again with history);
* ``small_variants`` — the small run's 50 tests in 100 variants each (5,000
  tests arriving mid-way, instead of 50);
* ``unknown_small_variants`` — both: 20% of the tests untimed and the small
  run's tests in 100 variants each.

Prints ``name: value`` lines, ratios first: makespan ÷ lower bound, our
makespan ÷ each baseline's (below 1 is ahead of it), the small run's
slowdown; then decisions per second of scheduler CPU, peak memory,
oversubscribed host-seconds, and the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FARM = ("--hosts", "150", "--slots", "16", "--cpus", "16", "--memory", "64G")
SUITE = ("--noise", "0.2", "--heavy", "0.05", "--heavy-cpus", "8", "--heavy-memory", "16G")
WORKLOADS = {
    "target": ("--long", "0.001", "--small-run", "50"),
    "unknown": ("--long", "0.001", "--small-run", "50", "--unknown", "0.2"),
    "bulk": ("--long", "0", "--small-run", "50"),
    "unknown_bulk": ("--long", "0", "--small-run", "50", "--unknown", "0.2"),
    "small_variants": ("--long", "0.001", "--small-run", "50", "--small-variants", "100"),
    "unknown_small_variants": (
        *("--long", "0.001", "--small-run", "50", "--small-variants", "100"),
        *("--unknown", "0.2"),
    ),
}


def simulate(name: str, tests: int, variants: int, seed: int) -> dict:
    argv = [
        sys.executable,
        *("-m", "farm.cli", "simulate", *FARM, *SUITE, *WORKLOADS[name]),
        *("--tests", str(tests), "--variants", str(variants), "--seed", str(seed), "--json"),
    ]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        argv, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise SystemExit(f"{name}: psyduck simulate failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10_000)
    parser.add_argument("--variants", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append")
    args = parser.parse_args()
    results = {
        name: simulate(name, args.tests, args.variants, args.seed)
        for name in args.only or WORKLOADS
    }
    for name, r in results.items():
        print(f"{name}.makespan_over_lower_bound: {r['makespan_ratio']:.4f}")
        for baseline, figures in r["baselines"].items():
            print(f"{name}.makespan_over_{baseline}: {r['makespan_s'] / figures['makespan_s']:.4f}")
        print(f"{name}.small_run_slowdown: {r['small_run_slowdown']:.3f}")
        if "second_run_makespan_ratio" in r:
            ratio = r["second_run_makespan_ratio"]
            print(f"{name}.with_history.makespan_over_lower_bound: {ratio:.4f}")
    for name, r in results.items():
        print(f"{name}.decisions_per_s: {r['decisions_per_s']:.0f}")
        print(f"{name}.peak_rss_mib: {r['peak_rss_bytes'] / 2**20:.0f}")
        print(f"{name}.oversubscribed_host_seconds: {r['oversubscribed_host_seconds']:.1f}")
        for baseline, figures in r["baselines"].items():
            over = figures["oversubscribed_host_seconds"]
            print(f"{name}.{baseline}.oversubscribed_host_seconds: {over:.1f}")
        print(f"{name}.decisions: {r['decisions']}")
        print(f"{name}.scheduler_cpu_s: {r['scheduler_cpu_s']:.2f}")
        print(f"{name}.makespan_s: {r['makespan_s']:.1f}")
        if "second_run_makespan_s" in r:
            print(f"{name}.with_history.makespan_s: {r['second_run_makespan_s']:.1f}")
        print(f"{name}.simulation_wall_s: {r['simulation_wall_s']:.1f}")
        print(f"{name}.lower_bound_s: {r['lower_bound_s']:.1f}")
        print(f"{name}.small_run_s: {r['small_run_s']:.2f}")
        print(f"{name}.small_run_alone_s: {r['small_run_alone_s']:.2f}")
        for baseline, figures in r["baselines"].items():
            print(f"{name}.{baseline}.makespan_s: {figures['makespan_s']:.1f}")


if __name__ == "__main__":
    main()
