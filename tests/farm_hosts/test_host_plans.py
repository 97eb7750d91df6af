"""The pure parts of docker and ssh hosts: container plans, limits, stream framing, specs."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.hosts import HOST_KINDS, HostSpecError, parse_hosts
from farm.hosts.base import RunContext
from farm.hosts.containers import (
    CPU_PERIOD,
    FARM_ID,
    INJECT_DIR,
    SOURCE_DIR,
    farm_identity,
    host_share,
    owner_is_gone,
    plan_container,
    shard_limits,
    update_fields,
)
from farm.hosts.docker import DockerHost, StreamDemux, exit_info, payload_tar
from farm.hosts.docker.volumes import volume_name
from farm.hosts.ssh import parse_ssh_spec
from farm.manifest import RunManifest, TestSpec, WorkerSpec


def run_context(network: bool = False, tests: tuple[TestSpec, ...] = ()) -> RunContext:
    manifest = RunManifest(
        tests=tests or (TestSpec(id="t.py::a", group="t.py"),),
        worker=WorkerSpec(
            argv=("pytest_psyduck.workermain", "-q"), cwd="/src/proj/tests", root="/src/proj"
        ),
        network=network,
    )
    return RunContext("run1", manifest, workers=4)


def plan(
    copy_code: bool = True,
    network: bool = False,
    code_dir: str = "/cache/tree",
    inject_volume: str | None = None,
):
    return plan_container(
        run_context(network),
        "gw3",
        host="docker",
        slot=1,
        image="img",
        python="python3",
        code_dir=code_dir,
        code_root="/src/proj",
        copy_code=copy_code,
        user="1000:1000",
        limits=shard_limits([], memory_share=1 << 30, cpu_share=1.0),
        module_dirs={"farm": "/site/farm"},
        inject_volume=inject_volume,
    )


def test_containers_are_locked_down_by_default():
    config = plan().host_config
    assert config["cap_drop"] == ["ALL"]
    assert config["security_opt"] == ["no-new-privileges"]
    assert config["privileged"] is False
    assert config["read_only"] is True
    assert config["network_mode"] == "none"
    assert config["auto_remove"] is True
    assert config["mem_limit"] == config["memswap_limit"] == 1 << 30
    assert config["pids_limit"] > 0
    assert not any("docker.sock" in path for path in config["binds"])
    assert all(bind["mode"] == "ro" for bind in config["binds"].values())


def test_remote_plans_mount_volumes_where_the_binds_would_be():
    binds = plan(code_dir="psyduck-code-x", inject_volume="psyduck-inject-y").host_config["binds"]
    assert binds == {
        "psyduck-inject-y": {"bind": INJECT_DIR, "mode": "ro"},
        "psyduck-code-x": {"bind": SOURCE_DIR, "mode": "ro"},
    }


def test_payload_tar_keeps_code_and_bytecode_and_leaves_caches_out(tmp_path):
    import tarfile

    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".pytest_cache").mkdir()
    os.utime(tmp_path / "pkg" / "mod.py", (1_000_000_000, 1_000_000_000))
    with payload_tar({".": str(tmp_path)}) as archive, tarfile.open(fileobj=archive) as tar:
        names = {os.path.normpath(n) for n in tar.getnames()}
        # A pyc is valid only for its source's mtime: the tar keeps it.
        assert tar.getmember("./pkg/mod.py").mtime == 1_000_000_000
    assert names == {".", "pkg", "pkg/mod.py", "pkg/__pycache__", "pkg/__pycache__/mod.pyc"}


def test_network_only_when_the_run_asks():
    assert plan(network=True).host_config["network_mode"] == "bridge"


def test_copy_mode_mounts_code_read_only_and_copies_it_into_a_private_tmpfs():
    p = plan(copy_code=True)
    assert p.host_config["binds"]["/cache/tree"] == {"bind": SOURCE_DIR, "mode": "ro"}
    assert "/src/proj" in p.host_config["tmpfs"]
    assert p.environment["PSYDUCK_CODE_ROOT"] == "/src/proj"
    assert p.working_dir == "/src/proj/tests"


def test_read_only_mode_mounts_code_at_the_client_path():
    p = plan(copy_code=False)
    assert p.host_config["binds"]["/cache/tree"] == {"bind": "/src/proj", "mode": "ro"}
    assert "/src/proj" not in p.host_config["tmpfs"]


def test_workers_get_xdist_variables_psyduck_code_and_labels():
    p = plan()
    assert p.environment["PYTEST_XDIST_WORKER"] == "gw3"
    assert p.environment["PYTEST_XDIST_WORKER_COUNT"] == "4"
    assert p.environment["PYTHONPATH"] == "/opt/psyduck"
    assert p.host_config["binds"]["/site/farm"] == {"bind": "/opt/psyduck/farm", "mode": "ro"}
    # Copy mode: the code is copied, then the worker's interpreter starts.
    assert p.command[:3] == ["python3", "-S", "-c"]
    assert p.command[5:7] == ["pytest_psyduck.workermain", "-q"]
    read_only = plan(copy_code=False)
    assert read_only.command[:2] == ["python3", "-c"]
    assert read_only.command[3:5] == ["pytest_psyduck.workermain", "-q"]
    assert p.labels == {
        "psyduck.farm": FARM_ID,
        "psyduck.run": "run1",
        "psyduck.worker": "gw3",
        "psyduck.slot": "1",
        "psyduck.host": "docker",
    }


def test_limits_come_from_hints_else_the_host_share():
    hinted = [
        TestSpec(id="a", group="g", memory=64 << 20, cpus=2.0),
        TestSpec(id="b", group="g", memory=32 << 20),
    ]
    limits = shard_limits(hinted, memory_share=1 << 30, cpu_share=0.5)
    assert limits.memory == 64 << 20
    assert limits.cpu_quota == 2 * CPU_PERIOD
    assert limits.cpu_shares == 2048
    default = shard_limits([TestSpec(id="c", group="g")], memory_share=1 << 30, cpu_share=0.5)
    assert default.memory == 1 << 30 and default.cpu_quota is None and default.cpu_shares == 512
    assert shard_limits([], memory_share=1 << 30, cpu_share=0.5) == default


def test_a_slots_share_divides_the_hosts_totals_whoever_gives_them():
    """farm.toml's ``memory`` and ``cpus`` are the host's totals, as the engine's are."""
    assert host_share(64 << 30, 16, 4) == (16 << 30, 4.0)
    assert host_share(1 << 30, 2, 0) == (1 << 30, 2.0)


def test_a_running_container_is_updated_to_exactly_its_shards_limits():
    """Narrowing sets every field; widening back lifts the quota (-1) instead of leaving it."""
    hinted = shard_limits(
        [TestSpec(id="a", group="g", memory=64 << 20, cpus=0.5)], memory_share=1 << 30, cpu_share=1
    )
    assert update_fields(hinted) == {
        "mem_limit": 64 << 20,
        "memswap_limit": 64 << 20,
        "cpu_shares": 512,
        "cpu_period": CPU_PERIOD,
        "cpu_quota": CPU_PERIOD // 2,
    }
    share = update_fields(shard_limits([], memory_share=1 << 30, cpu_share=1))
    assert share["mem_limit"] == share["memswap_limit"] == 1 << 30
    assert share["cpu_quota"] == -1 and share["cpu_shares"] == 1024


def test_a_plan_sets_a_quota_only_for_cpu_hints():
    config = plan().host_config
    assert config["cpu_quota"] is None and config["cpu_period"] is None
    assert "nano_cpus" not in config


def test_exit_codes_above_128_are_signals():
    assert exit_info(137, oom=True, memory_limit=5).signal == 9
    assert exit_info(137, oom=True, memory_limit=5).oom_killed
    assert exit_info(3, oom=False, memory_limit=5).status == 3


@given(
    st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=20),
    st.integers(min_value=1, max_value=64),
)
def test_stream_demux_reassembles_chunks_however_split(chunks, step):
    wire = b"".join(struct.pack(">BxxxL", kind, len(data)) + data for kind, data in chunks)
    demux = StreamDemux()
    out = []
    for i in range(0, len(wire), step):
        out.extend(demux.feed(wire[i : i + step]))
    assert out == chunks


def test_only_local_dead_owners_are_gone():
    assert not owner_is_gone(FARM_ID)
    assert owner_is_gone(f"{socket.gethostname()}:999999999:1")
    assert owner_is_gone(f"{socket.gethostname()}:1:not-its-start-time")
    assert not owner_is_gone(farm_identity(1))
    assert not owner_is_gone("another-machine:1:1")


def test_ssh_specs():
    target, slots = parse_ssh_spec(
        "ssh://ci@build-7:2222?slots=8&key=~/.ssh/farm&known_hosts=/etc/kh&accept_new_host_keys=1"
    )
    assert (target.user, target.host, target.port, slots) == ("ci", "build-7", 2222, 8)
    assert target.key_file == "~/.ssh/farm" and target.known_hosts == "/etc/kh"
    assert target.accept_new_host_keys
    target, slots = parse_ssh_spec("ssh://build-7")
    assert (target.port, slots, target.accept_new_host_keys) == (22, None, False)


@pytest.mark.parametrize(
    "spec",
    [
        "ssh://ci@host?slots=0",
        "ssh://ci@host?colour=red",
        "ssh://",
        "docker:x",
        "docker:0",
        "docker:2?colour=red",
        "docker:2?container_scope=forever",
    ],
)
def test_bad_host_specs_are_explained(spec):
    with pytest.raises(HostSpecError):
        parse_hosts(spec)


def test_host_specs_build_docker_hosts_without_connecting():
    docker, ssh = parse_hosts("docker:3,ssh://ci@127.0.0.9:2200?slots=2")
    assert (docker.name, docker.slots, docker.reuse_workers) == ("docker", 3, False)
    assert (ssh.name, ssh.slots, ssh.labels["kind"]) == ("ssh:ci@127.0.0.9:2200", 2, "ssh")


def test_a_container_per_shard_unless_the_host_opts_into_one_per_run():
    shard, run, ssh = parse_hosts(
        "docker:2,docker:2?container_scope=run,ssh://ci@h?slots=2&container_scope=run"
    )
    assert (shard.container_scope, shard.reuse_workers, shard.min_shard_seconds) == (
        "shard",
        False,
        DockerHost.min_shard_seconds,
    )
    for host in (run, ssh):
        assert (host.container_scope, host.reuse_workers, host.min_shard_seconds) == (
            "run",
            True,
            0.0,
        )
    # farm.toml's field wins over the spec's parameter, as for every ssh option.
    [host] = [HOST_KINDS["ssh"]("ssh://ci@h?container_scope=run", {"container_scope": "shard"})]
    assert not host.reuse_workers


def test_only_a_single_shard_container_collects_only_its_shard():
    assert plan().environment["PSYDUCK_SHARD_COLLECTION"] == "1"
    run_scoped = plan_container(
        run_context(False),
        "gw3",
        host="docker",
        slot=1,
        image="img",
        python="python3",
        code_dir="/cache/tree",
        code_root="/src/proj",
        copy_code=True,
        user="1000:1000",
        limits=shard_limits([], memory_share=1 << 30, cpu_share=1.0),
        module_dirs={"farm": "/site/farm"},
        scope="run",
    )
    assert "PSYDUCK_SHARD_COLLECTION" not in run_scoped.environment


def test_farm_toml_fields_reach_the_host():
    host = HOST_KINDS["docker"]("docker:1", {"image": "img", "memory": "2G", "copy_code": False})
    assert (host.image, host._memory, host.copy_code) == ("img", 2 << 30, False)
    with pytest.raises(HostSpecError, match="unknown host option 'colour'"):
        HOST_KINDS["docker"]("docker:1", {"colour": "red"})
    host = HOST_KINDS["ssh"]("ssh://ci@h", {"key": os.devnull, "accept_new_host_keys": True})
    assert host.name == "ssh:ci@h:22"


def test_the_scratch_cache_only_when_the_cache_provider_is_on():
    from farm.hosts.containers import scratch_cache_args

    assert scratch_cache_args(["-x"]) == ["-o", "cache_dir=/tmp/.pytest_cache"]
    assert scratch_cache_args(["-p", "no:cacheprovider", "-x"]) == []
    assert scratch_cache_args(["-pno:cacheprovider"]) == []


@given(
    kind=st.sampled_from(["code", "inject"]),
    key=st.text(),
    hosts=st.lists(st.text(), min_size=2, max_size=4, unique=True),
)
def test_hosts_sharing_an_engine_never_share_a_payload_volume(kind, key, hosts):
    """Two ssh hosts may reach one engine; each fills and removes only its own volumes."""
    names = {volume_name(kind, key, host) for host in hosts}
    assert len(names) == len(hosts)
    assert all(name.startswith(f"psyduck-{kind}-") for name in names)
