"""Real projects' suites on container hosts vs local workers vs plain pytest, in one run.

    python benchmarks/containers.py [--repeat 2] [--only attrs,click] [--slots 2]

Needs root, a Docker engine, sshd and the test image ``psyduck-test:latest``
(``.ci/build-test-image``).  Prints ``name: value`` lines, ratios first (the
targets: ``*_docker2_over_local2`` within 1.3, ``*_ssh2_over_local2`` within
1.4), then the seconds behind them, the worker containers each started, and
the machine's speed.

The suites are attrs' and click's own tests, from their sdists on PyPI, with
their test dependencies (attrs: cloudpickle, hypothesis, pympler; click: none
beyond pytest).  The packages are built into wheels on this machine, installed
into a virtual environment for plain pytest and ``local:N``, and into an image
built on ``psyduck-test:latest`` for ``docker:N`` and one ``ssh://`` host of N
slots (a real sshd on 127.0.0.2 reaching the same engine), each with a fresh
container per shard (the default) and with one container per slot and run
(``container_scope=run``, the ``*_run_scoped`` lines).  The image is built
offline (``docker build --network none``) and once: its tag is a hash of its
inputs.  Its packages are byte-compiled, as ``pip install`` leaves them: a
container otherwise compiles every module it imports, every time.

The commands take turns, round after round (one warm-up round that also
records the durations the scheduler sizes shards by, then ``--repeat`` rounds);
the best wall time of each counts.

The environment is a developer's terminal unless told otherwise: pytest writes
the assertion-rewritten test modules as it collects, and psyduck ships them to
the containers with the code; ``--bytecode-cache off`` is what
``PYTHONDONTWRITEBYTECODE=1`` does (common in CI images): then every container
rewrites its shard's test modules again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from suites import machine_speed, settle_standbys, stop_standbys  # noqa: E402

from farm.hosts.containers import LABEL_WORKER  # noqa: E402
from tests.farm_hosts.hostlib import keygen, start_sshd  # noqa: E402

#: Each project's test dependencies beyond pytest and hypothesis (which the base image has).
TEST_DEPS = {"attrs": ["cloudpickle", "pympler"], "click": []}
BASE_IMAGE = "psyduck-test:latest"
#: Tests each variant leaves out, the same for all: the image has no ``less``,
#: which click's pager tests run where the machine has it.
SELECT = {"click": ["-k", "not (test_echo_via_pager and less)"]}
#: The summary line's counts (``12 passed, 3 skipped in 4.5s``).
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)")


def run(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


def fetch(cache: Path) -> list[Path]:
    """The projects' sdists and every wheel the suites need, downloaded or built once."""
    sdists, wheels = cache / "sdists", cache / "wheels"
    pip = [sys.executable, "-m", "pip", "-q"]
    if not any(sdists.glob("*.tar.gz")):
        run(*pip, "download", "--no-deps", "--no-binary", ":all:", "-d", str(sdists), *TEST_DEPS)
    for sdist in sorted(sdists.glob("*.tar.gz")):
        project = sdist.name.split("-")[0]
        if not any(wheels.glob(f"{project}-*.whl")):
            run(*pip, "wheel", "--no-deps", "-w", str(wheels), str(sdist))
    deps = [d for ds in TEST_DEPS.values() for d in ds]
    have = {w.name.split("-")[0].lower() for w in wheels.glob("*.whl")}
    if not have.issuperset(deps):
        run(*pip, "download", "--only-binary", ":all:", "--no-deps", "-d", str(wheels), *deps)
    return sorted(sdists.glob("*.tar.gz"))


def host_python(cache: Path) -> str:
    """A virtual environment (seeing this interpreter's pytest and psyduck) with the projects."""
    wheels = sorted((cache / "wheels").glob("*.whl"))
    venv = cache / f"venv-{digest(w.name for w in wheels)}"
    python = venv / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
        run(str(python), "-m", "pip", "install", "-q", "--no-index", *map(str, wheels))
    return str(python)


def digest(parts) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def build_image(cache: Path) -> str:
    """The benchmark image: the test image plus the projects and their test dependencies."""
    wheels = sorted((cache / "wheels").glob("*.whl"))
    base = run(
        "docker", "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE, capture_output=True, text=True
    ).stdout.strip()
    dockerfile = f"""\
FROM {base}
COPY wheels /tmp/wheels
RUN python3 -m pip install --no-index --break-system-packages --no-cache-dir /tmp/wheels/*.whl \\
    && rm -rf /tmp/wheels \\
    && python3 -m compileall -q -j0 \
        $(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"""
    image = f"psyduck-bench:{digest([dockerfile, *(w.name for w in wheels)])}"
    present = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
    if present.returncode == 0:
        return image
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        (context / "wheels").mkdir()
        for wheel in wheels:
            (context / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
        (context / "Dockerfile").write_text(dockerfile)
        run("docker", "build", "--network", "none", "-q", "-t", image, str(context))
    return image


def image_id(image: str) -> str:
    return run(
        "docker", "image", "inspect", "-f", "{{.Id}}", image, capture_output=True, text=True
    ).stdout.strip()


def unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    return into / sdist.name.removesuffix(".tar.gz")


def counts(output: str) -> str:
    """The outcome counts of a session's summary line, to check all commands ran the same."""
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    return ", ".join(f"{n} {kind}" for n, kind in COUNTS.findall(summary))


class ContainerCount:
    """Counts the worker containers of *images* (the benchmark's own) started while open.

    The engine keeps too few past events to ask afterwards: one run of a
    suite starts dozens of containers, each with several events.
    """

    def __init__(self, images: set[str]) -> None:
        self.images = images
        self._events = subprocess.Popen(
            [
                *("docker", "events", "--filter", "event=start"),
                *("--filter", f"label={LABEL_WORKER}", "--format", "{{.From}}"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

    def close(self) -> int:
        time.sleep(0.5)  # the last start events of a run that just ended reach the stream
        self._events.terminate()
        out, _ = self._events.communicate(timeout=30)
        return sum(1 for image in out.split() if image in self.images)


def timed(
    python: str,
    cwd: Path,
    variants: dict[str, list[str]],
    repeat: int,
    env: dict[str, str],
    images: set[str],
) -> tuple[dict[str, float], dict[str, int]]:
    """Best wall time of ``pytest -q ARGS`` for each variant, the variants taking turns,
    and the worker containers each variant's best run started."""
    best = dict.fromkeys(variants, float("inf"))
    started_containers = dict.fromkeys(variants, 0)
    expected: str | None = None
    for attempt in range(repeat + 1):
        for name, args in variants.items():
            cmd = [python, "-m", "pytest", "-q", *args]
            counter = ContainerCount(images)
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            containers = counter.close()
            stdout, stderr = done.stdout, done.stderr
            settle_standbys(Path(env["XDG_RUNTIME_DIR"]))
            outcome = counts(stdout)
            if done.returncode not in (0, 1) or not outcome:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{stdout[-4000:]}\n{stderr}")
            if expected is None:
                expected = outcome
            elif outcome != expected:
                print(f"# {cwd.name} {name}: {outcome} (plain: {expected})", file=sys.stderr)
                failed = [line for line in stdout.splitlines() if line.startswith("FAILED ")]
                print(*(f"#   {line[:200]}" for line in failed[:10]), sep="\n", file=sys.stderr)
            if attempt and wall < best[name]:
                best[name] = wall
                started_containers[name] = containers
    return best, started_containers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--only", default="attrs,click")
    parser.add_argument(
        "--bytecode-cache",
        choices=("on", "off"),
        default="on",
        help="off is PYTHONDONTWRITEBYTECODE=1: pytest then writes no rewritten test modules",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "psyduck-bench",
    )
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    sdists = {s.name.split("-")[0]: s for s in fetch(args.cache)}
    python = host_python(args.cache)
    image = build_image(args.cache)
    ratios: list[str] = []
    details: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if args.bytecode_cache == "off":
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        key = keygen(tmp_path / "id_ed25519")
        server = start_sshd(tmp_path / "sshd", "127.0.0.2", key)
        try:
            known_hosts = tmp_path / "known_hosts"
            known_hosts.write_text(server.known_hosts_line())
            ssh = server.spec(key, known_hosts, slots=args.slots)
            n = args.slots
            variants = {"plain": [], f"local{n}": ["--psyduck", f"--psyduck-hosts=local:{n}"]}
            for scope in ("shard", "run"):
                suffix = "" if scope == "shard" else "_run_scoped"
                query = "" if scope == "shard" else "container_scope=run"
                for kind, spec in (("docker", f"docker:{n}?{query}"), ("ssh", f"{ssh}&{query}")):
                    variants[f"{kind}{n}{suffix}"] = [
                        "--psyduck",
                        f"--psyduck-hosts={spec.rstrip('?&')}",
                        "--psyduck-image",
                        image,
                    ]
            for project in args.only.split(","):
                source = unpack(sdists[project], tmp_path)
                selected = {name: [*a, *SELECT.get(project, [])] for name, a in variants.items()}
                images = {image, image_id(image)}
                best, started = timed(python, source, selected, args.repeat, env, images)
                local = best[f"local{n}"]
                for name in variants:
                    if name.startswith(("docker", "ssh")):
                        ratios.append(f"{project}_{name}_over_local{n}: {best[name] / local:.2f}")
                for name in variants:
                    if name != "plain":
                        ratios.append(
                            f"{project}_{name}_over_plain: {best[name] / best['plain']:.2f}"
                        )
                details += [f"{project}_{name}_seconds: {s:.2f}" for name, s in best.items()]
                details += [
                    f"{project}_{name}_containers: {started[name]}"
                    for name in variants
                    if name.startswith(("docker", "ssh"))
                ]
        finally:
            server.stop()
            stop_standbys(tmp_path)
    single, pair = machine_speed()
    print(
        "\n".join(
            ratios
            + details
            + [
                f"image: {image}",
                f"cpus: {os.cpu_count()}",
                f"machine_spin_seconds: {single:.2f}",
                f"machine_two_spins_vs_one: {pair / single:.2f}",
                f"load_average_1_5_15min: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            ]
        )
    )


if __name__ == "__main__":
    main()
