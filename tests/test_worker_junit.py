"""A fresh worker sees ``--junitxml`` as the user's pytest does, and writes no junit file."""

from __future__ import annotations

from tests.conftest import run_pytest
from tests.test_parity import _summary

SUITE = {
    "pytest.ini": "[pytest]\njunit_family = xunit2\n",
    "test_props.py": """
def test_records_a_property(record_property):
    record_property("answer", "42")

def test_records_an_attribute(record_xml_attribute):
    record_xml_attribute("answer", "42")
""",
}


def test_junit_fixtures_warn_on_fresh_workers_as_in_plain_pytest(suite):
    path = suite(SUITE)
    common = ["-p", "no:cacheprovider", "-rA", "--junitxml=out.xml"]
    plain = run_pytest(path, *common)
    before = (path / "out.xml").read_text()
    (path / "out.xml").unlink()
    psy = run_pytest(path, *common, "--psyduck", "--psyduck-spawn=exec", "--psyduck-hosts=local:2")
    assert psy.returncode == plain.returncode == 0, psy.stdout + psy.stderr
    assert _summary(psy.stdout) == _summary(plain.stdout), psy.stdout
    assert _summary(plain.stdout).endswith(" 2 passed, 3 warnings")
    for warning in (
        "record_property is incompatible with junit_family 'xunit2'",
        "record_xml_attribute is incompatible with junit_family 'xunit2'",
        "record_xml_attribute is an experimental feature",
    ):
        assert warning in plain.stdout and warning in psy.stdout, warning
    # One junit file, the user's pytest's, with the same test cases.
    assert (path / "out.xml").read_text().count("<testcase") == before.count("<testcase") == 2
