"""Variant items made on first use: small in the user's process, the constructor's item to anyone.

:mod:`pytest_psyduck.variants` builds a variant with its parent and node id
only, and makes the rest of what pytest's constructor sets when something
reads it; the replay forgets again what a plugin made of it while its result
was logged.  These sessions (real pytest processes, and in-process ones where a
test needs the items themselves) prove that a farm run leaves the variants as
small as collected, that what one variant is given reaches no other, that
forgetting never changes what a reader sees, and that a plugin reordering and
deselecting items sees the run as plain pytest's.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.conftest import junit_cases, run_pytest
from tests.served import ServedFarm

pytest_plugins = ["pytester"]

TIMEOUT = 120

CONFTEST = """
import pytest

from pytest_psyduck import Transformation


def pytest_psyduck_transformations(config):
    return [Transformation("rep", env={"A": "1"}), Transformation("vec")]
"""

TESTS = """
import pytest


def test_plain():
    pass


@pytest.mark.parametrize("x", [1, 2])
def test_param(x):
    assert x < 2


class TestGroup:
    def test_method(self):
        pass
"""

#: Appended to the conftest: what each variant has made, at the end of the user's session.
PROBE = """
from pytest_psyduck.variants import Function


def pytest_runtest_logreport(report):
    if report.when == "call":
        print("KEYWORDS", report.nodeid, sorted(report.keywords))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    if session.config.pluginmanager.has_plugin("psyduck-worker"):
        return
    for item in session.items:
        if type(item) is Function:
            print("MADE", item.nodeid, sorted(vars(item)), item._made)
"""


@pytest.fixture
def matrix(suite):
    return suite({"conftest.py": CONFTEST + PROBE, "test_q.py": TESTS})


def _lines(output: str, tag: str) -> list[str]:
    """The lines a probe printed, wherever -q's progress dots left them to start."""
    return sorted(re.findall(rf"{tag} .*$", output, re.M))


def test_a_farm_run_leaves_every_variant_as_small_as_it_was_collected(matrix):
    """Nothing the replay (or pytest-timeout, reading every test's marks) made of a
    variant stays made; the reports' keywords are plain pytest's."""
    common = ("-p", "no:cacheprovider", "-s", "-q")
    psy = run_pytest(matrix, *common, "--psyduck", "--psyduck-hosts", "local:1")
    plain = run_pytest(matrix, *common, "--psyduck-transform", "all")
    assert psy.returncode == plain.returncode == 1, psy.stdout + psy.stderr
    made = _lines(psy.stdout, "MADE")
    assert len(made) == 8, psy.stdout
    assert all(line.endswith(" [] ()") for line in made), made
    assert _lines(psy.stdout, "KEYWORDS") == _lines(plain.stdout, "KEYWORDS")
    assert len(_lines(plain.stdout, "KEYWORDS")) == 12


@pytest.mark.parametrize("selection", [("-k", "rep or TestGroup"), ("-m", "not odd")])
def test_selecting_by_keyword_or_mark_leaves_variants_as_small_as_collected(
    suite, selection: tuple[str, ...]
):
    """``-k`` and ``-m`` read every variant's keywords and marks; nothing of it stays made."""
    probe = PROBE.replace(
        "@pytest.hookimpl(trylast=True)\ndef pytest_sessionfinish", "def pytest_collection_finish"
    )
    path = suite({"conftest.py": CONFTEST + probe, "test_q.py": TESTS, "pytest.ini": ODD})
    result = run_pytest(
        path,
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        "-s",
        "--psyduck-transform",
        "all",
        *selection,
    )
    made = _lines(result.stdout, "MADE")
    assert len(made) == (5 if selection[0] == "-k" else 8), result.stdout
    assert all(line.endswith(" [] ()") for line in made), made


ODD = "[pytest]\nmarkers =\n    odd\n"

ISOLATION = """
import pytest

from pytest_psyduck import Transformation
from pytest_psyduck.variants import Function

KEY = pytest.StashKey[str]()


def pytest_psyduck_transformations(config):
    return [Transformation("rep"), Transformation("vec")]


def pytest_collection_modifyitems(items):
    by_id = {item.nodeid: item for item in items}
    written = by_id["test_q.py::TestGroup::test_method[rep]"]
    written.stash[KEY] = "mine"
    written.keywords["only_rep"] = True
    written.user_properties.append(("only", "rep"))
    written.add_marker(pytest.mark.only_rep)
    written.extra_keyword_matches.add("also_rep")
    written.instance.note = "rep's"
    written.shed()  # keeps everything that was changed
    for item in items:
        print(
            "SEES",
            item.nodeid,
            type(item) is Function,
            item.stash.get(KEY, None),
            "only_rep" in item.keywords,
            item.user_properties,
            [mark.name for mark in item.iter_markers()],
            sorted(item.extra_keyword_matches),
            getattr(item.instance, "note", None),
        )
"""


def test_what_one_variant_is_given_reaches_no_other(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(ISOLATION)
    pytester.makepyfile(test_q=TESTS)
    pytester.makeini("[pytest]\nmarkers =\n    only_rep\n")
    result = pytester.runpytest_subprocess(
        "--collect-only", "-s", "-p", "no:cacheprovider", "--psyduck-transform", "all",
        timeout=TIMEOUT,
    )  # fmt: skip
    seen = {line.split()[1]: line.split(" ", 2)[2] for line in _lines(result.stdout.str(), "SEES")}
    rep = "test_q.py::TestGroup::test_method[rep]"
    assert seen[rep] == (
        "True mine True [('psyduck_transformation', 'rep'), ('only', 'rep')] "
        "['only_rep'] ['also_rep'] rep's"
    )
    assert seen["test_q.py::TestGroup::test_method[vec]"] == (
        "True None False [('psyduck_transformation', 'vec')] [] [] None"
    )
    assert seen["test_q.py::TestGroup::test_method"] == (
        "False None False [('psyduck_transformation', 'baseline')] [] [] None"
    )
    assert len(seen) == 12


SHEDDING = """
import pytest
from hypothesis import given, settings, strategies as st

from pytest_psyduck.variants import VARIANT_KEY, Function

KEY = pytest.StashKey[int]()
READS = ["name", "own_markers", "keywords", "stash", "user_properties", "callspec",
         "extra_keyword_matches", "_report_sections", "instance", "funcargs"]
WRITES = ["mark", "stash", "property", "section", "keyword_match", "keyword"]


def observed(item):
    return (
        item.name,
        item.nodeid,
        [mark.name for mark in item.own_markers],
        sorted(item.keywords),
        item.keywords.get("w1"),
        item.stash.get(KEY, None),
        item.stash[VARIANT_KEY].transformation.name,
        list(item.user_properties),
        item.callspec,
        sorted(item.extra_keyword_matches),
        list(item._report_sections),
    )


def write(item, what, n):
    if what == "mark":
        item.add_marker(f"m{n}")
    elif what == "stash":
        item.stash[KEY] = n
    elif what == "property":
        item.user_properties.append(("p", n))
    elif what == "section":
        item._report_sections.append(("call", "out", str(n)))
    elif what == "keyword":
        item.keywords[f"w{n}"] = n
    else:
        item.extra_keyword_matches.add(f"k{n}")


STEPS = st.lists(
    st.tuples(st.sampled_from(["read", "write", "shed"]), st.sampled_from(READS + WRITES),
              st.integers(0, 3)),
    max_size=12,
)


@pytest.mark.psyduck(exclude=["rep", "vec"])
@settings(max_examples=80, deadline=None)
@given(st.data(), STEPS)
def test_shedding_never_changes_what_a_reader_sees(request, data, steps):
    variants = [item for item in request.config.collected if type(item) is Function]
    # Each example works on a fresh variant, made anew by its family.
    item = data.draw(st.sampled_from(variants))
    fresh = item._family.variant(item._token, item._transformation, item._properties)
    for step, what, n in steps:
        if step == "write" and what in WRITES:
            write(fresh, what, n)
            continue
        before = observed(fresh)
        if step == "read" and what in READS:
            getattr(fresh, what)
        fresh.shed()
        assert observed(fresh) == before
    fresh.shed()
    assert "name" not in fresh._made and "callspec" not in fresh._made
"""

SHEDDING_CONFTEST = """

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    config.collected = list(items)
"""


def test_forgetting_what_was_made_never_changes_what_a_reader_sees(
    pytester: pytest.Pytester,
) -> None:
    """Any sequence of reads, writes and sheds: every read sees what it saw before a shed."""
    pytester.makeconftest(CONFTEST + SHEDDING_CONFTEST)
    pytester.makepyfile(test_q=TESTS, test_shed=SHEDDING)
    pytester.makeini("[pytest]\nmarkers =\n    m0\n    m1\n    m2\n    m3\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--psyduck-transform", "all", "-q", "-k", "shedding",
        timeout=TIMEOUT,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    assert re.match(r"1 passed, 12 deselected in ", result.stdout.lines[-1]), result.stdout.str()


SHUFFLER = """
import random

import pytest

from pytest_psyduck import Transformation


def pytest_psyduck_transformations(config):
    return [Transformation(f"t{i}") for i in range(4)]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # As pytest-randomly: a seeded shuffle; then, as a selection plugin, drop every fifth.
    random.Random(7).shuffle(items)
    dropped = items[::5]
    items[:] = [item for i, item in enumerate(items) if i % 5]
    config.hook.pytest_deselected(items=dropped)
"""


def test_a_plugin_that_reorders_and_deselects_items_sees_what_plain_pytest_shows(suite):
    files = {"conftest.py": SHUFFLER}
    for m in range(3):
        files[f"test_m{m}.py"] = "\n".join(
            f"def test_{t}():\n    assert {t} % 3\n" for t in range(6)
        )
    path = suite(files)
    common = ("-p", "no:cacheprovider", "-p", "no:randomly", "-v", "-x")
    plain = run_pytest(path, *common, "--junitxml=plain.xml", "--psyduck-transform", "all")
    psy = run_pytest(path, *common, "--junitxml=psy.xml", "--psyduck", "--psyduck-hosts", "local:2")

    def shown(output: str) -> list[str]:
        return re.findall(r"^(\S+::\S+) (PASSED|FAILED)", output, re.M)

    assert psy.returncode == plain.returncode == 1, psy.stdout + psy.stderr
    assert shown(psy.stdout) == shown(plain.stdout)
    assert "deselected" in plain.stdout.splitlines()[-1]
    last = re.sub(r" in [\d.]+s.*$", "", psy.stdout.strip().splitlines()[-1])
    assert last == re.sub(r" in [\d.]+s.*$", "", plain.stdout.strip().splitlines()[-1])
    assert junit_cases(path / "psy.xml") == junit_cases(path / "plain.xml")


#: Appended to a conftest: every variant is built by pytest's constructor, as before.
CONSTRUCTOR = """

import pytest_psyduck.variants

pytest_psyduck.variants.NodeId = None
"""


@pytest.mark.parametrize(
    "args",
    [
        ("-q",),
        ("-v",),
        ("-k", "rep and not param"),
        ("-m", "not odd"),
        ("--deselect", "test_q.py::test_param[2-rep]"),
        ("test_q.py::test_param[1-vec]", "test_q.py::TestGroup::test_method[rep]"),
    ],
)
def test_collect_only_shows_what_the_constructors_items_show(
    pytester: pytest.Pytester, args: tuple[str, ...]
) -> None:
    """Variants made on first use are listed and selected as the constructor's variants were."""
    pytester.makepyfile(test_q=TESTS)
    pytester.makeini("[pytest]\nmarkers =\n    odd\n")
    shown = {}
    for kind, conftest in (("lazy", CONFTEST), ("constructor", CONFTEST + CONSTRUCTOR)):
        pytester.makeconftest(conftest)
        result = pytester.runpytest_subprocess(
            "--collect-only", "-p", "no:cacheprovider", "--psyduck-transform", "all", *args,
            timeout=TIMEOUT,
        )  # fmt: skip
        shown[kind] = [re.sub(r" in [\d.]+s", "", line) for line in result.stdout.lines]
    assert shown["lazy"] == shown["constructor"]
    assert any("[rep]" in line for line in shown["lazy"]), shown["lazy"]


@pytest.mark.slow
def test_a_served_farm_takes_a_million_variant_run_that_stops_at_its_first_failure(tmp_path, suite):
    """10,000 failing tests x 100 transformations with -x on ``psyduck farm serve``:
    accepted, ``1 failed``, exit 1."""
    files = {
        "conftest.py": (
            "from pytest_psyduck import Transformation\n\n"
            "def pytest_psyduck_transformations(config):\n"
            "    return [Transformation(f't{i}', env={'S': str(i)}) for i in range(100)]\n"
        )
    }
    for m in range(20):
        files[f"project/test_m{m}.py"] = "\n".join(
            f"def test_case_{t}():\n    assert {t} < 0\n" for t in range(500)
        )
    files["project/conftest.py"] = files.pop("conftest.py")
    project = suite(files) / "project"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text("million")
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n\n[[hosts]]\nurl = "local"\nslots = 2\n'
    )
    farm = ServedFarm(config, f"http://127.0.0.1:{port}")
    try:
        result = run_pytest(
            project,
            *("-p", "no:cacheprovider", "--psyduck", f"--psyduck-farm={farm.url}", "-x", "-q"),
            env={"PSYDUCK_TOKEN": "million"},
            timeout=1200,
        )
    finally:
        farm.stop()
        assert farm.proc.stdout is not None
        farm.proc.stdout.close()
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.match(r"1 failed in ", result.stdout.strip().splitlines()[-1].strip("= "))
