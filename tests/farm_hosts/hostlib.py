"""Real infrastructure for the docker/ssh host tests: the test image, sshd instances, containers.

Nothing here is a mock: the image is built with ``.ci/build-test-image``, each
:class:`Sshd` is a real OpenSSH server on its own loopback address with its own
host key, and containers are inspected on the real engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker

from tests.conftest import SESSION_TIMEOUT, junit_cases, start_pytest, wait_until

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / ".ci" / "build-test-image"
SSHD = "/usr/sbin/sshd"


def two_docker_slots(image: str = "psyduck-test:latest") -> tuple[str, ...]:
    """The arguments that run a session on two docker slots of *image* (the test image),
    or skip the test where docker tests cannot run."""
    import pytest

    problem = docker_problem()
    if problem:
        pytest.skip(f"docker tests skipped: {problem}")
    return ("--psyduck-hosts", "docker:2", "--psyduck-image", image)


def docker_problem() -> str | None:
    """Why docker tests cannot run here, or None."""
    try:
        docker.from_env(timeout=10).ping()
    except Exception as exc:
        return f"no Docker engine reachable: {exc}"
    if os.geteuid() != 0:
        return "building the test image needs root"
    return None


def build_image() -> str:
    """Build (or reuse) the test image; returns its tag."""
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def psyduck_containers(**labels: str) -> list[dict]:
    """Containers (any state) carrying psyduck's labels, optionally with given label values."""
    filters = [f"{k.replace('_', '.')}={v}" for k, v in labels.items()] or ["psyduck.farm"]
    with docker.APIClient(timeout=30) as api:
        return api.containers(all=True, filters={"label": filters})


def reap_orphans() -> list[str]:
    """What a farm starting on this engine does first: remove containers of dead farms."""
    from farm.hosts.docker import DockerHost

    async def reap() -> list[str]:
        host = DockerHost(1)
        await host.start()  # reaps
        try:
            return await host.reap()
        finally:
            await host.close()

    return asyncio.run(reap())


def wait_containers_gone(pid: int, timeout: float) -> None:
    """Wait until the containers of the farm of *pid* are gone, but for any whose creation
    was in flight when it stopped (never started, no process): the next farm on the engine
    reaps those at once, and so does this."""
    wait_until(
        lambda: all(c["State"] == "created" for c in containers_of(pid)),
        "the run's containers to be removed",
        timeout=timeout,
    )
    reap_orphans()
    assert containers_of(pid) == []


def containers_of(pid: int) -> list[dict]:
    """psyduck containers started by the coordinator in process *pid* (on this machine)."""
    prefix = f"{socket.gethostname()}:{pid}:"
    return [c for c in psyduck_containers() if c["Labels"]["psyduck.farm"].startswith(prefix)]


@dataclass
class Finished:
    returncode: int
    output: str
    pid: int


def start_session(path: Path, *args: str, cache: bool = False) -> subprocess.Popen:
    """Start ``pytest --psyduck ARGS`` in *path* (without pytest's cache unless *cache*)."""
    return start_pytest(path, "--psyduck", *([] if cache else ["-p", "no:cacheprovider"]), *args)


def recorded_session(path: Path, out: Path, *args: str) -> tuple[Finished, dict]:
    """Run ``pytest --psyduck ARGS`` with pytest's cache (the recorded durations a test
    seeded) and ``--junitxml=OUT``; the result and its junit cases."""
    process = start_session(path, *args, f"--junitxml={out}", cache=True)
    output, _ = process.communicate(timeout=SESSION_TIMEOUT)
    return Finished(process.returncode, output, process.pid), junit_cases(out)


def psyduck_session(path: Path, *args: str, timeout: float = SESSION_TIMEOUT) -> Finished:
    """Run ``pytest --psyduck ARGS`` in *path*; the pid tells which containers were its own."""
    process = start_session(path, *args)
    output, _ = process.communicate(timeout=timeout)
    return Finished(process.returncode, output, process.pid)


@contextlib.contextmanager
def containers_created(label: str) -> Iterator[list[str]]:
    """The ``psyduck.farm`` label of every container carrying *label* that the engine
    creates inside the block (one entry per container), filled in as the block ends;
    :func:`of_session` keeps a session's own."""
    events = subprocess.Popen(
        [
            *("docker", "events", "--filter", "event=create", "--filter", f"label={label}"),
            *("--format", '{{index .Actor.Attributes "psyduck.farm"}}'),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    farms: list[str] = []
    try:
        yield farms
    finally:
        events.terminate()
        created, _ = events.communicate(timeout=30)
        farms.extend(created.split())


def of_session(farms: list[str], pid: int) -> list[str]:
    """The entries of *farms* (``psyduck.farm`` labels) made by the session of *pid*."""
    return [farm for farm in farms if f":{pid}:" in farm]


def seed_durations(path: Path, durations: dict[str, float]) -> None:
    """Give a suite recorded durations, as a previous run would have, so it is split in shards."""
    target = path / ".pytest_cache" / "v" / "psyduck" / "durations"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(durations))


def current_test_in(container: dict) -> str | None:
    """The node id a container's worker is running now (written by the suite's conftest)."""
    with docker.APIClient(timeout=30) as api:
        try:
            pid = api.inspect_container(container["Id"])["State"]["Pid"]
        except docker.errors.NotFound:
            return None
    try:
        return Path(f"/proc/{pid}/root/tmp/psyduck-current-test").read_text() or None
    except OSError:
        return None


#: A conftest for suites whose running test the host-loss tests must see from outside.
CURRENT_TEST_CONFTEST = """
import os
import pathlib
import pytest

@pytest.fixture(autouse=True)
def _announce(request):
    marker = pathlib.Path("/tmp/psyduck-current-test")
    marker.write_text(request.node.nodeid)
    yield
    marker.write_text("")
"""


def descendants(pid: int) -> list[int]:
    """All processes below *pid*, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30
    )
    return path


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    """One OpenSSH server on a loopback address, acting as one Docker host."""

    address: str
    port: int
    directory: Path
    process: subprocess.Popen
    user: str = "root"
    stopped: bool = field(default=False)

    @property
    def host_key(self) -> Path:
        return self.directory / "host_key"

    def known_hosts_line(self) -> str:
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[{self.address}]:{self.port} {kind} {blob}\n"

    def fingerprint(self) -> str:
        out = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(self.host_key.with_suffix(".pub"))],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return out.split()[1]

    def spec(self, key: Path, known_hosts: Path, slots: int = 1, **extra: str) -> str:
        query = "&".join(
            [f"slots={slots}", f"key={key}", f"known_hosts={known_hosts}"]
            + [f"{k}={v}" for k, v in extra.items()]
        )
        return f"ssh://{self.user}@{self.address}:{self.port}?{query}"

    @property
    def host_name(self) -> str:
        return f"ssh:{self.user}@{self.address}:{self.port}"

    def stop(self) -> None:
        """Kill the server and every session it serves, as if the machine vanished."""
        if self.stopped:
            return
        self.stopped = True
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)


def start_sshd(directory: Path, address: str, authorized_key: Path) -> Sshd:
    """Start sshd on *address* with a fresh host key, letting *authorized_key* in as root."""
    directory.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    keygen(directory / "host_key")
    (directory / "authorized_keys").write_text(authorized_key.with_suffix(".pub").read_text())
    port = free_port(address)
    # Sessions get a home of their own: the machine user's shell start-up files (bash
    # reads ~/.bashrc for commands run by sshd; here it runs pyenv's init and rehash)
    # stay out of every channel, so stop() killing sessions mid-start-up leaves no
    # stale lock behind that would stall every later session on this machine.
    home = directory / "home"
    home.mkdir(exist_ok=True)
    config = directory / "sshd_config"
    config.write_text(
        f"""\
ListenAddress {address}:{port}
HostKey {directory / "host_key"}
PidFile {directory / "sshd.pid"}
AuthorizedKeysFile {directory / "authorized_keys"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxSessions 64
MaxStartups 64
ClientAliveInterval 5
ClientAliveCountMax 3
LogLevel ERROR
SetEnv HOME={home}
"""
    )
    with open(directory / "sshd.log", "wb") as log:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {(directory / 'sshd.log').read_text()}")
        try:
            socket.create_connection((address, port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(listening, f"sshd on {address}:{port}", timeout=20)
    return Sshd(address, port, directory, process)


#: Reads the limits of the container it runs in (cgroup v2, else v1).
CGROUP_LIMITS = """
import pathlib

CGROUP = pathlib.Path("/sys/fs/cgroup")


def memory_limit():
    v2 = CGROUP / "memory.max"
    if v2.exists():
        return int(v2.read_text())
    return int((CGROUP / "memory" / "memory.limit_in_bytes").read_text())


def cpu_limit():
    \"\"\"(quota, period) in µs, quota None when unlimited.\"\"\"
    v2 = CGROUP / "cpu.max"
    if v2.exists():
        quota, period = v2.read_text().split()
        return (None if quota == "max" else int(quota)), int(period)
    quota = int((CGROUP / "cpu" / "cpu.cfs_quota_us").read_text())
    period = int((CGROUP / "cpu" / "cpu.cfs_period_us").read_text())
    return (None if quota < 0 else quota), period


def host_share(slots):
    kib = next(line for line in open("/proc/meminfo") if line.startswith("MemTotal:")).split()[1]
    return int(kib) * 1024 // slots
"""

LIMITED_MODULE = """
import pytest
from cgroup_limits import cpu_limit, memory_limit

pytestmark = pytest.mark.psyduck({hint})

@pytest.mark.parametrize("n", range(2))
def test_own_limits(n):
    assert memory_limit() == {memory}
    assert cpu_limit() == {cpu}
"""

UNLIMITED_MODULE = """
from cgroup_limits import cpu_limit, host_share, memory_limit

def test_host_share():
    # The kernel rounds a limit down to whole pages.
    assert host_share(2) - memory_limit() < 4096
    assert cpu_limit()[0] is None
"""


def limits_suite(suite: Callable[[dict[str, str]], Path]) -> Path:
    """Three modules with their own limits, each a shard of its own, in one run.

    Long recorded durations make every module a shard, so one run mixes the
    modules' limits, and the slots' later shards run in their spare containers.
    Each test checks the limits of the container it runs in; the run has two
    slots (the unhinted module expects half the machine's memory).
    """
    path = suite(
        {
            "cgroup_limits.py": CGROUP_LIMITS,
            "test_big.py": LIMITED_MODULE.format(
                hint='memory="300M", cpus=0.5', memory=300 << 20, cpu=(50_000, 100_000)
            ),
            "test_small.py": LIMITED_MODULE.format(
                hint='memory="200M"', memory=200 << 20, cpu="(None, cpu_limit()[1])"
            ),
            "test_none.py": UNLIMITED_MODULE,
        }
    )
    seed_durations(
        path,
        {
            **{f"test_{m}.py::test_own_limits[{n}]": 20.0 for m in ("big", "small") for n in "01"},
            "test_none.py::test_host_share": 20.0,
        },
    )
    return path


#: Junit outcomes of :func:`limits_suite` when every shard got its own limits.
LIMITS_SUITE_PASSED = {
    "test_big::test_own_limits[0]": "passed",
    "test_big::test_own_limits[1]": "passed",
    "test_small::test_own_limits[0]": "passed",
    "test_small::test_own_limits[1]": "passed",
    "test_none::test_host_share": "passed",
}
