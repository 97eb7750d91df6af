"""A docker host that lacks the run's image pulls it from pokedex's registry face.

Everything is real: the test image is pushed with ``docker push`` to a real
pokedex node (the one a served farm runs for ``[pokedex] data = …``), removed
from the engine under its new name, and a real ``pytest --psyduck`` session
against the served farm makes the host pull it back through the engine.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

import pokedex
from farm.hosts.base import HostError, RunContext
from farm.hosts.docker import DockerHost, registry_address
from farm.hosts.ssh import ssh_host
from farm.manifest import RunManifest, TestSpec, WorkerSpec
from tests.conftest import on_farm, run_pytest
from tests.farm_hosts.hostlib import free_port

pytestmark = pytest.mark.docker

TOKEN = "pull-token"
#: The project a session sends (in a directory of its own: its snapshot is all of it).
SUITE = {"proj/test_pulled.py": "def test_one():\n    pass\n\ndef test_two():\n    pass\n"}


def docker_cli(*args: str, config: Path | None = None, input_: str | None = None) -> str:
    """Run the docker CLI (with its own config dir, so logins stay out of the machine's)."""
    prefix = ["docker", *(["--config", str(config)] if config else [])]
    done = subprocess.run(
        [*prefix, *args], capture_output=True, text=True, timeout=600, input=input_
    )
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def image_id(reference: str) -> str | None:
    with docker.APIClient(timeout=30) as api:
        try:
            return api.inspect_image(reference)["Id"]
        except docker.errors.ImageNotFound:
            return None


def unique_name() -> str:
    """A test image name nobody else uses (a fresh repository and tag)."""
    return f"psyduck-pulled-{uuid.uuid4().hex[:12]}:t1"


def push_to_pokedex(image: str, registry: str, name: str, config: Path) -> None:
    """Put *image* into pokedex as *name*, the way the README tells an operator to;
    then neither *name* nor its registry name is left on the engine."""
    pushed = f"{registry}/{name}"
    docker_cli("tag", image, name)
    docker_cli("tag", image, pushed)
    try:
        docker_cli("login", "-u", "farm", "--password-stdin", registry, config=config, input_=TOKEN)
        docker_cli("push", pushed, config=config)
    finally:
        untag(name, pushed)  # tags only: the original image keeps its own name
    assert image_id(name) is None and image_id(pushed) is None


def untag(*references: str) -> None:
    """Remove these names from the engine, never the image they name (it keeps its tag)."""
    with docker.APIClient(timeout=60) as api:
        for reference in references:
            try:
                api.remove_image(reference, noprune=True)
            except docker.errors.NotFound:
                pass


@contextmanager
def served_farm(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``psyduck farm serve`` with one ``docker:1`` host and a pokedex node (farm token).

    Yields (farm URL, pokedex registry address).
    """
    from tests.test_cli import serve_farm

    port, pokedex_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    (tmp_path / "token").write_text(TOKEN)
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        f'[[hosts]]\nurl = "docker"\nslots = 1\n\n'
        f'[pokedex]\ndata = "{tmp_path / "store"}"\nlisten = "127.0.0.1:{pokedex_port}"\n'
    )
    url, proc = serve_farm(config, port, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        yield url, f"127.0.0.1:{pokedex_port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_host_without_the_image_pulls_it_from_pokedex(docker_image, suite, tmp_path):
    name = unique_name()
    project = suite(SUITE) / "proj"
    with served_farm(tmp_path) as (url, registry):
        try:
            push_to_pokedex(docker_image, registry, name, tmp_path / "docker-config")
            result = run_pytest(
                project,
                *on_farm(url),
                "--psyduck-image",
                name,
                env={"PSYDUCK_TOKEN": TOKEN},
            )
            assert result.outcomes() == {"passed": 2}, result.stdout + result.stderr
            # Now on the engine under the name the run asked for: the very same image.
            assert image_id(name) == image_id(docker_image)
            assert image_id(f"{registry}/{name}") is None, "the registry's name was left behind"
        finally:
            untag(name, f"{registry}/{name}")


def test_an_image_missing_from_host_and_pokedex_is_a_clear_host_error(
    docker_image, suite, tmp_path
):
    name = unique_name()
    project = suite(SUITE) / "proj"
    with served_farm(tmp_path) as (url, registry):
        result = run_pytest(
            project, *on_farm(url), "--psyduck-image", name, env={"PSYDUCK_TOKEN": TOKEN}
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{name!r} is not present" in output, output
    assert f"pulling {registry}/{name} from pokedex's registry failed" in output, output
    # What pokedex answered (its error code), as the engine relays it.
    assert "manifest unknown" in output, output
    assert image_id(name) is None


def run_context(image: str, pokedex_urls: tuple[str, ...]) -> RunContext:
    manifest = RunManifest(
        tests=(TestSpec(id="t.py::a", group="t.py"),),
        worker=WorkerSpec(argv=("pytest_psyduck.workermain",), cwd="/src", root="/src"),
        image=image,
    )
    return RunContext("run1", manifest, workers=2, pokedex_urls=pokedex_urls, pokedex_token=TOKEN)


def make_host(kind: str, request: pytest.FixtureRequest) -> DockerHost:
    """A 3-slot host on this machine's engine: directly, or through a real sshd."""
    if kind == "docker":
        return DockerHost(3)
    server = request.getfixturevalue("sshd")("127.0.0.2")
    known_hosts = request.getfixturevalue("known_hosts")
    known_hosts.write_text(server.known_hosts_line())
    return ssh_host(server.spec(request.getfixturevalue("client_key"), known_hosts, slots=3))


def pull_error(name: str, pokedex_url: str) -> str:
    """The host error of a docker host asked for missing *name* with pokedex at *pokedex_url*."""

    async def main() -> None:
        host = DockerHost(1)
        await host.start()
        try:
            engine = await host._ensure_engine()
            async with asyncio.timeout(60):
                await host._run_image(engine, name, run_context(name, (pokedex_url,)))
        finally:
            await host.close()

    with pytest.raises(HostError) as error:
        asyncio.run(main())
    return str(error.value)


@pytest.mark.parametrize("kind", ["docker", "ssh"])
def test_slots_starting_together_wait_for_one_pull(docker_image, tmp_path, kind, request):
    """Three slots asking at once for a missing image: the engine pulls it once, through
    the host's own connection to it (the local socket, or SSH)."""
    name = unique_name()
    host = make_host(kind, request)

    async def scenario(registry: str, url: str) -> list[str]:
        await host.start()
        try:
            engine = await host._ensure_engine()
            run = run_context(name, (url,))
            return await asyncio.gather(*(host._run_image(engine, name, run) for _ in range(3)))
        finally:
            await host.close()

    async def main() -> tuple[list[str], str, float]:
        node = await pokedex.start_node(tmp_path / "store", "127.0.0.1", 0, replicas=1, token=TOKEN)
        try:
            registry = registry_address(node.url)
            await asyncio.to_thread(
                push_to_pokedex, docker_image, registry, name, tmp_path / "docker-config"
            )
            since = time.time()
            return await scenario(registry, node.url), registry, since
        finally:
            await node.close()

    registry = ""
    try:
        refs, registry, since = asyncio.run(main())
        assert refs == [name] * 3
        assert image_id(name) == image_id(docker_image)
        with docker.APIClient(timeout=30) as api:
            events = api.events(
                since=int(since) - 1,
                until=int(time.time()) + 1,
                filters={"type": "image", "event": "pull"},
                decode=True,
            )
            pulls = [e for e in events if name.split(":")[0] in e.get("id", "")]
        assert len(pulls) == 1, pulls
    finally:
        untag(name, f"{registry}/{name}" if registry else name)


def test_an_unreachable_pokedex_is_named_in_the_host_error(docker_image):
    name = unique_name()
    closed = free_port("127.0.0.1")  # nothing listens there

    message = pull_error(name, f"http://127.0.0.1:{closed}")
    assert f"{name!r} is not present" in message, message
    assert f"pulling 127.0.0.1:{closed}/{name} from pokedex's registry failed" in message, message
    assert "connection refused" in message, message


def test_a_registry_that_never_answers_ends_the_pull_in_time(docker_image, monkeypatch):
    """A registry that accepts connections and says nothing: the pull gives up after its
    stall timeout (shortened here) instead of holding the slot for ever."""
    monkeypatch.setattr("farm.hosts.docker.images.PULL_STALL", 2.0)
    name = unique_name()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody ever reads or answers
        port = silent.getsockname()[1]

        message = pull_error(name, f"http://127.0.0.1:{port}")
    assert f"{name!r} is not present" in message, message
    assert f"pulling 127.0.0.1:{port}/{name} from pokedex's registry failed" in message, message
    assert "timed out" in message, message
