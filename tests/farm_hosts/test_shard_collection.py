"""A container's worker makes only its shard's tests, and stays exactly pytest.

Real ``pytest --psyduck`` sessions on the local engine; what a worker imported
and which items it made come back in each test's junit properties.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.conftest import junit_cases, run_pytest
from tests.farm_hosts.hostlib import (
    containers_created,
    of_session,
    recorded_session,
    seed_durations,
)

pytestmark = pytest.mark.docker

#: Each test tells which of the suite's test modules its worker has imported, and which
#: tests it made.
REPORTS_IMPORTS = """
import sys

def test_{name}(record_property, request):
    record_property("imported", " ".join(sorted(m for m in sys.modules if m.startswith("test_"))))
    record_property("made", " ".join(item.name for item in request.session.items))
"""


def test_a_container_imports_every_module_and_makes_only_its_shards_tests(
    docker_image, suite, tmp_path
):
    """Importing a test module may be what another module's tests need (click's pager
    tests): a container imports the suite's modules as plain pytest does."""
    names = ["alpha", "beta", "gamma"]
    path = suite(
        {
            **{f"test_{n}.py": REPORTS_IMPORTS.format(name=n) for n in names},
            # A conftest in a directory the shards never touch is still loaded, as
            # plain pytest loads it: its hook fails the run if it is not.
            "other/conftest.py": (
                "def pytest_collection_modifyitems(items):\n"
                "    for item in items:\n"
                "        item.user_properties.append(('seen_by_other_conftest', 'yes'))\n"
            ),
            "other/test_other.py": "def test_other():\n    pass\n",
        }
    )
    # Long enough that every test is a shard of its own, in a container of its own.
    seed_durations(path, {f"test_{n}.py::test_{n}": 20.0 for n in names})
    done, cases = recorded_session(
        path,
        tmp_path / "out.xml",
        "--psyduck-hosts",
        "docker:2",
        "--psyduck-image",
        docker_image,
    )
    assert done.returncode == 0, done.output
    properties = junit_properties(tmp_path / "out.xml")
    for name in names:
        assert properties[f"test_{name}::test_{name}"] == {
            "imported": "test_alpha test_beta test_gamma test_other",
            "made": f"test_{name}",
            "seen_by_other_conftest": "yes",
        }, done.output
    assert set(cases) == {f"test_{n}::test_{n}" for n in names} | {"other.test_other::test_other"}


def test_two_thousand_modules_run_in_containers_as_plainly(docker_image, tmp_path):
    """Real size: 2,000 test modules in 20 directories, 4,000 tests, four failing.
    Every container imports all 2,000 modules (as plain pytest does) and makes only its
    shard's items; the session's junit cases are plain pytest's."""
    root = tmp_path / "big"
    for i in range(2000):
        module = root / "tests" / f"pkg{i // 100:02d}" / f"test_m{i:04d}.py"
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(
            "import pytest\n\n"
            f"@pytest.mark.parametrize('n', [{i}, {i + 1}])\n"
            "def test_value(n):\n"
            "    assert n % 997 != 996\n"
        )
    plain = run_pytest(root, "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'plain.xml'}")
    assert plain.outcomes() == {"passed": 3996, "failed": 4}, plain.stdout[-2000:]
    # Timed, so that the run is cut into shards for both slots.
    seed_durations(
        root,
        {
            f"tests/pkg{i // 100:02d}/test_m{i:04d}.py::test_value[{n}]": 0.01
            for i in range(2000)
            for n in (i, i + 1)
        },
    )
    with containers_created("psyduck.worker") as created:
        done, cases = recorded_session(
            root,
            *(tmp_path / "farm.xml", "--psyduck-hosts", "docker:2"),
            *("--psyduck-image", docker_image),
        )
    assert done.returncode == plain.returncode == 1, done.output[-3000:]
    assert cases == junit_cases(tmp_path / "plain.xml"), done.output[-3000:]
    assert len(of_session(created, done.pid)) >= 2, created


def junit_properties(path) -> dict[str, dict[str, str]]:
    """testcase id → its junit properties."""
    return {
        f"{case.get('classname')}::{case.get('name')}": {
            p.get("name"): p.get("value") for p in case.iter("property")
        }
        for case in ET.parse(path).getroot().iter("testcase")
    }


#: Fixtures from parent directories, module and session fixtures whose setup and
#: teardown order the last test checks, parametrize ids pytest has to escape.
PARITY_SUITE = {
    "conftest.py": """
import pytest

EVENTS = []

@pytest.fixture(scope="session")
def events():
    return EVENTS

@pytest.fixture(scope="module")
def per_module(request, events):
    name = request.module.__name__.rsplit(".", 1)[-1]
    events.append("setup " + name)
    yield
    events.append("teardown " + name)
""",
    "pkg/__init__.py": "",
    "pkg/conftest.py": """
import pytest

@pytest.fixture
def from_parent():
    return "parent"
""",
    "pkg/inner/__init__.py": "",
    "pkg/inner/test_inner.py": """
def test_uses_the_parent_conftest(from_parent):
    assert from_parent == "parent"
""",
    "test_a_order.py": """
def test_one(per_module):
    pass

def test_two(per_module):
    pass
""",
    "test_b_order.py": """
def test_three(per_module):
    pass
""",
    "test_odd_ids.py": """
import pytest

@pytest.mark.parametrize(
    "value", ["a::b", "sp ace", "ünï", "[x]", "a/b", "tab\\t", "::"],
)
def test_odd(value):
    assert value
""",
    "test_z_last.py": """
def test_order(events):
    assert events == [
        "setup test_a_order", "teardown test_a_order", "setup test_b_order", "teardown test_b_order"
    ]
""",
    # A test the client collects but a worker does not: it must be reported missing.
    "test_vanishing.py": """
import os

if "PYTEST_XDIST_WORKER" not in os.environ:
    def test_only_in_the_client():
        pass
""",
}


def test_shard_collection_keeps_pytests_ids_fixtures_and_order(docker_image, suite, tmp_path):
    """One container runs the whole suite (untimed tests make one shard on ``docker:1``)."""
    path = suite(PARITY_SUITE)
    plain = run_pytest(path, "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'plain.xml'}")
    assert plain.returncode == 0, plain.stdout
    done, cases = recorded_session(
        path, tmp_path / "farm.xml", "--psyduck-hosts", "docker:1", "--psyduck-image", docker_image
    )
    assert done.returncode == 1, done.output
    expected = junit_cases(tmp_path / "plain.xml")
    vanished = "test_vanishing::test_only_in_the_client"
    outcome, message = cases.pop(vanished)
    assert outcome != "passed"
    assert "the worker did not collect this test" in message, message
    expected.pop(vanished)
    assert cases == expected, done.output
    assert len([c for c in cases if "test_odd[" in c]) == 7


def test_a_shard_its_worker_cannot_collect_fails_with_the_reason(docker_image, suite, tmp_path):
    """The worker said ``ready`` before collecting: when its collection then raises, the
    shard's tests fail with pytest's report, and are not handed to worker after worker."""
    path = suite(
        {
            "conftest.py": (
                "import os\n"
                "def pytest_collection_modifyitems(items):\n"
                "    if 'PYTEST_XDIST_WORKER' in os.environ:\n"
                "        raise RuntimeError('boom in the worker')\n"
            ),
            "test_a.py": "def test_one():\n    pass\n\ndef test_two():\n    pass\n",
        }
    )
    done, cases = recorded_session(
        path, tmp_path / "out.xml", "--psyduck-hosts", "docker:1", "--psyduck-image", docker_image
    )
    assert done.returncode == 1, done.output
    assert set(cases) == {"test_a::test_one", "test_a::test_two"}
    for outcome, message in cases.values():
        assert outcome != "passed"
        assert "the worker could not collect its shard (RuntimeError: boom in the worker)" in (
            message
        ), message
