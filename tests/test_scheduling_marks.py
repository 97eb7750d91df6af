"""What :mod:`pytest_psyduck.scheduling` reads from marks: xdist groups named as
pytest-xdist's ``loadgroup`` names them, and the ``--psyduck-dist`` modes."""

from __future__ import annotations

import pytest

from pytest_psyduck.scheduling import Placement, placement, xdist_group

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
