"""Container hosts vs local hosts: per-shard container overhead and one suite three ways.

    python benchmarks/farm_hosts.py [--repeat 2] [--slots 2] [--image psyduck-test:latest]

Needs root, a Docker engine and sshd (like ``tests/farm_hosts``).  Prints
``name: value`` lines, ratios first (``docker_vs_local`` is the target: within
1.3).  The suite is 2,000 tests of ~10 ms in 20 modules, run with ``local:N``,
``docker:N`` and one ``ssh://`` host of N slots on a real sshd on 127.0.0.2
reaching the same engine.  Each command runs once to warm up (and record
durations, which the scheduler uses to size shards), then ``--repeat`` times;
the best wall time counts.  The overhead is measured on the host API itself:
asking for a worker → its first test report, for a one-test shard, both for a
slot's first (cold) container and for a next shard that finds its spare ready.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from farm.hosts import parse_hosts  # noqa: E402
from farm.hosts.base import Host, RunContext  # noqa: E402
from farm.manifest import RunManifest, TestSpec, WorkerSpec  # noqa: E402
from tests.farm_hosts.hostlib import build_image, keygen, start_sshd  # noqa: E402

TESTS_PER_MODULE = 100
#: How long the overhead measurement lets a shard "run" before the slot's next one.
SHARD_SECONDS = 3.0
MODULES = 20


def make_suite(root: Path) -> Path:
    for m in range(MODULES):
        body = "import time\n" + "\n".join(
            f"def test_{i}():\n    time.sleep(0.01)\n" for i in range(TESTS_PER_MODULE)
        )
        (root / f"test_t{m}.py").write_text(body)
    return root


def best_wall(cwd: Path, args: list[str], repeat: int) -> float:
    """Best wall time of ``pytest -q ARGS`` after one warm-up run (which records durations)."""
    best = float("inf")
    for attempt in range(repeat + 1):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", *args], cwd=cwd, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"pytest {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        if attempt:
            best = min(best, wall)
    return best


async def shard_overhead(host: Host, image: str, path: Path, samples: int) -> tuple[float, float]:
    """Median seconds from asking for a worker to its first test report: (cold, with a spare).

    Cold: a slot's first container (create, start, collect).  With a spare: the
    slot's next shard, whose container the host started ahead of time.
    """
    (path / "test_one.py").write_text("def test_one():\n    pass\n")
    manifest = RunManifest(
        tests=(TestSpec(id="test_one.py::test_one", group="test_one.py"),),
        worker=WorkerSpec(argv=("pytest_psyduck.workermain", "-q", "test_one.py"), cwd=str(path)),
        image=image,
    )
    run = RunContext("bench", manifest, workers=1)
    await host.start()
    cold, warm = [], []
    try:
        for i in range(2 * samples + 1):
            slot = i // 2  # even i: the slot's first worker; odd i: its spare
            if i % 2:
                await asyncio.sleep(SHARD_SECONDS)  # the slot's shard runs; its spare starts
            started = time.perf_counter()
            worker = await host.spawn(run, slot, f"gw{i}", lambda data: None)
            await worker.send({"t": "run", "tests": [{"id": "test_one.py::test_one"}]})
            await worker.send({"t": "drain"})
            while (message := await worker.recv()) is not None and message["t"] != "result":
                pass
            if i:  # the very first container warms the engine's caches
                (warm if i % 2 else cold).append(time.perf_counter() - started)
            await worker.kill()
            await worker.wait()
    finally:
        await host.close()
    return statistics.median(cold), statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--image", default=None, help="test image (default: build it)")
    args = parser.parse_args()
    image = args.image or build_image()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        key = keygen(tmp_path / "id_ed25519")
        server = start_sshd(tmp_path / "sshd", "127.0.0.2", key)
        try:
            known_hosts = tmp_path / "known_hosts"
            known_hosts.write_text(server.known_hosts_line())
            ssh_spec = server.spec(key, known_hosts, slots=args.slots)
            overhead_dir = tmp_path / "one"
            overhead_dir.mkdir()
            docker_cold, docker_warm = asyncio.run(
                shard_overhead(parse_hosts("docker:1")[0], image, overhead_dir, args.samples)
            )
            ssh_cold, ssh_warm = asyncio.run(
                shard_overhead(parse_hosts(ssh_spec)[0], image, overhead_dir, args.samples)
            )
            (tmp_path / "suite").mkdir()
            suite = make_suite(tmp_path / "suite")
            common = ["--psyduck", "--psyduck-image", image]
            walls = {
                kind: best_wall(suite, [*common, f"--psyduck-hosts={spec}"], args.repeat)
                for kind, spec in (
                    ("local", f"local:{args.slots}"),
                    ("docker", f"docker:{args.slots}"),
                    ("ssh", ssh_spec),
                )
            }
        finally:
            server.stop()
    ideal = MODULES * TESTS_PER_MODULE * 0.01 / args.slots
    print(
        "\n".join(
            [
                f"docker_vs_local: {walls['docker'] / walls['local']:.2f}",
                f"ssh_vs_local: {walls['ssh'] / walls['local']:.2f}",
                f"local_vs_ideal: {walls['local'] / ideal:.2f}",
                f"docker_shard_overhead_cold_seconds: {docker_cold:.3f}",
                f"docker_shard_overhead_with_spare_seconds: {docker_warm:.3f}",
                f"ssh_shard_overhead_cold_seconds: {ssh_cold:.3f}",
                f"ssh_shard_overhead_with_spare_seconds: {ssh_warm:.3f}",
                f"local_seconds: {walls['local']:.2f}",
                f"docker_seconds: {walls['docker']:.2f}",
                f"ssh_seconds: {walls['ssh']:.2f}",
                f"ideal_seconds: {ideal:.2f}",
                f"slots: {args.slots}",
            ]
        )
    )


if __name__ == "__main__":
    main()
