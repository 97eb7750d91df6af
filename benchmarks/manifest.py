"""What a large run manifest costs on the wire: size, and time from specs to a parsed manifest.

Run with plain Python from the repository root::

    python benchmarks/manifest.py [--tests 100000] [--id-length 80] [--repeat 3]

Builds ``--tests`` test specs with ids of about ``--id-length`` characters (a
group each hundred tests, an estimate each), then times the four steps a
submission takes: the client's ``manifest_to_wire`` and msgpack encoding, the
farm's decoding and validation (``parse_manifest``).  Best of ``--repeat``.
Prints ``name: value`` lines, ratios first: how many such tests fit in one
request under the farm's message size limit, against ``MAX_TESTS``.
"""

from __future__ import annotations

import argparse
import time

from farm.manifest import (
    MAX_TESTS,
    RunManifest,
    TestSpec,
    WorkerSpec,
    manifest_to_wire,
    parse_manifest,
)
from farm.protocol import MAX_MESSAGE_BYTES, decode, encode


def make_manifest(count: int, id_length: int) -> RunManifest:
    tests = []
    for i in range(count):
        group = f"tests/test_module_{i // 100}.py"
        test_id = f"{group}::test_{i}".ljust(id_length, "_")
        tests.append(TestSpec(id=test_id, group=group, estimate=0.01 + i * 1e-7))
    worker = WorkerSpec(argv=("pytest_psyduck.workermain",), cwd="/")
    return RunManifest(tests=tuple(tests), worker=worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=100_000)
    parser.add_argument("--id-length", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    manifest = make_manifest(args.tests, args.id_length)
    steps = dict.fromkeys(("to_wire", "encode", "decode", "parse"), float("inf"))
    size = 0
    for _ in range(args.repeat):
        started = time.perf_counter()
        wire = manifest_to_wire(manifest)
        built = time.perf_counter()
        body = encode(wire)
        encoded = time.perf_counter()
        decoded = decode(body, max_bytes=len(body))
        unpacked = time.perf_counter()
        parsed = parse_manifest(decoded)
        done = time.perf_counter()
        assert parsed == manifest
        size = len(body)
        for name, seconds in zip(
            steps,
            (built - started, encoded - built, unpacked - encoded, done - unpacked),
            strict=True,
        ):
            steps[name] = min(steps[name], seconds)
    per_test = size / args.tests
    fits = int(MAX_MESSAGE_BYTES / per_test)
    print(f"tests_within_size_limit_vs_max_tests: {fits / MAX_TESTS:.2f}")
    print(f"bytes_per_test: {per_test:.0f}")
    print(f"tests_within_size_limit: {fits}")
    for name, seconds in steps.items():
        print(f"{name}_seconds: {seconds:.3f}")
    print(f"microseconds_per_test: {1e6 * sum(steps.values()) / args.tests:.1f}")


if __name__ == "__main__":
    main()
