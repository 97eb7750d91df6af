"""Faults on real Docker hosts: a run's bad snapshot fails it alone; a host lost with
several slots still failing ends every test.

Real served or embedded farms, real containers on the local engine, real
sshd servers acting as Docker hosts, real ``pytest --psyduck`` sessions.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest

from farm.client import FarmClient
from farm.manifest import RunManifest, TestSpec, WorkerSpec
from tests.conftest import on_farm, run_pytest, wait_until
from tests.farm_hosts.hostlib import (
    CURRENT_TEST_CONFTEST,
    current_test_in,
    psyduck_containers,
    seed_durations,
    start_session,
    wait_containers_gone,
)
from tests.test_run_faults import PROJECT, TOKEN, _farm, _status

pytestmark = pytest.mark.docker


async def _events_of(url: str, manifest: RunManifest) -> list[dict]:
    async with FarmClient(url, TOKEN) as client:
        stream = await client.attach(await client.submit(manifest))
        try:
            return [event async for event in stream]
        finally:
            await stream.close()


async def _not_a_tree(url: str) -> str:
    """A snapshot digest naming a blob pokedex has, which is no tree."""
    import pokedex

    async with FarmClient(url, TOKEN) as client:
        urls = (await client.info())["pokedex"]
    async with pokedex.Client(urls, TOKEN) as store:
        return await store.put_bytes(b"these bytes are not a tree manifest\n")


def test_a_run_whose_snapshot_cannot_be_pulled_fails_alone(docker_image, tmp_path, suite):
    """Bogus snapshots fail their runs with the reason; the host serves the next run."""
    project = suite(PROJECT) / "proj"
    url, proc = _farm(tmp_path, f'url = "docker"\nslots = 2\nimage = "{docker_image}"')
    try:
        for snapshot, reason in (
            ("sha256:" + "0" * 64, "cannot pull the run's snapshot sha256:000"),
            (asyncio.run(_not_a_tree(url)), "cannot pull the run's snapshot sha256:"),
            ("../../../../etc", "snapshot '../../../../etc' is not a digest"),
        ):
            manifest = RunManifest(
                tests=tuple(
                    TestSpec(id=f"tests/test_a.py::test_{n}", group="tests/test_a.py")
                    for n in ("one", "two")
                ),
                worker=WorkerSpec(
                    argv=("pytest_psyduck.workermain", "-p", "no:cacheprovider"),
                    cwd=str(project),
                ),
                snapshot=snapshot,
            )
            events = asyncio.run(_events_of(url, manifest))
            done = events[-1]
            assert done["t"] == "done" and done["status"] == "failed", events
            assert reason in done["reason"], done
            crashed = {e["id"]: e["message"] for e in events if e["t"] == "crashed"}
            assert set(crashed) == {t.id for t in manifest.tests}
            assert set(crashed.values()) == {f"psyduck: the run failed: {done['reason']}"}
        assert not any(h["quarantined"] or h["failures"] for h in _status(url)["hosts"])
        passed = run_pytest(project, *on_farm(url), env={"PSYDUCK_TOKEN": TOKEN})
        assert passed.outcomes() == {"passed": 2}, passed.stdout + passed.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


#: Tests that run until their worker is killed.
STUCK = """
import time
import pytest

@pytest.mark.parametrize("n", range(3))
def test_stuck(n):
    time.sleep(600)
"""


def test_a_host_lost_with_every_slot_busy_ends_every_test(
    sshd, client_key, known_hosts, suite, tmp_path
):
    """Both slots lose their workers, the retries fail, the host is quarantined while its
    other slot is still failing: every test still ends, each once, and the session too."""
    path = suite({"conftest.py": CURRENT_TEST_CONFTEST, "test_m0.py": STUCK, "test_m1.py": STUCK})
    # Long recorded durations make each test a shard of its own, so both slots get one.
    seed_durations(path, {f"test_m{m}.py::test_stuck[{n}]": 60.0 for m in "01" for n in "012"})
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    process = start_session(
        path,
        "--psyduck-hosts",
        server.spec(client_key, known_hosts, slots=2),
        "--psyduck-image",
        "psyduck-test:latest",
        f"--junitxml={tmp_path / 'out.xml'}",
        cache=True,
    )
    try:

        def both_slots_busy() -> bool:
            running = [
                c
                for c in psyduck_containers(psyduck_host=server.host_name)
                if c["State"] == "running" and current_test_in(c)
            ]
            return len(running) >= 2 or process.poll() is not None

        wait_until(both_slots_busy, "a test running in each slot", timeout=120)
        server.stop()
        stdout, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == 1, stdout
    assert "6 failed" in stdout, stdout
    names = [
        f"{c.get('classname')}::{c.get('name')}"
        for c in ET.parse(tmp_path / "out.xml").getroot().iter("testcase")
    ]
    assert len(names) == len(set(names)) == 6, "a test was reported twice or not at all"
    assert f"host {server.host_name} quarantined" in stdout, stdout
    assert "no host in service can run" in stdout, stdout
    wait_containers_gone(process.pid, timeout=60)
