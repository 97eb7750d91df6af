"""IDE runners see each result once, with the right id.

PyCharm reads teamcity-messages; VS Code's plugin hooks the runtest protocol.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from tests.conftest import run_pytest

SUITE = {
    "test_ide.py": """
import pytest

def test_pass(): pass

def test_fail(): assert 1 == 2

@pytest.mark.skip(reason="later")
def test_skip(): pass

@pytest.mark.parametrize("x", ["a", "b"])
def test_param(x): assert x
""",
    "sub/test_nested.py": "def test_deep(): pass\n",
}

# What VS Code's vscode_pytest plugin relies on: it learns each item's file
# path in pytest_runtest_protocol and builds the id it reports from it.
VSCODE_LIKE_PLUGIN = """
import json, os, pytest

PATHS = {}
EVENTS = []

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    PATHS[item.nodeid] = str(item.path)
    return (yield)

def pytest_report_teststatus(report, config):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        path = PATHS.get(report.nodeid, "")
        test_id = path + "::" + report.nodeid.split("::", 1)[-1]
        EVENTS.append({"id": test_id, "outcome": report.outcome})

def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        with open(os.environ["VSCODE_EVENTS"], "w") as f:
            json.dump(EVENTS, f)
"""


def _teamcity(stdout: str) -> Counter:
    """Teamcity service messages without their timing and flow attributes."""
    messages = Counter()
    for line in stdout.splitlines():
        match = re.match(r"##teamcity\[(\w+) (.*)\]$", line.strip())
        if not match or match.group(1) in ("flowStarted", "flowFinished", "testCount"):
            continue
        attrs = dict(re.findall(r"(\w+)='((?:[^'|]|\|.)*)'", match.group(2)))
        for volatile in (
            "flowId",
            "timestamp",
            "duration",
            "captureStandardOutput",
            "locationHint",
            "metainfo",
            "details",
        ):
            attrs.pop(volatile, None)
        messages[(match.group(1), tuple(sorted(attrs.items())))] += 1
    return messages


def test_teamcity_messages_match_plain_pytest(suite):
    path = suite(SUITE)
    plain = run_pytest(path, "-p", "no:cacheprovider", "--teamcity")
    psy = run_pytest(path, "-p", "no:cacheprovider", "--teamcity", "--psyduck")
    assert plain.returncode == psy.returncode == 1
    plain_messages, psy_messages = _teamcity(plain.stdout), _teamcity(psy.stdout)
    assert plain_messages  # the real teamcity-messages plugin is active
    assert psy_messages == plain_messages
    started = [k for k in psy_messages if k[0] == "testStarted"]
    assert all(psy_messages[k] == 1 for k in started)


def test_vscode_style_plugin_sees_each_result_once_with_its_path(suite, tmp_path):
    path = suite({**SUITE, "conftest.py": VSCODE_LIKE_PLUGIN})
    events_file = tmp_path / "events.json"
    result = run_pytest(
        path, "-p", "no:cacheprovider", "--psyduck", env={"VSCODE_EVENTS": str(events_file)}
    )
    assert result.returncode == 1
    events = json.loads(events_file.read_text())
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) == 6
    assert all(i.startswith(str(path)) for i in ids), ids
    assert {"id": f"{path}/test_ide.py::test_fail", "outcome": "failed"} in events
    assert {"id": f"{path}/sub/test_nested.py::test_deep", "outcome": "passed"} in events
