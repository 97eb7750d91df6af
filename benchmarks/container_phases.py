"""Where a container shard's time goes: engine, interpreter, imports, collection.

    python benchmarks/container_phases.py IMAGE PROJECT_DIR TEST_FILE [--repeat 3]

Runs, in fresh containers of IMAGE with PROJECT_DIR bind-mounted read-only (as
a docker host does), each step of a shard's start-up alone and prints the best
wall time of each as ``name: seconds``: the engine's create/start/remove
(``true``), the interpreter (``python3 -c pass``), ``import pytest``, pytest's
start with the project's plugins and conftests (``--co`` of nothing), and the
collection of TEST_FILE with and without the project's ``__pycache__`` (the
rewritten test modules pytest wrote on the client).  Ratios come first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def docker_run(image: str, mounts: list[str], *cmd: str) -> float:
    """Wall seconds of one ``docker run --rm`` of *cmd*, as a docker host's container runs."""
    args = ["docker", "run", "--rm", "--init", "--network", "none", "--read-only"]
    args += ["--tmpfs", "/tmp", "-e", "PYTHONDONTWRITEBYTECODE=1", "-e", "HOME=/tmp"]
    for mount in mounts:
        args += ["-v", mount]
    started = time.perf_counter()
    done = subprocess.run([*args, image, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 5):
        raise SystemExit(f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall


def best(repeat: int, fn, *args) -> float:
    return min(fn(*args) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("project", type=Path)
    parser.add_argument("test_file")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    project = args.project.resolve()
    # Let the client's pytest write the rewritten pycs, as a psyduck client's collection
    # does (unless bytecode writing is turned off, as PYTHONDONTWRITEBYTECODE does).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", args.test_file],
        cwd=project,
        capture_output=True,
        check=False,
        env=env,
    )
    if not any(project.rglob("__pycache__/*-pytest-*.pyc")):
        raise SystemExit(f"pytest wrote no rewritten test modules in {project}")
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / project.name
        shutil.copytree(project, bare, ignore=shutil.ignore_patterns("__pycache__"))
        pytest = f"cd {project} && python3 -m pytest -q -p no:cacheprovider --co"
        r, image = args.repeat, args.image
        times = {
            "engine": best(r, docker_run, image, [], "true"),
            "interpreter": best(r, docker_run, image, [], "python3", "-c", "pass"),
            "import_pytest": best(r, docker_run, image, [], "python3", "-c", "import pytest"),
        }
        for label, tree in (("no_pycache", bare), ("pycache", project)):
            mounts = [f"{tree}:{project}:ro"]
            start, collect = f"{pytest} --ignore-glob='*'", f"{pytest} {args.test_file}"
            times[f"pytest_start_{label}"] = best(r, docker_run, image, mounts, "sh", "-c", start)
            times[f"collect_{label}"] = best(r, docker_run, image, mounts, "sh", "-c", collect)
    base = times["engine"]
    shipped = times["collect_pycache"] / times["collect_no_pycache"]
    print(f"collect_pycache_over_no_pycache: {shipped:.2f}")
    print(f"interpreter_over_engine: {times['interpreter'] / base:.2f}")
    for name, seconds in times.items():
        print(f"{name}_seconds: {seconds:.2f}")


if __name__ == "__main__":
    main()
