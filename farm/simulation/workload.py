"""The simulated farm and test suite: what ``psyduck simulate``'s options describe.

A suite is *tests* test functions in files of :data:`TESTS_PER_FILE`, each run
in *variants* variants.  A test's true duration is lognormal (most tests take
a fraction of a second, a few take minutes); its variants vary by ±10% around
it.  What the scheduler is told is that duration times lognormal noise, or
nothing for an untimed test.  Heavy tests ask for CPUs and memory (and last
longer: they do more); long ones last one to two hours.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass

from farm.manifest import TestSpec

TESTS_PER_FILE = 10
#: Median and lognormal sigma of an ordinary test's true duration, in seconds.
MEDIAN_SECONDS = 0.3
SIGMA = 1.2
#: Ordinary tests are cut off here (a suite's slow tests, not its hours-long ones).
LONGEST_ORDINARY = 600.0
#: How much longer than an ordinary test a heavy one lasts, typically.
HEAVY_FACTOR = 10.0

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in *text*: ``64G``, ``16GiB``, ``512M``, ``1073741824``.  Binary units."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (expected e.g. 64G, 512MiB or a number of bytes)")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


@dataclass(frozen=True)
class Options:
    hosts: int = 4
    slots: int = 4
    cpus: float = 4.0
    memory: int = 16 << 30
    tests: int = 200
    variants: int = 1
    noise: float = 0.2
    heavy: float = 0.0
    heavy_cpus: float = 2.0
    heavy_memory: int = 4 << 30
    long: float = 0.0
    small_run: int = 0
    #: Variants of each of the small run's tests (a developer's run beside the big one).
    small_variants: int = 1
    unknown: float = 0.0
    host_failures: int = 0
    seed: int = 0
    #: The hosts' shortest worthwhile shard (Docker hosts ask for 1 s).
    min_shard_seconds: float = 1.0

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        for name in ("hosts", "slots", "tests", "variants", "small_variants"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        for name in ("heavy", "long", "unknown"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} is a fraction, between 0 and 1")
        if self.cpus <= 0 or self.memory <= 0 or self.noise < 0:
            raise ValueError("--cpus and --memory must be positive, --noise not negative")
        if self.heavy and (self.heavy_cpus > self.cpus or self.heavy_memory > self.memory):
            raise ValueError("heavy tests would need more than a host has (--heavy-cpus/-memory)")
        if self.small_run < 0 or self.host_failures < 0:
            raise ValueError("--small-run and --host-failures must not be negative")


@dataclass
class Suite:
    """Tests in manifest order, with their true durations by id."""

    tests: list[TestSpec]
    durations: dict[str, float]


def generate(options: Options, rng: random.Random, prefix: str, count: int, variants: int) -> Suite:
    """*count* test functions of *options*' kind, each in *variants* variants.

    What the scheduler is told comes from a generator of its own, so that the
    same seed gives the same true durations whatever ``--noise`` and ``--unknown``.
    """
    told = random.Random(rng.random())
    tests: list[TestSpec] = []
    durations: dict[str, float] = {}
    for index in range(count):
        heavy = rng.random() < options.heavy
        if rng.random() < options.long:
            base = rng.uniform(3600.0, 7200.0)
        else:
            base = min(rng.lognormvariate(math.log(MEDIAN_SECONDS), SIGMA), LONGEST_ORDINARY)
            base *= HEAVY_FACTOR if heavy else 1.0
        timed = told.random() >= options.unknown
        group = f"{prefix}/test_{index // TESTS_PER_FILE}.py"
        for variant in range(variants):
            test_id = f"{group}::test_{index}[v{variant}]"
            true = base * rng.uniform(0.9, 1.1)
            durations[test_id] = true
            tests.append(
                TestSpec(
                    id=test_id,
                    group=group,
                    estimate=true * told.lognormvariate(0.0, options.noise) if timed else 0.0,
                    cpus=options.heavy_cpus if heavy else None,
                    memory=options.heavy_memory if heavy else None,
                )
            )
    return Suite(tests, durations)


def need(test: TestSpec, options: Options) -> tuple[float, int]:
    """CPUs and memory a test occupies: its hints, else a slot's share of its host."""
    return (
        test.cpus or options.cpus / options.slots,
        test.memory or options.memory // options.slots,
    )


def bounds(suites: list[Suite], options: Options) -> tuple[float, float]:
    """The longest test, and the work ÷ capacity for slots, CPUs and memory (the largest).

    No schedule ends before either: their maximum is the lower bound.
    """
    longest = slot_work = cpu_work = memory_work = 0.0
    for suite in suites:
        for test in suite.tests:
            seconds = suite.durations[test.id]
            cpus, memory = need(test, options)
            longest = max(longest, seconds)
            slot_work += seconds
            cpu_work += seconds * cpus
            memory_work += seconds * memory
    return longest, max(
        slot_work / (options.hosts * options.slots),
        cpu_work / (options.hosts * options.cpus),
        memory_work / (options.hosts * options.memory),
    )


def remembered(suite: Suite, rng: random.Random, noise: float) -> Suite:
    """*suite* as the farm submits it the next time: its untimed tests have history now.

    The farm recorded each result's duration in its database
    (:mod:`farm.history`), so an estimate the client lacks is what the last run
    measured, and a run's durations differ from the last one's like any
    estimate's: by lognormal *noise*.
    """
    tests = [
        t
        if t.estimate > 0
        else dataclasses.replace(t, estimate=suite.durations[t.id] * rng.lognormvariate(0, noise))
        for t in suite.tests
    ]
    return Suite(tests, suite.durations)
