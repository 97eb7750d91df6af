"""Docker engines reached over real SSH servers: host keys, the ssh path end to end, host loss."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from farm.hosts.base import HostError, RunContext
from farm.hosts.containers import LABEL_HOST, LABEL_WORKER
from farm.hosts.docker import volumes
from farm.hosts.docker.volumes import payload_tar
from farm.hosts.ssh import (
    HostKeyRefused,
    SshTarget,
    open_ssh,
    parse_ssh_spec,
    ssh_engine,
    ssh_host,
)
from farm.manifest import RunManifest, TestSpec, WorkerSpec
from farm.packages import WORKER_PACKAGES, package_dirs
from pytest_psyduck.runmanifest import WORKER_MODULE
from tests.conftest import (
    SESSION_TIMEOUT,
    junit_cases,
    project_of_thousands_of_files,
    run_pytest,
    wait_until,
)
from tests.farm_hosts.hostlib import (
    CURRENT_TEST_CONFTEST,
    LIMITS_SUITE_PASSED,
    ROOT,
    containers_created,
    containers_of,
    current_test_in,
    descendants,
    keygen,
    limits_suite,
    of_session,
    psyduck_containers,
    psyduck_session,
    recorded_session,
    seed_durations,
    start_session,
    wait_containers_gone,
)

pytestmark = pytest.mark.docker


def target_of(server, client_key, known_hosts, **options) -> SshTarget:
    return SshTarget(
        host=server.address,
        user=server.user,
        port=server.port,
        key_file=str(client_key),
        known_hosts=str(known_hosts),
        **options,
    )


def test_unknown_host_key_is_refused_naming_host_and_fingerprint(sshd, client_key, known_hosts):
    server = sshd("127.0.0.2")
    with pytest.raises(HostKeyRefused) as refused:
        open_ssh(target_of(server, client_key, known_hosts))
    message = str(refused.value)
    assert f"[127.0.0.2]:{server.port}" in message
    assert server.fingerprint() in message
    assert known_hosts.read_text() == ""


def test_changed_host_key_is_refused(sshd, client_key, known_hosts, tmp_path):
    server = sshd("127.0.0.2")
    other = keygen(tmp_path / "impostor").with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.2]:{server.port} {other[0]} {other[1]}\n")
    with pytest.raises(HostKeyRefused) as refused:
        open_ssh(target_of(server, client_key, known_hosts))
    assert "CHANGED" in str(refused.value)
    assert server.fingerprint() in str(refused.value)


def test_accepting_new_host_keys_records_them(sshd, client_key, known_hosts):
    server = sshd("127.0.0.2")
    target = target_of(server, client_key, known_hosts, accept_new_host_keys=True)
    open_ssh(target).close()
    assert known_hosts.read_text() == server.known_hosts_line()
    open_ssh(replace(target, accept_new_host_keys=False)).close()  # now known


def test_demo_suite_on_two_ssh_hosts_matches_plain_pytest(sshd, client_key, known_hosts, tmp_path):
    servers = [sshd("127.0.0.2"), sshd("127.0.0.3")]
    known_hosts.write_text("".join(s.known_hosts_line() for s in servers))
    hosts = ",".join(s.spec(client_key, known_hosts, slots=1) for s in servers)
    demo = ROOT / "examples" / "demo"
    plain = run_pytest(demo, "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'plain.xml'}")
    farm = psyduck_session(
        demo,
        "--psyduck-hosts",
        hosts,
        "--psyduck-image",
        "psyduck-test:latest",
        f"--junitxml={tmp_path / 'farm.xml'}",
    )
    assert farm.returncode == plain.returncode == 1, farm.output
    assert junit_cases(tmp_path / "farm.xml") == junit_cases(tmp_path / "plain.xml")
    wait_until(
        lambda: not containers_of(farm.pid), "the run's containers to be removed", timeout=30
    )


def dial_stdio_processes(server) -> list[int]:
    """``docker system dial-stdio`` processes serving *server*'s sessions: one per SSH channel
    that carries Docker API requests."""
    found = []
    for pid in descendants(server.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dial-stdio" in argv and argv[0].endswith(b"docker"):
            found.append(pid)
    return found


def test_api_requests_share_one_channel_whatever_their_url(docker_image, sshd, client_key):
    """The SDK pools connections per URL; every container's own URLs would open new channels."""
    server = sshd("127.0.0.2")
    known = Path(client_key).parent / f"known_hosts-{server.port}"
    known.write_text(server.known_hosts_line())
    target, _ = parse_ssh_spec(server.spec(client_key, known))
    api = ssh_engine(target)()
    try:
        api.ping()
        api.version()
        api.inspect_image(docker_image)
        for _ in range(3):
            container = api.create_container(docker_image, ["true"])["Id"]
            api.inspect_container(container)
            api.remove_container(container)
        assert len(dial_stdio_processes(server)) == 1
    finally:
        api.close()


def test_each_shard_gets_its_own_limits_over_ssh(sshd, client_key, known_hosts, suite, tmp_path):
    """The engine's container updates travel the SSH connection like every other call."""
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    done, cases = recorded_session(
        limits_suite(suite),
        tmp_path / "out.xml",
        "--psyduck-hosts",
        server.spec(client_key, known_hosts, slots=2),
        "--psyduck-image",
        "psyduck-test:latest",
    )
    assert done.returncode == 0, done.output
    assert {k: v[0] for k, v in cases.items()} == LIMITS_SUITE_PASSED, done.output


def test_a_session_names_an_unknown_host_key(sshd, client_key, known_hosts, suite):
    server = sshd("127.0.0.2")
    path = suite({"test_one.py": "def test_one():\n    pass\n"})
    done = psyduck_session(
        path,
        "--psyduck-hosts",
        server.spec(client_key, known_hosts),
        "--psyduck-image",
        "psyduck-test:latest",
    )
    assert done.returncode != 0
    assert f"host key of [127.0.0.2]:{server.port} is not known" in done.output


# Each test lasts long enough that the doomed host, connected last on a loaded machine, still
# finds work left when it is ready.
SLEEPERS = """
import time
import pytest

@pytest.mark.parametrize("n", range(3))
def test_sleeps(n):
    time.sleep(3)
"""


def test_losing_a_host_reschedules_its_work_once_and_quarantines_it(
    sshd, client_key, known_hosts, suite, tmp_path
):
    modules = {f"test_m{i}.py": SLEEPERS for i in range(4)}
    path = suite({"conftest.py": CURRENT_TEST_CONFTEST, **modules})
    seed_durations(
        path, {f"test_m{i}.py::test_sleeps[{n}]": 10.0 for i in range(4) for n in range(3)}
    )
    servers = [sshd(f"127.0.0.{i}") for i in (2, 3, 4)]
    known_hosts.write_text("".join(s.known_hosts_line() for s in servers))
    hosts = ",".join(s.spec(client_key, known_hosts, slots=1) for s in servers)
    doomed = servers[0]
    process = start_session(
        path,
        "--psyduck-hosts",
        hosts,
        "--psyduck-image",
        "psyduck-test:latest",
        f"--junitxml={tmp_path / 'out.xml'}",
        cache=True,
    )
    try:
        interrupted: list[str] = []

        def running_on_doomed() -> bool:
            if process.poll() is not None:
                pytest.fail(
                    f"the session ended before the doomed host ran a test:\n{process.stdout.read()}"
                )
            for container in psyduck_containers(psyduck_host=doomed.host_name):
                if container["State"] == "running" and (test := current_test_in(container)):
                    interrupted.append(test)
                    return True
            return False

        wait_until(running_on_doomed, "a test running on the doomed host")
        doomed.stop()
        stdout, _ = process.communicate(timeout=120)
    finally:
        process.kill()
        process.communicate()
    [interrupted_test] = interrupted
    assert process.returncode == 0, stdout
    assert "12 passed" in stdout
    names = [
        f"{c.get('classname')}::{c.get('name')}"
        for c in ET.parse(tmp_path / "out.xml").getroot().iter("testcase")
    ]
    assert len(names) == len(set(names)) == 12, "a test was reported twice or not at all"
    lost = f"host {doomed.host_name} was lost while running {interrupted_test}"
    assert lost in stdout and "retrying it elsewhere" in stdout, stdout
    assert f"host {doomed.host_name} quarantined" in stdout, stdout
    retried = (
        ET.parse(tmp_path / "out.xml")
        .getroot()
        .find(
            f".//testcase[@name='{interrupted_test.split('::')[1]}']"
            f"[@classname='{interrupted_test.split('::')[0].removesuffix('.py')}']/properties/property"
        )
    )
    assert retried is not None and "retrying it elsewhere" in retried.get("value", "")
    # One the doomed host's engine created just before the connection died may be left.
    wait_containers_gone(process.pid, timeout=30)


SHIPPED = {
    "helper.py": "ANSWER = 42\n",
    "test_shipped.py": (
        "import time\n"
        "from helper import ANSWER\n\n"
        "def test_code_arrived():\n"
        "    time.sleep(3)\n"
        "    assert ANSWER == 42\n"
    ),
}


def volumes_of(pid: int) -> list[str]:
    """psyduck volumes created by the coordinator in process *pid* (on this machine)."""
    prefix = f"{socket.gethostname()}:{pid}:"
    with docker.APIClient(timeout=30) as api:
        volumes = api.volumes(filters={"label": "psyduck.farm"}).get("Volumes") or []
    return [v["Name"] for v in volumes if v["Labels"]["psyduck.farm"].startswith(prefix)]


def test_ssh_hosts_get_code_through_the_api_not_bind_mounts(sshd, client_key, known_hosts, suite):
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    path = suite(SHIPPED)
    process = start_session(
        path,
        "--psyduck-hosts",
        server.spec(client_key, known_hosts),
        "--psyduck-image",
        "psyduck-test:latest",
    )
    try:
        mounts: list[dict] = []

        def running() -> bool:
            for container in psyduck_containers(psyduck_host=server.host_name):
                if container["State"] == "running":
                    with docker.APIClient(timeout=30) as api:
                        mounts.extend(api.inspect_container(container["Id"])["Mounts"])
                    return True
            return False

        wait_until(running, "a container on the ssh host")
        stdout, _ = process.communicate(timeout=120)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 0 and "1 passed" in stdout, stdout
    assert [m for m in mounts if m["Type"] == "bind"] == [], mounts
    volumes = {m["Destination"]: m for m in mounts if m["Type"] == "volume"}
    shipped = {d: m for d, m in volumes.items() if not m["Name"].startswith("psyduck-python-")}
    assert set(shipped) == {"/opt/psyduck", "/psyduck/src"}, mounts
    # The image's Python comes from volumes on the host's own engine (pythonvolumes).
    assert "/usr/lib/python3.11" in set(volumes) - set(shipped), mounts
    assert not any(m["RW"] for m in volumes.values()), mounts
    wait_until(lambda: not volumes_of(process.pid), "the run's volumes to be removed", timeout=30)


def test_one_helper_container_ships_the_code_and_psyducks_packages(
    sshd, client_key, known_hosts, suite
):
    """Each helper costs the engine a mount of the image's root filesystem: a session
    whose image facts are known fills both payload volumes through one helper."""
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    path = suite(SHIPPED)
    args = ("--psyduck-hosts", server.spec(client_key, known_hosts), "--psyduck-image")
    first = psyduck_session(path, *args, "psyduck-test:latest")
    assert first.returncode == 0, first.output
    with containers_created(f"{LABEL_HOST}={server.host_name}") as created:
        done = psyduck_session(path, *args, "psyduck-test:latest")
    assert done.returncode == 0, done.output
    # The worker's container and one helper (the image was probed by the first session).
    assert len(of_session(created, done.pid)) == 2, created


def one_test_run(tmp_path: Path) -> tuple[Path, RunContext]:
    """A project of one test, and a run of it as the plugin would submit it."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_shipped.py").write_text("def test_shipped():\n    pass\n")
    manifest = RunManifest(
        tests=(TestSpec(id="test_shipped.py::test_shipped", group="test_shipped.py"),),
        worker=WorkerSpec(
            argv=(WORKER_MODULE, "-p", "no:cacheprovider"),
            cwd=str(project),
            root=str(project),
            inject=package_dirs(WORKER_PACKAGES),
        ),
        image="psyduck-test:latest",
    )
    return project, RunContext("run1", manifest, workers=1)


def test_a_workers_container_is_created_while_its_code_ships_and_starts_once_it_is_in(
    sshd, client_key, known_hosts, tmp_path, monkeypatch
):
    """Shipping the code is on the critical path of a run's first containers, so the
    worker's container is created meanwhile (it needs only the volumes to exist); it
    starts, and its worker finds the code, only once the upload is done."""
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    project, run = one_test_run(tmp_path)
    released = threading.Event()
    building = threading.Event()

    def held_payload_tar(sources):
        if str(project) in sources.values():  # the code's (the image check ships only psyduck)
            building.set()
            assert released.wait(SESSION_TIMEOUT), "the worker's container was never created"
        return payload_tar(sources)

    monkeypatch.setattr(volumes, "payload_tar", held_payload_tar)
    host = ssh_host(server.spec(client_key, known_hosts, slots=1), {"embedded": True})

    def worker_containers() -> list[dict]:
        on_host = psyduck_containers(psyduck_host=server.host_name)
        return [c for c in on_host if c["Labels"].get(LABEL_WORKER) == "w0"]

    async def scenario() -> tuple[str, list[dict | None]]:
        await host.start()
        try:
            starting = asyncio.ensure_future(host.spawn(run, 0, "w0", lambda _: None))
            await asyncio.to_thread(wait_until, worker_containers, "the worker's container")
            state = worker_containers()[0]["State"]
            released.set()
            worker = await asyncio.wait_for(starting, SESSION_TIMEOUT)
            try:
                await worker.send({"t": "run", "tests": [{"id": "test_shipped.py::test_shipped"}]})
                await worker.send({"t": "drain"})
                said: list[dict | None] = []
                while not said or (said[-1] is not None and said[-1]["t"] != "result"):
                    said.append(await asyncio.wait_for(worker.recv(), SESSION_TIMEOUT))
                return state, said
            finally:
                await worker.kill()
                await worker.wait()
        finally:
            released.set()
            await host.close()

    state, said = asyncio.run(scenario())
    assert building.is_set()
    assert state == "created"
    kinds = [message and message["t"] for message in said]
    assert kinds[0] == "ready" and kinds[-1] == "result", said  # not "missing": the code was in
    assert said[-1] is not None and said[-1]["id"] == "test_shipped.py::test_shipped"


def test_a_failed_upload_leaves_no_container_or_volume_behind(
    sshd, client_key, known_hosts, tmp_path, monkeypatch
):
    """The worker's container already exists when its code fails to ship: the host
    says why, and neither it, the helper nor the run's volumes stay on the engine."""
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    project, run = one_test_run(tmp_path)

    def failing_payload_tar(sources):
        if str(project) in sources.values():
            raise OSError(28, "No space left on device")
        return payload_tar(sources)

    monkeypatch.setattr(volumes, "payload_tar", failing_payload_tar)
    host = ssh_host(server.spec(client_key, known_hosts, slots=1), {"embedded": True})

    async def scenario() -> str:
        await host.start()
        try:
            with pytest.raises(HostError) as error:
                await asyncio.wait_for(host.spawn(run, 0, "w0", lambda _: None), SESSION_TIMEOUT)
            return str(error.value)
        finally:
            await host.close()

    message = asyncio.run(scenario())
    assert "cannot ship the run's code" in message and "No space left" in message, message
    assert psyduck_containers(psyduck_host=server.host_name) == []
    with docker.APIClient(timeout=30) as api:
        left = api.volumes(filters={"label": f"{LABEL_HOST}={server.host_name}"})["Volumes"]
    assert [
        v["Name"] for v in left or [] if v["Name"].startswith(("psyduck-code-", "psyduck-inject-"))
    ] == []


def test_a_project_of_thousands_of_files_runs_over_ssh_as_plainly(
    sshd, client_key, known_hosts, tmp_path
):
    """3,040 files (40 test modules and a 3,000-file data tree, each test reading its
    file) reach an ssh host's engine in one gzipped archive, and every container
    imports all 40 modules: the session ends as plain pytest's does."""
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    project = project_of_thousands_of_files(tmp_path)
    plain = run_pytest(project, "-p", "no:cacheprovider", "-rf")
    assert plain.outcomes() == {"passed": 2997, "failed": 3}, plain.stdout[-2000:]
    args = ("--psyduck-hosts", server.spec(client_key, known_hosts), "--psyduck-image")
    done = psyduck_session(project, *args, "psyduck-test:latest", "-rf")
    assert done.returncode == plain.returncode == 1, done.output[-3000:]

    def failed(output: str) -> list[str]:
        return sorted(line for line in output.splitlines() if line.startswith("FAILED "))

    assert failed(done.output) == failed(plain.stdout), done.output[-3000:]
    assert "3 failed, 2997 passed" in done.output.splitlines()[-1], done.output[-3000:]


def test_every_container_of_a_session_mounts_one_copy_of_its_code(
    sshd, client_key, known_hosts, suite, tmp_path
):
    """Three shards on one slot: the container warmed while the session collected and
    the spares after it mount one code volume, filled once, so every test of the run
    sees the same copy of the code."""
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    names = ["alpha", "beta", "gamma"]
    path = suite({f"test_{n}.py": f"def test_{n}():\n    pass\n" for n in names})
    seed_durations(path, {f"test_{n}.py::test_{n}": 6.5 for n in names})
    events = subprocess.Popen(
        [
            *("docker", "events", "--filter", "type=volume", "--filter", "event=create"),
            *("--format", "{{.Actor.ID}}"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with containers_created("psyduck.worker") as created:
            done, _ = recorded_session(
                path,
                tmp_path / "out.xml",
                *("--psyduck-hosts", server.spec(client_key, known_hosts, slots=1)),
                *("--psyduck-image", "psyduck-test:latest"),
            )
    finally:
        events.terminate()
        volumes_created, _ = events.communicate(timeout=30)
    assert done.returncode == 0 and "3 passed" in done.output, done.output
    assert len(of_session(created, done.pid)) == 3, created
    code = {name for name in volumes_created.split() if name.startswith("psyduck-code-")}
    assert len(code) == 1, volumes_created
