"""The manifest's rows: tests multiplied by transformations, front-coded on the wire.

A row is a test that shares its predecessor's placement, sent as the part of
its id that differs plus an index into the run's requirement/profile kinds.
These tests prove the rows round-trip every manifest exactly, that bad rows
are refused naming the field, and that a run of a million variants fits the
farm's request limit, which a list of maps did not.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.intake import read_run
from farm.manifest import (
    MAX_TESTS,
    ManifestError,
    RunManifest,
    TestSpec,
    WorkerSpec,
    manifest_to_wire,
    parse_manifest,
)
from farm.protocol import MAX_MESSAGE_BYTES, decode, encode

WORKER = WorkerSpec(argv=("pytest_psyduck.workermain",), cwd="/")
TRANSFORMATIONS = ("replicated", "vectorized", "seed-3", "t1", "t10", "t2")


@st.composite
def families(draw: st.DrawFn) -> list[TestSpec]:
    """A test and its variants, as the plugin lists them: same placement, ids `base[name]`."""
    module = draw(st.sampled_from(["tests/test_a.py", "tests/test_b.py"]))
    name = draw(st.sampled_from(["test_join", "test_sum[3]", "test_sum[3-x]", "t"]))
    base = f"{module}::{name}"
    placement = {
        "group": draw(st.sampled_from([module, "xdist_group:db"])),
        "timeout": draw(st.none() | st.sampled_from([1.0, 30.0])),
        "cpus": draw(st.none() | st.sampled_from([2.0])),
        "memory": draw(st.none() | st.sampled_from([2**30])),
        "pinned": draw(st.booleans()),
    }
    names = draw(st.lists(st.sampled_from(TRANSFORMATIONS), unique=True, max_size=6))
    ids = [] if draw(st.booleans()) and names else [base]
    for transformation in names:
        ids.append(
            base[:-1] + f"-{transformation}]" if base.endswith("]") else f"{base}[{transformation}]"
        )
    tests = []
    for test_id in ids:
        tests.append(
            TestSpec(
                id=test_id,
                estimate=draw(st.sampled_from([0.0, 0.01, 3600.0])),
                requires=draw(st.sampled_from([{}, {"cpu": "avx2"}, {"cpu": "avx2", "os": "x"}])),
                profile=draw(st.sampled_from(["", "jit"])),
                first=draw(st.booleans()),
                **placement,
            )
        )
    return tests


manifests = (
    st.lists(families(), min_size=1, max_size=8)
    .map(
        lambda fams: RunManifest(
            tests=tuple({t.id: t for fam in fams for t in fam}.values()),
            worker=WORKER,
            profiles={"jit": ("-p", "jit")},
        )
    )
    .filter(lambda m: m.tests)
)


@given(manifests)
def test_rows_round_trip_every_manifest(manifest: RunManifest) -> None:
    body = encode(manifest_to_wire(manifest))
    assert parse_manifest(decode(body)) == manifest
    assert read_run(encode({"t": "run", **manifest_to_wire(manifest)})) == manifest


def test_a_variant_is_a_row_carrying_only_what_differs() -> None:
    tests = (
        TestSpec(id="t.py::test_join", group="t.py", timeout=5.0),
        TestSpec(id="t.py::test_join[replicated]", group="t.py", timeout=5.0, estimate=0.5),
        TestSpec(id="t.py::test_join[avx]", group="t.py", timeout=5.0, requires={"cpu": "avx2"}),
    )
    wire = manifest_to_wire(RunManifest(tests=tests, worker=WORKER))
    assert wire["tests"][0] == {"id": "t.py::test_join", "group": "t.py", "timeout": 5.0}
    assert wire["tests"][1] == (15, "[replicated]", 0, 0.5)
    assert wire["tests"][2] == (16, "avx]", 1)
    assert parse_manifest(wire).tests == tests
    assert wire["kinds"] == [
        {"requires": {}, "profile": ""},
        {"requires": {"cpu": "avx2"}, "profile": ""},
    ]


def _wire(*tests: object, kinds: object = None) -> dict[str, object]:
    wire: dict[str, object] = {"tests": list(tests), "worker": {"argv": ["m"], "cwd": "/"}}
    if kinds is not None:
        wire["kinds"] = kinds
    return wire


BASE = {"id": "t.py::a", "group": "t.py"}
KINDS = [{"requires": {}, "profile": ""}]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (_wire([0, "x", 0], kinds=KINDS), r"tests\[0\]: a row must follow a test"),
        (_wire(BASE, [0, "x"], kinds=KINDS), r"tests\[1\]: a row is \[cut, tail, kind"),
        (_wire(BASE, [99, "x", 0], kinds=KINDS), r"tests\[1\]: cut must be 0..7"),
        (_wire(BASE, [-1, "x", 0], kinds=KINDS), r"cut must be"),
        (_wire(BASE, [True, "x", 0], kinds=KINDS), r"cut must be"),
        (_wire(BASE, [3, 7, 0], kinds=KINDS), r"tail must be a string"),
        (_wire(BASE, [3, "x", 1], kinds=KINDS), r"kind must index 'kinds' \(0..0\)"),
        (_wire(BASE, [3, "x", 0]), r"kind must index 'kinds'"),
        (_wire(BASE, [0, "", 0], kinds=KINDS), r"id must be 1..4096"),
        (_wire(BASE, [0, "x" * 5000, 0], kinds=KINDS), r"id must be 1..4096"),
        (_wire(BASE, [3, "x", 0, "1"], kinds=KINDS), r"estimate must be a number"),
        (_wire(BASE, [3, "x", 0, -1.0], kinds=KINDS), r"estimate: must be a finite"),
        (_wire(BASE, [3, "x", 0, 1.0, 1], kinds=KINDS), r"first must be true or false"),
        (_wire(BASE, [7, "", 0], kinds=KINDS), r"'t.py::a' appears twice"),
        (_wire(BASE, [3, "x", 0], kinds={"a": 1}), r"'kinds' must be a list"),
        (_wire(BASE, [3, "x", 0], kinds=[3]), r"kinds\[0\]: must be a map"),
        (_wire(BASE, [3, "x", 0], kinds=[{"requires": 3}]), r"kinds\[0\].requires"),
        (_wire(BASE, [3, "x", 0], kinds=[{"profile": "p"}]), r"unknown profile 'p'"),
    ],
)
def test_a_bad_row_is_refused_naming_it(wire: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(wire)


@pytest.mark.slow
def test_a_million_variants_fit_one_request() -> None:
    """10,000 tests x 100 transformations, ids as the plugin makes them, with estimates."""
    tests = [
        TestSpec(
            id=f"tests/storage/test_module_{t // 50}.py::test_case_{t}"
            + (f"[transformation_{v}]" if v >= 0 else ""),
            group=f"tests/storage/test_module_{t // 50}.py",
            estimate=0.01 + v * 1e-4,
        )
        for t in range(10_000)
        for v in range(-1, 99)
    ]
    assert len(tests) == 1_000_000 <= MAX_TESTS
    body = encode(manifest_to_wire(RunManifest(tests=tuple(tests), worker=WORKER)))
    assert len(body) < MAX_MESSAGE_BYTES / 2, len(body)
    parsed = parse_manifest(decode(body))
    assert parsed.tests[::9973] == tuple(tests[::9973])
    assert len(parsed.tests) == len(tests)
