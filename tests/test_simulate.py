"""``psyduck simulate`` as a user runs it: a real subprocess, small sizes, its JSON and picture.

The simulation drives the farm's real coordinator (``test_simulate_engine.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def psyduck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", "simulate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_simulate_json_reports_the_schedule_beside_the_baselines(tmp_path):
    done = psyduck(
        *("--hosts", "3", "--slots", "4", "--cpus", "4", "--memory", "16G"),
        *("--tests", "120", "--variants", "3", "--noise", "0.3"),
        *("--heavy", "0.1", "--heavy-cpus", "2", "--heavy-memory", "8GiB"),
        *("--long", "0.01", "--small-run", "10", "--unknown", "0.2"),
        *("--host-failures", "3", "--seed", "3", "--json"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tests"] == 120 * 3 + 10  # the small run: one variant of each test
    assert result["executions"] >= result["tests"]
    assert result["makespan_s"] >= result["lower_bound_s"] > 0
    assert result["oversubscribed_host_seconds"] == 0
    assert result["decisions"] > 0 and result["decisions_per_s"] > 0
    assert result["scheduler_cpu_s"] > 0 and result["peak_rss_bytes"] > 0
    assert result["small_run_slowdown"] >= 1.0 - 1e-9
    # With untimed tests, the same runs once the farm's history has timed them.
    assert result["second_run_makespan_s"] >= result["lower_bound_s"] - 1e-6
    assert result["second_run_makespan_ratio"] >= 1.0 - 1e-9
    assert set(result["baselines"]) == {"xdist-load", "xdist-loadfile", "pytest-split"}
    for figures in result["baselines"].values():
        assert figures["makespan_s"] >= result["lower_bound_s"] - 1e-6


def test_simulate_summary_and_gantt(tmp_path):
    done = psyduck(
        *("--hosts", "2", "--slots", "3", "--tests", "40", "--small-run", "5"),
        *("--gantt", "g.svg"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "makespan:" in done.stdout and "baseline pytest-split:" in done.stdout
    svg = (tmp_path / "g.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<rect") >= 2


def test_simulate_refuses_bad_options_clearly(tmp_path):
    bad_size = psyduck("--memory", "lots", cwd=tmp_path)
    assert bad_size.returncode == 2 and "not a size: 'lots'" in bad_size.stderr
    too_heavy = psyduck("--cpus", "4", "--heavy", "0.5", "--heavy-cpus", "8", cwd=tmp_path)
    assert too_heavy.returncode == 2
    assert "heavy tests would need more than a host has" in too_heavy.stderr
