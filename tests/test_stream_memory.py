"""The user's process holds no more per replayed result than plain pytest does.

A real ``pytest --psyduck`` session: every replayed report shares its item's
parsed node id, keyword names and one location tuple, and carries nothing
plain pytest's reports do not (``benchmarks/replay_memory.py`` measures the
memory this saves).
"""

from __future__ import annotations

import json

from tests.conftest import run_pytest

CHECK = """
import json, os

ITEMS = {}
SEEN = []


def pytest_collection_finish(session):
    ITEMS.update((item.nodeid, item) for item in session.items)


def pytest_runtest_logreport(report):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    item = ITEMS[report.nodeid]
    names = {id(name) for name in item.keywords}
    SEEN.append({
        "id": getattr(report, "_id", None) is getattr(item, "_id", None),
        "keywords": all(id(name) in names for name in report.keywords),
        "extra": sorted(set(vars(report)) - {
            "_id", "nodeid", "location", "keywords", "outcome", "longrepr", "when",
            "user_properties", "sections", "duration", "start", "stop",
        }),
        "location": id(report.location),
        "nodeid": report.nodeid,
    })


def pytest_sessionfinish(session):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        with open(OUT, "w") as f:
            json.dump(SEEN, f)
"""


def test_replayed_reports_share_their_items_objects(suite, tmp_path):
    out = tmp_path / "seen.json"
    project = suite(
        {
            "proj/conftest.py": f"OUT = {str(out)!r}\n" + CHECK,
            "proj/test_a.py": (
                "import pytest\n\n"
                "@pytest.mark.parametrize('n', range(20))\n"
                "def test_n(n):\n    assert n < 19\n"
            ),
        }
    )
    session = run_pytest(project / "proj", "-p", "no:cacheprovider", "--psyduck")
    assert session.outcomes() == {"passed": 19, "failed": 1}, session.stdout
    seen = json.loads(out.read_text())
    assert len(seen) == 60
    assert all(report["id"] and report["keywords"] for report in seen), seen
    assert all(report["extra"] == [] for report in seen), seen
    locations: dict[str, set[int]] = {}
    for report in seen:
        locations.setdefault(report["nodeid"], set()).add(report["location"])
    assert all(len(ids) == 1 for ids in locations.values()), locations
