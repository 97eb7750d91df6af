"""The fault soak: a served farm keeps every result of every run while its hosts fail.

A ``psyduck farm serve`` with a docker host, an ssh host and a three-node pokedex
cluster runs five ``pytest --psyduck`` sessions at once while a chaos thread kills
the farm's containers, kills and restarts sshd, and ``kill -9``\\s and restarts
pokedex nodes, at random (seeded) moments.  Each session must end with exactly the
outcomes plain pytest gives the same suite — none lost, none reported twice — with
the tests that were interrupted and run again flagged in the junit report, and the
farm's memory must end where it started.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from tests.conftest import junit_cases, run_pytest, start_pytest, wait_until
from tests.farm_hosts.hostlib import SSHD, Sshd, containers_of
from tests.pokedex.pokedex_testlib import NodeProcess, free_port
from tests.served import ServedFarm

pytestmark = [pytest.mark.slow, pytest.mark.docker]

TOKEN = "soak-token"
SESSIONS = 5
SEED = int(os.environ.get("PSYDUCK_SOAK_SEED", "20261205"))

#: One module of the soak's suites; ``{k}`` makes each suite's snapshot its own.
MODULE = """
import time

import pytest

SUITE = {k}

@pytest.mark.parametrize("n", range(30))
def test_work(n):
    time.sleep(0.05 + (n % 5) * 0.02)
    assert n % 17 != 16

@pytest.mark.parametrize("n", range(6))
def test_other(n):
    if n == 3:
        pytest.skip("not here")
    if n == 5:
        pytest.xfail("known")
    time.sleep(0.1)
"""


def write_suite(root: Path, k: int) -> Path:
    """Seven modules of 36 tests: passes, failures, skips and xfails, ~15 s of sleeping."""
    path = root / f"suite{k}"
    path.mkdir()
    for m in range(7):
        (path / f"test_m{m}.py").write_text(MODULE.format(k=k))
    return path


def restart_sshd(server: Sshd) -> Sshd:
    """Start *server*'s sshd again on the same address, port and host key."""
    with open(server.directory / "sshd.log", "ab") as log:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(server.directory / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    import socket

    def listening() -> bool:
        assert process.poll() is None, (server.directory / "sshd.log").read_text()
        try:
            socket.create_connection((server.address, server.port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(listening, "sshd to listen again", timeout=30)
    return Sshd(server.address, server.port, server.directory, process)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Chaos:
    """Kills containers, sshd and pokedex nodes at seeded random moments until stopped."""

    farm_pid: int
    sshd: Sshd
    nodes: list[NodeProcess]
    stop: threading.Event = field(default_factory=threading.Event)
    done: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        rng = random.Random(SEED)
        engine = docker.APIClient(timeout=30)
        try:
            while not self.stop.wait(rng.uniform(1.0, 4.0)):
                action = rng.choice(["container", "container", "sshd", "node"])
                if action == "container":
                    running = [c for c in containers_of(self.farm_pid) if c["State"] == "running"]
                    if running:
                        victim = rng.choice(running)
                        try:
                            engine.kill(victim["Id"])
                            self.done.append(f"killed container {victim['Id'][:12]}")
                        except docker.errors.APIError:
                            pass  # it ended on its own meanwhile
                elif action == "sshd":
                    self.sshd.stop()
                    self.done.append("stopped sshd")
                    if self.stop.wait(rng.uniform(0.5, 3.0)):
                        self.sshd = restart_sshd(self.sshd)
                        return
                    self.sshd = restart_sshd(self.sshd)
                else:
                    node = rng.choice(self.nodes)
                    node.kill()
                    self.done.append(f"kill -9 pokedex node {node.port}")
                    self.stop.wait(rng.uniform(0.5, 3.0))
                    node.start()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            engine.close()


def outcome_set(cases: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {case: outcome for case, (outcome, _) in cases.items()}


def retried_cases(path: Path) -> set[str]:
    """Junit cases carrying psyduck's note that they were interrupted and run again."""
    flagged = set()
    for case in ET.parse(path).getroot().iter("testcase"):
        for prop in case.iter("property"):
            if "retrying it elsewhere" in prop.get("value", ""):
                flagged.add(f"{case.get('classname')}::{case.get('name')}")
    return flagged


def test_a_served_farm_loses_and_duplicates_nothing_while_its_hosts_fail(
    docker_image, sshd, client_key, known_hosts, tmp_path
):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    peers = ("--peers", ",".join(urls))
    nodes = [
        NodeProcess(tmp_path / f"pokedex{i}", p, token_file, peers) for i, p in enumerate(ports)
    ]
    for node in nodes:
        node.data.mkdir()
    ssh_server = sshd("127.0.0.2")
    known_hosts.write_text(ssh_server.known_hosts_line())
    farm_port = free_port()
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{farm_port}"\ntoken_file = "{token_file}"\n\n'
        f'[[hosts]]\nurl = "docker"\nslots = 2\nimage = "{docker_image}"\n\n'
        f'[[hosts]]\nurl = "ssh://root@{ssh_server.address}:{ssh_server.port}"\nslots = 2\n'
        f'image = "{docker_image}"\nkey = "{client_key}"\nknown_hosts = "{known_hosts}"\n\n'
        f'[pokedex]\nurls = {urls!r}\ntoken_file = "{token_file}"\n'.replace("'", '"')
    )
    suites = [write_suite(tmp_path, k) for k in range(SESSIONS)]
    plain = [
        start_pytest(s, "-p", "no:cacheprovider", f"--junitxml={s / 'plain.xml'}") for s in suites
    ]
    for process in plain:
        process.communicate(timeout=300)
    for node in nodes:
        node.start()
    farm_url = f"http://127.0.0.1:{farm_port}"
    env = {"PSYDUCK_TOKEN": TOKEN}
    farm = ServedFarm(config, farm_url)
    chaos = Chaos(farm.proc.pid, ssh_server, nodes)
    try:
        # A warm-up run brings in every import the farm makes lazily; memory counts from here.
        warm = run_pytest(
            suites[0],
            "-p",
            "no:cacheprovider",
            "--psyduck",
            f"--psyduck-farm={farm_url}",
            "-k",
            "test_other",
            env=env,
        )
        assert warm.returncode == 0, warm.stdout + warm.stderr
        rss_start = rss_bytes(farm.proc.pid)
        sessions = [
            start_pytest(
                s,
                "-p",
                "no:cacheprovider",
                "--psyduck",
                f"--psyduck-farm={farm_url}",
                f"--junitxml={s / 'soak.xml'}",
                env=env,
            )
            for s in suites
        ]
        chaos_thread = threading.Thread(target=chaos.run, daemon=True)
        chaos_thread.start()
        outputs = []
        try:
            for process in sessions:
                outputs.append(process.communicate(timeout=420)[0])
        finally:
            chaos.stop.set()
            chaos_thread.join(60)
            for process in sessions:
                process.kill()
        assert not chaos.errors, chaos.errors
        print("chaos:", *chaos.done, sep="\n  ")
        for s, process, plain_process, output in zip(suites, sessions, plain, outputs, strict=True):
            expected = outcome_set(junit_cases(s / "plain.xml"))
            got = outcome_set(junit_cases(s / "soak.xml"))
            names = [
                f"{c.get('classname')}::{c.get('name')}"
                for c in ET.parse(s / "soak.xml").getroot().iter("testcase")
            ]
            assert len(names) == len(set(names)), f"{s.name}: a result was reported twice"
            assert got == expected, f"{s.name}: outcomes differ from plain pytest\n{output}"
            assert process.returncode == plain_process.returncode, output
        assert any(retried_cases(s / "soak.xml") for s in suites) or not chaos.done, (
            "faults were injected but no test was flagged as run again"
        )
        rss_end = rss_bytes(farm.proc.pid)
        assert rss_end <= rss_start * 1.10, f"farm RSS grew from {rss_start} to {rss_end} bytes"
    finally:
        chaos.stop.set()
        farm.stop()
        for node in nodes:
            node.stop()
