"""No credential of a served farm reaches a test in a container (the farm's pokedex
needs a token for reads, and the snapshot still arrives)."""

from __future__ import annotations

import pytest

from tests.conftest import on_farm, run_pytest
from tests.farm_hosts.hostlib import free_port
from tests.served import (
    BOB,
    NO_CREDENTIALS,
    POKEDEX_SECRET,
    SINGLE,
    ServedFarm,
    farm_config,
    get,
    pokedex_table,
)

pytestmark = pytest.mark.docker


def test_no_credential_reaches_a_container(docker_image, suite, tmp_path):
    port, pokedex_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    config = farm_config(
        tmp_path,
        port,
        pokedex=pokedex_table(tmp_path, pokedex_port),
        hosts=f'[[hosts]]\nurl = "docker"\nslots = 1\nimage = "{docker_image}"\n',
    )
    served = ServedFarm(
        config,
        f"http://127.0.0.1:{port}",
        env={
            "PSYDUCK_TOKEN": SINGLE,
            "POKEDEX_TOKEN": POKEDEX_SECRET,
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        },
    )
    try:
        assert get(f"http://127.0.0.1:{pokedex_port}/refs?prefix=")[0] == 401
        project = suite({"proj/test_env.py": NO_CREDENTIALS}) / "proj"
        result = run_pytest(project, *on_farm(served.url), env={"PSYDUCK_TOKEN": BOB})
        assert result.outcomes() == {"passed": 1}, result.stdout + result.stderr
    finally:
        served.stop()


def test_an_ssh_hosts_engine_pulls_from_the_farms_pokedex_with_the_farms_own_token(
    docker_image, sshd, client_key, known_hosts, suite, tmp_path
):
    """The remote engine's ``docker pull`` authenticates (reads need a token) with the
    farm's pokedex token, and no credential reaches the container it starts."""
    from tests.farm_hosts.test_image_pulls import TOKEN, push_to_pokedex, unique_name, untag

    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    port, pokedex_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    config = farm_config(
        tmp_path,
        port,
        pokedex=pokedex_table(tmp_path, pokedex_port),
        hosts=f'[[hosts]]\nurl = "{server.spec(client_key, known_hosts)}"\n',
    )
    served = ServedFarm(
        config,
        f"http://127.0.0.1:{port}",
        env={"PSYDUCK_TOKEN": TOKEN, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    name, registry = unique_name(), f"127.0.0.1:{pokedex_port}"
    try:
        push_to_pokedex(docker_image, registry, name, tmp_path / "docker-config")
        assert get(f"http://{registry}/v2/_catalog")[0] == 401
        project = suite({"proj/test_env.py": NO_CREDENTIALS.replace(SINGLE, TOKEN)}) / "proj"
        result = run_pytest(
            project, *on_farm(served.url), "--psyduck-image", name, env={"PSYDUCK_TOKEN": BOB}
        )
        assert result.outcomes() == {"passed": 1}, result.stdout + result.stderr
    finally:
        served.stop()
        untag(name, f"{registry}/{name}")
