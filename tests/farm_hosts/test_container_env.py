"""The pure parts of what a container gets: the invoker's variables, its imports, the packages.

The real containers are in test_pass_env.py, test_container_imports.py and
test_docker_parity.py; these check the rules themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fnmatch import fnmatchcase

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.hosts.base import RunContext, RunError
from farm.hosts.containers import (
    CONTAINER_VARIABLES,
    INJECT_DIR,
    container_environment,
    image_variable,
    inject_sources,
    worker_pythonpath,
)
from farm.manifest import (
    ManifestError,
    RunManifest,
    TestSpec,
    WorkerSpec,
    manifest_to_wire,
    parse_manifest,
)
from farm.packages import package_dir
from farm.tokens import CREDENTIAL_VARIABLES
from pytest_psyduck.passenv import DEFAULT_PASS_ENV, passed_environment
from tests.conftest import SESSION_TIMEOUT, outer_environment


def run_with(env: dict[str, str], inject: dict[str, str] | None = None) -> RunContext:
    manifest = RunManifest(
        tests=(TestSpec(id="t.py::a", group="t.py"),),
        worker=WorkerSpec(argv=("m",), cwd="/src", env=env, inject=inject or {}),
    )
    return RunContext("run1", manifest, workers=2)


# -- the invoker's variables ---------------------------------------------------
def test_patterns_choose_variables_as_tox_pass_env_does():
    environ = {"FOO": "1", "FOO_A": "a", "FOOBAR": "x", "foo": "lower", "BAR": "b", "LC_ALL": "C"}
    assert passed_environment(environ, ["FOO", "FOO_*"]) == {"FOO": "1", "FOO_A": "a"}
    assert passed_environment(environ, DEFAULT_PASS_ENV) == {"LC_ALL": "C"}
    assert passed_environment(environ, []) == {}


def test_a_farm_credential_never_passes_whatever_the_pattern():
    environ = {"PSYDUCK_TOKEN": "t0ken-t0ken", "POKEDEX_TOKEN": "p0kedex", "PSYDUCK_X": "1"}
    assert passed_environment(environ, ["*"]) == {"PSYDUCK_X": "1"}
    assert passed_environment(environ, ["PSYDUCK_TOKEN", "*TOKEN"]) == {}


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
patterns = st.lists(st.from_regex(r"[A-Za-z_*?]{1,8}", fullmatch=True), max_size=4)


@given(st.dictionaries(names, st.text(max_size=8), max_size=12), patterns)
def test_what_passes_matches_a_pattern_and_is_never_a_credential(environ, chosen):
    passed = passed_environment(environ, chosen)
    assert passed.items() <= environ.items()
    assert all(any(fnmatchcase(name, p) for p in chosen) for name in passed)
    assert not set(passed) & CREDENTIAL_VARIABLES
    # Everything that matches and is not a credential passes.
    assert set(passed) == {
        n
        for n in environ
        if n not in CREDENTIAL_VARIABLES and any(fnmatchcase(n, p) for p in chosen)
    }


def test_a_container_gets_the_passed_variables_but_keeps_its_own():
    invoker = {
        "FOO": "1",
        "PATH": "/home/me/bin",
        "HOME": "/home/me",
        "PYTHONPATH": "/home/me/lib",
        "PSYDUCK_WORKER_FD": "7",
        "PSYDUCK_CODE_SRC": "/etc",
        "PSYDUCK_TOKEN": "t0ken-t0ken",
    }
    env = container_environment(run_with(invoker), "gw1", image_pythonpath="/opt/extra")
    assert env["FOO"] == "1"
    assert "PATH" not in env  # the image's PATH applies
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert env["PYTHONPATH"] == f"/opt/extra:{INJECT_DIR}"
    assert not {"PSYDUCK_WORKER_FD", "PSYDUCK_CODE_SRC", "PSYDUCK_TOKEN"} & set(env)
    assert env["PYTEST_XDIST_WORKER"] == "gw1"
    assert env["PSYDUCK_RUN_ID"] == "run1"


@given(st.dictionaries(names, st.text(max_size=8), max_size=12))
def test_the_containers_own_variables_always_win(invoker):
    own = container_environment(run_with({}), "gw0")
    env = container_environment(run_with(invoker), "gw0")
    assert {n: env.get(n) for n in CONTAINER_VARIABLES} == {
        n: own.get(n) for n in CONTAINER_VARIABLES
    }


# -- imports ---------------------------------------------------------------------
@given(st.lists(st.from_regex(r"/[a-z]{1,6}", fullmatch=True), max_size=4))
def test_the_images_pythonpath_is_extended_never_replaced(entries):
    path = worker_pythonpath(os.pathsep.join(entries))
    assert path.split(os.pathsep) == [*entries, INJECT_DIR]


def test_the_images_variable_is_read_from_its_config():
    env = ["PATH=/usr/bin", "PYTHONPATH=/opt/a:/opt/b", "X=a=b"]
    assert image_variable(env, "PYTHONPATH") == "/opt/a:/opt/b"
    assert image_variable(env, "X") == "a=b"
    assert image_variable(env, "NOPE") == ""
    assert worker_pythonpath("") == INJECT_DIR


# -- the packages a worker needs -------------------------------------------------
def test_the_embedded_farm_injects_the_clients_own_directories(tmp_path):
    (tmp_path / "pkg").mkdir()
    requested = {"pkg": str(tmp_path / "pkg")}
    assert inject_sources(requested, client_disk=True) == requested
    with pytest.raises(RunError, match="need gone, not where the run says"):
        inject_sources({"gone": str(tmp_path / "gone")}, client_disk=True)


def test_a_served_farm_injects_its_own_installation_never_a_clients_path(tmp_path):
    requested = {"farm": str(tmp_path / "elsewhere"), "msgpack": "/nowhere"}
    found = inject_sources(requested, client_disk=False)
    assert found == {"farm": package_dir("farm"), "msgpack": package_dir("msgpack")}
    with pytest.raises(RunError, match="need no_such_pkg_xyz, not installed on the farm"):
        inject_sources({"no_such_pkg_xyz": "/x"}, client_disk=False)


def test_the_manifest_carries_what_to_inject():
    manifest = run_with({"FOO": "1"}, inject={"farm": "/site/farm"}).manifest
    assert parse_manifest(manifest_to_wire(manifest)) == manifest


@pytest.mark.parametrize(
    ("inject", "message"),
    [
        ({"../etc": "/etc"}, "is not a package name"),
        ({"farm": "site/farm"}, "must be absolute"),
        ({"farm": 3}, "map of strings"),
    ],
)
def test_a_bad_inject_is_refused_naming_the_field(inject, message):
    wire = manifest_to_wire(run_with({}).manifest)
    wire["worker"]["inject"] = inject
    with pytest.raises(ManifestError, match=message):
        parse_manifest(wire)


FARM_MODULES = """
import asyncio, sys
import farm.cli, farm.coordinator, farm.embedded, farm.service, farm.standby
from farm.hosts import HOST_KINDS, parse_hosts
from farm.hosts.containers import inject_sources
parse_hosts("docker:2,ssh://u@h?slots=1,local:1")
HOST_KINDS["docker"]("docker:2", {"memory": "2G"})  # farm.toml sizes: the shared parser
print(inject_sources({"pytest_psyduck": "/x", "msgpack": "/y"}, client_disk=False))
print(sorted(m for m in ("pytest", "_pytest", "pytest_psyduck") if m in sys.modules))
"""


def test_the_farm_never_imports_pytest_or_the_plugin():
    """Building every kind of host and finding the plugin's directory import neither."""
    done = subprocess.run(
        [sys.executable, "-c", FARM_MODULES],
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT,
        env=outer_environment(),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout
