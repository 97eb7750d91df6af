"""Variant items built once per test are the items pytest's constructor builds, at any scale.

:mod:`pytest_psyduck.variants` fills in each variant's state instead of
running ``Function``'s constructor per variant.  These sessions (real pytest
processes) prove that every variant equals the constructor's item for the
same name and callspec, that selection by mark, keyword, node id and
``--deselect`` sees the same variants, and that a matrix of 100,000 variants
runs to completion on a farm with plain pytest's summary.
"""

from __future__ import annotations

import re
import textwrap

import pytest

pytest_plugins = ["pytester"]

#: A session that takes longer than this is hung, not slow.
TIMEOUT = 120

CONFTEST = """
import pytest

from pytest_psyduck import Transformation
from pytest_psyduck.transformations import VARIANT_KEY


def pytest_psyduck_transformations(config):
    return [Transformation("rep", env={"A": "1"}), Transformation("vec")]


@pytest.fixture
def answer():
    return 42
"""

#: Appended to the conftest: builds each variant again with the constructor and compares.
COMPARE = """
SLOTS = ["_id", "_store", "config", "name", "parent", "path", "session"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    # Build each variant again with the constructor and compare: every
    # attribute, the keywords in order, the marks as iterated, the request.
    by_id = {item.nodeid: item for item in items}
    for item in items:
        variant = item.stash.get(VARIANT_KEY, None)
        if variant is None:
            continue
        base = by_id[variant.base_nodeid]
        ref = type(base).from_parent(
            base.parent,
            name=item.name,
            callspec=item.callspec,
            fixtureinfo=base._fixtureinfo,
            keywords={item.callspec.id: True},
            originalname=base.originalname,
        )
        ref.stash[VARIANT_KEY] = variant
        ref.user_properties.append(item.user_properties[0])
        # A variant made on first use: pytest's class by name and by isinstance,
        # every attribute the constructor sets, and nothing else set yet.
        attributes = [*ref.__dict__, *SLOTS]
        checks = {
            "type": ((type(item).__name__, isinstance(item, type(ref))), ("Function", True)),
            "nothing made": (
                sorted(item.__dict__.keys() - {"stash", "_store", "user_properties", "callspec",
                                               "name"}),
                [],
            ),
            "attributes": ([a for a in attributes if hasattr(item, a)], attributes),
            "no others": (set(item.__dict__) - set(ref.__dict__) - set(SLOTS), set()),
            "keywords": (list(item.keywords._markers.items()), list(ref.keywords._markers.items())),
            "marks": (list(item.iter_markers()), list(ref.iter_markers())),
            "parents": (item.listchain()[:-1], ref.listchain()[:-1]),
            "listextrakeywords": (item.listextrakeywords(), ref.listextrakeywords()),
            "class instance": (type(item.instance), type(ref.instance)),
            "request": (item._request.node, item),
        }
        for key in ("name", "nodeid", "location", "originalname", "fixturenames", "callspec",
                    "own_markers", "user_properties", "extra_keyword_matches", "funcargs",
                    "_fixtureinfo", "path", "parent", "session", "config", "obj"):
            if key == "obj" and item.instance is not None:
                checks[key] = (item.obj.__func__, ref.obj.__func__)
            else:
                checks[key] = (getattr(item, key), getattr(ref, key))
        if item.instance is not None:
            checks["fresh instance"] = (item.instance is base.instance, False)
        for key, (got, want) in checks.items():
            if got != want:
                print(f"MISMATCH {item.nodeid} {key}: {got!r} != {want!r}")
        print(f"COMPARED {item.nodeid}")
"""

TESTS = """
import gc

import pytest

pytestmark = pytest.mark.modmark


def test_plain(answer):
    # Collection kept the cyclic garbage collector off, and turned it back on.
    assert gc.isenabled()
    assert answer == 42


def test_with_attribute():
    pass


test_with_attribute.owner = "storage"


@pytest.mark.slowish
@pytest.mark.parametrize("x", [1, pytest.param(2, marks=pytest.mark.odd, id="two")])
def test_param(x, request):
    assert request.node.callspec.params["x"] == x


@pytest.mark.psyduck(timeout=5, exclude=["vec"], reason="no vectors")
class TestGroup:
    counter = 0

    def test_method(self):
        # A fresh instance per item: nothing an earlier variant set is seen.
        assert not hasattr(self, "seen")
        self.seen = True
"""

VARIANTS = [
    "test_q.py::test_plain[rep]",
    "test_q.py::test_plain[vec]",
    "test_q.py::test_with_attribute[rep]",
    "test_q.py::test_with_attribute[vec]",
    "test_q.py::test_param[1-rep]",
    "test_q.py::test_param[1-vec]",
    "test_q.py::test_param[two-rep]",
    "test_q.py::test_param[two-vec]",
    "test_q.py::TestGroup::test_method[rep]",
]


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_q=TESTS)
    pytester.makeini("[pytest]\nmarkers =\n    modmark\n    slowish\n    odd\n")
    return pytester


def test_every_variant_is_the_item_the_constructor_builds(suite: pytest.Pytester) -> None:
    conftest = suite.path / "conftest.py"
    conftest.write_text(conftest.read_text() + COMPARE)
    result = suite.runpytest_subprocess(
        "-s", "-p", "no:cacheprovider", "--psyduck-transform", "all", timeout=TIMEOUT
    )
    output = result.stdout.str()
    assert "MISMATCH" not in output, output
    compared = re.findall(r"^COMPARED (\S+)$", output, re.M)
    assert compared == VARIANTS
    assert result.ret == 0, output
    assert "14 passed" in output


PARAM = ["test_q.py::test_param[1]", *VARIANTS[4:6], "test_q.py::test_param[two]", *VARIANTS[6:8]]
ATTRIBUTE = ["test_q.py::test_with_attribute", *VARIANTS[2:4]]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-m", "slowish"), PARAM),
        (("-m", "odd and not slowish"), []),
        (("-m", "odd"), PARAM[3:]),
        (("-m", "modmark", "-k", "storage"), []),
        (("-k", "owner"), ATTRIBUTE),
        (("-k", "test_with_attribute and vec"), ATTRIBUTE[2:]),
        (("-k", "rep and TestGroup"), VARIANTS[8:]),
        (("-k", "1-vec"), ["test_q.py::test_param[1-vec]"]),
        (("--deselect", "test_q.py::test_param[two-rep]", "-k", "two"), PARAM[3::2]),
        (("test_q.py::test_plain[vec]", VARIANTS[8]), ["test_q.py::test_plain[vec]", VARIANTS[8]]),
    ],
)
def test_selection_sees_variants_as_items(
    suite: pytest.Pytester, args: tuple[str, ...], expected: list[str]
) -> None:
    """The variants' marks and keywords select them as they select parametrized items."""
    result = suite.runpytest_subprocess(
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        "--psyduck-transform",
        "all",
        *args,
        timeout=TIMEOUT,
    )
    assert result.ret == (0 if expected else 5), result.stdout.str()
    assert [line for line in result.stdout.lines if "::" in line] == expected


@pytest.mark.slow
def test_a_hundred_thousand_variants_run_to_plain_pytests_summary(
    pytester: pytest.Pytester,
) -> None:
    """2,000 tests x 50 transformations on local:2: every result arrives, counted as pytest does."""
    pytester.makeconftest(
        textwrap.dedent("""
        from pytest_psyduck import Transformation

        def pytest_psyduck_transformations(config):
            return [Transformation(f"t{i}", env={"SETTING": str(i)}) for i in range(50)]
        """)
    )
    for m in range(20):
        pytester.makepyfile(
            **{f"test_m{m}": "\n".join(f"def test_{t}():\n    pass\n" for t in range(100))}
        )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--psyduck", "--psyduck-hosts", "local:2", "-q", timeout=900
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert re.match(r"^102000 passed in [\d.]+s", result.stdout.lines[-1].lstrip("= ")), (
        result.stdout.lines[-5:]
    )


def test_a_variant_given_a_mark_of_its_own_gets_its_own_hints(suite: pytest.Pytester) -> None:
    """The manifest reads a test's marks once for all its variants, unless one has its own."""
    conftest = suite.path / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        + textwrap.dedent("""
        from pytest_psyduck.durations import DurationHistory
        from pytest_psyduck.runmanifest import build_manifest

        def pytest_collection_modifyitems(items):
            for item in items:
                if item.name == "test_plain[vec]":
                    item.add_marker(pytest.mark.psyduck(timeout=7, cpus=2))
                    item.add_marker(pytest.mark.xdist_group("solo"))

        def pytest_collection_finish(session):
            history = DurationHistory(session.config)
            manifest = build_manifest(session.items, session.config, history)
            for test in manifest.tests:
                print("SPEC", test.id, test.timeout, test.cpus, test.group, test.pinned)
        """)
    )
    result = suite.runpytest_subprocess(
        "--collect-only",
        "-s",
        "-p",
        "no:cacheprovider",
        "--psyduck-transform",
        "all",
        timeout=TIMEOUT,
    )
    specs = dict(
        (line.split()[1], tuple(line.split()[2:]))
        for line in result.stdout.lines
        if line.startswith("SPEC ")
    )
    assert specs["test_q.py::test_plain"] == ("None", "None", "test_q.py", "False")
    assert specs["test_q.py::test_plain[rep]"] == ("None", "None", "test_q.py", "False")
    assert specs["test_q.py::test_plain[vec]"] == ("7.0", "2.0", "xdist_group:solo", "True")
    assert specs["test_q.py::TestGroup::test_method"][:2] == ("5.0", "None")
    assert specs["test_q.py::TestGroup::test_method[rep]"][:2] == ("5.0", "None")
    assert len(specs) == 14
