"""Files tests write come home at real sizes: thousands of files, past the per-worker limit.

Real ``pytest --psyduck`` sessions on a docker slot of the test image: the
suite's tests write thousands of files into the project (a data set, a cache
of generated fixtures), more than a worker brings home.  What fits comes home
whole, at its path; the rest is named in one line on the terminal, and nothing
comes half-written.
"""

from __future__ import annotations

import json
import re

import pytest

from pytest_psyduck.homecoming import MAX_HOMECOMING_BYTES
from tests.farm_hosts.hostlib import psyduck_session

pytestmark = pytest.mark.docker

#: Tests, files each test writes, and bytes of each file: 24 MiB in 3,000 files.
TESTS, FILES, SIZE = 30, 100, 8 * 1024

WRITER = f"""
import pathlib

import pytest


@pytest.mark.parametrize("n", range({TESTS}))
def test_writes_files(n):
    out = pathlib.Path(__file__).parent / "out" / f"t{{n:02d}}"
    out.mkdir(parents=True, exist_ok=True)
    for i in range({FILES}):
        (out / f"f{{i:03d}}.bin").write_bytes(bytes([n, i % 256]) * ({SIZE} // 2))
"""


def expected(path: str) -> bytes:
    n, i = re.fullmatch(r"out/t(\d+)/f(\d+)\.bin", path).groups()
    return bytes([int(n), int(i) % 256]) * (SIZE // 2)


def test_thousands_of_written_files_come_home_up_to_the_limit_and_the_rest_is_named(
    docker_image, suite
):
    path = suite({"test_writer.py": WRITER})
    done = psyduck_session(
        path, "--psyduck-hosts", "docker:1", "--psyduck-image", docker_image, "-q"
    )
    assert done.returncode == 0, done.output
    assert f"{TESTS} passed" in done.output
    home = sorted(p.relative_to(path).as_posix() for p in (path / "out").rglob("*.bin"))
    # Whole files only, each with what its test wrote, within the limit.
    assert all((path / p).read_bytes() == expected(p) for p in home)
    assert 0 < len(home) * SIZE <= MAX_HOMECOMING_BYTES
    assert not list(path.rglob("*.psyduck-partial"))
    notices = [line for line in done.output.splitlines() if "were not brought home" in line]
    assert len(notices) == 1, done.output
    [notice] = notices
    left_out = TESTS * FILES - len(home)
    assert f"{left_out:,} files" in notice, notice
    # What was left out is named: every such file lies in a directory the line names.
    named = re.findall(r"(\S+/) \([\d,]+ files\)", notice.split(": ", 2)[2])
    written = {f"out/t{n:02d}/f{i:03d}.bin" for n in range(TESTS) for i in range(FILES)}
    assert named and all(any(p.startswith(d) for d in named) for p in written - set(home))


#: A plugin's workeroutput of 6 MiB (pytest-cov's data of a big project is of that order).
BIG_OUTPUT = """
import json, os, pathlib

import pytest

def pytest_sessionfinish(session):
    if getattr(session.config, "workeroutput", None) is not None:
        session.config.workeroutput["blob"] = os.urandom(6 * 1024 * 1024)

@pytest.hookimpl(optionalhook=True)  # xdist's hook: the image has no pytest-xdist
def pytest_testnodedown(node, error):
    blob = node.workeroutput.get("blob", b"")
    (pathlib.Path(__file__).parent / "down.json").write_text(json.dumps([len(blob), error]))
"""


def test_files_leave_room_for_the_workeroutput_in_the_farewell(docker_image, suite):
    """Files and workeroutput share a farewell's 16 MiB: files over the room it leaves stay
    out, and the workeroutput still comes home (both were once lost together)."""
    path = suite({"test_writer.py": WRITER, "conftest.py": BIG_OUTPUT})
    done = psyduck_session(
        path, "--psyduck-hosts", "docker:1", "--psyduck-image", docker_image, "-q"
    )
    assert done.returncode == 0, done.output
    assert json.loads((path / "down.json").read_text()) == [6 * 1024 * 1024, None], done.output
    home = list((path / "out").rglob("*.bin"))
    assert home and all(p.read_bytes() == expected(p.relative_to(path).as_posix()) for p in home)
    assert "were not brought home" in done.output
