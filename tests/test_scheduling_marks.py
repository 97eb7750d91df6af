"""What :mod:`pytest_psyduck.scheduling` reads from marks: xdist groups named as
pytest-xdist's ``loadgroup`` names them, and the ``--psyduck-dist`` modes."""

from __future__ import annotations

import pytest

from pytest_psyduck.scheduling import Placement, dispatched_first, placement, xdist_group

MARKED = """
import pytest

@pytest.mark.xdist_group(name="db")
def test_named(): pass

@pytest.mark.xdist_group("db")
def test_positional(): pass

@pytest.mark.xdist_group
def test_nameless(): pass

def test_free(): pass

@pytest.mark.xdist_group("web")
class TestBoth:
    @pytest.mark.xdist_group("db")
    def test_in_two_groups(self): pass
"""


def test_xdist_group_names_are_pytest_xdists(pytester):
    items = {item.name: item for item in pytester.getitems(MARKED)}
    assert xdist_group(items["test_named"]) == "db"
    assert xdist_group(items["test_positional"]) == "db"
    assert xdist_group(items["test_nameless"]) == "default"
    assert xdist_group(items["test_free"]) is None
    assert xdist_group(items["test_in_two_groups"]) == "db_web"


@pytest.mark.parametrize(
    ("mode", "grouped", "free"),
    [
        ("load", Placement("xdist_group:db", True), Placement("m.py", False)),
        ("loadgroup", Placement("xdist_group:db", True), Placement("m.py", False)),
        ("loadfile", Placement("xdist_group:db", True), Placement("m.py", True)),
    ],
)
def test_placement_by_mode(pytester, mode, grouped, free):
    items = {item.name: item for item in pytester.getitems(MARKED)}
    assert placement(items["test_named"], "m.py", mode) == grouped
    assert placement(items["test_free"], "m.py", mode) == free


FAILING = """
def test_a(): pass
def test_b(): assert 0
def test_c(): pass
def test_d(): assert 0
"""


def selected(pytester, *args: str) -> list[pytest.Item]:
    """The session's items once collection is done: reordered and deselected."""
    _, reprec = pytester.inline_genitems(*args)
    return reprec.getcall("pytest_collection_finish").session.items


def test_failed_first_dispatches_the_previous_failures_first(pytester):
    pytester.makepyfile(test_m=FAILING)
    pytester.runpytest("-q")  # records test_b and test_d as failed
    items = selected(pytester, "--ff")
    assert [item.name for item in items] == ["test_b", "test_d", "test_a", "test_c"]
    first = dispatched_first(items[0].config, items)
    assert first == {"test_m.py::test_b", "test_m.py::test_d"}
    items = selected(pytester)
    assert dispatched_first(items[0].config, items) == set()


def test_stepwise_dispatches_the_test_it_resumes_at_first(pytester):
    pytester.makepyfile(test_m=FAILING)
    pytester.runpytest("-q", "--sw")  # stops at test_b
    items = selected(pytester, "--sw")
    assert [item.name for item in items] == ["test_b", "test_c", "test_d"]
    assert dispatched_first(items[0].config, items) == {"test_m.py::test_b"}
