"""psyduck's own modules are imported as plain Python, not rewritten by pytest's assert hook."""

from __future__ import annotations

import json
import os

from pytest_psyduck.plugin import OWN_PACKAGES
from tests.conftest import run_pytest

#: Records, at the end of a session, which modules pytest's rewrite hook loaded.
RECORDER = """
import json, os, sys

def pytest_unconfigure(config):
    rewritten = sorted(
        name for name, module in list(sys.modules.items())
        if type(getattr(module, "__loader__", None)).__name__ == "AssertionRewritingHook"
    )
    with open(os.environ["REWRITTEN_LOG"], "w") as f:
        json.dump(rewritten, f)
"""


def test_an_installed_psyduck_is_not_assertion_rewritten(suite, tmp_path):
    """pytest marks every package of a plugin's distribution for rewriting.

    The editable install this suite runs from lists no packages, so a stand-in
    distribution does what an installed wheel's file list does: it names
    psyduck's packages (and the recorder, to show the marking takes effect).
    """
    site = tmp_path / "site"
    dist = site / "psyduck_wheel_files-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: psyduck-wheel-files\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nrecorder = rewrite_recorder\n")
    (dist / "RECORD").write_text(
        "farm/__init__.py,,\npokedex/__init__.py,,\npytest_psyduck/__init__.py,,\n"
        "rewrite_recorder.py,,\n"
    )
    (site / "rewrite_recorder.py").write_text(RECORDER)
    log = tmp_path / "rewritten.json"
    path = suite({"test_a.py": "def test_one():\n    assert 1 + 1 == 2\n"})
    result = run_pytest(
        path,
        "--psyduck",
        "--psyduck-hosts=local:1",
        env={
            "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "REWRITTEN_LOG": str(log),
        },
    )
    assert result.outcomes() == {"passed": 1}, result.stdout + result.stderr
    rewritten = json.loads(log.read_text())
    assert "rewrite_recorder" in rewritten
    ours = [name for name in rewritten if name.split(".")[0] in OWN_PACKAGES]
    # Only what pytest imports to load the plugin, before the plugin can act.
    assert set(ours) <= {
        "pytest_psyduck",
        "pytest_psyduck.plugin",
        "pytest_psyduck.hookspecs",
        "pytest_psyduck.roles",
    }, ours
    assert "pytest_psyduck.plugin" in ours  # the stand-in distribution did mark psyduck
