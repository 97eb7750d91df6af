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
