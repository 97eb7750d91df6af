"""Which files a shard needs (pure), and a real pytest session that collects only those."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_psyduck.shardfiles import shard_children, shard_files
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


def test_a_session_imports_every_module_but_makes_only_the_shards_tests(suite):
    """Real pytest: a module outside the shard is imported, in plain pytest's order, and
    makes no test; every conftest is loaded; a package's ``__init__.py`` sets its
    package up.  click's pager tests need a submodule that only *another* test module
    imports, and pass in plain pytest and under pytest-xdist."""
    path = suite(
        {
            "conftest.py": (
                "from pathlib import Path\n"
                "from pytest_psyduck.shardfiles import ShardFilter\n"
                "HERE = Path(__file__).parent\n"
                "def pytest_configure(config):\n"
                "    files = {str(HERE / 'pkg' / 'test_wanted.py'), str(HERE / 'notes.txt')}\n"
                "    config.pluginmanager.register(ShardFilter(frozenset(files)))\n"
            ),
            "lib/__init__.py": "",
            "lib/part.py": "",
            "test_a_imports_part.py": (
                "import lib.part\n"
                "def test_outside():\n"
                "    raise AssertionError('made a test outside the shard')\n"
                "class TestOutside:\n"
                "    def test_in_class(self):\n"
                "        raise AssertionError('made a test outside the shard')\n"
            ),
            "pkg/__init__.py": "import os\nos.environ['PKG_INIT'] = '1'\n",
            "pkg/conftest.py": "import pytest\n@pytest.fixture\ndef near():\n    return 1\n",
            "pkg/test_wanted.py": (
                "import os\n"
                "import lib\n"
                "def test_wanted(near):\n"
                "    assert os.environ['PKG_INIT'] == os.environ['ELSEWHERE'] == '1'\n"
                "    assert lib.part\n"
            ),
            "elsewhere/conftest.py": "import os\nos.environ['ELSEWHERE'] = '1'\n",
            "notes.txt": ">>> 1\n1\n",
            "other.txt": ">>> 1\n2\n",
        }
    )
    done = run_pytest(path, "-p", "no:cacheprovider", "--doctest-glob=*.txt", "-v")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.outcomes() == {"passed": 2}, done.stdout
    assert "notes.txt::notes.txt PASSED" in done.stdout


NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@given(
    ids=st.lists(
        st.tuples(st.sampled_from(FILES), st.lists(NAME, min_size=1, max_size=3), st.text()).map(
            lambda t: f"{t[0]}::{'::'.join(t[1])}" + (f"[{t[2]}]" if t[2] else "")
        ),
        min_size=1,
    )
)
def test_every_parent_of_a_shard_test_keeps_the_child_on_its_way(ids):
    """Whatever a parametrized id's parameters hold, each node on the way to a test
    names the next one as needed, and nothing else is needed."""
    children = shard_children(ids)
    expected: dict[str, set[str]] = {}
    for test_id in ids:
        file, rest = test_id.split("::", 1)
        names = rest.split("[", 1)[0].split("::")
        for depth, name in enumerate(names):
            expected.setdefault("::".join([file, *names[:depth]]), set()).add(name)
    assert children == {parent: frozenset(names) for parent, names in expected.items()}


def test_a_shard_file_makes_only_the_tests_the_shard_names(suite):
    """Real pytest: a function or class the shard does not name is never parametrized or
    collected, while a named function is parametrized whole, with pytest's own ids."""
    path = suite(
        {
            "conftest.py": (
                "from pathlib import Path\n"
                "from pytest_psyduck.shardfiles import ShardFilter, shard_children\n"
                "HERE = Path(__file__).parent\n"
                "SHARD = ['test_mod.py::test_wanted[a::b]', 'test_mod.py::TestKept::test_one']\n"
                "def pytest_configure(config):\n"
                "    files = frozenset({str(HERE / 'test_mod.py')})\n"
                "    config.pluginmanager.register(ShardFilter(files, shard_children(SHARD)))\n"
            ),
            "test_mod.py": (
                "import pytest\n"
                "def pytest_generate_tests(metafunc):\n"
                "    if metafunc.function.__name__ == 'test_stress':\n"
                "        raise SystemExit('test_stress was parametrized')\n"
                "@pytest.mark.parametrize('p', ['a::b', 'c'])\n"
                "def test_wanted(p):\n"
                "    pass\n"
                "def test_stress():\n"
                "    pass\n"
                "class TestKept:\n"
                "    def test_one(self):\n"
                "        pass\n"
                "    def test_two(self):\n"
                "        pass\n"
                "class TestGone:\n"
                "    def test_three(self):\n"
                "        pass\n"
            ),
        }
    )
    done = run_pytest(path, "-p", "no:cacheprovider", "--collect-only", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:4] == [
        "test_mod.py::test_wanted[a::b]",
        "test_mod.py::test_wanted[c]",
        "test_mod.py::TestKept::test_one",
        "",
    ], done.stdout
