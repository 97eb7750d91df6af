"""How far a compact manifest encoding would take the request-size ceiling (a measurement).

Run with plain Python from the repository root::

    python benchmarks/manifest_compact.py [--tests 10000] [--transformations 100]

Builds the manifest ``pytest --psyduck`` sends for ``--tests`` tests (ids like
``tests/pkg/test_module_17.py::TestThing::test_case_42``, 50 per module, an
estimate each) times ``--transformations`` env-only transformations plus the
baseline, and encodes it three ways with msgpack:

* ``current``: one map per variant, as :func:`farm.manifest.manifest_to_wire`;
* ``prefixed``: per-module groups, each test as ``[name, estimate]`` (the id is
  module + ``::`` + name, the group is the module), variants still one each;
* ``indexed``: each test once, and the transformations it runs under as a
  list of indices into the run's transformation table (the farm would expand
  ``test[tNN]`` itself), with per-variant estimates only where they differ.

Prints ``name: value`` lines, ratios first (each against ``current``).
"""

from __future__ import annotations

import argparse
import time

import msgpack

from farm.manifest import RunManifest, TestSpec, WorkerSpec, manifest_to_wire
from farm.protocol import MAX_MESSAGE_BYTES, encode

PER_MODULE = 50


def specs(tests: int, transformations: int) -> list[TestSpec]:
    names = ["", *(f"t{i:02d}" for i in range(transformations))]
    out = []
    for t in range(tests):
        module = f"tests/pkg/test_module_{t // PER_MODULE}.py"
        base = f"{module}::TestThing::test_case_{t % PER_MODULE}"
        for name in names:
            out.append(
                TestSpec(
                    id=f"{base}[{name}]" if name else base,
                    group=module,
                    estimate=0.01 + (t % 97) / 100,
                )
            )
    return out


def prefixed(tests: list[TestSpec]) -> bytes:
    modules: dict[str, list[list]] = {}
    for test in tests:
        modules.setdefault(test.group, []).append(
            [test.id[len(test.group) + 2 :], round(test.estimate, 3)]
        )
    return msgpack.packb({"v": 1, "t": "run", "modules": modules}, use_bin_type=True)


def indexed(tests: int, transformations: int) -> bytes:
    modules: dict[str, list[list]] = {}
    every = list(range(transformations + 1))
    for t in range(tests):
        module = f"tests/pkg/test_module_{t // PER_MODULE}.py"
        # [name, estimate, transformation indices (0: baseline), per-variant estimates or nil]
        modules.setdefault(module, []).append(
            [f"TestThing::test_case_{t % PER_MODULE}", round(0.01 + (t % 97) / 100, 3), every, None]
        )
    table = ["", *(f"t{i:02d}" for i in range(transformations))]
    return msgpack.packb(
        {"v": 1, "t": "run", "transformations": table, "modules": modules}, use_bin_type=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10_000)
    parser.add_argument("--transformations", type=int, default=100)
    options = parser.parse_args()
    tests = specs(options.tests, options.transformations)
    worker = WorkerSpec(argv=("pytest_psyduck.workermain",), cwd="/src/proj", root="/src/proj")
    started = time.perf_counter()
    current = encode(manifest_to_wire(RunManifest(tests=tuple(tests), worker=worker)))
    current_s = time.perf_counter() - started
    started = time.perf_counter()
    by_module = prefixed(tests)
    prefixed_s = time.perf_counter() - started
    started = time.perf_counter()
    by_index = indexed(options.tests, options.transformations)
    indexed_s = time.perf_counter() - started
    variants = len(tests)
    print(f"prefixed_bytes_ratio: {len(by_module) / len(current):.3f}")
    print(f"indexed_bytes_ratio: {len(by_index) / len(current):.4f}")
    print(f"variants: {variants}")
    for name, size, seconds in (
        ("current", len(current), current_s),
        ("prefixed", len(by_module), prefixed_s),
        ("indexed", len(by_index), indexed_s),
    ):
        print(f"{name}_bytes: {size}")
        print(f"{name}_bytes_per_variant: {size / variants:.1f}")
        print(f"{name}_variants_under_limit: {int(MAX_MESSAGE_BYTES / (size / variants))}")
        print(f"{name}_encode_seconds: {seconds:.2f}")


if __name__ == "__main__":
    main()
