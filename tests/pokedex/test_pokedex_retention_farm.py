"""``[pokedex] max_bytes``: the disk budget of the node ``psyduck farm serve`` runs."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pokedex_testlib import free_port, wait_until

from farm.config import ConfigError, parse_config

HOSTS = [{"url": "local", "slots": 1}]


def test_max_bytes_is_parsed_as_a_size() -> None:
    config = parse_config({"hosts": HOSTS, "pokedex": {"data": "/srv/p", "max_bytes": "10G"}})
    assert config.pokedex is not None and config.pokedex.max_bytes == 10 << 30
    plain = parse_config({"hosts": HOSTS, "pokedex": {"data": "/srv/p"}})
    assert plain.pokedex is not None and plain.pokedex.max_bytes is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"data": "/srv/p", "max_bytes": "lots"}, r"\[pokedex\] max_bytes: not a size"),
        ({"data": "/srv/p", "max_bytes": 0}, r"\[pokedex\] max_bytes: a size must be positive"),
        ({"urls": ["http://s:1"], "max_bytes": "1G"}, r"applies to the node the farm runs"),
    ],
)
def test_bad_max_bytes_is_refused_naming_the_field(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"hosts": HOSTS, "pokedex": table})


def test_the_farms_node_runs_with_the_budget(tmp_path: Path) -> None:
    farm_port, node_port = free_port(), free_port()
    (tmp_path / "token").write_text("tok")
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{farm_port}"\ntoken_file = "{tmp_path / "token"}"\n\n'
        '[[hosts]]\nurl = "local"\nslots = 1\n\n'
        f'[pokedex]\ndata = "{tmp_path / "store"}"\nlisten = "127.0.0.1:{node_port}"\n'
        'max_bytes = "3M"\n'
    )
    log = tmp_path / "farm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "farm", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def status() -> dict[str, Any] | None:
        assert proc.poll() is None, log.read_text()
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{node_port}/status", headers={"Authorization": "Bearer tok"}
            )
            with urllib.request.urlopen(request, timeout=5) as r:
                return json.load(r)
        except OSError:
            return None

    try:
        assert wait_until(status, 60, "the farm's pokedex node")["max_bytes"] == 3 << 20
    finally:
        proc.terminate()
        proc.wait(30)
