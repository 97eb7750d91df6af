"""Whether a huge run submission stalls a served farm's event loop for everyone else.

Run with plain Python from the repository root::

    python benchmarks/farm_loop.py [--tests 1000000] [--interval 0.05]

Starts a real ``psyduck farm serve`` (one local slot) in a process of its own,
then submits a manifest of ``--tests`` tests (ids of ~30 characters, a group
each hundred tests) while a thread asks ``/v1/health`` every ``--interval``
seconds.  A farm whose loop is blocked answers nothing meanwhile, so the
longest health wait during the submission is how long the farm was deaf to
every other client (their event streams, heartbeats and submissions too).
Prints ``name: value`` lines: the longest wait first, then the median, the
polls made, and the submission's own time and size.  The run is cancelled and
the farm stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm import http  # noqa: E402
from farm.manifest import RunManifest, TestSpec, WorkerSpec, manifest_to_wire  # noqa: E402
from farm.protocol import MAX_MESSAGE_BYTES, MSGPACK, decode, encode  # noqa: E402

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_manifest(count: int, cwd: str) -> RunManifest:
    """*count* tests in groups of a hundred, ids short enough that a million fit one request."""
    tests = tuple(
        TestSpec(id=f"t/m{i // 100}.py::t{i}", group=f"t/m{i // 100}.py") for i in range(count)
    )
    return RunManifest(tests=tests, worker=WorkerSpec(argv=("pytest_psyduck.workermain",), cwd=cwd))


def serve(directory: Path) -> tuple[str, subprocess.Popen]:
    """Start ``psyduck farm serve`` with one local slot and wait for its health check."""
    port = free_port()
    (directory / "token").write_text(TOKEN)
    config = directory / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{directory / "token"}"\n\n'
        '[[hosts]]\nurl = "local"\nslots = 1\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "farm", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/v1/health", timeout=1).close()
            return url, proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("the farm did not come up") from None
            time.sleep(0.05)


def poll_health(url: str, interval: float, stop: threading.Event, waits: list[float]) -> None:
    """Ask ``/v1/health`` until *stop*; each request's wall time goes to *waits*."""
    while not stop.is_set():
        started = time.perf_counter()
        urllib.request.urlopen(url + "/v1/health", timeout=600).close()
        waits.append(time.perf_counter() - started)
        stop.wait(interval)


async def submit(url: str, body: bytes) -> str:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MSGPACK, "Accept": MSGPACK}
    response = await http.request(
        "POST", url + "/v1/runs", headers=headers, body=body, timeout=600, max_bytes=1 << 20
    )
    reply = decode(response.body)
    if response.status != 201:
        raise SystemExit(f"the farm refused the run ({response.status}): {reply.get('message')}")
    await http.request(
        "POST",
        f"{url}/v1/runs/{reply['run']}/cancel",
        headers=headers,
        timeout=600,
        max_bytes=1 << 20,
    )
    return reply["run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=1_000_000)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        body = encode(manifest_to_wire(big_manifest(args.tests, tmp)))
        if len(body) > MAX_MESSAGE_BYTES:
            raise SystemExit(f"{len(body)} bytes exceed the farm's limit of {MAX_MESSAGE_BYTES}")
        url, proc = serve(Path(tmp))
        try:
            waits: list[float] = []
            stop = threading.Event()
            poller = threading.Thread(target=poll_health, args=(url, args.interval, stop, waits))
            poller.start()
            started = time.perf_counter()
            try:
                asyncio.run(submit(url, body))
            finally:
                submitted = time.perf_counter() - started
                stop.set()
                poller.join()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"health_max_wait_seconds: {max(waits):.3f}")
    print(f"health_median_wait_seconds: {statistics.median(waits):.4f}")
    print(f"health_polls: {len(waits)}")
    print(f"submit_seconds: {submitted:.2f}")
    print(f"body_bytes: {len(body)}")
    print(f"tests: {args.tests}")


if __name__ == "__main__":
    main()
