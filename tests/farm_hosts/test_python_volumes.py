"""Workers import the image's Python from read-only volumes the engine copied from the image.

The pure parts (which directories, which mounts) are unit-tested; the rest with
the real engine and the real test image: the volumes hold the image's files
byte for byte with their owners, modes and timestamps, are made once per image
id and shared, a changed image gets its own and the reaper removes those of an
image that is gone, and real sessions on ``docker:2`` and over ssh run with them
mounted read-only — with the same results.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.hosts.containers import INJECT_DIR, SCRATCH_DIR, python_mounts
from farm.hosts.docker.engine import Engine
from farm.hosts.docker.pythonvolumes import (
    LABEL_PYTHON,
    outermost,
    parse_listing,
    python_volumes,
    reap_python_volumes,
)
from tests.conftest import run_pytest
from tests.farm_hosts.hostlib import psyduck_session
from tests.farm_hosts.test_host_plans import run_context

PYTHON_DIRS = ["/usr/lib/python3.11", "/usr/lib/python3/dist-packages"]

# -- pure ------------------------------------------------------------------------------


@given(st.lists(st.sampled_from(["/a", "/a/b", "/a/b/c", "/ab", "/x/y", "/x"]), min_size=1))
def test_outermost_keeps_each_directory_once_and_none_inside_another(paths):
    kept = outermost(paths)
    assert set(kept) <= set(paths)
    for path in paths:
        assert sum(path == k or path.startswith(k + "/") for k in kept) == 1


def test_the_listing_is_read_from_the_scripts_line_only():
    output = 'noise\nPSYDUCK-PYTHON-DIRS ["/usr/lib/python3.11", "/usr/lib/python3.11/x"]\n'
    assert parse_listing(output) == ["/usr/lib/python3.11"]
    with pytest.raises(ValueError, match="no listing"):
        parse_listing("Traceback: boom\n")


def test_python_volumes_never_cover_the_code_psyduck_or_the_scratch():
    volumes = {
        "/usr/lib/python3.11": "v0",
        "/src": "v1",  # holds the code root
        "/src/proj/.venv/lib": "v2",  # inside the code root
        "/opt": "v3",  # holds psyduck's packages
        "/tmp/py": "v4",  # inside the scratch
        "/": "v5",
    }
    taken = ["/src/proj", INJECT_DIR, SCRATCH_DIR]
    assert python_mounts(volumes, taken) == {"/usr/lib/python3.11": "v0"}


def test_plans_mount_python_volumes_read_only_at_their_directories():
    from farm.hosts.containers import plan_container, shard_limits

    plan = plan_container(
        run_context(),
        "gw0",
        host="docker",
        slot=0,
        image="img",
        python="python3",
        code_dir="/cache/tree",
        code_root="/src/proj",
        copy_code=True,
        user="0:0",
        limits=shard_limits([], memory_share=1 << 30, cpu_share=1.0),
        module_dirs={"farm": "/site/farm"},
        python_volumes={"/usr/lib/python3.11": "pyvol", "/src/proj/lib": "hidden"},
    )
    binds = plan.host_config["binds"]
    assert binds["pyvol"] == {"bind": "/usr/lib/python3.11", "mode": "ro"}
    assert "hidden" not in binds
    assert plan.host_config["read_only"] is True


# -- the real engine -------------------------------------------------------------------


def on_engine(coro_fn):
    """Run ``coro_fn(engine)`` against the local engine."""

    async def main():
        engine = Engine(docker.APIClient(version="auto", timeout=120), "test")
        await engine.start()
        try:
            return await coro_fn(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


#: Lists every file under the given directories: path, size, mode, owner, mtime, digest.
INVENTORY = """
import hashlib, os, sys
for top in sys.argv[1:]:
    for here, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(here, name)
            st = os.lstat(p)
            digest = ""
            if os.path.isfile(p) and not os.path.islink(p):
                digest = hashlib.sha256(open(p, "rb").read()).hexdigest()
            print(p, st.st_size, oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, digest)
"""


def inventory(image: str, mounts: dict[str, str]) -> str:
    args = [a for d, v in mounts.items() for a in ("-v", f"{v}:{d}:ro")]
    command = ["python3", "-c", INVENTORY, *PYTHON_DIRS]
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--read-only", *args, image, *command],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def python_volume_names() -> set[str]:
    volumes = docker.from_env(timeout=60).volumes.list(filters={"label": LABEL_PYTHON})
    return {volume.name for volume in volumes}


def test_the_volumes_hold_the_images_python_byte_for_byte(docker_image):
    mounts = on_engine(lambda engine: python_volumes(engine, docker_image, "python3"))
    assert set(PYTHON_DIRS) <= set(mounts)
    inside = inventory(docker_image, mounts)
    assert inside.count("\n") > 1000
    assert inside == inventory(docker_image, {})


def test_volumes_are_made_once_per_image_and_shared_by_concurrent_farms(docker_image):
    async def twice(engine):
        return await asyncio.gather(
            python_volumes(engine, docker_image, "python3"),
            python_volumes(engine, docker_image, "python3"),
        )

    first, second = on_engine(twice)
    assert first == second
    again = on_engine(lambda engine: python_volumes(engine, docker_image, "python3"))
    assert again == first
    key = next(iter(first.values())).rsplit("-", 2)[0]
    made = {name for name in python_volume_names() if name.startswith(key)}
    assert made == {key, *first.values()}  # the copies that lost the race are gone


@pytest.fixture
def changed_image(docker_image: str, tmp_path: Path) -> Iterator[str]:
    """The test image with one more module in its site-packages."""
    (tmp_path / "Dockerfile").write_text(
        f"FROM {docker_image}\n"
        "RUN echo 'WHERE = 1' > /usr/local/lib/python3.11/dist-packages/changed_mod.py\n"
    )
    tag = f"psyduck-test-changed:{uuid.uuid4().hex[:12]}"
    subprocess.run(
        ["docker", "build", "--network", "none", "--quiet", "--tag", tag, str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    yield tag
    subprocess.run(["docker", "image", "rm", "--force", tag], capture_output=True, timeout=120)


def test_a_changed_image_gets_its_own_volumes_and_the_reaper_removes_them_with_it(
    docker_image, changed_image
):
    base = on_engine(lambda engine: python_volumes(engine, docker_image, "python3"))
    changed = on_engine(lambda engine: python_volumes(engine, changed_image, "python3"))
    assert set(changed.values()).isdisjoint(base.values())
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none"]
        + [a for d, v in changed.items() for a in ("-v", f"{v}:{d}:ro")]
        + [docker_image, "python3", "-c", "import changed_mod; print(changed_mod.WHERE)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "1", done.stderr  # its files, even in the base image
    assert on_engine(reap_python_volumes) == []  # both images are there: nothing goes
    subprocess.run(["docker", "image", "rm", "--force", changed_image], check=True, timeout=120)
    removed = on_engine(reap_python_volumes)
    assert set(changed.values()) <= set(removed)
    assert set(base.values()).isdisjoint(removed)
    assert set(base.values()) <= python_volume_names()


#: Run inside the containers: the image's Python directories are read-only mounts of
#: their own, and a test writing there fails as it did on the read-only root.
SUITE = {
    "test_python.py": """
import errno, os, sys

def mounts():
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4]: line.split()[5] for line in f}

def test_the_images_python_is_mounted_read_only():
    found = mounts()
    for directory in ("/usr/lib/python3.11", "/usr/lib/python3/dist-packages"):
        assert found[directory].startswith("ro"), found.get(directory)
    assert os.path.dirname(os.__file__) == "/usr/lib/python3.11"

def test_writing_into_site_packages_fails_as_on_the_read_only_root():
    try:
        open("/usr/lib/python3/dist-packages/written.py", "w")
    except OSError as exc:
        assert exc.errno == errno.EROFS
    else:
        raise AssertionError("site-packages was writable")
""",
}


def test_docker_sessions_import_from_the_volumes(docker_image, suite):
    path = suite(SUITE)
    done = psyduck_session(path, "--psyduck-hosts", "docker:2", "--psyduck-image", docker_image)
    assert done.returncode == 0, done.output
    assert "2 passed" in done.output.splitlines()[-1], done.output


def test_ssh_sessions_import_from_volumes_on_their_engine(
    docker_image, suite, sshd, client_key, known_hosts
):
    server = sshd("127.0.0.2")
    known_hosts.write_text(server.known_hosts_line())
    path = suite(SUITE)
    done = psyduck_session(
        path,
        "--psyduck-hosts",
        server.spec(client_key, known_hosts, slots=2),
        "--psyduck-image",
        docker_image,
    )
    assert done.returncode == 0, done.output
    assert "2 passed" in done.output.splitlines()[-1], done.output


def test_results_match_plain_pytest_where_the_suite_reads_its_interpreter(docker_image, suite):
    """Tests that look at the interpreter's own files see what they see in the image."""
    code = (
        "import os, sysconfig, email\n"
        "def test_stdlib_is_where_sysconfig_says():\n"
        "    assert os.path.exists(os.path.join(sysconfig.get_paths()['stdlib'], 'os.py'))\n"
        "def test_modules_come_with_their_bytecode():\n"
        "    assert email.__spec__.cached and os.path.exists(email.__spec__.cached)\n"
        "def test_fails():\n    assert 0\n"
    )
    path = suite({"test_interp.py": code})
    plain = run_pytest(path, "-p", "no:cacheprovider")
    farm = psyduck_session(path, "--psyduck-hosts", "docker:2", "--psyduck-image", docker_image)
    assert plain.returncode == farm.returncode == 1, farm.output
    last = farm.output.strip().splitlines()[-1].split(" in ")[0].strip("= ")
    assert last == plain.stdout.strip().splitlines()[-1].split(" in ")[0].strip("= ")
