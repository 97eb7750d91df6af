"""Which files a shard needs (pure), and a real pytest session that collects only those."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_psyduck.shardfiles import shard_files
from tests.conftest import run_pytest

FILES = ["test_a.py", "sub/test_b.py", "sub/deeper/test_c.txt", "weird [dir]/test_d.py"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


@given(
    tests=st.lists(
        st.tuples(st.sampled_from(FILES), st.text(min_size=1)).map(lambda t: "::".join(t)),
        min_size=1,
    )
)
def test_a_node_id_names_its_file_whatever_follows(tree, tests):
    """Parametrize ids may hold ``::``, ``/``, brackets, anything: only the path counts."""
    expected = {os.path.join(tree, test.split("::", 1)[0]) for test in tests}
    assert shard_files(tests, tree) == frozenset(expected)


@pytest.mark.parametrize(
    "test_id",
    ["gone.py::test_x", "sub::test_x", "sub/deeper", "::test_x", "plugin-item-without-a-file"],
)
def test_an_id_not_naming_a_file_means_collect_everything(tree, test_id):
    assert shard_files(["test_a.py::test_ok", test_id], tree) is None


def test_ids_relative_to_the_root_may_leave_it(tree):
    inner = tree / "sub"
    assert shard_files(["../test_a.py::t", "test_b.py::t"], inner) == {
        str(tree / "test_a.py"),
        str(inner / "test_b.py"),
    }


def test_no_ids_collect_nothing(tree):
    assert shard_files([], tree) == frozenset()


def test_a_session_collects_only_the_shards_files(suite):
    """Real pytest: files outside the shard are never imported, every conftest is loaded,
    and a package's ``__init__.py`` still sets its package up."""
    path = suite(
        {
            "conftest.py": (
                "from pathlib import Path\n"
                "from pytest_psyduck.shardfiles import ShardFilter\n"
                "HERE = Path(__file__).parent\n"
                "def pytest_configure(config):\n"
                "    files = {str(HERE / 'pkg' / 'test_wanted.py')}\n"
                "    config.pluginmanager.register(ShardFilter(frozenset(files)))\n"
            ),
            "test_unwanted.py": "raise SystemExit('test_unwanted.py was imported')\n",
            "pkg/__init__.py": "import os\nos.environ['PKG_INIT'] = '1'\n",
            "pkg/conftest.py": "import pytest\n@pytest.fixture\ndef near():\n    return 1\n",
            "pkg/test_wanted.py": (
                "import os\n"
                "def test_wanted(near):\n"
                "    assert os.environ['PKG_INIT'] == os.environ['ELSEWHERE'] == '1'\n"
            ),
            "pkg/test_other.py": "raise SystemExit('pkg/test_other.py was imported')\n",
            "elsewhere/conftest.py": "import os\nos.environ['ELSEWHERE'] = '1'\n",
        }
    )
    done = run_pytest(path, "-p", "no:cacheprovider")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.outcomes() == {"passed": 1}, done.stdout
    assert "imported" not in done.stdout + done.stderr
