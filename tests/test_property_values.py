"""``record_property`` values through psyduck's report codec, and in a real junit file.

pytest lets a test record any value; junitxml writes ``str(value)``.  A value
that msgpack would change (a tuple become a list, a map with int keys refused)
or could not hash (a dict, which once broke the replay with an internal error)
must reach the user's process as the worker had it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_psyduck.serialize import payload_to_reports, reports_to_payload
from tests.conftest import run_pytest

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
)
hashables = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=6)
values = st.recursive(
    hashables,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(hashables, inner, max_size=4),
    ),
    max_leaves=12,
)


def _through_the_codec(request: pytest.FixtureRequest, properties: list) -> list:
    report = pytest.TestReport(
        nodeid="test_a.py::test_x",
        location=("test_a.py", 0, "test_x"),
        keywords={},
        outcome="passed",
        longrepr=None,
        when="call",
        user_properties=properties,
    )
    [decoded] = payload_to_reports(request.config, reports_to_payload(request.config, [report]))
    return decoded.user_properties


@given(value=values)
def test_a_property_value_of_msgpacks_types_and_tuples_arrives_as_it_was(request, value):
    assert _through_the_codec(request, [("p", value)]) == [("p", value)]


def test_any_other_object_arrives_as_its_text(request):
    assert _through_the_codec(request, [("path", PurePosixPath("/x/y"))]) == [("path", "/x/y")]


PROPERTIES_SUITE = {
    "test_props.py": """
from pathlib import PurePosixPath

def test_odd_values(record_property):
    record_property("config", {"retries": 3, 1: "one", (2, 3): [4, (5, 6)]})
    record_property("pair", (1, 2))
    record_property("path", PurePosixPath("/data/set"))
    record_property("nothing", None)
"""
}


def _properties(path) -> list[tuple[str, str]]:
    return [
        (prop.get("name"), prop.get("value")) for prop in ET.parse(path).getroot().iter("property")
    ]


@pytest.mark.parametrize("spawn", ["fork", "exec"])
def test_junit_properties_of_any_value_match_plain_pytest(suite, spawn):
    path = suite(PROPERTIES_SUITE)
    plain = run_pytest(path, "-p", "no:cacheprovider", "--junitxml=plain.xml")
    farm = run_pytest(
        path,
        "-p",
        "no:cacheprovider",
        "--junitxml=farm.xml",
        "--psyduck",
        f"--psyduck-spawn={spawn}",
    )
    assert plain.returncode == farm.returncode == 0, farm.stdout + farm.stderr
    assert _properties(path / "farm.xml") == _properties(path / "plain.xml")
    assert ("pair", "(1, 2)") in _properties(path / "farm.xml")
