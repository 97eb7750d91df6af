"""The run manifest: what a client asks the farm to run, and its validation.

A manifest names tests by opaque ids (pytest node ids, but the farm never
interprets them), groups them (tests of one group share expensive fixtures, so
the scheduler keeps them together when it can), gives each an expected
duration, and says how to start a worker.  :func:`parse_manifest` turns an
untrusted decoded message into frozen dataclasses or raises
:class:`ManifestError` naming the first offending field.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.protocol import ProtocolError

#: Upper bound on tests in one run; well above any real suite multiplied by
#: its transformations, low enough that a bogus manifest cannot exhaust memory.
MAX_TESTS = 2_000_000
MAX_ID_LENGTH = 4096
#: A top-level package a worker may ask to have injected.
PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


class ManifestError(ProtocolError):
    """The manifest is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class TestSpec:
    """One test to run.  ``requires`` must match a host's labels.

    Slotted: a run holds one per test, a million of them for a large matrix.
    """

    __test__ = False  # not a pytest test class, despite its name

    id: str
    group: str
    estimate: float = 0.0
    timeout: float | None = None
    requires: Mapping[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory: int | None = None
    #: Name of the worker profile (extra worker arguments) this test needs; "" is the base worker.
    profile: str = ""
    #: The test's whole *group* runs as one shard on one worker, in manifest order
    #: (``xdist_group`` marks, ``--psyduck-dist loadfile``): its tests depend on each
    #: other's order or state, so the scheduler never splits it.
    pinned: bool = False
    #: Dispatch before every test without the flag (``--ff``'s previous failures).
    first: bool = False


@dataclass(frozen=True)
class WorkerSpec:
    """How a host starts a worker: ``python -m <argv…>`` in *cwd* with *env* added.

    *root* is the client's project directory that holds *cwd*: the directory a
    run's snapshot contains, and where hosts put the code (containers mount it
    at the same path, so node ids and absolute arguments stay valid).

    *env* is what the client passes of its own environment (every worker gets it);
    *inject* names the packages a worker imports that a test image need not have,
    each with its directory on the client's machine.  The farm never imports them:
    a host that shares the client's disk (the embedded farm's) mounts those
    directories into containers, any other its own installation of each name.
    """

    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    root: str = ""
    inject: Mapping[str, str] = field(default_factory=dict)

    @property
    def project_root(self) -> str:
        return self.root or self.cwd


@dataclass(frozen=True)
class RunManifest:
    tests: tuple[TestSpec, ...]
    worker: WorkerSpec
    name: str = ""
    image: str | None = None
    snapshot: str | None = None
    network: bool = False
    #: profile name → extra pytest arguments for workers of that profile.
    profiles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def worker_argv(self, profile: str) -> tuple[str, ...]:
        return (*self.worker.argv, *self.profiles.get(profile, ()))


def manifest_to_wire(manifest: RunManifest) -> dict[str, Any]:
    """The message a client sends to create a run (``worker.inject`` only when it names some)."""
    wire = {
        "t": "run",
        "name": manifest.name,
        "image": manifest.image,
        "snapshot": manifest.snapshot,
        "network": manifest.network,
        "profiles": {name: list(args) for name, args in manifest.profiles.items()},
        "worker": {
            "argv": list(manifest.worker.argv),
            "cwd": manifest.worker.cwd,
            "env": dict(manifest.worker.env),
            "root": manifest.worker.root,
        },
    }
    wire["tests"], kinds = _tests_to_wire(manifest.tests)
    if kinds:
        wire["kinds"] = kinds
    if manifest.worker.inject:
        wire["worker"]["inject"] = dict(manifest.worker.inject)
    return wire


def _tests_to_wire(tests: Sequence[TestSpec]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The ``tests`` list, each test that shares its predecessor's placement as a short *row*.

    A run multiplied by transformations is mostly tests that differ from the
    one before only in the end of their id (``test_join[replicated]`` after
    ``test_join``), their estimate, and their requirements and profile, which
    take few distinct values.  Such a test goes as a row ``[cut, tail, kind]``
    (``+ [estimate]``, ``+ [estimate, True]`` when dispatched first): its id is
    the previous test's id cut to *cut* characters plus *tail*; *kind* indexes
    the returned list of ``{"requires", "profile"}`` maps; group, timeout,
    cpus, memory and pinned are the previous test's.  Ids stay opaque — this
    is front coding, not knowledge of pytest's ids — and a row costs about a
    tenth of a map, so a run of a million tests fits the farm's request limit.
    """
    wire: list[Any] = []
    kinds: dict[tuple[tuple[tuple[str, str], ...], str], int] = {}
    previous: TestSpec | None = None
    cut = 0
    for test in tests:
        if previous is None or _placement(previous) != _placement(test):
            wire.append(_test_to_wire(test))
        else:
            # The last cut, when it still holds, bounds the search for the longest.
            known = cut if cut <= len(previous.id) and test.id.startswith(previous.id[:cut]) else 0
            cut = _common_prefix(previous.id, test.id, known)
            kind = kinds.setdefault((tuple(test.requires.items()), test.profile), len(kinds))
            # A tuple (msgpack's array) is smaller than a list while a million wait.
            if test.first:
                wire.append((cut, test.id[cut:], kind, test.estimate, True))
            elif test.estimate:
                wire.append((cut, test.id[cut:], kind, test.estimate))
            else:
                wire.append((cut, test.id[cut:], kind))
        previous = test
    return wire, [{"requires": dict(requires), "profile": profile} for requires, profile in kinds]


def _placement(test: TestSpec) -> tuple[Any, ...]:
    """The fields a row shares with the test before it."""
    return (test.group, test.timeout, test.cpus, test.memory, test.pinned)


def _common_prefix(a: str, b: str, known: int = 0) -> int:
    """How many leading characters *a* and *b* share, *known* of them at least.

    Found by halving, comparing slices (a character loop in Python is slower).
    """
    low, high = known, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _test_to_wire(test: TestSpec) -> dict[str, Any]:
    """A test's fields, less those at their default, which :func:`parse_manifest` fills in.

    Most tests carry only an id, a group and an estimate.  Leaving the rest
    out saves 42 bytes a test, which moves the request size limit's ceiling
    from ~380,000 to ~500,000 tests of 80-character ids, and cuts building,
    encoding and decoding a 100,000-test manifest from 0.45 to 0.10 s
    (``python benchmarks/manifest.py``).
    """
    wire: dict[str, Any] = {"id": test.id, "group": test.group}
    if test.estimate:
        wire["estimate"] = test.estimate
    if test.timeout is not None:
        wire["timeout"] = test.timeout
    if test.requires:
        wire["requires"] = dict(test.requires)
    if test.cpus is not None:
        wire["cpus"] = test.cpus
    if test.memory is not None:
        wire["memory"] = test.memory
    if test.profile:
        wire["profile"] = test.profile
    if test.pinned:
        wire["pinned"] = True
    if test.first:
        wire["first"] = True
    return wire


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ManifestError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if data.get(key) is None:
        return None
    return _require(data, key, kind, where)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{where}: must be a map of strings to strings")
    return dict(value)


def _inject(value: Any) -> dict[str, str]:
    """``worker.inject``: top-level package names to absolute directories."""
    packages = _string_map(value, "worker.inject")
    for name, path in packages.items():
        if not PACKAGE_NAME.fullmatch(name):
            raise ManifestError(f"worker.inject: {name[:80]!r} is not a package name")
        if not os.path.isabs(path):
            raise ManifestError(f"worker.inject: the directory of {name!r} must be absolute")
    return packages


def _non_negative(value: float | None, where: str) -> float | None:
    if value is not None and (not math.isfinite(value) or value < 0):
        raise ManifestError(f"{where}: must be a finite number >= 0, got {value!r}")
    return value


def _parse_test(data: Any, index: int) -> TestSpec:
    where = f"tests[{index}]"
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: must be a map")
    test_id = _require(data, "id", str, where)
    if not test_id or len(test_id) > MAX_ID_LENGTH:
        raise ManifestError(f"{where}: id must be 1..{MAX_ID_LENGTH} characters")
    group = _require(data, "group", str, where)
    estimate = _non_negative(_optional(data, "estimate", (int, float), where) or 0.0, where)
    timeout = _non_negative(_optional(data, "timeout", (int, float), where), f"{where}.timeout")
    cpus = _non_negative(_optional(data, "cpus", (int, float), where), f"{where}.cpus")
    memory = _optional(data, "memory", int, where)
    if memory is not None and memory <= 0:
        raise ManifestError(f"{where}.memory: must be a positive number of bytes")
    return TestSpec(
        id=test_id,
        group=group,
        estimate=float(estimate or 0.0),
        timeout=None if timeout is None or timeout == 0 else float(timeout),
        requires=_string_map(data.get("requires"), f"{where}.requires"),
        cpus=None if cpus is None else float(cpus),
        memory=memory,
        profile=_optional(data, "profile", str, where) or "",
        pinned=bool(_optional(data, "pinned", bool, where)),
        first=bool(_optional(data, "first", bool, where)),
    )


def _parse_kinds(value: Any) -> list[tuple[dict[str, str], str]]:
    """``kinds``: the requirements and profile each row of ``tests`` refers to by index."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TESTS:
        raise ManifestError("manifest: 'kinds' must be a list of maps")
    kinds = []
    for index, kind in enumerate(value):
        where = f"kinds[{index}]"
        if not isinstance(kind, dict):
            raise ManifestError(f"{where}: must be a map")
        requires = _string_map(kind.get("requires"), f"{where}.requires")
        kinds.append((requires, _optional(kind, "profile", str, where) or ""))
    return kinds


def _parse_tests(raw: list[Any], kinds: list[tuple[dict[str, str], str]]) -> tuple[TestSpec, ...]:
    """Maps as they are; each row (see :func:`_tests_to_wire`) as a copy of the test before it."""
    tests: list[TestSpec] = []
    for index, data in enumerate(raw):
        if not isinstance(data, list | tuple):  # tuples: a wire not yet encoded
            tests.append(_parse_test(data, index))
            continue
        where = f"tests[{index}]"
        if not tests:
            raise ManifestError(f"{where}: a row must follow a test")
        if not 3 <= len(data) <= 5:
            raise ManifestError(f"{where}: a row is [cut, tail, kind, estimate?, first?]")
        cut, tail, kind, *rest = data
        previous = tests[-1]
        if not isinstance(cut, int) or isinstance(cut, bool) or not 0 <= cut <= len(previous.id):
            raise ManifestError(f"{where}: cut must be 0..{len(previous.id)}")
        if not isinstance(tail, str):
            raise ManifestError(f"{where}: tail must be a string")
        if not isinstance(kind, int) or isinstance(kind, bool) or not 0 <= kind < len(kinds):
            raise ManifestError(f"{where}: kind must index 'kinds' (0..{len(kinds) - 1})")
        test_id = previous.id[:cut] + tail
        if not test_id or len(test_id) > MAX_ID_LENGTH:
            raise ManifestError(f"{where}: id must be 1..{MAX_ID_LENGTH} characters")
        estimate = rest[0] if rest else 0.0
        if not isinstance(estimate, int | float) or isinstance(estimate, bool):
            raise ManifestError(f"{where}: estimate must be a number")
        first = rest[1] if len(rest) > 1 else False
        if not isinstance(first, bool):
            raise ManifestError(f"{where}: first must be true or false")
        requires, profile = kinds[kind]
        tests.append(
            TestSpec(
                test_id,
                previous.group,
                float(_non_negative(estimate, f"{where}.estimate") or 0.0),
                previous.timeout,
                requires,
                previous.cpus,
                previous.memory,
                profile,
                previous.pinned,
                first,
            )
        )
    return tuple(tests)


def _parse_profiles(value: Any) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(name, str) and isinstance(args, list) and all(isinstance(a, str) for a in args)
        for name, args in value.items()
    ):
        raise ManifestError("manifest: 'profiles' must map names to lists of strings")
    return {name: tuple(args) for name, args in value.items()}


def parse_manifest(data: Any, *, warm: bool = False) -> RunManifest:
    """Validate a decoded ``run`` message and build the manifest.

    *warm*: a ``warm`` message, a run its client is still collecting: no tests yet.
    """
    if not isinstance(data, dict):
        raise ManifestError("manifest must be a map")
    raw_tests = _require(data, "tests", list, "manifest")
    if warm and raw_tests:
        raise ManifestError("manifest: a 'warm' message names no tests")
    if not raw_tests and not warm:
        raise ManifestError("manifest: 'tests' is empty; there is nothing to run")
    if len(raw_tests) > MAX_TESTS:
        raise ManifestError(f"manifest: {len(raw_tests)} tests exceed the limit of {MAX_TESTS}")
    tests = _parse_tests(raw_tests, _parse_kinds(data.get("kinds")))
    seen: set[str] = set()
    for test in tests:
        if test.id in seen:
            raise ManifestError(f"manifest: test id {test.id!r} appears twice")
        seen.add(test.id)
    profiles = _parse_profiles(data.get("profiles"))
    for test in tests:
        if test.profile and test.profile not in profiles:
            raise ManifestError(
                f"manifest: test {test.id!r} names unknown profile {test.profile!r}"
            )
    worker = _require(data, "worker", dict, "manifest")
    argv = _require(worker, "argv", list, "worker")
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ManifestError("worker: 'argv' must be a non-empty list of strings")
    return RunManifest(
        tests=tests,
        worker=WorkerSpec(
            argv=tuple(argv),
            cwd=_require(worker, "cwd", str, "worker"),
            env=_string_map(worker.get("env"), "worker.env"),
            root=_optional(worker, "root", str, "worker") or "",
            inject=_inject(worker.get("inject")),
        ),
        name=_optional(data, "name", str, "manifest") or "",
        image=_optional(data, "image", str, "manifest"),
        snapshot=_optional(data, "snapshot", str, "manifest"),
        network=bool(_optional(data, "network", bool, "manifest")),
        profiles=profiles,
    )
