"""pytest-xdist's plugin contract itself, as a plugin written from xdist's documentation uses it.

A real conftest plugin configures the nodes on the controller, reads
``config.workerinput`` in its workers' ``pytest_configure``, fills
``config.workeroutput`` at their session's end and collects it in
``pytest_testnodedown``; real sessions run it on forked and fresh local
workers and in containers.  The pure parts (the ``workerinput`` codec, where
a file sent home may land) are checked with hypothesis.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_psyduck import homecoming, xdistcontract
from tests.compat.xdistlib import HOSTS, psyduck_args, summary
from tests.conftest import run_pytest
from tests.farm_hosts.hostlib import docker_problem

CONTRACT_PLUGIN = """
import os
import time

import pytest


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        config.contract = {"setup": 0, "ready": set(), "down": {}}
        return
    # Set before the worker's plugins configure, as pytest-xdist sets it.
    config.contract_seen = {
        "greeting": workerinput.get("greeting"),
        "env": os.environ["PYTEST_XDIST_WORKER"] == workerinput["workerid"]
        and os.environ["PYTEST_XDIST_TESTRUNUID"] == workerinput["testrunuid"],
    }
    config.contract_ran = 0


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config, specs):
    config.contract["setup"] += 1


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["greeting"] = "hello from the controller"


@pytest.hookimpl(optionalhook=True)
def pytest_testnodeready(node):
    node.config.contract["ready"].add(node.gateway.id)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    node.config.contract["down"][node.gateway.id] = (dict(node.workeroutput), error)


def pytest_runtest_setup(item):
    if hasattr(item.config, "workerinput"):
        item.config.contract_ran += 1


def pytest_sessionfinish(session):
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["ran"] = session.config.contract_ran
        output["seen"] = session.config.contract_seen
        output["workerid"] = session.config.workerinput["workerid"]
        if os.environ.get("CONTRACT_BIG_OUTPUT"):
            output["big"] = b"x" * (17 * 1024 * 1024)


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):
        return
    contract = config.contract
    down = contract["down"]
    write = terminalreporter.write_line
    write(f"contract: setup={contract['setup']}")
    write(f"contract: ready={sorted(contract['ready'])} down={sorted(down)}")
    write(f"contract: ran={sum(out.get('ran', 0) for out, _ in down.values())}")
    write(f"contract: seen={sorted({repr(out.get('seen')) for out, _ in down.values()})}")
    write(f"contract: ids={all(out.get('workerid') == w for w, (out, _) in down.items() if out)}")
    write(f"contract: errors={sorted(str(e) for _, e in down.values() if e is not None)}")
"""

SUITE = {
    "conftest.py": CONTRACT_PLUGIN,
    "test_one.py": "import pytest\n\n@pytest.mark.parametrize('n', range(20))\n"
    "def test_one(n):\n    assert n >= 0\n",
    "test_two.py": "def test_a():\n    pass\n\ndef test_b():\n    pass\n",
}

CRASHING = {
    **SUITE,
    "test_crash.py": "import os\n\ndef test_crashes():\n    os._exit(3)\n",
}


def _contract(output: str) -> dict[str, str]:
    return dict(re.findall(r"^contract: (\w+)=(.*)$", output, re.M))


def _hosts(host: str) -> tuple[str, ...]:
    if host == "docker":
        problem = docker_problem()
        if problem:
            pytest.skip(f"docker tests skipped: {problem}")
        return psyduck_args(host, "psyduck-test:latest")
    return psyduck_args(host)


@pytest.mark.parametrize("host", HOSTS)
def test_nodes_get_workerinput_and_bring_workeroutput_home(suite, host):
    path = suite(SUITE)
    plain = run_pytest(path, "-p", "no:cacheprovider")
    farm = run_pytest(path, "-p", "no:cacheprovider", *_hosts(host))
    assert farm.returncode == plain.returncode == 0, farm.stdout + farm.stderr
    assert summary(farm.stdout) == summary(plain.stdout) == "22 passed"
    contract = _contract(farm.stdout)
    assert contract["setup"] == "1"
    ready, down = re.fullmatch(r"(\[.*\]) down=(\[.*\])", contract["ready"]).groups()
    assert ready == down != "[]", contract
    assert contract["ran"] == "22"
    assert contract["seen"] == "[\"{'greeting': 'hello from the controller', 'env': True}\"]"
    assert contract["ids"] == "True"
    assert contract["errors"] == "[]"


def test_the_contract_holds_without_pytest_xdist(suite):
    """psyduck then registers xdist's hook specs itself."""
    path = suite(SUITE)
    farm = run_pytest(path, "-p", "no:cacheprovider", "-p", "no:xdist", *_hosts("exec"))
    assert farm.returncode == 0, farm.stdout + farm.stderr
    contract = _contract(farm.stdout)
    assert contract["setup"] == "1" and contract["ran"] == "22", contract
    assert contract["seen"] == "[\"{'greeting': 'hello from the controller', 'env': True}\"]"


def test_a_crashed_worker_goes_down_with_an_error(suite):
    path = suite(CRASHING)
    farm = run_pytest(path, "-p", "no:cacheprovider", *_hosts("exec"))
    assert farm.returncode == 1, farm.stdout + farm.stderr
    assert summary(farm.stdout) == "1 failed, 22 passed"
    contract = _contract(farm.stdout)
    assert contract["errors"] == "['the worker exited with status 3']", contract
    assert contract["ran"] == "22"


def test_workeroutput_over_the_limit_is_an_error_naming_it(suite):
    path = suite(SUITE)
    farm = run_pytest(
        path, "-p", "no:cacheprovider", *_hosts("exec"), env={"CONTRACT_BIG_OUTPUT": "1"}
    )
    assert farm.returncode == 0, farm.stdout + farm.stderr
    errors = _contract(farm.stdout)["errors"]
    assert "over psyduck's limit of 16,777,216 bytes" in errors, errors


def test_workerinput_that_cannot_travel_is_a_usage_error(suite):
    path = suite(
        {
            "conftest.py": "import pytest\n\n@pytest.hookimpl(optionalhook=True)\n"
            "def pytest_configure_node(node):\n    node.workerinput['bad'] = object()\n",
            "test_a.py": "def test_a():\n    pass\n",
        }
    )
    farm = run_pytest(path, "-p", "no:cacheprovider", "--psyduck")
    assert farm.returncode == 4, farm.stdout + farm.stderr
    assert "node.workerinput" in farm.stderr and "['bad'" in farm.stderr, farm.stderr


# -- the pure parts -----------------------------------------------------------------
WIRE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), WIRE_VALUES, max_size=6))
def test_workerinput_travels_unchanged(prototype):
    encoded = xdistcontract.encode_workerinput(prototype)
    saved = {k: os.environ.get(k) for k in ("PSYDUCK_WORKERINPUT", "PYTEST_XDIST_TESTRUNUID")}
    os.environ["PSYDUCK_WORKERINPUT"] = encoded
    try:
        workerinput = xdistcontract.worker_input("gw7", 3, "run-id")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    expected_uid = prototype.get("testrunuid") or "run-id"
    assert workerinput == {
        **prototype,
        "workerid": "gw7",
        "workercount": 3,
        "testrunuid": expected_uid,
    }


def test_workerinput_over_the_limit_is_a_usage_error():
    with pytest.raises(pytest.UsageError, match="over the limit of 65,536"):
        xdistcontract.encode_workerinput({"big": "x" * 70_000})


@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "/", "\\", "c.txt"]), max_size=6))
def test_files_sent_home_never_land_outside_the_project(tmp_path_factory, parts):
    root = tmp_path_factory.mktemp("root")
    relative = "/".join(parts)
    target = homecoming.target_in(root, relative)
    if target is not None:
        assert target.resolve().is_relative_to(root.resolve())
        assert target != root


def test_written_files_are_the_new_and_changed_ones(tmp_path: Path):
    source, copy = tmp_path / "src", tmp_path / "copy"
    for tree in (source, copy):
        (tree / "pkg").mkdir(parents=True)
        (tree / "pkg" / "same.py").write_text("same")
        os.utime(tree / "pkg" / "same.py", ns=(1, 1))
    (source / "pkg" / "changed.txt").write_text("old")
    (copy / "pkg" / "changed.txt").write_text("new!")
    (copy / ".hypothesis" / "examples" / "k").mkdir(parents=True)
    (copy / ".hypothesis" / "examples" / "k" / "v").write_bytes(b"\x00")
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "m.pyc").write_bytes(b"")
    (copy / ".coverage.host.1.2").write_bytes(b"")
    (copy / "big.bin").write_bytes(b"x" * 100)
    sent, left_out = homecoming.written_files(copy, source, limit=50)
    assert sorted(sent) == [".hypothesis/examples/k/v", "pkg/changed.txt"]
    assert left_out == ["big.bin"]
    home = tmp_path / "home"
    home.mkdir()
    (home / "kept").write_text("kept")
    refused = homecoming.bring_home(home, {**sent, "../escape": b"no"})
    assert refused == ["'../escape': not a file path inside the project"]
    assert (home / "pkg" / "changed.txt").read_text() == "new!"
    assert (home / "kept").read_text() == "kept"
    assert not (tmp_path / "escape").exists()


def test_a_file_the_worker_never_wrote_stays_home_though_the_source_changed(tmp_path: Path):
    """On a local docker host the source is the live tree: another worker's snapshot
    update may land there first, and this worker's untouched copy must not undo it."""
    source, copy = tmp_path / "src", tmp_path / "copy"
    for tree in (source, copy):
        (tree / "__snapshots__").mkdir(parents=True)
        (tree / "__snapshots__" / "test_render.ambr").write_text("old")
    started = time.time_ns()
    os.utime(copy / "__snapshots__" / "test_render.ambr", ns=(started - 10**9,) * 2)
    (source / "__snapshots__" / "test_render.ambr").write_text("updated by another worker")
    (copy / "written.txt").write_text("by this worker")
    sent, _ = homecoming.written_files(copy, source, since_ns=started)
    assert sorted(sent) == ["written.txt"]


def test_a_conftest_implementing_xdists_hooks_loads_on_workers_without_pytest_xdist(suite):
    """The user's pytest accepts such a conftest (psyduck adds xdist's specs), so fresh
    workers must too: without the specs there, pytest refuses it as an unknown hook."""
    path = suite(
        {
            "conftest.py": (
                "def pytest_testnodedown(node, error):\n    print('down', node.gateway.id, error)\n"
            ),
            "test_a.py": "def test_a():\n    pass\n\ndef test_b():\n    pass\n",
        }
    )
    farm = run_pytest(path, "-p", "no:cacheprovider", "-p", "no:xdist", *_hosts("exec"))
    assert farm.returncode == 0, farm.stdout + farm.stderr
    assert "2 passed" in farm.stdout
    assert "unknown hook" not in farm.stdout + farm.stderr
