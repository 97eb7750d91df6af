"""Subtest reports through psyduck's report codec, and the worker's terminal stand-in.

Pure logic, with the real pytest hooks of this session: a subtest report
decoded in the user's process must describe its subtest exactly as the worker's
did (plain pytest renders ``i=2``).  That a failed subtest fails its test is
checked on real sessions in tests/test_plugin_parity.py.
"""

from __future__ import annotations

import io

import pytest
from _pytest.terminal import TerminalReporter
from hypothesis import given
from hypothesis import strategies as st

from pytest_psyduck.serialize import payload_to_reports, reports_to_payload
from pytest_psyduck.workerterminal import WorkerTerminal

subtests = pytest.importorskip("_pytest.subtests")

NODEID = "test_a.py::test_x"

values = st.one_of(
    st.integers(),
    st.text(max_size=20),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=5),
    st.binary(max_size=10),
)


def _subtest_report(msg: str | None, kwargs: dict, outcome: str) -> pytest.TestReport:
    parent = pytest.TestReport(
        nodeid=NODEID,
        location=("test_a.py", 0, "test_x"),
        keywords={},
        outcome=outcome,
        longrepr="boom" if outcome == "failed" else None,
        when="call",
    )
    context = subtests.SubtestContext(msg=msg, kwargs=kwargs)
    return subtests.SubtestReport._new(parent, context, None, None)


@given(
    msg=st.none() | st.text(max_size=20),
    kwargs=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), values, max_size=4),
)
def test_a_subtest_is_described_as_on_the_worker(pytestconfig, msg, kwargs):
    sent = _subtest_report(msg, kwargs, "passed")
    (received,) = payload_to_reports(pytestconfig, reports_to_payload(pytestconfig, [sent]))
    assert isinstance(received, subtests.SubtestReport)
    assert received.context == sent.context
    assert received._sub_test_description() == sent._sub_test_description()
    assert received.head_line == sent.head_line


def test_keyword_arguments_are_shown_without_a_second_repr(pytestconfig):
    sent = _subtest_report("check", {"i": 2, "name": "b"}, "failed")
    (received,) = payload_to_reports(pytestconfig, reports_to_payload(pytestconfig, [sent]))
    assert received._sub_test_description() == "[check] (i=2, name='b')"


def test_the_terminal_stand_in_has_no_hooks_but_the_reporters_writer(pytestconfig):
    reporter = TerminalReporter(pytestconfig, io.StringIO())
    stand_in = WorkerTerminal(reporter)
    pm = pytest.PytestPluginManager()
    pm.register(stand_in, "terminalreporter")
    assert pm.get_hookcallers(stand_in) == []
    assert stand_in._tw is reporter._tw
    stand_in.write_line("written")
    assert reporter._tw._file.getvalue() == "written\n"
