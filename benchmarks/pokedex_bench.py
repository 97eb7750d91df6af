"""Pokedex benchmarks against the competitors, measured in the same run.

    python benchmarks/pokedex_bench.py                  # everything, full size (1 GiB)
    python benchmarks/pokedex_bench.py --quick          # smoke run: small sizes, seconds
    python benchmarks/pokedex_bench.py --only get,put --size 256

Cases (``--size`` MiB is the blob / tree size; the image case uses ``--image-size``):

* get:    GET of one blob, pokedex (sendfile) vs nginx serving the same file; client curl.
* put:    PUT with digest verification + fsync vs ``dd bs=4M conv=fsync`` of the same bytes.
* image:  docker push + pull of the same image, pokedex vs Debian's docker-registry.
* fanout: N hosts (``pokedex pull-tree --swarm`` processes) pulling the same tree at once;
          origin bytes served ÷ payload, wall time relative to one host alone; plus the same
          N hosts without the swarm as the competitor.

Output: ``name: value`` lines, ratios first (``*_ratio`` > 1 means pokedex is faster, except
``fanout_origin_bytes_ratio`` which is origin egress ÷ payload, lower is better).
All servers listen on 127.0.0.1 and run as child processes in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from pokedex import digest as dg

TOKEN = "bench-token"
RESULTS: dict[str, float] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


@contextlib.contextmanager
def child(cmd: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server as a child process, stopped (and waited for) on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def pokedex_node(tmp: Path, name: str = "node") -> Iterator[str]:
    port = free_port()
    data = tmp / name
    data.mkdir()
    token_file = tmp / f"{name}.token"
    token_file.write_text(TOKEN)
    cmd = [
        sys.executable,
        "-m",
        "pokedex.cli",
        "serve",
        "--data",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token_file),
        "--repair-interval",
        "0",
    ]
    with child(cmd, port, tmp / f"{name}.log"):
        yield f"http://127.0.0.1:{port}"


def node_status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/status", timeout=30) as r:
        return json.load(r)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(*cmd: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, env=env, timeout=3600)
    if r.returncode:
        raise RuntimeError(f"{cmd} failed: {r.stderr.decode()[-2000:]}")
    return r.stdout.decode()


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


def client_env(url: str) -> dict[str, str]:
    return {**os.environ, "POKEDEX_URL": url, "POKEDEX_TOKEN": TOKEN}


def best_of(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


# -- GET vs nginx -----------------------------------------------------------------------------


NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def curl_get(url: str) -> float:
    out = run("curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_total}", url)
    return float(out)


def bench_get(tmp: Path, size: int, rounds: int) -> None:
    if not shutil.which("nginx"):
        print("get: skipped (nginx not installed)", file=sys.stderr)
        return
    src = tmp / "get.bin"
    random_file(src, size)
    with pokedex_node(tmp, "get-node") as url:
        d = run("pokedex", "put", str(src), env=client_env(url)).strip()
        src.unlink()
        blob = tmp / "get-node" / "blobs" / "sha256" / d[7:9] / d[7:]
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=blob.parent))
        nginx_cmd = ["nginx", "-c", str(conf), "-p", str(tmp)]
        with child(nginx_cmd, port, tmp / "nginx.log"):
            ours, theirs = f"{url}/blobs/{d}", f"http://127.0.0.1:{port}/{d[7:]}"
            curl_get(ours), curl_get(theirs)  # warm the page cache and both servers
            t_pokedex, t_nginx = [], []
            # Sub-second runs: more of them, and medians. Interleaved so that both servers
            # see the same machine state.
            for _ in range(2 * rounds + 1):
                t_pokedex.append(curl_get(ours))
                t_nginx.append(curl_get(theirs))
    RESULTS["get_vs_nginx_ratio"] = statistics.median(t_nginx) / statistics.median(t_pokedex)
    RESULTS["get_vs_nginx_best_ratio"] = min(t_nginx) / min(t_pokedex)
    RESULTS["get_pokedex_MBps"] = size / statistics.median(t_pokedex) / 1e6
    RESULTS["get_nginx_MBps"] = size / statistics.median(t_nginx) / 1e6


# -- PUT vs dd --------------------------------------------------------------------------------


def bench_put(tmp: Path, size: int, rounds: int) -> None:
    src = tmp / "put.bin"
    random_file(src, size)
    d = dg.of_file(str(src))
    with pokedex_node(tmp, "put-node") as url:
        blob = tmp / "put-node" / "blobs" / "sha256" / d[7:9] / d[7:]

        def put() -> float:
            blob.unlink(missing_ok=True)
            t = float(
                run(
                    "curl",
                    "-sS",
                    "-f",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{time_total}",
                    "-H",
                    f"Authorization: Bearer {TOKEN}",
                    "-T",
                    str(src),
                    f"{url}/blobs/{d}",
                )
            )
            assert blob.is_file()
            return t

        def dd() -> float:
            target = tmp / "dd.out"
            target.unlink(missing_ok=True)
            t = timed(
                lambda: run("dd", f"if={src}", f"of={target}", "bs=4M", "conv=fsync", "status=none")
            )
            target.unlink()
            return t

        put()  # warm-up; the source file is in the page cache for both from here on
        t_put, t_dd = [], []
        for _ in range(rounds):
            t_put.append(put())
            t_dd.append(dd())
    RESULTS["put_vs_dd_ratio"] = statistics.median(t_dd) / statistics.median(t_put)
    RESULTS["put_pokedex_MBps"] = size / statistics.median(t_put) / 1e6
    RESULTS["put_dd_MBps"] = size / statistics.median(t_dd) / 1e6


# -- docker push/pull vs docker-registry ------------------------------------------------------


REGISTRY_CONF = """version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def make_image(tmp: Path, size: int) -> Path:
    """A saved image (docker save tar) with ``size`` bytes of random files in one layer."""
    rootfs = tmp / "rootfs"
    rootfs.mkdir()
    pieces = 6
    for i in range(pieces):
        random_file(rootfs / f"blob{i}.bin", size // pieces)
    tar = tmp / "rootfs.tar"
    run("tar", "-C", str(rootfs), "-cf", str(tar), ".")
    shutil.rmtree(rootfs)
    ref = f"pokedex-bench/image:{os.getpid()}"
    run("docker", "import", str(tar), ref)
    tar.unlink()
    saved = tmp / "image.tar"
    run("docker", "save", "-o", str(saved), ref)
    run("docker", "rmi", ref)
    return saved


def push_pull(saved: Path, registry: str, config: Path) -> tuple[float, float]:
    """Load the image, time ``docker push`` to ``registry``, drop it, time ``docker pull``."""
    loaded = run("docker", "load", "-i", str(saved)).strip().rsplit(" ", 1)[-1]
    ref = f"{registry}/bench/image:v1"
    run("docker", "tag", loaded, ref)
    docker = ["docker", "--config", str(config)]
    try:
        t_push = timed(lambda: run(*docker, "push", ref))
        run("docker", "rmi", ref, loaded)
        t_pull = timed(lambda: run(*docker, "pull", ref))
    finally:
        subprocess.run(["docker", "rmi", "-f", ref, loaded], capture_output=True)
    return t_push, t_pull


def bench_image(tmp: Path, size: int, rounds: int) -> None:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True).returncode
    ):
        print("image: skipped (no docker engine)", file=sys.stderr)
        return
    if not shutil.which("docker-registry"):
        print("image: skipped (docker-registry not installed)", file=sys.stderr)
        return
    saved = make_image(tmp, size)
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    for i in range(rounds):
        # Fresh, empty registries each round so every push really uploads.
        config = tmp / f"docker-config{i}"
        config.mkdir()
        with pokedex_node(tmp, f"img-node{i}") as url:
            registry = url.removeprefix("http://")
            login = ["docker", "--config", str(config), "login", "-u", "bench", "--password-stdin"]
            subprocess.run(
                [*login, registry], input=TOKEN.encode(), capture_output=True, check=True
            )
            ours.append(push_pull(saved, registry, config))
        port = free_port()
        conf = tmp / f"registry{i}.yml"
        conf.write_text(REGISTRY_CONF.format(root=tmp / f"registry-data{i}", port=port))
        with child(["docker-registry", "serve", str(conf)], port, tmp / "registry.log"):
            theirs.append(push_pull(saved, f"127.0.0.1:{port}", config))
    push_o, pull_o = min(p for p, _ in ours), min(p for _, p in ours)
    push_t, pull_t = min(p for p, _ in theirs), min(p for _, p in theirs)
    RESULTS["image_push_vs_registry_ratio"] = push_t / push_o
    RESULTS["image_pull_vs_registry_ratio"] = pull_t / pull_o
    RESULTS["image_push_pokedex_s"] = push_o
    RESULTS["image_push_registry_s"] = push_t
    RESULTS["image_pull_pokedex_s"] = pull_o
    RESULTS["image_pull_registry_s"] = pull_t


# -- fan-out ----------------------------------------------------------------------------------


def bench_fanout(tmp: Path, size: int, hosts: int) -> None:
    tree = tmp / "tree"
    tree.mkdir()
    files = max(1, min(8, size // (8 << 20)))  # big enough pieces for the swarm to chunk
    for i in range(files):
        random_file(tree / f"part{i}.bin", size // files)
    payload = sum(f.stat().st_size for f in tree.iterdir())
    with pokedex_node(tmp, "origin") as url:
        env = client_env(url)
        digest = run("pokedex", "push-tree", str(tree), env=env).strip()
        shutil.rmtree(tree)

        def pull_all(n: int, swarm: bool) -> tuple[float, float]:
            work = tmp / f"hosts-{n}-{swarm}"
            before = node_status(url)["bytes_served"]
            cmds = []
            for h in range(n):
                cmd = [
                    "pokedex",
                    "pull-tree",
                    digest,
                    str(work / f"out{h}"),
                    "--cache",
                    str(work / f"cache{h}"),
                    "--link",
                ]
                cmds.append(cmd + (["--swarm", "127.0.0.1"] if swarm else []))
            t = time.perf_counter()
            procs = [subprocess.Popen(c, env=env) for c in cmds]
            codes = [p.wait() for p in procs]
            elapsed = time.perf_counter() - t
            if any(codes):
                raise RuntimeError(f"pull-tree failed: {codes}")
            served = node_status(url)["bytes_served"] - before
            shutil.rmtree(work)
            return elapsed, served / payload

        t_single, _ = pull_all(1, swarm=False)
        t_swarm, origin_swarm = pull_all(hosts, swarm=True)
        t_plain, origin_plain = pull_all(hosts, swarm=False)
    RESULTS[f"fanout_{hosts}_hosts_origin_bytes_ratio"] = origin_swarm
    RESULTS[f"fanout_{hosts}_hosts_wall_vs_single_ratio"] = t_swarm / t_single
    RESULTS[f"fanout_{hosts}_hosts_no_swarm_origin_bytes_ratio"] = origin_plain
    RESULTS[f"fanout_{hosts}_hosts_no_swarm_wall_vs_single_ratio"] = t_plain / t_single
    RESULTS["fanout_single_host_s"] = t_single
    RESULTS[f"fanout_{hosts}_hosts_swarm_s"] = t_swarm
    RESULTS[f"fanout_{hosts}_hosts_no_swarm_s"] = t_plain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024, help="MiB per blob/tree (default 1024)")
    p.add_argument("--image-size", type=int, default=300, help="MiB of image content")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="get,put,image,fanout")
    p.add_argument("--quick", action="store_true", help="16 MiB, 1 round, 3 hosts")
    args = p.parse_args()
    if args.quick:
        args.size, args.image_size, args.rounds, args.hosts = 16, 8, 1, 3
    size = args.size << 20
    cases = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="pokedex-bench-", dir="/var/tmp") as t:
        tmp = Path(t)
        if "get" in cases:
            bench_get(tmp, size, args.rounds)
        if "put" in cases:
            bench_put(tmp, size, args.rounds)
        if "image" in cases:
            bench_image(tmp, args.image_size << 20, max(1, args.rounds - 1))
        if "fanout" in cases:
            bench_fanout(tmp, size, args.hosts)
    for name in sorted(RESULTS, key=lambda k: (not k.endswith("_ratio"), k)):
        print(f"{name}: {RESULTS[name]:.3f}")


if __name__ == "__main__":
    main()
